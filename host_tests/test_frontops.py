"""Front-end operations (issue 12 item 2): BatchNorm1d folded at export, the activations beyond
relu/tanh/sigmoid, element-wise unary operations and numbers (x * c, x + c), pooling over time
(mean, sum, max, AdaptiveAvgPool1d(1)), in every format.

One table of small models, all exported and compiled in one host module per format: float32 C
against the eager torch module; w8a16 and w16a16 C bit for bit against the integer reference,
and the reference against torch by SQNR. torch -> IR is checked on the folded arrays; the
forms tinyrnn refuses are checked for their message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from c_checks import compiler_warnings
from front_table import build_table, compile_table, torch_out, x_of
from quant_cases import first_mismatch, reference_model, reference_outputs, sqnr_db
from tinyrnn.api import export_program
from tinyrnn.check import evaluate, torchref
from tinyrnn.check.simulate import batch_from_arrays, run_float
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.reader import capture, read_program
from tinyrnn.ir import Activation, Conv1d, Dense
from tinyrnn.numerics.helpers import TANH_MAX_ERROR
from tinyrnn.passes.lower import lower

TOL = 1e-5
STEPS = 10
F = nn.functional
MIN_SQNR_DB = {"w8a16": 45.0, "w16a16": 70.0}


def _bn(channels: int, seed: int, affine: bool = True) -> nn.BatchNorm1d:
    """A BatchNorm1d with running statistics a trained one could have."""
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm1d(channels, affine=affine)
    with torch.no_grad():
        bn.running_mean.copy_(0.3 * torch.randn(channels, generator=gen))
        bn.running_var.copy_(0.5 + torch.rand(channels, generator=gen))
        if affine:
            bn.weight.copy_(1 + 0.3 * torch.randn(channels, generator=gen))
            bn.bias.copy_(0.2 * torch.randn(channels, generator=gen))
    return bn


def _seq(y: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    """A BatchNorm1d over the features of a (B, T, F) sequence."""
    return bn(y.transpose(1, 2)).transpose(1, 2)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], dict]
    forward: Callable
    formats: tuple[str, ...] = ("float32", "w8a16", "w16a16")
    seed: int = 0


CASES = [
    Case("conv-bn-relu6-lstm-last-linear",
         lambda: dict(conv=nn.Conv1d(4, 6, 3, padding=1), bn=_bn(6, 1),
                      rnn=nn.LSTM(6, 8, batch_first=True), fc=nn.Linear(8, 3)),
         lambda m, x: m.fc(m.rnn(F.relu6(3 * m.bn(m.conv(x.transpose(1, 2))))
                                 .transpose(1, 2))[0][:, -1]),
         formats=("float32",)),
    Case("conv-nobias-bn-noaffine-hardswish-gru",
         lambda: dict(conv=nn.Conv1d(4, 6, 3, padding="same", bias=False),
                      bn=_bn(6, 2, affine=False), rnn=nn.GRU(6, 5, batch_first=True)),
         lambda m, x: m.rnn(F.hardswish(m.bn(m.conv(x.transpose(1, 2)))).transpose(1, 2))[0],
         formats=("float32",), seed=1),
    Case("gru-linear-bn-leaky-linear",
         lambda: dict(rnn=nn.GRU(4, 8, batch_first=True), fc=nn.Linear(8, 6), bn=_bn(6, 3),
                      out=nn.Linear(6, 3)),
         lambda m, x: m.out(F.leaky_relu(_seq(m.fc(m.rnn(x)[0]), m.bn), 0.1)),
         seed=2),
    Case("lstm-last-linear-bn-hardswish-linear",
         lambda: dict(rnn=nn.LSTM(4, 8, batch_first=True), fc=nn.Linear(8, 6), bn=_bn(6, 4),
                      out=nn.Linear(6, 2)),
         lambda m, x: m.out(F.hardswish(m.bn(m.fc(m.rnn(x)[0][:, -1])))),
         seed=3),
    Case("rnn-hardtanh-linear-hardsigmoid",
         lambda: dict(rnn=nn.RNN(4, 8, batch_first=True), fc=nn.Linear(8, 3)),
         lambda m, x: F.hardsigmoid(m.fc(F.hardtanh(m.rnn(x)[0], -0.5, 0.6))),
         seed=4),
    Case("gru-bn-abs-scale-shift-linear",
         lambda: dict(rnn=nn.GRU(4, 6, batch_first=True), bn=_bn(6, 5), fc=nn.Linear(6, 3)),
         lambda m, x: m.fc(0.5 - torch.abs(_seq(m.rnn(x)[0], m.bn)) * 1.5),
         seed=5),
    Case("lstm-relu6-square-linear",
         lambda: dict(rnn=nn.LSTM(4, 6, batch_first=True), fc=nn.Linear(6, 3),
                      fc2=nn.Linear(3, 2)),
         lambda m, x: m.fc2(torch.square(F.relu6(m.fc(m.rnn(x)[0] * 2.0))) / 4),
         seed=6),
    Case("conv-bn-relu-lstm-mean-linear",
         lambda: dict(conv=nn.Conv1d(4, 6, 3, padding=1), bn=_bn(6, 8),
                      rnn=nn.LSTM(6, 5, batch_first=True), fc=nn.Linear(5, 3)),
         lambda m, x: m.fc(m.rnn(F.relu(m.bn(m.conv(x.transpose(1, 2)))).transpose(1, 2))[0]
                           .mean(1)),
         formats=("float32",), seed=8),
    Case("gru-adaptiveavgpool-linear",
         lambda: dict(rnn=nn.GRU(4, 5, batch_first=True), pool=nn.AdaptiveAvgPool1d(1),
                      fc=nn.Linear(5, 2)),
         lambda m, x: m.fc(m.pool(m.rnn(x)[0].transpose(1, 2)).squeeze(-1)),
         seed=9),
    Case("bigru-amax-hardsigmoid",
         lambda: dict(rnn=nn.GRU(4, 5, batch_first=True, bidirectional=True)),
         lambda m, x: F.hardsigmoid(torch.amax(m.rnn(x)[0], dim=1) * 2),
         seed=10),
    Case("rnn-sum-keepdim-sigmoid",
         lambda: dict(rnn=nn.RNN(4, 5, batch_first=True)),
         lambda m, x: torch.sigmoid(m.rnn(x)[0].sum(dim=1, keepdim=True)),
         seed=11),
    Case("gru-linear-square-sqrt",
         lambda: dict(rnn=nn.GRU(4, 6, batch_first=True), fc=nn.Linear(6, 3)),
         lambda m, x: torch.sqrt(m.fc(m.rnn(x)[0]) ** 2 + 0.25),
         formats=("float32",), seed=7),
]


@pytest.fixture(scope="module")
def built():
    return build_table(CASES, STEPS)


@pytest.fixture(scope="module")
def compiled(built, tmp_path_factory):
    """Every (case, format) of the table, exported and compiled in one host module."""
    return compile_table(CASES, built, tmp_path_factory.mktemp("frontops"), "f", STEPS)


def _parameters(case: Case):
    return [pytest.param(case, fmt, id=f"{case.id}-{fmt}") for case in CASES
            for fmt in case.formats]


def _scale(bn: nn.BatchNorm1d) -> np.ndarray:
    """gamma / sqrt(var + eps) in float64."""
    var = bn.running_var.double().numpy()
    return bn.weight.detach().double().numpy() / np.sqrt(var + bn.eps)


def test_batchnorm_folds_into_the_layer_before(built):
    """torch -> IR: a BatchNorm after a Linear or Conv1d leaves no layer of its own; the
    layer's arrays are W * s and b * s + beta - mean * s, s = gamma / sqrt(var + eps)."""
    module, program = built["lstm-last-linear-bn-hardswish-linear"]
    model = read_program(program)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["LSTMLayer", "SelectStep", "Dense", "Activation", "Dense"]
    fc = model.layers[2]
    assert isinstance(fc, Dense) and fc.name == "fc"
    bn = module.bn
    s = _scale(bn)
    w = module.fc.weight.detach().double().numpy()
    b = module.fc.bias.detach().double().numpy()
    shift = bn.bias.detach().double().numpy() - bn.running_mean.double().numpy() * s
    np.testing.assert_allclose(fc.weight.data, w * s[:, None], rtol=1e-15)
    np.testing.assert_allclose(fc.bias.data, b * s + shift, rtol=1e-15, atol=1e-15)
    assert "bn.weight / sqrt(bn.running_var" in fc.weight.source

    module, program = built["conv-bn-relu6-lstm-last-linear"]
    conv = read_program(program).layers[0]
    assert isinstance(conv, Conv1d)
    bn = module.bn
    s = 3 * _scale(bn)
    np.testing.assert_allclose(conv.weight.data,
                               module.conv.weight.detach().double().numpy() * s[:, None, None],
                               rtol=1e-15)


def test_a_batchnorm_with_nothing_to_fold_into_is_a_diagonal_linear(built):
    """After a recurrent layer a BatchNorm is a Dense with diag(s); numbers fold into it."""
    module, program = built["gru-bn-abs-scale-shift-linear"]
    model = read_program(program)
    bn, act, scaled = model.layers[1:4]
    assert isinstance(bn, Dense) and isinstance(act, Activation) and act.kind == "abs"
    assert bn.diagonal and scaled.diagonal
    assert np.count_nonzero(bn.weight.data - np.diag(np.diag(bn.weight.data))) == 0
    # 0.5 - |y| * 1.5: one diagonal layer of -1.5 and a bias of 0.5
    assert isinstance(scaled, Dense)
    np.testing.assert_allclose(scaled.weight.data, -1.5 * np.eye(6))
    np.testing.assert_allclose(scaled.bias.data, np.full(6, 0.5))


def test_a_diagonal_linear_multiplies_once_per_feature(compiled):
    """The C of a diagonal layer holds its diagonal only (6 values, not 36), and the
    profiler counts 6 multiply-accumulates for it."""
    from tinyrnn.targets.profile import layer_macs

    for fmt in ("float32", "w8a16"):
        c = compiled[("gru-bn-abs-scale-shift-linear", fmt)]
        layers = [layer for layer in c.manifest["layers"] if layer.get("diagonal")]
        assert len(layers) == 2 and all(layer_macs(layer) == 6 for layer in layers)
        text = (c.folder / f"{c.name}.c").read_text()
        assert f"{c.name}_dense1_s[6]" in text and f"{c.name}_dense1_w" not in text


def test_the_activations_keep_their_options(built):
    model = read_program(built["rnn-hardtanh-linear-hardsigmoid"][1])
    hardtanh = model.layers[1]
    assert (hardtanh.kind, hardtanh.low, hardtanh.high) == ("hardtanh", -0.5, 0.6)
    model = read_program(built["gru-linear-bn-leaky-linear"][1])
    leaky = next(layer for layer in model.layers if isinstance(layer, Activation))
    assert (leaky.kind, leaky.slope) == ("leaky_relu", 0.1)


@pytest.mark.parametrize("case", [c for c in CASES if "float32" in c.formats],
                         ids=[c.id for c in CASES if "float32" in c.formats])
def test_float32_c_equals_torch(case: Case, built, compiled):
    """The C at the export's length and a shorter one, the torch reference rebuilt from the
    IR (what verify runs), the float simulation and the plan, all against the module."""
    module, program = built[case.id]
    model = read_program(program)
    for batch, steps in ((2, STEPS), (3, 4)):
        x = x_of(batch, steps, 100 + steps)
        expected = torch_out(module, x)
        got = compiled[(case.id, "float32")].run(x)[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, err_msg=f"C, T={steps}")
        np.testing.assert_allclose(torchref.run(model, [x])[0], expected, rtol=0, atol=1e-6,
                                   err_msg=f"torchref, T={steps}")
        fb = batch_from_arrays(model, [x])
        simulated = run_float(model, fb)[0].outputs[0]
        np.testing.assert_allclose(simulated.reshape(expected.shape), expected, rtol=0,
                                   atol=TOL, err_msg="simulate")  # keepdim: (B, 1, F)
        planned = evaluate.run(lower(model, "m"), fb.x)[0]
        np.testing.assert_allclose(planned, simulated, rtol=0, atol=2.5 * TANH_MAX_ERROR,
                                   err_msg="plan")


INT_CASES = [pytest.param(c, f, id=f"{c.id}-{f}") for c in CASES for f in c.formats
             if f != "float32"]


@pytest.mark.parametrize("case, fmt", INT_CASES)
def test_integer_c_equals_the_reference_and_tracks_torch(case: Case, fmt: str, built, compiled):
    """Bit for bit against the integer reference (the float API's outputs are the
    reference's integers times 2^-frac), and the reference against torch by SQNR."""
    module, program = built[case.id]
    c = compiled[(case.id, fmt)]
    q = reference_model(program, c.manifest)
    x = x_of(4, STEPS, 200)
    _, floats = reference_outputs(q, c.manifest["interface"], [x])
    got = c.run(x)[0]
    assert np.array_equal(got, floats[0]), first_mismatch(got, floats[0])
    sqnr = sqnr_db(torch_out(module, x), floats[0])
    print(f"{case.id} {fmt}: SQNR {sqnr:.1f} dB against torch")
    assert sqnr > MIN_SQNR_DB[fmt], f"SQNR {sqnr:.1f} dB"


def test_generated_files_carry_nothing_unused(compiled):
    """clang -Weverything and gcc -Wunused: the new helpers appear only where called."""
    sources = [c.folder / f"{c.name}.c" for c in compiled.values()]
    assert compiler_warnings(sources) == []


class _Refused(nn.Module):
    def __init__(self, forward, **modules):
        super().__init__()
        for name, module in modules.items():
            setattr(self, name, module)
        self.fn = forward

    def forward(self, x):
        return self.fn(self, x)


REFUSED = [
    (_Refused(lambda m, x: m.bn(m.rnn(x)[0]), rnn=nn.GRU(4, STEPS, batch_first=True),
              bn=nn.BatchNorm1d(STEPS)),
     ["aten.batch_norm.default", "at bn (BatchNorm1d)", "which is not its features",
      "bn(y.transpose(1, 2)).transpose(1, 2)"]),
    (_Refused(lambda m, x: _seq(m.rnn(x)[0], m.bn), rnn=nn.GRU(4, 5, batch_first=True),
              bn=nn.BatchNorm1d(5, track_running_stats=False)),
     ["at bn (BatchNorm1d)", "without running statistics"]),
    (_Refused(lambda m, x: m.rnn(x)[0] ** 3, rnn=nn.GRU(4, 5, batch_first=True)),
     ["aten.pow.Tensor_Scalar", "x ** 3", "powers 2 (square) and 0.5 (sqrt)"]),
    (_Refused(lambda m, x: m.rnn(x)[0] * m.w, rnn=nn.GRU(4, 5, batch_first=True),
              w=nn.Parameter(torch.ones(5))),
     ["aten.mul.Tensor", "with a number"]),
]


REFUSED += [
    (_Refused(lambda m, x: m.rnn(x)[0].mean(2), rnn=nn.GRU(4, 5, batch_first=True)),
     ["aten.mean.dim", "tinyrnn reduces the time axis only (dim 1)"]),
    (_Refused(lambda m, x: m.pool(m.rnn(x)[0].transpose(1, 2)),
              rnn=nn.GRU(4, 5, batch_first=True), pool=nn.AdaptiveMaxPool1d(1)),
     ["aten.adaptive_max_pool1d.default", "at pool (AdaptiveMaxPool1d)",
      "AdaptiveMaxPool1d are not supported", "y.amax(dim)"]),
    # the value before a folded BatchNorm no longer exists in the C: returning it is refused
    (_Refused(lambda m, x: (lambda y: (y, m.bn(y)))(m.fc(m.rnn(x)[0][:, -1])),
              rnn=nn.GRU(4, 5, batch_first=True), fc=nn.Linear(5, 3), bn=_bn(3, 0)),
     ["returns an intermediate value of the data path"]),
]


@pytest.mark.parametrize("module, phrases", REFUSED,
                         ids=["bn-over-time", "bn-batch-stats", "pow3", "mul-by-tensor",
                              "mean-over-features", "adaptive-maxpool", "value-before-fold"])
def test_unsupported_forms_are_refused_clearly(module, phrases):
    with pytest.raises(TinyRNNError) as info:
        read_program(capture(module.eval(), (torch.from_numpy(x_of(2, STEPS, 0)),)))
    for phrase in phrases:
        assert phrase in str(info.value), str(info.value)


INT_REFUSED = {
    "leaky": (lambda m, x: F.leaky_relu(m.rnn(x)[0], -0.2),
              "negative_slope -0.2 has no integer form"),
}


@pytest.mark.parametrize("kind, fmt", [("leaky", "w16a16")])
def test_integer_forms_that_do_not_exist_are_refused(kind, fmt, tmp_path):
    """A negative leaky_relu slope has no integer form: the export names the layer and the
    format to use instead, and writes nothing (sqrt has one since the frame front-end's
    integer formats: host_tests/test_frames.py)."""
    forward, phrase = INT_REFUSED[kind]
    module = _Refused(forward, rnn=nn.GRU(4, 5, batch_first=True)).eval()
    program = capture(module, (torch.from_numpy(x_of(2, STEPS, 0)),))
    with pytest.raises(TinyRNNError, match="float32") as info:
        export_program(program, tmp_path / "out", name="m", format=fmt,
                       calibration=x_of(8, STEPS, 1))
    assert phrase in str(info.value)
    assert not (tmp_path / "out").exists()


def test_the_integer_mean_over_time_rounds_half_up():
    """mean_time_q against the exact rational mean, rounded half up, for every small case."""
    import math
    from fractions import Fraction

    from tinyrnn.numerics.helpers import mean_time_q

    rng = np.random.default_rng(0)
    x = rng.integers(-2**15, 2**15, size=(400, 6, 3))
    x[:50] = rng.integers(-3, 4, size=(50, 6, 3))  # many ties (T = 6: halves occur)
    got = mean_time_q(x)
    for b in range(x.shape[0]):
        for u in range(3):
            exact = Fraction(int(x[b, :, u].sum()), 6)
            assert got[b, u] == math.floor(exact + Fraction(1, 2))
