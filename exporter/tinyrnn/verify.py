"""``tinyrnn verify``: run torch and the exported C on the same input and compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import TinyRNNError
from .frontend import load_program
from .host import load, read_manifest
from .io import load_inputs

DEFAULT_TOLERANCE = {"float32": 1e-5}


def _call(program: torch.export.ExportedProgram, inputs: list[np.ndarray]) -> list[np.ndarray]:
    tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in inputs]
    args, kwargs = torch.utils._pytree.tree_unflatten(tensors, program.call_spec.in_spec)
    with torch.no_grad():
        result = program.module()(*args, **kwargs)
    flat, _ = torch.utils._pytree.tree_flatten(result)
    return [t.detach().numpy() for t in flat]


def torch_outputs(
    program: torch.export.ExportedProgram, inputs: list[np.ndarray], interface: dict
) -> list[np.ndarray]:
    """Run the exported program; returns its flattened outputs as numpy arrays.

    A program exported with a static batch size B runs the input in chunks of B (the last
    chunk padded by repeating its last sample), so any batch can be verified.
    """
    specs = interface["forward_inputs"]
    batch = inputs[0].shape[specs[0]["batch_axis"]]
    static = specs[0]["torch_shape"][specs[0]["batch_axis"]]
    try:
        return _call(program, inputs)
    except Exception as exc:
        if batch == static:
            raise TinyRNNError(
                f"torch could not run the model on this input ({type(exc).__name__}: {exc})"
            ) from None
    chunks = []
    for start in range(0, batch, static):
        idx = np.minimum(np.arange(start, start + static), batch - 1)
        part = [np.take(a, idx, axis=s["batch_axis"]) for a, s in zip(inputs, specs)]
        try:
            chunks.append(_call(program, part))
        except Exception as exc:
            raise TinyRNNError(
                f"torch could not run the model on this input ({type(exc).__name__}: {exc}); "
                "was it exported for another sequence length? Export with "
                "torch.export.Dim dynamic shapes to verify other lengths"
            ) from None
    outputs = []
    for k, spec in enumerate(interface["outputs"]):
        axis = spec["batch_axis"]
        joined = np.concatenate([c[k] for c in chunks], axis=axis)
        outputs.append(np.take(joined, np.arange(batch), axis=axis))
    return outputs


def verify(model_path: str | Path, model_dir: str | Path, input_path: str | Path,
           tolerance: float | None = None) -> dict:
    """Compare torch and the C output by output; returns a report dict."""
    manifest = read_manifest(model_dir)
    program = load_program(model_path)
    inputs = load_inputs(input_path)
    compiled = load(model_dir)
    c_out = compiled.run(*inputs)
    t_out = torch_outputs(program, inputs, manifest["interface"])
    if len(c_out) != len(t_out):
        raise TinyRNNError(
            f"the C returns {len(c_out)} outputs but the model returns {len(t_out)}; was "
            f"{model_dir} exported from {model_path}?"
        )
    tol = tolerance if tolerance is not None else DEFAULT_TOLERANCE[manifest["format"]]
    lines = [f"{manifest['name']} ({manifest['format']}) against torch, tolerance {tol:g}:"]
    outputs = []
    ok = True
    for i, (c, t) in enumerate(zip(c_out, t_out)):
        if c.shape != t.shape:
            raise TinyRNNError(f"out{i}: C shape {c.shape} differs from torch {t.shape}")
        err = float(np.max(np.abs(c.astype(np.float64) - t))) if c.size else 0.0
        passed = err <= tol
        ok &= passed
        outputs.append(dict(index=i, shape=list(c.shape), max_abs_error=err, ok=passed))
        lines.append(f"  out{i} {tuple(c.shape)}: max abs error {err:.3g} "
                     f"{'ok' if passed else 'FAIL'}")
    lines.append("PASS" if ok else "FAIL: the C output differs from torch beyond the tolerance")
    return dict(model=manifest["name"], format=manifest["format"], tolerance=tol,
                outputs=outputs, ok=ok, lines=lines)
