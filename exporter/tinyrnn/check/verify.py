"""``tinyrnn verify``: run torch and the exported C on the same input and compare."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import check_number
from ..errors import TinyRNNError
from ..frontend.pt2 import Program
from ..frontend.reader import load_program, read_program
from ..io import read_inputs, split_inputs
from ..targets.host import load, read_manifest
from . import torchref
from .metrics import sqnr_db

DEFAULT_TOLERANCE = {"float32": 1e-5}


def torch_outputs(program: Program, inputs: list[np.ndarray], interface: dict
                  ) -> list[np.ndarray]:
    """The model's outputs computed by torch's own modules rebuilt from the IR
    (:mod:`tinyrnn.check.torchref`): no code from the archive runs, and any batch size and sequence
    length works."""
    return torchref.run(read_program(program, interface.get("max_seq_len")), inputs)


def _where(spec: dict, flat_index: int, shape: tuple[int, ...]) -> dict:
    """Sample, step and feature of an element of an output in torch layout."""
    pos = np.unravel_index(flat_index, shape)
    out = {"index": [int(v) for v in pos], "sample": int(pos[spec["batch_axis"]])}
    if spec["role"] == "sequence":
        out["step"] = int(pos[spec["time_axis"]])
    out["feature"] = int(pos[-1])
    return out


def _layer_name(layer: Any, index: int) -> str:
    from ..ir import (
        Activation,
        Binary,
        Carry,
        ChannelSlice,
        Concat,
        Conv1d,
        Dense,
        Embedding,
        FrameConv1d,
        FramePad,
        Hypot,
        PadTime,
        PoolTime,
        PoolWindow,
        RecurrentLayer,
        SelectStep,
    )

    if isinstance(layer, RecurrentLayer):
        return f"layer {index}: {layer.kind} {layer.module or 'rnn'} layer {layer.layer}"
    if isinstance(layer, Dense):
        return f"layer {index}: Linear {layer.name}"
    if isinstance(layer, Embedding):
        return f"layer {index}: Embedding {layer.name}"
    if isinstance(layer, Conv1d):
        return f"layer {index}: Conv1d {layer.name}"
    if isinstance(layer, Activation):
        return f"layer {index}: {layer.kind}"
    if isinstance(layer, PoolWindow):
        return f"layer {index}: {'MaxPool1d' if layer.kind == 'max' else 'AvgPool1d'} {layer.name}"
    if isinstance(layer, PadTime):
        return f"layer {index}: {layer.mode} padding of the time axis {layer.name}".rstrip()
    if isinstance(layer, FrameConv1d):
        return f"layer {index}: Conv1d {layer.name} (over each frame)"
    if isinstance(layer, FramePad):
        return f"layer {index}: {layer.mode} padding of each frame"
    if isinstance(layer, Binary):
        return f"layer {index}: {layer.kind} of values {layer.reads[0]} and {layer.reads[1]}"
    if isinstance(layer, Concat):
        return f"layer {index}: cat of values {', '.join(map(str, layer.reads))}"
    if isinstance(layer, ChannelSlice):
        return f"layer {index}: channels {layer.start}:{layer.stop}"
    if isinstance(layer, Carry):
        return f"layer {index}: carried value"
    if isinstance(layer, Hypot):
        return f"layer {index}: magnitude sqrt(a^2 + b^2)"
    if isinstance(layer, PoolTime):
        return f"layer {index}: {layer.kind} over time"
    assert isinstance(layer, SelectStep), type(layer).__name__
    return f"layer {index}: time step {layer.index}"


def _states(q: Any, index: int, recorded: dict, output: np.ndarray, numerics: Any) -> list[dict]:
    """A recurrent layer's states: format, the largest |value| on the verify input (the float
    model's) and in the calibration data (the manifest's record)."""
    from ..passes.quantize import QGRULayer, QLSTMLayer, QRNNLayer

    layer = q.layers[index]
    if not isinstance(layer, (QLSTMLayer, QGRULayer, QRNNLayer)):
        return []
    peak = float(np.abs(output).max()) if output.size else 0.0
    states = [dict(state="h", format=str(layer.h), bits=layer.h.bits, observed_max_abs=peak,
                   calibration_max_abs=recorded.get("observed_max_abs"))]
    if isinstance(layer, QLSTMLayer):
        states.append(dict(
            state="c", format=str(layer.c), bits=layer.c.bits,
            observed_max_abs=float(numerics.max_cell.get(index, 0.0)),
            calibration_max_abs=recorded.get("cell_observed_max_abs"),
            calibration_median_unit_max_abs=recorded.get("cell_observed_median_unit_max_abs")))
    return states


def _fmt_db(v: float) -> str:
    return "inf" if v == math.inf else f"{v:.1f}"


def verify(model_path: str | Path, model_dir: str | Path, inputs: Any,
           tolerance: float | None = None) -> dict:
    """Compare the exported C with torch (and, for integer formats, with the bit-exact
    reference) output by output; returns a report dict with ``lines`` to print and ``ok``.
    ``inputs``: a .npy/.npz path or the arrays (:func:`tinyrnn.io.read_inputs`)."""
    check_number("--tolerance", tolerance, minimum=0.0)
    manifest = read_manifest(model_dir)
    inputs = read_inputs(inputs)
    split_inputs(manifest["interface"], inputs)  # bad input fails before the model loads
    program = load_program(model_path)
    model = read_program(program, manifest["interface"].get("max_seq_len"))
    if manifest["format"] == "float32":
        return _verify_float(manifest, model, inputs, model_dir, model_path, tolerance)
    return _verify_integer(manifest, model, inputs, model_dir, model_path)


def _run_both(manifest, model, inputs, model_dir, model_path):
    compiled = load(model_dir)
    c_out = compiled.run(*inputs)
    t_out = torchref.run(model, inputs)
    if len(c_out) != len(t_out):
        raise TinyRNNError(
            f"the C returns {len(c_out)} outputs but the model returns {len(t_out)}; was "
            f"{model_dir} exported from {model_path}?"
        )
    for i, (c, t) in enumerate(zip(c_out, t_out)):
        if c.shape != t.shape:
            raise TinyRNNError(f"out{i}: C shape {c.shape} differs from torch {t.shape}")
    return c_out, t_out


def _verify_float(manifest, model, inputs, model_dir, model_path, tolerance) -> dict:
    c_out, t_out = _run_both(manifest, model, inputs, model_dir, model_path)
    tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE[manifest["format"]]
    lines = [f"{manifest['name']} ({manifest['format']}) against torch, tolerance {tol:g}:"]
    outputs = []
    ok = True
    for i, (c, t) in enumerate(zip(c_out, t_out)):
        err = float(np.max(np.abs(c.astype(np.float64) - t))) if c.size else 0.0
        passed = err <= tol
        ok &= passed
        db = sqnr_db(t, c)
        outputs.append(dict(index=i, shape=list(c.shape), max_abs_error=err, ok=passed,
                            sqnr_db=db))
        lines.append(f"  out{i} {tuple(c.shape)}: max abs error {err:.3g}, SQNR "
                     f"{_fmt_db(db)} dB {'ok' if passed else 'FAIL'}")
    lines.append("PASS" if ok else "FAIL: the C output differs from torch beyond the tolerance")
    return dict(model=manifest["name"], format=manifest["format"], tolerance=tol,
                outputs=outputs, ok=ok, lines=lines)


def _verify_integer(manifest, model, inputs, model_dir, model_path) -> dict:
    from ..backend.render import weights_hash
    from ..io import assemble_outputs
    from ..passes.quantize import formats_from_manifest, quantize
    from . import reference
    from .simulate import batch_from_arrays, run_float

    if weights_hash(model) != manifest.get("weights_sha256"):
        raise TinyRNNError(
            f"{model_dir} was not exported from {model_path} (the weights differ); export "
            "it again or pass the matching model"
        )
    if "quantization" not in manifest:
        raise TinyRNNError(f"{model_dir}'s manifest has no quantization section; re-export it")
    q = quantize(model, manifest["format"], formats_from_manifest(model,
                                                                  manifest["quantization"]))
    c_out, t_out = _run_both(manifest, model, inputs, model_dir, model_path)
    interface = manifest["interface"]
    batch = batch_from_arrays(model, inputs)
    trace = reference.run(q, reference.quantize_batch(q, batch))
    steps = batch.x.shape[1]

    def torch_layout(values: list[np.ndarray]) -> list[np.ndarray]:
        per_sample = [[np.reshape(v[b], -1) for v in values] for b in range(batch.size)]
        return assemble_outputs(interface, per_sample, steps)

    ref_int = torch_layout(trace.outputs)
    ref_out = torch_layout([reference.dequantize(q, k, v) for k, v in enumerate(trace.outputs)])
    fmts = [fmts for _, fmts, _ in q.output_row_formats()]
    lines = [f"{manifest['name']} ({manifest['format']}): the C against the bit-exact "
             "reference, and against torch:"]
    outputs = []
    ok = True
    for i, (c, t, ref_q, ref_f) in enumerate(zip(c_out, t_out, ref_int, ref_out)):
        spec = interface["outputs"][i]
        exact = bool(np.array_equal(c, ref_f))
        entry: dict = dict(index=i, role=spec["role"], shape=list(c.shape), bit_exact=exact)
        if not exact:
            ok = False
            diff = np.flatnonzero(c.reshape(-1) != ref_f.reshape(-1))
            k = int(diff[0])
            where = _where(spec, k, c.shape)
            frac = fmts[i][0].frac if len(fmts[i]) == 1 else None
            c_int = (int(np.ldexp(np.float64(c.reshape(-1)[k]), frac)) if frac is not None
                     else None)
            entry["first_mismatch"] = dict(
                where, c=float(c.reshape(-1)[k]), reference=float(ref_f.reshape(-1)[k]),
                c_int=c_int, reference_int=int(ref_q.reshape(-1)[k]),
                mismatches=int(diff.size))
        err = float(np.max(np.abs(c.astype(np.float64) - t))) if c.size else 0.0
        db = sqnr_db(t, c)
        entry.update(sqnr_db=db, max_abs_error=err)
        outputs.append(entry)
        head = f"  out{i} {spec['role']} {tuple(c.shape)}: bit-exact "
        if exact:
            head += "yes"
        else:
            m = entry["first_mismatch"]
            step = f", step {m['step']}" if "step" in m else ""
            ints = (f" (int16 {m['c_int']} vs {m['reference_int']})"
                    if m["c_int"] is not None else f" (reference int16 {m['reference_int']})")
            head += (f"NO, {m['mismatches']} element(s) differ; first at index {m['index']} "
                     f"(sample {m['sample']}{step}, feature {m['feature']}): C {m['c']:.6g}, "
                     f"reference {m['reference']:.6g}{ints}")
        lines.append(head)
        lines.append(f"      against torch: SQNR {_fmt_db(db)} dB, max abs error {err:.3g}")
    float_trace, float_numerics = run_float(model, batch)
    layers = []
    lines.append("per layer, the reference against the float model (SQNR of the layer's output):")
    for index, (lf, li) in enumerate(zip(float_trace.layers, trace.layers)):
        value = reference.dequantize_layer(q, index, li)
        db = sqnr_db(lf, value)
        err = float(np.max(np.abs(value - lf))) if lf.size else 0.0
        name = _layer_name(model.layers[index], index)
        fmt = str(q.out_format(index))
        bits = q.layer_bits(index)
        entry = dict(index=index, layer=name, format=fmt, sqnr_db=db, max_abs_error=err,
                     weight_bits=bits)
        weights = f", {bits}-bit weights" if bits is not None else ""
        lines.append(f"  {name} ({fmt}{weights}): SQNR {_fmt_db(db)} dB, max abs error "
                     f"{err:.3g}")
        states = _states(q, index, manifest["quantization"]["layers"][index], lf,
                         float_numerics)
        if states:
            entry["states"] = states
            lines.append("      states: " + "; ".join(
                f"{st['state']} {st['format']} ({st['bits']}-bit), |{st['state']}| <= "
                f"{st['observed_max_abs']:.4g} here"
                + (f", <= {st['calibration_max_abs']:.4g} in calibration"
                   if st.get("calibration_max_abs") is not None else "")
                + (f" (median unit {st['calibration_median_unit_max_abs']:.4g})"
                   if st.get("calibration_median_unit_max_abs") is not None else "")
                for st in states))
        layers.append(entry)
    lines.append("PASS: the C equals the reference on every element" if ok else
                 "FAIL: the C differs from the bit-exact reference")
    return dict(model=manifest["name"], format=manifest["format"], outputs=outputs,
                layers=layers, ok=ok, lines=lines)
