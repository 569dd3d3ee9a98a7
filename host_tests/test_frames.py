"""A per-frame front-end inside a step module (issue 12 items 2 and 7): ``forward(x_t, *state)``
views ``x_t`` (B, N) as a frame (B, 1, N) and runs pads, strided convs, channel slices, square,
sqrt and cat over the samples of that frame (not over time), then an LSTMCell/GRUCell steps
once per frame. Float32: torch -> IR, the float references, and the C per frame against the
torch step module with its state carried; w8a16 and w16a16: the C against the bit-exact
reference and against torch. All models built in one host module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from c_checks import compiler_warnings
from quant_cases import first_mismatch, reference_model, reference_run, sqnr_db
from tinyrnn.api import export_program
from tinyrnn.check import evaluate, torchref
from tinyrnn.check.simulate import batch_from_arrays, run_float
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.reader import capture, read_program
from tinyrnn.ir import Carry, ChannelSlice, Concat, FrameConv1d, FramePad
from tinyrnn.numerics.helpers import TANH_MAX_ERROR
from tinyrnn.passes.lower import lower
from tinyrnn.targets.host import load_many

TOL = 1e-5
FRAMES = 24


class MiniVAD(nn.Module):
    """Silero VAD's shape, small: reflect pad, an STFT as a strided conv, the magnitude,
    strided convs that shorten the frame to one position, an LSTMCell and a k=1 conv head."""

    N, H = 12, 6

    def __init__(self):
        super().__init__()
        self.stft = nn.Conv1d(1, 10, 8, stride=4, bias=False)
        self.conv1 = nn.Conv1d(5, 6, 3, padding=1)
        self.conv2 = nn.Conv1d(6, 4, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(4, 8, 3, stride=2, padding=1)
        self.cell = nn.LSTMCell(8, self.H)
        self.head = nn.Conv1d(self.H, 1, 1)

    def forward(self, x, h, c):
        y = self.stft(F.pad(x.unsqueeze(1), (0, 4), mode="reflect"))
        y = torch.sqrt(y[:, :5] ** 2 + y[:, 5:] ** 2)
        y = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(y))))))
        h, c = self.cell(y.squeeze(-1), (h, c))
        p = torch.sigmoid(self.head(F.relu(h.unsqueeze(-1))))
        return p.squeeze(1).mean(dim=1, keepdim=True), h, c


class ContextVAD(MiniVAD):
    """MiniVAD with Silero's carried context: the last 4 samples of the frame before are
    prepended (``cat([context, x_t])``) and the new context is returned before the state."""

    N, CONTEXT = 8, 4

    def __init__(self):
        super().__init__()
        with torch.no_grad():  # a head that moves with the input, for the test to mean much
            self.head.weight.mul_(20.0)

    def forward(self, x, context, h, c):
        x = torch.cat([context, x], dim=1)
        new_context = x[:, -self.CONTEXT:]
        p, h, c = super().forward(x, h, c)
        return p, new_context, h, c


class Branchy(nn.Module):
    """Replicate and constant pads, a dilated grouped conv, two branches cat on the channel
    axis, mul, add, abs and sqrt, a GRUCell."""

    N, H = 10, 5

    def __init__(self):
        super().__init__()
        self.edge, self.fill = nn.ReplicationPad1d((2, 1)), nn.ConstantPad1d((1, 1), 0.25)
        self.a = nn.Conv1d(1, 4, 3, stride=2)
        self.b = nn.Conv1d(4, 4, 3, dilation=2, groups=2, padding=1)
        self.c = nn.Conv1d(8, 3, 5, stride=5)
        self.cell = nn.GRUCell(3, self.H)
        self.fc = nn.Linear(self.H, 2)
        with torch.no_grad():  # small y: sqrt(abs(y)) * z in another format than relu(z) + y
            self.a.weight.mul_(0.1)

    def forward(self, x, h):
        y = self.a(self.edge(x.unsqueeze(1)))
        z = self.b(self.fill(y))
        y = torch.cat([torch.sqrt(torch.abs(y)) * z, torch.relu(z) + y], dim=1)
        h = self.cell(self.c(y).squeeze(-1), h)
        return self.fc(h), h


MODELS = {"mini-vad": MiniVAD, "branchy": Branchy, "context-vad": ContextVAD}


def _states(key: str, batch: int, seed: int) -> list[np.ndarray]:
    """The forward's arguments after x_t: a zero context (the C starts it at zero), then the
    cell state, random."""
    cls = MODELS[key]
    count = 1 if key == "branchy" else 2
    rng = np.random.default_rng(seed)
    context = [np.zeros((batch, ContextVAD.CONTEXT), np.float32)] if key == "context-vad" else []
    return context + [(0.5 * rng.normal(size=(batch, cls.H))).astype(np.float32)
                      for _ in range(count)]


def _frames(key: str, batch: int, steps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(
        size=(batch, steps, MODELS[key].N)).astype(np.float32)


@pytest.fixture(scope="module")
def built():
    out = {}
    for k, (key, cls) in enumerate(MODELS.items()):
        torch.manual_seed(10 + k)
        module = cls().eval()
        example = [torch.zeros(2, cls.N)] + [torch.zeros(2, a.shape[1])
                                             for a in _states(key, 1, 0)]
        out[key] = module, capture(module, tuple(example))
    return out


INT_FORMATS = ("w8a16", "w16a16")
INT_CASES = [(key, fmt) for key in MODELS for fmt in INT_FORMATS]
MIN_SQNR_DB = {"w8a16": 25.0, "w16a16": 40.0}
"""The integer C against the torch step module, over the test's frames (the outputs move)."""


def _calibration(key: str) -> list[np.ndarray]:
    """Frames and states in the forward's form (the context zero, as the C starts it)."""
    return [_frames(key, 16, FRAMES, 100)] + _states(key, 16, 101)


@pytest.fixture(scope="module")
def compiled_all(built, tmp_path_factory):
    """Every model in float32 and in both integer formats, one host module."""
    root = tmp_path_factory.mktemp("frames")
    keys, dirs, manifests = [], [], []
    for k, (key, fmt) in enumerate([(key, "float32") for key in MODELS] + INT_CASES):
        folder = root / f"f{k}"
        manifests.append(export_program(
            built[key][1], folder, name=f"frames{k}", format=fmt,
            calibration=_calibration(key) if fmt != "float32" else None))
        keys.append((key, fmt))
        dirs.append(folder)
    return {key: (c, manifest) for key, c, manifest in zip(keys, load_many(dirs), manifests)}


@pytest.fixture(scope="module")
def compiled(compiled_all):
    return {key: compiled_all[(key, "float32")][0] for key in MODELS}


def _torch_steps(module: nn.Module, x: np.ndarray, states: list[np.ndarray]):
    """The step module called once per frame with its state carried: (B, T, F) and the
    final states."""
    state = [torch.from_numpy(s) for s in states]
    ys = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            y, *state = module(torch.from_numpy(x[:, t]), *state)
            ys.append(y.numpy())
    return np.stack(ys, axis=1), [s.numpy() for s in state]


def test_torch_to_ir_reads_the_frame_front_end(built):
    model = read_program(built["mini-vad"][1])
    assert model.step_module and model.input_size == MiniVAD.N
    pad, stft = model.layers[0], model.layers[1]
    assert pad == FramePad("reflect", 0.0, 0, 4, 1, 12)
    assert isinstance(stft, FrameConv1d) and (stft.length, stft.stride, stft.out_length) == (
        16, 4, 3)
    convs = [layer for layer in model.layers if isinstance(layer, FrameConv1d)]
    assert [(c.length, c.out_length) for c in convs] == [(16, 3), (3, 3), (3, 2), (2, 1),
                                                         (1, 1)]
    np.testing.assert_array_equal(convs[0].weight.data, built["mini-vad"][0].stft.weight
                                  .detach().numpy())


@pytest.mark.parametrize("key", list(MODELS))
def test_float32_c_equals_the_step_module_per_frame(key, built, compiled):
    """NAME_step per frame from NAME_reset, and NAME_run over the frames from a non-zero state,
    against the torch step module; the plan in numpy and the torch reference rebuilt from the
    IR (what verify runs) against it as well."""
    module, program = built[key]
    model = read_program(program)
    c = compiled[key]
    x = _frames(key, 1, FRAMES, 1)
    expected, _ = _torch_steps(module, x, [np.zeros_like(s) for s in _states(key, 1, 0)])
    state = c.new_state()
    got = np.stack([c.step(state, x[0, t]) for t in range(FRAMES)])
    np.testing.assert_allclose(got, expected[0], rtol=0, atol=TOL, err_msg="NAME_step")
    x = _frames(key, 2, FRAMES, 2)
    states = _states(key, 2, 3)
    expected, finals = _torch_steps(module, x, states)
    assert float(np.std(expected)) > 1e-3, "outputs that move, for the test to mean anything"
    outs = c.run(x[:, :, None, :].reshape(2, FRAMES, -1), *states)
    np.testing.assert_allclose(outs[0], expected, rtol=0, atol=TOL, err_msg="NAME_run y")
    for got_state, want in zip(outs[1:], finals):
        np.testing.assert_allclose(got_state, want, rtol=0, atol=TOL, err_msg="NAME_run state")
    arrays = [x] + states
    np.testing.assert_allclose(torchref.run(model, arrays)[0], expected, rtol=0, atol=1e-6,
                               err_msg="torchref")
    if key == "context-vad":  # the context: the last samples of the last frame
        np.testing.assert_array_equal(outs[1], x[:, -1, -ContextVAD.CONTEXT:])
        np.testing.assert_array_equal(torchref.run(model, arrays)[1], outs[1])
    fb = batch_from_arrays(model, arrays)
    planned = evaluate.run(lower(model, "m"), fb.x, fb.h0, fb.c0)[0]
    simulated = run_float(model, fb)[0].outputs[0]
    np.testing.assert_allclose(planned, simulated, rtol=0, atol=2.5 * TANH_MAX_ERROR,
                               err_msg="plan")
    np.testing.assert_allclose(simulated, expected, rtol=0, atol=TOL, err_msg="simulate")


@pytest.mark.parametrize(("key", "fmt"), INT_CASES, ids=[f"{k}-{f}" for k, f in INT_CASES])
def test_integer_c_equals_the_reference_and_tracks_torch(key, fmt, built, compiled_all):
    """The frame front-end in integers (frame convs through the Conv1d helpers, pads, slices,
    cat of parts in different formats, add/mul, abs/square/sqrt, the carried context):
    NAME_run from a non-zero state and NAME_step per frame from NAME_reset equal the bit-exact
    reference, which the plan evaluator equals too; the C tracks the torch step module."""
    module, program = built[key]
    c, manifest = compiled_all[(key, fmt)]
    q = reference_model(program, manifest)
    x = _frames(key, 2, FRAMES, 2)
    states = _states(key, 2, 3)
    ref_int, ref_float, batch_q, trace = reference_run(q, c.interface, [x] + states)
    planned = evaluate.run(lower(q.model, manifest["name"], q), batch_q.x, batch_q.h0,
                           batch_q.c0)
    for k, (g, r) in enumerate(zip(planned, trace.outputs)):
        assert np.array_equal(g, r), f"plan evaluator, out{k}: {first_mismatch(g, r)}"
    got = c.run(x, *states)
    for k, (g, r) in enumerate(zip(got, ref_float)):
        assert np.array_equal(g, r), f"NAME_run out{k}: {first_mismatch(g, r)}"
    outs_q = c.run_sample_q({"x": batch_q.x[1], **_state_sample(c, batch_q, 1)})
    for k, (g, r) in enumerate(zip(outs_q, ref_int)):
        want = np.reshape(np.take(r, 1, axis=c.interface["outputs"][k]["batch_axis"]), -1)
        assert np.array_equal(g, want), f"int16 API out{k}: {first_mismatch(g, want)}"
    zeros = [np.zeros_like(s) for s in states]
    _, ref_steps, _, _ = reference_run(q, c.interface, [x[:1]] + [z[:1] for z in zeros])
    state = c.new_state()
    stepped = np.stack([c.step(state, x[0, t]) for t in range(FRAMES)])
    assert np.array_equal(stepped, ref_steps[0][0]), first_mismatch(stepped, ref_steps[0][0])
    expected, _ = _torch_steps(module, x, states)
    db = sqnr_db(expected, got[0])
    print(f"{key} {fmt}: SQNR {db:.1f} dB against torch")
    assert db >= MIN_SQNR_DB[fmt], f"SQNR {db:.1f} dB < {MIN_SQNR_DB[fmt]} dB"


def _state_sample(c, batch_q, b: int) -> dict[str, np.ndarray]:
    """Sample ``b``'s int16 h0/c0 for the ``_q`` API (the context starts at zero)."""
    out = {}
    for role, value in (("h0", batch_q.h0), ("c0", batch_q.c0)):
        if value is not None:
            out[role] = value[b]
    return out


def test_the_integer_table_covers_every_frame_layer(compiled_all):
    """What the integer exports hold: frame convs, each pad mode (a constant quantized to x's
    format), cat of parts in different formats, add and mul, abs, square, sqrt, the fused
    magnitude sqrt(a^2 + b^2) (hypot), a carry."""
    kinds, moved_cat = set(), False
    for (_, fmt), (_, manifest) in compiled_all.items():
        if fmt == "float32":
            continue
        for layer in manifest["quantization"]["layers"]:
            kinds.add(layer["kind"])
            if layer["kind"] == "cat":
                moved_cat |= len({x["frac"] for x in layer["inputs"]}) > 1
    assert {"frame_conv1d", "frame_pad", "cat", "channel_slice", "add", "mul", "abs", "square",
            "sqrt", "hypot", "carry"} <= kinds, kinds
    assert moved_cat, "a cat of parts in different formats"


def test_the_context_is_carried_state_read_before_it_is_replaced(built):
    """Silero's context: a Carry layer read by the cat, replaced at the end of each step by
    the cat's last samples; a non-zero initial context is refused by name."""
    model = read_program(built["context-vad"][1])
    assert model.layers[0] == Carry(ContextVAD.CONTEXT)
    assert model.layers[1] == Concat((1, 0), (4, 8))
    assert model.carries == ((0, 3),) and model.layers[2] == ChannelSlice(8, 12, 12, (2,))
    assert [o.role for o in model.outputs] == ["sequence", "carry_n", "h_n", "c_n"]
    x = _frames("context-vad", 1, 3, 0)
    states = _states("context-vad", 1, 0)
    states[0][0, 0] = 1.0
    with pytest.raises(TinyRNNError, match=r"input in1 \(carry\) is not zero"):
        torchref.run(model, [x] + states)


def test_generated_files_carry_nothing_unused(compiled_all):
    assert compiler_warnings([c.folder / f"{c.name}.c" for c, _ in compiled_all.values()]) == []


class _Refused(nn.Module):
    def __init__(self, forward):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.cell = nn.GRUCell(4, 3)
        self.fn = forward

    def forward(self, x, h):
        return self.fn(self, x, h)


REFUSED = [
    (lambda self, x, h: (self.cell(self.conv(x.unsqueeze(1)).mean(-1), h),) * 2,
     ["aten.mean.dim", "a mean over an axis longer than 1"]),
    (lambda self, x, h: self.conv(x.unsqueeze(1)).squeeze(1)[:, :3],
     ["a step module whose frame front-end feeds no cell"]),
]


@pytest.mark.parametrize("forward, phrases", REFUSED, ids=["long-mean", "no-cell"])
def test_forms_tinyrnn_cannot_export_are_named(forward, phrases):
    with pytest.raises(TinyRNNError) as info:
        read_program(capture(_Refused(forward).eval(), (torch.zeros(2, 6), torch.zeros(2, 3))))
    for phrase in phrases:
        assert phrase in str(info.value), (phrase, str(info.value))
