"""A per-frame front-end inside a step module (issue 12 items 2 and 7): ``forward(x_t, *state)``
views ``x_t`` (B, N) as a frame (B, 1, N) and runs pads, strided convs, channel slices, square,
sqrt and cat over the samples of that frame (not over time), then an LSTMCell/GRUCell steps
once per frame. Float32: torch -> IR, the float references, and the C per frame against the
torch step module with its state carried, all models built in one host module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from c_checks import compiler_warnings
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
    axis, mul and abs, a GRUCell."""

    N, H = 10, 5

    def __init__(self):
        super().__init__()
        self.edge, self.fill = nn.ReplicationPad1d((2, 1)), nn.ConstantPad1d((1, 1), 0.25)
        self.a = nn.Conv1d(1, 4, 3, stride=2)
        self.b = nn.Conv1d(4, 4, 3, dilation=2, groups=2, padding=1)
        self.c = nn.Conv1d(8, 3, 5, stride=5)
        self.cell = nn.GRUCell(3, self.H)
        self.fc = nn.Linear(self.H, 2)

    def forward(self, x, h):
        y = self.a(self.edge(x.unsqueeze(1)))
        z = self.b(self.fill(y))
        y = torch.cat([torch.abs(y) * z, torch.relu(z)], dim=1)
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


@pytest.fixture(scope="module")
def compiled(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    dirs = []
    for k, key in enumerate(MODELS):
        export_program(built[key][1], root / f"f{k}", name=f"frames{k}", format="float32")
        dirs.append(root / f"f{k}")
    return dict(zip(MODELS, load_many(dirs)))


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


def test_generated_files_carry_nothing_unused(compiled):
    assert compiler_warnings([c.folder / f"{c.name}.c" for c in compiled.values()]) == []


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
