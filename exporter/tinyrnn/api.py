"""The Python API: ``tinyrnn.export``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import TinyRNNError
from .frontend import capture, read_program
from .ir import Model
from .pt2 import Program
from .render import check_name, render

FORMATS = ("w8a16", "w16a16", "float32")
DEFAULT_FORMAT = "w8a16"


class CalibrationWarning(UserWarning):
    """Exported without calibration data: the formats come from the example input only."""


def _flat_arrays(value: Any) -> list[np.ndarray]:
    """Forward arguments (a tensor/array, or nested tuples of them) as a flat list of arrays."""
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flat_arrays(v)]
    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy()]
    return [np.asarray(value)]


def example_arrays(program: Program) -> list[np.ndarray]:
    """The example inputs saved with the program, as flat arrays."""
    if not program.example_inputs:
        raise TinyRNNError(
            "the model archive holds no example inputs and no calibration data was given; "
            "pass --calibration X.npy (or calibration= in the API)"
        )
    return list(program.example_inputs)


def quantize_model(
    model: Model,
    format: str,
    calibration: Sequence[np.ndarray] | None,
    example: Sequence[np.ndarray] | None,
):
    """Calibrate on ``calibration`` (else the example, with a CalibrationWarning) and quantize."""
    from .quantize import calibrate, choose_formats, quantize
    from .simulate import batch_from_arrays

    if calibration is None:
        if example is None:
            raise TinyRNNError("integer formats need calibration data or an example input")
        warnings.warn(
            f"no calibration data given: the {format} formats are calibrated on the example "
            "input only, which may not cover the range of real inputs (values outside it "
            "saturate). Pass representative sequences with --calibration X.npy (or "
            "calibration= in the API).",
            CalibrationWarning,
            stacklevel=3,
        )
        batch = batch_from_arrays(model, example, "the example input")
        source = "example input"
    else:
        batch = batch_from_arrays(model, calibration, "the calibration data")
        source = "calibration data"
    ranges = calibrate(model, batch, source)
    return quantize(model, format, choose_formats(model, ranges), ranges)


def export_program(
    program: Program,
    out_dir: str | Path,
    *,
    format: str = DEFAULT_FORMAT,
    name: str = "model",
    max_seq_len: int | None = None,
    calibration: Any = None,
) -> dict:
    """Export a program (read from an archive, or captured); returns the manifest.

    ``calibration``: for the integer formats, representative inputs in the forward's form
    (one array, or a list/tuple such as ``[x, h0, c0]``), usually many sequences.
    """
    if format not in FORMATS:
        raise TinyRNNError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    check_name(name)
    if max_seq_len is not None and max_seq_len < 1:
        raise TinyRNNError(f"--max-seq-len must be at least 1, not {max_seq_len}")
    model = read_program(program, max_seq_len)
    options: dict[str, Any] = {"format": format, "max_seq_len": model.max_seq_len}
    quantized = None
    if format != "float32":
        cal = _flat_arrays(calibration) if calibration is not None else None
        example = example_arrays(program) if cal is None else None
        quantized = quantize_model(model, format, cal, example)
        options["calibration"] = quantized.ranges.source
    return render(model, Path(out_dir), name, format, options, quantized)


def export(
    model: torch.nn.Module,
    example_inputs: Any,
    out_dir: str | Path,
    *,
    format: str = DEFAULT_FORMAT,
    name: str = "model",
    max_seq_len: int | None = None,
    calibration: Any = None,
) -> dict:
    """Capture ``model`` with torch.export and write NAME.h, NAME.c, NAME.json to ``out_dir``.

    ``example_inputs`` are the forward's arguments (a tensor, or a tuple such as
    ``(x, (h0, c0))``). Bidirectional models get sequence buffers of ``max_seq_len`` steps
    (default: the example's length). ``format``: ``w8a16`` (default), ``w16a16`` or
    ``float32``. ``calibration``: representative inputs in the forward's form for the
    integer formats (without it the example input is used and a CalibrationWarning says so).
    Returns the manifest as a dict.
    """
    program = capture(model, example_inputs if isinstance(example_inputs, tuple)
                      else (example_inputs,))
    return export_program(program, out_dir, format=format, name=name, max_seq_len=max_seq_len,
                          calibration=calibration)
