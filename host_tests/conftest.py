import sys
from pathlib import Path

# host_tests/models.py is imported by the tests as a plain module
sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    """One folder per test session (made by the controlling process, inherited by
    pytest-xdist's workers) where the workers share their captured archives
    (host_tests/models.py: captured)."""
    import os
    import tempfile

    from models import SHARED_CAPTURES

    if not hasattr(config, "workerinput") and SHARED_CAPTURES not in os.environ:
        config._tinyrnn_captures = tempfile.mkdtemp(prefix="tinyrnn-captures-")
        os.environ[SHARED_CAPTURES] = config._tinyrnn_captures


def pytest_unconfigure(config):
    import os
    import shutil

    from models import SHARED_CAPTURES

    folder = getattr(config, "_tinyrnn_captures", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(SHARED_CAPTURES, None)
