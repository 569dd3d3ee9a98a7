"""Inputs and helpers shared by the fixed-point tests (w8a16, w16a16).

Test inputs are N(0,1) sequences; initial states are states the model reaches (its final state
after a random warm-up sequence). Calibration data is drawn separately from the test data,
with other seeds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from models import Case, flat_numpy
from tinyrnn.check import reference
from tinyrnn.check.simulate import batch_from_arrays
from tinyrnn.frontend.reader import read_program
from tinyrnn.io import assemble_outputs
from tinyrnn.passes.quantize import QModel, formats_from_manifest, quantize

FORMATS = ("w8a16", "w16a16")
MIN_SQNR_DB = {"w8a16": 38.0, "w16a16": 60.0}
SEQ_LEN = 24


def random_inputs(case: Case, model: torch.nn.Module, args: tuple, batch: int, steps: int,
                  seed: int) -> list[np.ndarray]:
    """Forward arguments in the layout of ``args`` with new batch and sequence sizes.

    x is N(0, 1). Initial states are states the model reaches: its final (h_n, c_n) after a
    random N(0, 1) warm-up sequence of 12 steps, as when a stream is fed in chunks.
    """
    gen = torch.Generator().manual_seed(seed)
    arrays = flat_numpy(args)
    shape = list(arrays[0].shape)
    b_axis, t_axis = (0, 1) if case.batch_first else (1, 0)
    shape[b_axis], shape[t_axis] = batch, steps
    out = [torch.randn(*shape, generator=gen)]
    if len(arrays) > 1:
        shape[t_axis] = 12
        with torch.no_grad():
            _, state = model.rnn(torch.randn(*shape, generator=gen))
        out += list(state) if isinstance(state, tuple) else [state]
    return [t.numpy() for t in out]


def torch_call(model: torch.nn.Module, args: tuple, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` on flat arrays in the nesting of ``args``."""
    _, spec = torch.utils._pytree.tree_flatten(args)
    nested = torch.utils._pytree.tree_unflatten([torch.from_numpy(a) for a in arrays], spec)
    with torch.no_grad():
        return flat_numpy(model(*nested))


def reference_model(program, manifest: dict) -> QModel:
    """The QModel the export wrote, rebuilt from the program and the manifest's formats."""
    model = read_program(program, manifest["interface"].get("max_seq_len"))
    return quantize(model, manifest["format"],
                    formats_from_manifest(model, manifest["quantization"]))


def reference_outputs(q: QModel, interface: dict, arrays: list[np.ndarray]
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The reference's outputs in torch layout: (integers, floats as the float API returns)."""
    ints, floats, _, _ = reference_run(q, interface, arrays)
    return ints, floats


def reference_run(q: QModel, interface: dict, arrays: list[np.ndarray]):
    """:func:`reference_outputs`, and the int16 inputs and the reference's trace."""
    batch = batch_from_arrays(q.model, arrays)
    batch_q = reference.quantize_batch(q, batch)
    trace = reference.run(q, batch_q)
    steps = batch.x.shape[1]

    def layout(values):
        per_sample = [[np.reshape(v[b], -1) for v in values] for b in range(batch.size)]
        return assemble_outputs(interface, per_sample, steps)

    floats = [reference.dequantize(q, k, v) for k, v in enumerate(trace.outputs)]
    return layout(trace.outputs), layout(floats), batch_q, trace


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    err = np.asarray(got, dtype=np.float64) - ref
    noise = float(np.sum(err * err))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref * ref)) / noise)


def first_mismatch(got: np.ndarray, want: np.ndarray) -> str:
    """Where two arrays first differ: index and both values (for assertion messages)."""
    diff = np.argwhere(got != want)
    if not len(diff):
        return "equal"
    idx = tuple(int(v) for v in diff[0])
    return f"{len(diff)} differ; first at {idx}: C {got[idx]!r}, reference {want[idx]!r}"
