"""Values beyond a chain (issue 12 item 2): a layer that reads an earlier value as well as the
latest (residual add/mul), channel slices and cat on the channel axis; element-wise square,
sqrt and abs; zero padding of the time axis folded into the Conv1d after it; float32. torch ->
IR, the float references and the C against torch, all models built in one host module; w8a16
plans against the bit-exact reference; the forms tinyrnn refuses, each with its reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from c_checks import compiler_warnings
from quant_cases import first_mismatch, sqnr_db
from tinyrnn.api import export_program, quantize_model
from tinyrnn.check import evaluate, reference, torchref
from tinyrnn.check.simulate import batch_from_arrays, run_float
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.reader import capture, read_program
from tinyrnn.ir import Activation, Binary, ChannelSlice, Concat, Conv1d, reads
from tinyrnn.numerics.helpers import TANH_MAX_ERROR
from tinyrnn.passes.lower import lower
from tinyrnn.targets.host import load_many

TOL = 1e-5
STEPS = 7


class ResidualConv(nn.Module):
    """y = conv_a(x); z = conv_b(relu(y)); GRU(y + z): a residual over a conv block."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv1d(4, 6, 3, padding=1)
        self.conv_b = nn.Conv1d(6, 6, 3, padding=1)
        self.rnn = nn.GRU(6, 5, batch_first=True)

    def forward(self, x):
        y = self.conv_a(x.transpose(1, 2))
        z = self.conv_b(torch.relu(y))
        return self.rnn((y + z).transpose(1, 2))[0]


class Branches(nn.Module):
    """Channel slices of one conv output multiplied, then cat with another branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.rnn = nn.LSTM(9, 5, batch_first=True)

    def forward(self, x):
        y = self.conv(x.transpose(1, 2))
        m = y[:, :3] * y[:, 3:]
        return self.rnn(torch.cat([m, torch.relu(y)], dim=1).transpose(1, 2))[0]


class InputResidual(nn.Module):
    """conv(x) + x with x given as (B, C, T): the residual reads the model input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.rnn = nn.GRU(4, 3, batch_first=True)

    def forward(self, x):
        return self.rnn((self.conv(x) + x).transpose(1, 2))[0]


class HeadResidual(nn.Module):
    """No conv (time-major C, NAME_step works): fc(out) + out, cat with out, on the last
    axis of a GRU's (B, T, H) output."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 5, batch_first=True)
        self.fc = nn.Linear(5, 5)

    def forward(self, x):
        out = self.rnn(x)[0]
        return torch.cat([self.fc(out) + out, out[..., 1:4]], dim=-1)


class SelectedResidual(nn.Module):
    """The last step's h and a Linear of it, added after the time step is taken."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True)
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        last = self.rnn(x)[0][:, -1]
        return self.fc(last) * last


class Unaries(nn.Module):
    """sqrt, square (x ** 2 and torch.square) and abs of a GRU's output."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 5, batch_first=True)

    def forward(self, x):
        out = self.rnn(x)[0]
        return torch.cat([torch.sqrt(out ** 2 + torch.abs(out)), torch.square(out)], dim=-1)


class TimePads(nn.Module):
    """ZeroPad1d, ConstantPad1d(0) and F.pad before Conv1d(padding=0): causal and centred
    convolutions whose padding is a layer of its own."""

    def __init__(self):
        super().__init__()
        self.causal = nn.Sequential(nn.ZeroPad1d((2, 0)), nn.Conv1d(4, 6, 3))
        self.centred = nn.Sequential(nn.ConstantPad1d((1, 1), 0.0), nn.Conv1d(6, 6, 3))
        self.last = nn.Conv1d(6, 6, 4, padding=1)
        self.rnn = nn.GRU(6, 5, batch_first=True)

    def forward(self, x):
        y = torch.relu(self.centred(torch.relu(self.causal(x.transpose(1, 2)))))
        y = self.last(nn.functional.pad(y, (1, 0)))
        return self.rnn(y.transpose(1, 2))[0]


MODELS = {"residual-conv": ResidualConv, "branches": Branches, "input-residual": InputResidual,
          "head-residual": HeadResidual, "selected-residual": SelectedResidual,
          "unaries": Unaries, "time-pads": TimePads}
LAYOUT = {"input-residual": "bct"}


def _x(key: str, batch: int, steps: int, seed: int) -> np.ndarray:
    shape = (batch, 4, steps) if LAYOUT.get(key) == "bct" else (batch, steps, 4)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def built():
    out = {}
    for k, (key, cls) in enumerate(MODELS.items()):
        torch.manual_seed(k)
        module = cls().eval()
        out[key] = module, capture(module, (torch.from_numpy(_x(key, 2, STEPS, k)),))
    return out


@pytest.fixture(scope="module")
def compiled(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    dirs = []
    for k, key in enumerate(MODELS):
        export_program(built[key][1], root / f"m{k}", name=f"multi{k}", format="float32")
        dirs.append(root / f"m{k}")
    return dict(zip(MODELS, load_many(dirs)))


def test_torch_to_ir_names_the_values_each_layer_reads(built):
    """Value 0 is x, value k + 1 the output of layer k; a residual reads two of them."""
    model = read_program(built["residual-conv"][1])
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv1d", "Activation", "Conv1d", "Binary", "GRULayer"]
    assert model.layers[3] == Binary("add", 6, (1, 3))
    model = read_program(built["branches"][1])
    slices = [layer for layer in model.layers if isinstance(layer, ChannelSlice)]
    assert [(s.start, s.stop, s.reads) for s in slices] == [(0, 3, (1,)), (3, 6, (1,))]
    cat = next(layer for layer in model.layers if isinstance(layer, Concat))
    assert cat.sizes == (3, 6) and cat.features == 9
    assert reads(model.layers, model.layers.index(cat)) == (4, 5)
    model = read_program(built["input-residual"][1])
    assert model.layers[1] == Binary("add", 4, (1, 0))
    model = read_program(built["unaries"][1])
    assert [layer for layer in model.layers if isinstance(layer, Activation)] == [
        Activation("square", 5), Activation("abs", 5, reads=(1,)), Activation("sqrt", 5),
        Activation("square", 5, reads=(1,))]


def test_time_pads_fold_into_the_conv_after_them(built):
    model = read_program(built["time-pads"][1])
    convs = [layer for layer in model.layers if isinstance(layer, Conv1d)]
    assert [(c.pad_left, c.pad_right) for c in convs] == [(2, 0), (1, 1), (2, 1)]


@pytest.mark.parametrize("key", list(MODELS))
def test_float32_c_equals_torch(key, built, compiled):
    """NAME_run against the eager module at the export's length and a shorter one; the plan
    in numpy against the IR's float model; the torch reference rebuilt from the IR."""
    module, program = built[key]
    model = read_program(program)
    for batch, steps in ((2, STEPS), (3, 4)):
        x = _x(key, batch, steps, 100 + steps)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        got = compiled[key].run(x)[0]
        assert got.shape == expected.shape
        assert 0.05 < float(np.max(np.abs(expected))) < 20
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, err_msg=f"C, T={steps}")
        np.testing.assert_allclose(torchref.run(model, [x])[0], expected, rtol=0, atol=1e-6,
                                   err_msg=f"torchref, T={steps}")
        fb = batch_from_arrays(model, [x])
        planned = evaluate.run(lower(model, "m"), fb.x)[0]
        simulated = run_float(model, fb)[0].outputs[0]
        np.testing.assert_allclose(planned, simulated, rtol=0, atol=2.5 * TANH_MAX_ERROR,
                                   err_msg="plan")
        np.testing.assert_allclose(simulated, expected, rtol=0, atol=TOL, err_msg="simulate")


def test_step_of_a_time_major_model_with_a_residual(built, compiled):
    """Without a conv the C is time-major: NAME_step per step equals the whole sequence."""
    module, _ = built["head-residual"]
    c = compiled["head-residual"]
    x = _x("head-residual", 1, STEPS, 7)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()[0]
    state = c.new_state()
    got = np.stack([c.step(state, x[0, t]) for t in range(STEPS)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)


def test_generated_files_carry_nothing_unused(compiled):
    assert compiler_warnings([c.folder / f"{c.name}.c" for c in compiled.values()]) == []


class _Refused(nn.Module):
    def __init__(self, forward):
        super().__init__()
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.fn = forward

    def forward(self, x):
        return self.fn(self.rnn(x)[0])


REFUSED = [
    (lambda out: out + out[..., :1],
     ["aten.add.Tensor", "values of one shape and layout (no broadcasting)"]),
    (lambda out: torch.cat([out, out], dim=1),
     ["aten.cat.default", "cat over dim 1", "channel axis (dim 2)"]),
    (lambda out: out[:, -1] + out[:, 0],
     ["aten.select.int", "branches off the data path at an earlier layer"]),
    (lambda out: torch.cat([out[:, -1], torch.relu(out)[:, -1]], dim=-1),
     ["aten.relu.default", "reads a sequence from before the time step the model takes"]),
]


class _Padded(nn.Module):
    def __init__(self, pad: nn.Module):
        super().__init__()
        self.pad, self.conv = pad, nn.Conv1d(4, 4, 3)
        self.rnn = nn.GRU(4, 3, batch_first=True)

    def forward(self, x):
        return self.rnn(self.conv(self.pad(x.transpose(1, 2))).transpose(1, 2))[0]


PADS_REFUSED = [  # reflect, replicate and constant pads are PadTime layers (test_frontgaps)
    (nn.CircularPad1d(1), ["aten.pad.default", "padding mode 'circular'"]),
]


@pytest.mark.parametrize("pad, phrases", PADS_REFUSED, ids=["circular"])
def test_time_pads_tinyrnn_cannot_export_are_named(pad, phrases):
    with pytest.raises(TinyRNNError) as info:
        read_program(capture(_Padded(pad).eval(), (torch.randn(2, 5, 4),)))
    for phrase in phrases:
        assert phrase in str(info.value), (phrase, str(info.value))


@pytest.mark.parametrize("forward, phrases", REFUSED,
                         ids=["broadcast", "time-cat", "two-steps", "before-select"])
def test_forms_tinyrnn_cannot_export_are_named(forward, phrases):
    with pytest.raises(TinyRNNError) as info:
        read_program(capture(_Refused(forward).eval(), (torch.randn(2, 5, 4),)))
    for phrase in phrases:
        assert phrase in str(info.value), (phrase, str(info.value))


@pytest.mark.parametrize("key", list(MODELS))
def test_integer_plans_equal_the_reference_and_track_torch(key, built):
    """w8a16 (the frame tests compile these layers in both integer formats): the plan in numpy
    equals the bit-exact reference, whose output tracks the eager module."""
    module, program = built[key]
    model = read_program(program)
    q = quantize_model(model, "w8a16", [_x(key, 16, STEPS, 200)], None)
    x = _x(key, 2, STEPS, 300)
    batch_q = reference.quantize_batch(q, batch_from_arrays(model, [x]))
    want = reference.run(q, batch_q).outputs[0]
    planned = evaluate.run(lower(model, "m", q), batch_q.x)[0]
    assert np.array_equal(planned, want), first_mismatch(planned, want)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = reference.dequantize(q, 0, want)
    db = sqnr_db(expected, got.reshape(expected.shape))
    assert db >= 30.0, f"SQNR {db:.1f} dB"
