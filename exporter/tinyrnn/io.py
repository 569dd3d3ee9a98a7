"""Arrays in torch's layout <-> per-sample C buffers, and the .npy/.npz file contract.

``run-host`` and ``run`` (QEMU) read X as a ``.npy`` (the single forward argument) or a ``.npz``
with ``in0, in1, ...`` (forward arguments in order, nested tuples such as (h0, c0) flattened),
and write Y.npz with ``out0, out1, ...`` (the forward's return values, flattened).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TinyRNNError
from .outputs import npz_path, output_file


def load_inputs(path: str | Path) -> list[np.ndarray]:
    """Read the forward's arguments from a .npy or .npz file."""
    path = Path(path)
    if not path.exists():
        raise TinyRNNError(f"input file {path} does not exist")
    if not path.is_file():
        raise TinyRNNError(f"input {path} is not a file; give a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises many types for a malformed file
        why = f"{type(exc).__name__}: {exc}"
        if "pickle" in str(exc):  # numpy's fallback for files without an array header
            why = "no .npy header or .npz archive; tinyrnn never unpickles a file"
        raise TinyRNNError(f"{path} is not a .npy or .npz file ({why})") from None
    if isinstance(loaded, np.ndarray):
        return [loaded]
    with loaded:
        names = sorted(loaded.files, key=lambda n: (len(n), n))
        expected = [f"in{i}" for i in range(len(names))]
        if not names or names != expected:
            raise TinyRNNError(
                f"{path} holds arrays {names}; an input .npz must hold in0, in1, ... "
                "(the forward's arguments in order)"
            )
        arrays = []
        for n in expected:
            try:
                arrays.append(loaded[n])
            except Exception as exc:  # a damaged member, or one that needs pickle
                raise TinyRNNError(f"{path}: array {n} cannot be read ({type(exc).__name__}: "
                                   f"{exc})") from None
        return arrays


def read_inputs(inputs: Any) -> list[np.ndarray]:
    """The forward's arguments: from a .npy/.npz file (a path, as :func:`load_inputs`), or
    given as one array or tensor, or a list/tuple of them in the forward's order (nested
    tuples such as ``(x, (h0, c0))`` are flattened). Shapes and values are checked later,
    against the model (:func:`split_inputs`)."""
    if isinstance(inputs, (str, os.PathLike)):
        return load_inputs(inputs)
    arrays = _flat_arrays(inputs)
    if not arrays:
        raise TinyRNNError("no input arrays given; pass the forward's arguments (an array, or "
                           "a list of arrays) or a .npy/.npz file")
    return arrays


def _flat_arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _flat_arrays(v)]
    if isinstance(value, np.ndarray):
        return [value]
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch.Tensor
        return [value.detach().cpu().numpy()]
    raise TinyRNNError(f"inputs must be a .npy/.npz path, an array or tensor, or a list/tuple "
                       f"of them (the forward's arguments in order), not "
                       f"{type(value).__name__}")


def save_outputs(path: str | Path, outputs: Sequence[np.ndarray]) -> Path:
    """Write the forward's return values as out0, out1, ... into a .npz file (``.npz`` is
    appended to a name without it, as numpy does); returns the file written. The file
    appears only complete (:mod:`tinyrnn.outputs`)."""
    target = npz_path(path)
    with output_file(target) as staged:
        np.savez(staged, **{f"out{i}": np.asarray(o) for i, o in enumerate(outputs)})
    return target


def _finite_float32(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as float32 (what the C receives), refusing NaN and Inf after the cast: a
    float64 1e300 becomes inf in float32. Large finite values are fine (the integer formats
    saturate them)."""
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(np.float32)
    bad = ~np.isfinite(cast)
    if bad.any():
        index = tuple(int(k) for k in np.argwhere(bad)[0])
        value = float(values[index])
        kind = "NaN" if np.isnan(value) else "Inf" if np.isinf(value) else "beyond float32's range"
        raise TinyRNNError(
            f"{what} has {int(bad.sum())} value(s) that are not finite in float32; the first is "
            f"{value!r} ({kind}) at sample {index[0]}"
            + (f", step {index[1]}" if what.endswith("(x)") else "")
            + "; the C takes finite float32 values only"
        )
    return cast


def _token_ids(values: np.ndarray, vocab: int, what: str) -> np.ndarray:
    """Token ids (integers, or floats that are integers) as the floats the C's float API
    takes (exact: ids are below 2**24), refusing ids outside ``0..vocab-1`` by position."""
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise TinyRNNError(f"{what} has dtype {values.dtype}; expected integers (int64)")
    with np.errstate(invalid="ignore"):
        bad = ~((values >= 0) & (values < vocab) & (np.floor(values) == values))
    if bad.any():
        index = tuple(int(k) for k in np.argwhere(bad)[0])
        raise TinyRNNError(
            f"{what} has {int(bad.sum())} value(s) that are not token ids (integers in 0.."
            f"{vocab - 1}); the first is {values[index].item()!r} at sample {index[0]}, step "
            f"{index[1]}")
    return values.astype(np.float32)


def _expected(shape: Sequence[int], batch_axis: int, time_axis: int | None) -> str:
    dims = [str(d) for d in shape]
    dims[batch_axis] = "B"
    if time_axis is not None:
        dims[time_axis] = "T"
    return "(" + ", ".join(dims) + ")"


def split_inputs(interface: dict, arrays: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Check the forward's arguments against the model and cut them into samples.

    Each sample is ``{"x": (T, I) float32, "h0": flat float32, "c0": ...}``.
    """
    specs = interface["forward_inputs"]
    if len(arrays) != len(specs):
        roles = ", ".join(s["role"] for s in specs)
        raise TinyRNNError(
            f"the model takes {len(specs)} input(s) ({roles}) but {len(arrays)} were given"
        )
    batch = None
    per_role: dict[str, np.ndarray] = {}
    for i, (spec, array) in enumerate(zip(specs, arrays)):
        array = np.asarray(array)
        want = spec["torch_shape"]
        axis, time_axis = spec["batch_axis"], spec.get("time_axis")
        shape_ok = array.ndim == len(want) and all(
            a == w for k, (a, w) in enumerate(zip(array.shape, want))
            if k not in (axis, time_axis)
        )
        if not shape_ok:
            raise TinyRNNError(
                f"input in{i} ({spec['role']}) has shape {tuple(array.shape)}; expected "
                f"{_expected(want, axis, time_axis)}"
            )
        vocab = int(spec.get("vocab", 0)) if spec["role"] == "x" else 0
        if vocab:
            array = _token_ids(array, vocab, f"input in{i} (x, token ids)")
        elif not np.issubdtype(array.dtype, np.floating):
            raise TinyRNNError(f"input in{i} ({spec['role']}) has dtype {array.dtype}; "
                               "expected floating point")
        if batch is None:
            batch = array.shape[axis]
            if batch < 1:
                raise TinyRNNError(f"input in{i} ({spec['role']}) has batch size 0; give at "
                                   "least one sequence")
        elif array.shape[axis] != batch:
            raise TinyRNNError(
                f"input in{i} has batch size {array.shape[axis]} but in0 has {batch}"
            )
        moved = np.moveaxis(array, axis, 0)
        if spec["role"] == "x":
            moved = np.moveaxis(moved, time_axis + (1 if time_axis < axis else 0), 1)
            if moved.shape[1] < 1:
                raise TinyRNNError("input x has zero time steps")
            if vocab:  # one feature per step: the id
                moved = moved[..., None]
        if spec["role"] == "carry" and np.any(array != 0):
            raise TinyRNNError(
                f"input in{i} (carry) is not zero: the C starts a step module's carried value "
                "at zero (NAME_reset) and has no setter for it yet; pass zeros")
        per_role[spec["role"]] = _finite_float32(moved, f"input in{i} ({spec['role']})")
    assert batch is not None
    samples = []
    for b in range(batch):
        sample = {"x": np.ascontiguousarray(per_role["x"][b])}
        for role in ("h0", "c0"):
            if role in per_role:
                sample[role] = np.ascontiguousarray(per_role[role][b].reshape(-1))
        samples.append(sample)
    return samples


def assemble_outputs(
    interface: dict, per_sample: Sequence[Sequence[np.ndarray]], seq_len: int
) -> list[np.ndarray]:
    """Stack per-sample C outputs into arrays in the torch forward's layout."""
    outputs = []
    batch = len(per_sample)
    for k, spec in enumerate(interface["outputs"]):
        shape = list(spec["torch_shape"])
        shape[spec["batch_axis"]] = batch
        if spec["role"] == "sequence":  # a Conv1d may have changed the input's length
            steps = per_sample[0][k].size // spec["features"] if per_sample else seq_len
            shape[spec["time_axis"]] = steps
            parts = [np.reshape(s[k], (steps, spec["features"])) for s in per_sample]
            stacked = np.stack(parts, axis=0)  # (B, T, F)
            if spec["time_axis"] < spec["batch_axis"]:
                stacked = stacked.transpose(1, 0, 2)
        elif spec["role"] == "vector":
            stacked = np.stack([np.reshape(s[k], (-1,)) for s in per_sample], axis=0)
        else:  # h_n / c_n: (rows, B, W), or a cell's (B, H)
            inner = [d for axis, d in enumerate(shape) if axis != spec["batch_axis"]]
            stacked = np.stack([np.reshape(s[k], inner) for s in per_sample],
                               axis=spec["batch_axis"])
        outputs.append(np.ascontiguousarray(stacked.reshape(shape)))
    return outputs
