"""The Python API: ``tinyrnn.export``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import TinyRNNError
from .frontend import capture, read_program
from .render import check_name, render

FORMATS = ("float32",)


def export_program(
    program: torch.export.ExportedProgram,
    out_dir: str | Path,
    *,
    format: str = "float32",
    name: str = "model",
    max_seq_len: int | None = None,
) -> dict:
    """Export an already captured program; returns the manifest."""
    if format not in FORMATS:
        raise TinyRNNError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    check_name(name)
    if max_seq_len is not None and max_seq_len < 1:
        raise TinyRNNError(f"--max-seq-len must be at least 1, not {max_seq_len}")
    model = read_program(program, max_seq_len)
    options: dict[str, Any] = {"format": format, "max_seq_len": model.max_seq_len}
    return render(model, Path(out_dir), name, format, options)


def export(
    model: torch.nn.Module,
    example_inputs: Any,
    out_dir: str | Path,
    *,
    format: str = "float32",
    name: str = "model",
    max_seq_len: int | None = None,
) -> dict:
    """Capture ``model`` with torch.export and write NAME.h, NAME.c, NAME.json to ``out_dir``.

    ``example_inputs`` are the forward's arguments (a tensor, or a tuple such as
    ``(x, (h0, c0))``). Bidirectional models get sequence buffers of ``max_seq_len`` steps
    (default: the example's length). Returns the manifest as a dict.
    """
    program = capture(model, example_inputs if isinstance(example_inputs, tuple)
                      else (example_inputs,))
    return export_program(program, out_dir, format=format, name=name, max_seq_len=max_seq_len)
