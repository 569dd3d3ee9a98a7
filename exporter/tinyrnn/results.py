"""The base of the Python API's result types: frozen dataclasses with ``to_dict()``."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

TEXT_ONLY = {"to_dict": False}
"""Field metadata: printed by the command, left out of ``to_dict()`` (it repeats the data)."""


def plain(value: Any) -> Any:
    """``value`` as JSON-serialisable data: dataclasses as dicts, numpy arrays and tuples as
    lists, numpy scalars as numbers, paths as str. JSON has no infinity or NaN: a non-finite
    float becomes None (an exact match's SQNR, inf, is written as null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, JsonResult):
            return value.to_dict()
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            value = np.where(np.isfinite(value), value.astype(object), None)
        return value.tolist()
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class JsonResult:
    """Mixin of the result dataclasses: ``to_dict()`` gives their fields as JSON data."""

    def to_dict(self) -> dict[str, Any]:
        """The result's fields as JSON-serialisable data (see :func:`plain`); fields that
        only hold the printed text are left out."""
        assert dataclasses.is_dataclass(self)
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.metadata.get("to_dict", True)}
