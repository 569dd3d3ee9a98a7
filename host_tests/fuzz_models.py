"""Random models and random inputs for the property tests (``test_fuzz.py``, ``bench/fuzz.py``).

:func:`specs` draws a model with hypothesis: cell (RNN tanh/relu, LSTM, LSTM with projection,
GRU), input and hidden sizes, layers, direction, layout, bias, initial state, a head, and the
number format. :func:`check_batch` exports a batch of them, compiles them in one host module,
draws inputs for each and checks the contract of every C entry point:

- integer formats, float API (``NAME_run``): the C equals the bit-exact reference on inputs
  with NaN, +-Inf, +-FLT_MAX, +-FLT_MIN, denormals and -0 planted among normal values; the
  reference's conversion (:func:`tinyrnn.check.reference.quantize_batch`) is the specification:
  NaN -> 0, +-Inf and out-of-range values saturate, denormals round to 0;
- integer formats, int16 API (``NAME_run_q``, ``NAME_step_q``): the C equals the reference on
  int16 inputs and states with -32768 and 32767 planted;
- float32: ``NAME_run`` against torch in float32 on the same inputs, special values included:
  NaN exactly where torch has NaN, +-Inf exactly where torch has +-Inf, and elsewhere within
  ``1e-5 + 1e-4 * scale`` (scale: the largest finite |value| of that output), since both
  compute in IEEE-754 binary32 and neither converts a float to an integer;
- every format: the same models under AddressSanitizer and UBSan (:mod:`sanitize`), driven by
  random calls with the same kinds of values, with no finding, and their probes equal to the
  host build (bit for bit for integer formats; float32: equal values, NaN's sign and payload
  aside).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st
from torch import nn

from models import recurrent_module
from sanitize import Probe, Target, sanitize
from tinyrnn.api import export_program
from tinyrnn.check import reference
from tinyrnn.check.simulate import Batch
from tinyrnn.frontend.reader import capture, read_program
from tinyrnn.io import assemble_outputs
from tinyrnn.passes.quantize import formats_from_manifest, quantize
from tinyrnn.targets.host import load_many

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru")
HEADS = ("none", "linear_seq", "softmax_last", "log_softmax_first", "tanh_seq",
         "relu_sigmoid_last")
FORMATS = ("float32", "w8a16", "w16a16")
F32 = np.finfo(np.float32)
SPECIAL_FLOATS = np.array([np.nan, np.inf, -np.inf, F32.max, -F32.max, F32.tiny, -F32.tiny,
                           F32.smallest_subnormal, -F32.smallest_subnormal, -0.0, 1e30,
                           -1e30], dtype=np.float32)
INT16_EXTREMES = np.array([-32768, 32767, -1, 0, 1], dtype=np.int16)


@dataclass(frozen=True)
class Spec:
    cell: str
    input_size: int
    hidden: int
    proj: int
    layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    initial_state: bool
    head: str
    fmt: str
    seq_len: int  # of the example input: the sequence capacity of bidirectional models


@st.composite
def specs(draw) -> Spec:
    """One random model."""
    cell = draw(st.sampled_from(CELLS))
    hidden = draw(st.integers(2 if cell == "lstm_proj" else 1, 12))
    proj = draw(st.integers(1, hidden - 1)) if cell == "lstm_proj" else 0
    return Spec(cell=cell, input_size=draw(st.integers(1, 7)), hidden=hidden, proj=proj,
                layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
                batch_first=draw(st.booleans()), bias=draw(st.booleans()),
                initial_state=draw(st.booleans()), head=draw(st.sampled_from(HEADS)),
                fmt=draw(st.sampled_from(FORMATS)), seq_len=draw(st.integers(1, 9)))


class Net(nn.Module):
    """The recurrent module of ``spec`` and its head."""

    def __init__(self, spec: Spec):
        super().__init__()
        self.rnn = recurrent_module(spec.cell, spec.input_size, spec.hidden, spec.proj,
                                    num_layers=spec.layers, bias=spec.bias,
                                    batch_first=spec.batch_first,
                                    bidirectional=spec.bidirectional)
        width = (spec.proj or spec.hidden) * (2 if spec.bidirectional else 1)
        self.fc1 = nn.Linear(width, 5)
        self.fc2 = nn.Linear(5, 3)
        self.spec = spec

    def _step(self, y: torch.Tensor, index: int) -> torch.Tensor:
        return y[:, index] if self.spec.batch_first else y[index]

    def forward(self, x, state=None):
        out = self.rnn(x, state)
        y = out[0]
        head = self.spec.head
        if head == "none":
            return out
        if head == "linear_seq":
            return self.fc1(y)
        if head == "softmax_last":
            return torch.softmax(self.fc2(torch.relu(self.fc1(self._step(y, -1)))), dim=-1)
        if head == "log_softmax_first":
            return torch.log_softmax(self.fc1(self._step(y, 0)), dim=-1)
        if head == "tanh_seq":
            return torch.tanh(self.fc2(self.fc1(y)))
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(self._step(y, -1)))))


def example_args(spec: Spec, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    shape = (2, spec.seq_len, spec.input_size) if spec.batch_first else (
        spec.seq_len, 2, spec.input_size)
    x = torch.randn(*shape, generator=gen)
    if not spec.initial_state:
        return (x,)
    rows = spec.layers * (2 if spec.bidirectional else 1)
    h0 = 0.5 * torch.randn(rows, 2, spec.proj or spec.hidden, generator=gen)
    if spec.cell.startswith("lstm"):
        return (x, (h0, 0.5 * torch.randn(rows, 2, spec.hidden, generator=gen)))
    return (x, h0)


@dataclass
class Exported:
    spec: Spec
    model: Net
    program: object
    directory: Path
    compiled: object = None

    @property
    def interface(self) -> dict:
        return self.compiled.interface


def export_batch(batch: list[Spec], root: Path, seed: int) -> list[Exported]:
    """Build, capture, export (calibrated on 8 random sequences) and compile every spec."""
    out = []
    for k, spec in enumerate(batch):
        torch.manual_seed(seed + k)
        model = Net(spec).eval()
        args = example_args(spec, seed + k)
        program = capture(model, args)
        name = f"f{k}_{spec.fmt}"
        calibration = None
        if spec.fmt != "float32":  # other random sequences than the example
            flat, _ = torch.utils._pytree.tree_flatten(example_args(spec, seed + 1000 + k))
            calibration = [t.numpy() for t in flat]
        export_program(program, root / name, name=name, format=spec.fmt,
                       calibration=calibration)
        out.append(Exported(spec, model, program, root / name))
    for item, compiled in zip(out, load_many([e.directory for e in out])):
        item.compiled = compiled
    return out


# ---------------------------------------------------------------------------------------------
# Inputs, drawn per model: one sample in the C's per-sample layout


def _plant(data, array: np.ndarray, values: np.ndarray, most: int) -> np.ndarray:
    """``array`` with up to ``most`` elements replaced by drawn ``values``."""
    flat = array.reshape(-1).copy()
    count = data.draw(st.integers(0, min(most, flat.size)), label="planted")
    for _ in range(count):
        at = data.draw(st.integers(0, flat.size - 1), label="at")
        flat[at] = data.draw(st.sampled_from(list(values)), label="value")
    return flat.reshape(array.shape)


def draw_sample(data, item: Exported, quantized: bool) -> dict[str, np.ndarray]:
    """``{"x": (T, I), "h0": ..., "c0": ...}``: float32 with special values planted, or int16
    with the extremes planted (``quantized``)."""
    api = item.interface
    cap = api.get("max_seq_len") or 12
    steps = data.draw(st.integers(1, cap), label="T")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    shapes = {"x": (steps, api["input_size"])}
    for spec in api["forward_inputs"]:
        if spec["role"] in ("h0", "c0"):
            shapes[spec["role"]] = (spec["size"],)
    sample = {}
    for role, shape in shapes.items():
        if quantized:
            base = rng.integers(-32768, 32768, size=shape).astype(np.int16)
            sample[role] = _plant(data, base, INT16_EXTREMES, 6)
        else:
            scale = data.draw(st.sampled_from([0.01, 1.0, 4.0, 1e3]), label="scale")
            base = (scale * rng.normal(size=shape)).astype(np.float32)
            sample[role] = _plant(data, base, SPECIAL_FLOATS, 3)
    return sample


# ---------------------------------------------------------------------------------------------
# The checks


def _qmodel(item: Exported):
    manifest = item.compiled.manifest
    model = read_program(item.program, manifest["interface"].get("max_seq_len"))
    return quantize(model, manifest["format"], formats_from_manifest(model,
                                                                      manifest["quantization"]))


def _batch(sample: dict[str, np.ndarray]) -> Batch:
    return Batch(sample["x"][None], *(sample[r][None] if r in sample else None
                                      for r in ("h0", "c0")))


def first_difference(got: np.ndarray, want: np.ndarray) -> str:
    """How two arrays differ (NaN equals NaN): the count and the first index."""
    got, want = np.asarray(got).reshape(-1), np.asarray(want).reshape(-1)
    same = got == want
    if got.dtype.kind == "f":
        same |= np.isnan(got) & np.isnan(want)
    bad = np.flatnonzero(~same)
    if not bad.size:
        return "equal"
    k = int(bad[0])
    return f"{bad.size} differ; first at {k}: C {got[k]!r}, want {want[k]!r}"


def check_integer(data, item: Exported) -> None:
    """The float API (special values) and the int16 API (extremes) against the reference."""
    q = _qmodel(item)
    c = item.compiled
    sample = draw_sample(data, item, quantized=False)
    trace = reference.run(q, reference.quantize_batch(q, _batch(sample)))
    want = [reference.dequantize(q, k, v)[0].reshape(-1) for k, v in enumerate(trace.outputs)]
    for k, (g, w) in enumerate(zip(c.run_sample(sample), want, strict=True)):
        assert np.array_equal(g, w), f"{c.name} float API out{k}: {first_difference(g, w)}"
    sample_q = draw_sample(data, item, quantized=True)
    batch_q = _batch({k: v.astype(np.int64) for k, v in sample_q.items()})
    trace = reference.run(q, batch_q)
    for k, (g, w) in enumerate(zip(c.run_sample_q(sample_q), trace.outputs, strict=True)):
        w = w[0].reshape(-1)
        assert np.array_equal(g, w), f"{c.name} int16 API out{k}: {first_difference(g, w)}"
    if c.interface["has_step"]:
        steps = reference.run(q, batch_q, all_steps=True).outputs[0][0]
        state = c.new_state()
        if "h0" in sample_q:
            args = [c.ffi.from_buffer("int16_t[]", np.ascontiguousarray(sample_q[a]))
                    for a in c.interface["set_state_args"]]
            c._check(c._fn("set_state_q")(state, *args), "set_state_q")
        got = np.stack([c.step_q(state, x_t) for x_t in sample_q["x"]])
        assert np.array_equal(got, steps.reshape(got.shape)), (
            f"{c.name} step_q: {first_difference(got, steps.reshape(got.shape))}")


def _torch_layout(item: Exported, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The sample as the torch forward's flat arguments (batch 1)."""
    arrays = []
    for spec in item.interface["forward_inputs"]:
        value = sample[spec["role"]]
        if spec["role"] == "x":
            value = value[None] if item.spec.batch_first else value[:, None]
        else:
            value = value.reshape(spec["torch_shape"][0], 1, -1)
        arrays.append(value)
    return arrays


def check_float(data, item: Exported) -> None:
    """The float API of a float32 export against torch, special values included."""
    c = item.compiled
    sample = draw_sample(data, item, quantized=False)
    arrays = _torch_layout(item, sample)
    args = (torch.from_numpy(arrays[0]),)
    if len(arrays) == 2:
        args += (torch.from_numpy(arrays[1]),)
    elif len(arrays) == 3:
        args += ((torch.from_numpy(arrays[1]), torch.from_numpy(arrays[2])),)
    with torch.no_grad():
        expected = [t.numpy() for t in torch.utils._pytree.tree_flatten(item.model(*args))[0]]
    got = assemble_outputs(c.interface, [c.run_sample(sample)], sample["x"].shape[0])
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        g, e = g.reshape(-1), e.reshape(-1)
        where = f"{c.name} ({item.spec}) out{k}"
        assert np.array_equal(np.isnan(g), np.isnan(e)), f"{where}: NaN where torch has none " \
            f"or the reverse: C {g}, torch {e}"
        inf = np.isinf(e)
        assert np.array_equal(g[inf], e[inf]) and not np.isinf(g[~inf]).any(), (
            f"{where}: Inf differs: C {g}, torch {e}")
        finite = np.isfinite(e)
        scale = float(np.max(np.abs(e[finite]))) if finite.any() else 0.0
        err = np.abs(g[finite].astype(np.float64) - e[finite])
        assert (err <= 1e-5 + 1e-4 * scale).all(), (
            f"{where}: max error {err.max():.3g} at scale {scale:.3g}")


def sanitizer_targets(items: list[Exported], steps: int, seed: int) -> list[Target]:
    """The batch for :func:`sanitize.sanitize`: a special-float probe and (integer formats)
    an int16 probe per model, from seeded generators."""
    rng = np.random.default_rng(seed)
    targets = []
    for k, item in enumerate(items):
        api = item.interface
        T = min(api.get("max_seq_len") or 12, 12)
        xf = rng.normal(size=(T, api["input_size"])).astype(np.float32)
        xf.flat[rng.choice(xf.size, size=min(3, xf.size), replace=False)] = rng.choice(
            SPECIAL_FLOATS, size=min(3, xf.size))
        probes = [Probe(xf)]
        if item.spec.fmt != "float32":
            xq = rng.integers(-32768, 32768, size=(T, api["input_size"])).astype(np.int16)
            xq.flat[: min(2, xq.size)] = INT16_EXTREMES[: min(2, xq.size)]
            probes.append(Probe(xq))
        targets.append(Target(item.directory, item.compiled.manifest, steps, probes,
                              seed=seed + k))
    return targets


def check_sanitized(items: list[Exported], work: Path, steps: int, seed: int) -> int:
    """Run the batch under the sanitizers; the probes must equal the host build bit for bit.
    Returns the time steps run."""
    targets = sanitizer_targets(items, steps, seed)
    result = sanitize(targets, work, batches=1)
    for target, item in zip(targets, items, strict=True):
        c = item.compiled
        for probe, got in zip(target.probes, result.probes[target.name], strict=True):
            host = (c.run_sample_q({"x": probe.x}) if probe.x.dtype == np.int16
                    else c.run_sample({"x": probe.x}))
            for k, (g, h) in enumerate(zip(got, host, strict=True)):
                # integer formats: the same bits. float32: the same values; a NaN's sign and
                # payload depend on operand order, which -O0 and -O2 may choose differently
                same = (np.array_equal(g, h, equal_nan=True) if item.spec.fmt == "float32"
                        else g.tobytes() == h.tobytes())
                assert same, (f"{c.name} out{k}, sanitized build vs host build: "
                              f"{first_difference(g, h)}")
    return sum(result.steps.values())


def batch_seed(batch: list[Spec]) -> int:
    """The weights' seed, a function of the drawn specs: a replayed example (hypothesis
    shrinking, or a rerun) gets the same weights."""
    return zlib.crc32(repr(batch).encode()) % 1_000_000


def check_batch(batch: list[Spec], data, root: Path, sanitizer_steps: int) -> int:
    """Every check above on one batch of drawn models; returns the sanitizer steps run."""
    seed = batch_seed(batch)
    items = export_batch(batch, root, seed)
    for item in items:
        if item.spec.fmt == "float32":
            check_float(data, item)
        else:
            check_integer(data, item)
    return check_sanitized(items, root / "sanitize", sanitizer_steps, seed)
