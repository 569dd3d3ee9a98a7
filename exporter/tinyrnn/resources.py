"""Where the data directories (templates/, firmware/, boards/) are.

In a built wheel they are copied into the package (see ``pyproject.toml``); in a source
checkout or an editable install they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Return the directory ``name`` (``"templates"``, ``"firmware"`` or ``"boards"``)."""
    for candidate in (_PACKAGE / name, _PACKAGE.parents[1] / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"tinyrnn data directory {name!r} not found next to {_PACKAGE}")
