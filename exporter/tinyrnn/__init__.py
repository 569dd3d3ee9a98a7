"""tinyrnn: PyTorch RNN/LSTM/GRU models to C for microcontrollers, proven equal to torch.

The Python API has one function per command (docs/python-api.md): :func:`export`,
:func:`verify`, :func:`run_host`, :func:`build`, :func:`run`, :func:`profile`,
:func:`report` and :func:`package`. Each returns a frozen dataclass of the figures the
command prints (``to_dict()`` for JSON) and raises :class:`TinyRNNError` on bad input.

``tinyrnn.verify``, ``tinyrnn.profile``, ``tinyrnn.report`` and ``tinyrnn.package`` name
these functions; the modules of the same names are reached with ``from tinyrnn.profile
import ...`` (or ``importlib.import_module("tinyrnn.profile")``).
"""

from __future__ import annotations

__version__ = "0.1.0"

# .commands imports the modules verify, profile, report and package before the functions of
# the same names are bound below, so that a later import of those modules cannot rebind them.
from .api import CalibrationIgnoredWarning, CalibrationWarning, export  # noqa: E402
from .commands import (  # noqa: E402
    BuildResult,
    PackageResult,
    ProfileResult,
    ReportResult,
    RunResult,
    VerifyResult,
    build,
    package,
    profile,
    report,
    run,
    run_host,
    verify,
)
from .errors import TinyRNNError, TinyRNNWarning  # noqa: E402

__all__ = [
    "BuildResult",
    "CalibrationIgnoredWarning",
    "CalibrationWarning",
    "PackageResult",
    "ProfileResult",
    "ReportResult",
    "RunResult",
    "TinyRNNError",
    "TinyRNNWarning",
    "VerifyResult",
    "__version__",
    "build",
    "export",
    "package",
    "profile",
    "report",
    "run",
    "run_host",
    "verify",
]
