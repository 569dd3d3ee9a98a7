"""The Python API: ``tinyrnn.export``."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backend.render import render
from .checks import check_name, check_number
from .errors import TinyRNNError, TinyRNNWarning
from .frontend.pt2 import Program
from .frontend.reader import archive_bytes, read_captured, read_program, trace
from .ir import Conv1d, Model, PadTime, PoolWindow, SelectStep, value_width
from .outputs import output_folder
from .passes.stream import require_streaming

FORMATS = ("w8a16", "w16a16", "float32")
DEFAULT_FORMAT = "w8a16"


class CalibrationWarning(TinyRNNWarning):
    """Exported without calibration data: the formats come from the example input only."""


class CalibrationIgnoredWarning(TinyRNNWarning):
    """Calibration data was given for float32, which has no ranges to calibrate: it is not
    read and the export equals one without it (as converters do, so that one script can
    export every format)."""


def ignore_calibration_for_float(format: str, calibration: Any) -> Any:
    """``calibration``, or None (with a :class:`CalibrationIgnoredWarning`) for float32."""
    if calibration is None or format != "float32":
        return calibration
    warnings.warn(
        "--calibration (calibration= in the API) applies to the integer formats (w8a16, "
        "w16a16); float32 has no ranges to calibrate, so it is ignored",
        CalibrationIgnoredWarning,
        stacklevel=4,  # the caller of tinyrnn.export
    )
    return None


class CalibrationRangeWarning(CalibrationWarning):
    """The calibration data cannot set a range: a feature of x never changes in it."""


def warn_constant_features(model: Model, x: np.ndarray, source: str) -> None:
    """Warn (:class:`CalibrationRangeWarning`) when features of ``x`` (``(B, T, I)``) take a
    single value over all the calibration data: all-zero or constant data gives formats
    that real inputs overflow (about 14 dB SQNR on the example model)."""
    flat = x.reshape(-1, x.shape[-1])
    constant = np.flatnonzero(np.all(flat == flat[:1], axis=0))
    if constant.size == 0:
        return
    position = next(k for k, spec in enumerate(model.inputs) if spec.role == "x")
    shown = ", ".join(f"{k} (always {float(flat[0, k]):g})" for k in constant[:6])
    if constant.size > 6:
        shown += f" and {constant.size - 6} more"
    every = " (every feature: the data is constant)" if constant.size == flat.shape[1] else ""
    warnings.warn(
        f"the {source} has a single value in x (in{position}) feature(s) {shown} over all "
        f"its {x.shape[0]} sequence(s) x {x.shape[1]} step(s){every}, so it cannot set the "
        "range of real inputs; the integer formats calibrated on it may saturate on them "
        "(all-zero data gives about 14 dB SQNR). Pass representative sequences with "
        "--calibration X.npy (or calibration= in the API).",
        CalibrationRangeWarning,
        stacklevel=4,
    )


def _flat_arrays(value: Any) -> list[np.ndarray]:
    """Forward arguments (a tensor/array, or nested tuples of them) as a flat list of arrays."""
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flat_arrays(v)]
    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy()]
    return [np.asarray(value)]


def example_arrays(program: Program, model: Model | None = None) -> list[np.ndarray]:
    """The example inputs saved with the program, as flat arrays in the form the exported C
    takes: a step module's x_t ``(B, I)`` becomes a sequence of one step ``(B, 1, I)``."""
    if not program.example_inputs:
        raise TinyRNNError(
            "the model archive holds no example inputs and no calibration data was given; "
            "pass --calibration X.npy (or calibration= in the API)"
        )
    arrays = list(program.example_inputs)
    if model is not None and model.step_module:
        arrays = [a[:, None] if spec.role == "x" and a.ndim == 2 else a
                  for spec, a in zip(model.inputs, arrays)]
    return arrays


def quantize_model(
    model: Model,
    format: str,
    calibration: Sequence[np.ndarray] | None,
    example: Sequence[np.ndarray] | None,
    weight_bits: dict[int, int] | None = None,
):
    """Calibrate on ``calibration`` (else the example, with a CalibrationWarning) and quantize;
    ``weight_bits``: per-layer weight bits (:func:`tinyrnn.passes.quantize.weight_overrides`)."""
    from .check.simulate import batch_from_arrays
    from .passes.quantize import calibrate, choose_formats, quantize, with_weight_bits

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
    warn_constant_features(model, batch.x, source)
    ranges = calibrate(model, batch, source)
    formats = with_weight_bits(choose_formats(model, ranges), weight_bits or {})
    return quantize(model, format, formats, ranges)


MAX_SEQ_LEN = 2**31 - 1
"""The C API's sequence length is an ``int T``."""

MAX_SEQUENCE_BUFFER_BYTES = 16 << 20
"""Bidirectional models keep two sequence buffers of ``max_seq_len`` steps in NAME_state_t.
16 MiB of them is more RAM than any Cortex-M part has; a larger --max-seq-len is a typo."""


def check_options(format: str, name: str, max_seq_len: int | None,
                  layer_formats: Any = None) -> None:
    """The export options that need no model: checked before anything is loaded."""
    from .passes.quantize import check_layer_formats

    if format not in FORMATS:
        raise TinyRNNError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    check_layer_formats(format, layer_formats)
    check_name(name)
    if max_seq_len is not None and (isinstance(max_seq_len, bool)
                                    or not isinstance(max_seq_len, numbers.Integral)):
        raise TinyRNNError(f"--max-seq-len must be a whole number, not {max_seq_len!r}")
    check_number("--max-seq-len", max_seq_len, minimum=1, maximum=MAX_SEQ_LEN,
                 why="the C API's sequence length is an int")


def module_types(program: Program) -> dict[str, str]:
    """Every torch module path the program's operators ran in, with its class name (for
    naming a module without weights of its own in a per-layer format's error)."""
    return {frame.path: frame.short_type for node in program.graph.nodes
            for frame in node.module_stack}


def check_sequence_buffers(model: Model, format: str) -> None:
    """Refuse a --max-seq-len whose sequence buffers (bidirectional models) would exceed
    :data:`MAX_SEQUENCE_BUFFER_BYTES`."""
    if not (model.bidirectional or model.convolves or model.pools or model.windows):
        return
    widest = max([1] + [value_width(model.layers, model.input_size, k + 1)
                        for k, layer in enumerate(model.layers)
                        if not isinstance(layer, SelectStep)])
    per_step = 2 * widest * (4 if format == "float32" else 2)
    longest = steps = model.max_seq_len  # a Conv1d with padding beyond its span lengthens it
    for layer in model.layers:
        if isinstance(layer, (Conv1d, PoolWindow, PadTime)):
            steps = layer.out_steps(steps)
            longest = max(longest, steps)
    need = longest * per_step
    if need > MAX_SEQUENCE_BUFFER_BYTES:
        raise TinyRNNError(
            f"--max-seq-len {model.max_seq_len} needs two sequence buffers of "
            f"{longest} steps x {widest} features ({need / (1 << 20):,.0f} MiB of "
            f"scratch in the state struct); the limit is "
            f"{MAX_SEQUENCE_BUFFER_BYTES >> 20} MiB, more RAM than any Cortex-M has: this "
            f"model allows at most --max-seq-len {MAX_SEQUENCE_BUFFER_BYTES // per_step}"
        )


def export_program(
    program: Program,
    out_dir: str | Path,
    *,
    format: str = DEFAULT_FORMAT,
    name: str = "model",
    max_seq_len: int | None = None,
    calibration: Any = None,
    layer_formats: dict[str, str] | None = None,
    stream: bool = False,
) -> dict:
    """Export a program (read from an archive, or captured); returns the manifest.

    ``calibration``: for the integer formats, representative inputs in the forward's form
    (one array, or a list/tuple such as ``[x, h0, c0]``), usually many sequences.
    ``layer_formats``: per-layer formats, see :func:`export`.
    ``stream``: demand a NAME_step that streams (docs/c-api.md, "Which models stream");
    a model that cannot is refused with each layer and why.
    """
    from .passes.quantize import weight_overrides

    check_options(format, name, max_seq_len, layer_formats)
    calibration = ignore_calibration_for_float(format, calibration)
    model = read_program(program, max_seq_len)
    if stream:
        require_streaming(model, name)
    check_sequence_buffers(model, format)
    options: dict[str, Any] = {"format": format, "max_seq_len": model.max_seq_len}
    quantized = None
    if format != "float32":
        weight_bits = (weight_overrides(model, format, layer_formats, module_types(program))
                       if layer_formats else {})
        cal = _flat_arrays(calibration) if calibration is not None else None
        example = example_arrays(program, model) if cal is None else None
        quantized = quantize_model(model, format, cal, example, weight_bits)
        options["calibration"] = quantized.ranges.source
        if layer_formats:  # as given (the manifest's layers record each layer's bits)
            options["layer_formats"] = " ".join(f"{k}={v}"
                                                for k, v in sorted(layer_formats.items()))
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
    save_program: bool = False,
    layer_formats: dict[str, str] | None = None,
    stream: bool = False,
) -> dict:
    """Capture ``model`` with torch.export and write NAME.h, NAME.c, NAME.json to ``out_dir``.

    ``example_inputs`` are the forward's arguments (a tensor, or a tuple such as
    ``(x, (h0, c0))``; for a step module ``(x_t, h, c)``, see docs/c-api.md). Bidirectional
    models get sequence buffers of ``max_seq_len`` steps (default: the example's length).
    ``format``: ``w8a16`` (default), ``w16a16`` or ``float32``. ``calibration``:
    representative inputs in the form ``tinyrnn run-host`` takes (x as ``(B, T, I)``
    sequences, then any initial state) for the integer formats (without it the example input
    is used and a CalibrationWarning says so; with ``float32`` it is ignored, with a
    CalibrationIgnoredWarning). ``layer_formats``: per-layer formats of an integer export,
    ``{torch module path: "w8a16" or "w16a16"}`` (e.g. ``{"encoder.0": "w16a16"}``): those
    layers get that format's weight bits, the others ``format``'s; activations are int16 in
    both (docs/python-api.md names the layers). ``save_program``: also write the captured
    program as ``NAME.pt2`` (what ``torch.export.save`` writes) beside the C, so that
    ``tinyrnn verify``, ``report`` and ``export`` can use it afterwards. ``stream``: demand a
    NAME_step that runs one step at a time and equals NAME_run (a model with a Conv1d
    streams when every conv is causal, docs/c-api.md); otherwise raise, naming each layer
    that cannot stream and why. Returns the manifest
    as a dict; raises TinyRNNError on a model or option tinyrnn cannot export.
    """
    check_options(format, name, max_seq_len, layer_formats)  # before the capture
    exported = trace(model, example_inputs if isinstance(example_inputs, tuple)
                     else (example_inputs,))
    data = archive_bytes(exported)
    program = read_captured(data)
    options = dict(format=format, name=name, max_seq_len=max_seq_len, calibration=calibration,
                   layer_formats=layer_formats, stream=stream)
    if not save_program:
        return export_program(program, out_dir, **options)
    with output_folder(out_dir) as stage:  # the C and the program appear together or not
        manifest = export_program(program, stage, **options)
        (stage / f"{name}.pt2").write_bytes(data)
    return manifest
