"""Pooling windows and padding of the time axis (issue 12 item 2): MaxPool1d, AvgPool1d
(count_include_pad either way), ZeroPad1d / ConstantPad1d / ReflectionPad1d / ReplicationPad1d
and F.pad with those modes over a whole sequence, in every format.

One table of small models, all exported and compiled in one host module: float32 C against the
eager torch module (at the export's length and a shorter one, which the length rules give);
w8a16 and w16a16 C bit for bit against the integer reference, and the reference against torch
by SQNR. torch -> IR is checked on the layers; the integer average's rounding against exact
fractions; the forms tinyrnn refuses for their message."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from c_checks import compiler_warnings, layout_problems
from front_table import Net, build_table, compile_table, torch_out, x_of
from quant_cases import first_mismatch, reference_model, reference_outputs, sqnr_db
from tinyrnn.check import evaluate, torchref
from tinyrnn.check.simulate import batch_from_arrays, run_float
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.reader import capture, read_program
from tinyrnn.ir import Conv1d, PadTime, PoolWindow
from tinyrnn.numerics.helpers import TANH_MAX_ERROR, avg_pool_q
from tinyrnn.passes.lower import lower

TOL = 1e-5
STEPS = 12
F = nn.functional
MIN_SQNR_DB = {"w8a16": 45.0, "w16a16": 70.0}


def _ct(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C) <-> (B, C, T)."""
    return x.transpose(1, 2)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], dict]
    forward: Callable
    layers: tuple[str, ...]  # the IR layer kinds the reader makes
    seed: int = 0
    min_sqnr_db: tuple[float, float] = (MIN_SQNR_DB["w8a16"], MIN_SQNR_DB["w16a16"])
    formats: tuple[str, ...] = ("float32", "w8a16", "w16a16")


CASES = [
    Case("maxpool-k3s2p1-lstm",
         lambda: dict(pool=nn.MaxPool1d(3, 2, 1), rnn=nn.LSTM(4, 6, batch_first=True)),
         lambda m, x: m.rnn(_ct(m.pool(_ct(x))))[0],
         ("PoolWindow", "LSTMLayer")),
    Case("conv-relu-avgpool2-gru",
         lambda: dict(conv=nn.Conv1d(4, 6, 3, padding=1), pool=nn.AvgPool1d(2),
                      rnn=nn.GRU(6, 5, batch_first=True)),
         lambda m, x: m.rnn(_ct(m.pool(F.relu(m.conv(_ct(x))))))[0],
         ("Conv1d", "Activation", "PoolWindow", "GRULayer"), seed=1),
    Case("avgpool-k3p1-exclude-pad-rnn-linear",
         lambda: dict(pool=nn.AvgPool1d(3, 1, 1, count_include_pad=False),
                      rnn=nn.RNN(4, 6, batch_first=True), fc=nn.Linear(6, 3)),
         lambda m, x: m.fc(m.rnn(_ct(m.pool(_ct(x))))[0]),
         ("PoolWindow", "RNNLayer", "Dense"), seed=2),
    Case("gru-avgpool-k4s2p2-maxpool-ceil-linear",
         lambda: dict(rnn=nn.GRU(4, 6, batch_first=True), pool=nn.AvgPool1d(4, 2, 2),
                      pool2=nn.MaxPool1d(2, 1, ceil_mode=True), fc=nn.Linear(6, 2)),
         lambda m, x: m.fc(_ct(m.pool2(m.pool(_ct(m.rnn(x)[0]))))),
         ("GRULayer", "PoolWindow", "PoolWindow", "Dense"), seed=3),
    Case("reflectpad-conv-gru",
         lambda: dict(pad=nn.ReflectionPad1d((2, 0)), conv=nn.Conv1d(4, 6, 3),
                      rnn=nn.GRU(6, 5, batch_first=True)),
         lambda m, x: m.rnn(_ct(m.conv(m.pad(_ct(x)))))[0],
         ("PadTime", "Conv1d", "GRULayer"), seed=4),
    Case("constpad-avgpool2-gru",
         lambda: dict(pad=nn.ConstantPad1d((1, 2), 0.5), pool=nn.AvgPool1d(2),
                      rnn=nn.GRU(4, 5, batch_first=True)),
         lambda m, x: m.rnn(_ct(m.pool(m.pad(_ct(x)))))[0],
         ("PadTime", "PoolWindow", "GRULayer"), seed=6),
    Case("replicatepad-zeropad-not-before-a-conv-maxpool-lstm",
         lambda: dict(rep=nn.ReplicationPad1d(2), pad=nn.ZeroPad1d((3, 1)),
                      pool=nn.MaxPool1d(2), rnn=nn.LSTM(4, 5, batch_first=True)),
         lambda m, x: m.rnn(_ct(m.pool(m.pad(m.rep(_ct(x))))))[0],
         ("PadTime", "PadTime", "PoolWindow", "LSTMLayer"), seed=7),
    Case("conv-padding-mode-reflect-gru",
         lambda: dict(conv=nn.Conv1d(4, 6, 3, padding=1, padding_mode="reflect"),
                      rnn=nn.GRU(6, 5, batch_first=True)),
         lambda m, x: m.rnn(_ct(m.conv(_ct(x))))[0],
         ("PadTime", "Conv1d", "GRULayer"), seed=10),
    Case("gru-fpad-reflect-replicate-conv-lstm",
         lambda: dict(rnn=nn.GRU(4, 6, batch_first=True), conv=nn.Conv1d(6, 4, 3),
                      out=nn.LSTM(4, 5, batch_first=True)),
         lambda m, x: m.out(_ct(m.conv(F.pad(F.pad(_ct(m.rnn(x)[0]), (1, 1), mode="reflect"),
                                             (1, 0), mode="replicate"))))[0],
         ("GRULayer", "PadTime", "PadTime", "Conv1d", "LSTMLayer"), seed=8),
    # a constant beyond the input's range: the padded value takes a coarser format, x loses
    # the 3 bits between ~4 and 40 (w16a16 ~59 dB instead of 70+)
    Case("constpad-large-value-gru",
         lambda: dict(pad=nn.ConstantPad1d(1, 40.0), rnn=nn.GRU(4, 5, batch_first=True)),
         lambda m, x: m.rnn(_ct(m.pad(_ct(x))))[0],
         ("PadTime", "GRULayer"), seed=9, min_sqnr_db=(40.0, 55.0)),
    # torch.stack next to the channel axis, then a flatten: a Concat (float32, as cat)
    Case("lstm-stack-dim2-flatten-linear",
         lambda: dict(rnn=nn.LSTM(4, 5, batch_first=True), fc=nn.Linear(10, 3)),
         lambda m, x: m.fc((lambda y: torch.stack([y, torch.relu(y)], 2).flatten(2))(
             m.rnn(x)[0])),
         ("LSTMLayer", "Activation", "Concat", "Dense"), seed=11, formats=("float32",)),
    Case("gru-stack-last-interleaved-linear",
         lambda: dict(rnn=nn.GRU(4, 5, batch_first=True), fc=nn.Linear(15, 2)),
         lambda m, x: m.fc((lambda y: torch.stack([y, torch.tanh(y), torch.relu(y)], -1)
                            .reshape(y.shape[0], y.shape[1], 15))(m.rnn(x)[0])),
         ("GRULayer", "Activation", "Activation", "Concat", "Dense"), seed=12,
         formats=("float32",)),
    Case("conv-stack-channels-first-conv-gru",
         lambda: dict(conv=nn.Conv1d(4, 3, 3, padding=1), conv2=nn.Conv1d(6, 4, 1),
                      rnn=nn.GRU(4, 5, batch_first=True)),
         lambda m, x: m.rnn(_ct(m.conv2((lambda c: torch.stack([c, torch.relu(c)], 1)
                                         .flatten(1, 2))(m.conv(_ct(x))))))[0],
         ("Conv1d", "Activation", "Concat", "Conv1d", "GRULayer"), seed=13,
         formats=("float32",)),
]


@pytest.fixture(scope="module")
def built():
    return build_table(CASES, STEPS)


@pytest.fixture(scope="module")
def compiled(built, tmp_path_factory):
    """Every (case, format) of the table, exported and compiled in one host module."""
    return compile_table(CASES, built, tmp_path_factory.mktemp("frontgaps"), "g", STEPS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_reader_makes_one_layer_per_window_or_pad(case: Case, built):
    model = read_program(built[case.id][1])
    assert tuple(type(layer).__name__ for layer in model.layers) == case.layers


def test_the_layers_keep_their_options(built):
    model = read_program(built["gru-avgpool-k4s2p2-maxpool-ceil-linear"][1])
    avg, top = model.layers[1:3]
    assert (avg.kind, avg.kernel, avg.stride, avg.pad, avg.count_include_pad, avg.name) == \
        ("avg", 4, 2, 2, True, "pool")
    assert (top.kind, top.kernel, top.stride, top.pad) == ("max", 2, 1, 0)
    model = read_program(built["avgpool-k3p1-exclude-pad-rnn-linear"][1])
    assert model.layers[0].count_include_pad is False
    model = read_program(built["constpad-avgpool2-gru"][1])
    pad = model.layers[0]
    assert isinstance(pad, PadTime) and (pad.mode, pad.value, pad.left, pad.right) == \
        ("constant", 0.5, 1, 2)
    # a zero pad before a Conv1d is still folded into the conv's padding (no layer)
    model = read_program(capture(Net(lambda: dict(pad=nn.ZeroPad1d((2, 0)),
                                                  conv=nn.Conv1d(4, 4, 3),
                                                  rnn=nn.GRU(4, 3, batch_first=True)),
                                     lambda m, x: m.rnn(_ct(m.conv(m.pad(_ct(x)))))[0]).eval(),
                                 (torch.from_numpy(x_of(2, STEPS, 0)),)))
    conv = model.layers[0]
    assert isinstance(conv, Conv1d) and (conv.pad_left, conv.pad_right) == (2, 0)
    assert not any(isinstance(layer, (PadTime, PoolWindow)) for layer in model.layers)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_float32_c_equals_torch(case: Case, built, compiled):
    """The C at the export's length and a shorter one, the torch reference rebuilt from the
    IR (what verify runs), the float simulation and the plan, all against the module."""
    module, program = built[case.id]
    model = read_program(program)
    for batch, steps in ((2, STEPS), (3, 7)):
        x = x_of(batch, steps, 100 + steps)
        expected = torch_out(module, x)
        got = compiled[(case.id, "float32")].run(x)[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, err_msg=f"C, T={steps}")
        np.testing.assert_allclose(torchref.run(model, [x])[0], expected, rtol=0, atol=1e-6,
                                   err_msg=f"torchref, T={steps}")
        fb = batch_from_arrays(model, [x])
        simulated = run_float(model, fb)[0].outputs[0]
        np.testing.assert_allclose(simulated, expected, rtol=0, atol=TOL, err_msg="simulate")
        planned = evaluate.run(lower(model, "m"), fb.x)[0]
        np.testing.assert_allclose(planned, simulated, rtol=0, atol=2.5 * TANH_MAX_ERROR,
                                   err_msg="plan")


INT_CASES = [pytest.param(c, f, id=f"{c.id}-{f}") for c in CASES for f in c.formats
             if f != "float32"]


@pytest.mark.parametrize("case, fmt", INT_CASES)
def test_integer_c_equals_the_reference_and_tracks_torch(case: Case, fmt: str, built, compiled):
    """Bit for bit against the integer reference (at two lengths), the plan run in numpy
    against the reference's integers, and the reference against torch by SQNR."""
    module, program = built[case.id]
    c = compiled[(case.id, fmt)]
    q = reference_model(program, c.manifest)
    for steps in (STEPS, 9):
        x = x_of(4, steps, 200 + steps)
        ints, floats = reference_outputs(q, c.manifest["interface"], [x])
        got = c.run(x)[0]
        assert np.array_equal(got, floats[0]), first_mismatch(got, floats[0])
        xq = q.input.quantize(x)
        planned = evaluate.run(lower(q.model, "m", q), xq)[0]
        assert np.array_equal(planned.reshape(ints[0].shape), ints[0]), \
            first_mismatch(planned.reshape(ints[0].shape), ints[0])
    sqnr = sqnr_db(torch_out(module, x), floats[0])
    print(f"{case.id} {fmt}: SQNR {sqnr:.1f} dB against torch")
    assert sqnr > case.min_sqnr_db[fmt == "w16a16"], f"SQNR {sqnr:.1f} dB"


def test_a_constant_beyond_the_input_range_takes_a_coarser_format(compiled, built):
    """ConstantPad1d(40) of inputs within a few units: the pad's output format holds 40 (the
    steps of x shift into it), so the constant is not saturated."""
    c = compiled[("constpad-large-value-gru", "w8a16")]
    q = reference_model(built["constpad-large-value-gru"][1], c.manifest)
    pad = q.layers[0]
    assert pad.shift > 0 and pad.out.dequantize(pad.value) == 40.0
    assert pad.out.max >= 40.0


def test_too_short_a_sequence_for_a_reflect_pad_is_refused(compiled):
    """torch refuses a reflect pad of 2 over 2 steps; the C returns ERR_SEQ_LEN, not a read
    outside x."""
    c = compiled[("reflectpad-conv-gru", "float32")]
    c.run(x_of(1, 3, 0))  # 3 steps: the least a pad of 2 takes
    with pytest.raises(TinyRNNError, match="a sequence length outside"):  # ERR_SEQ_LEN
        c.run(x_of(1, 2, 0))


def test_generated_files_carry_nothing_unused(compiled):
    """clang -Weverything and gcc -Wunused: the new helpers appear only where called (the
    cases that call every one of them, float32 and integers: w16a16 calls the same ones)."""
    cases = ("gru-avgpool-k4s2p2-maxpool-ceil-linear", "constpad-large-value-gru",
             "gru-fpad-reflect-replicate-conv-lstm")
    sources = [c.folder / f"{c.name}.c" for (case, fmt), c in compiled.items()
               if case in cases and fmt != "w16a16"]
    assert len(sources) == 6
    assert compiler_warnings(sources) == []
    assert [problem for path in sources for problem in layout_problems(path)] == []


def test_the_integer_average_rounds_half_up():
    """avg_pool_q against the exact rational mean of each window, rounded half up, both
    divisors (the kernel, or the steps inside the sequence at the edges)."""
    rng = np.random.default_rng(0)
    x = rng.integers(-2**15, 2**15, size=(60, 7, 2))
    x[:30] = rng.integers(-3, 4, size=(30, 7, 2))  # many ties
    for include in (True, False):
        got = avg_pool_q(x, 4, 2, 2, include)
        assert got.shape == (60, 4, 2)
        for t in range(4):
            lo, hi = max(2 * t - 2, 0), min(2 * t + 2, 7)
            d = 4 if include else hi - lo
            for b in range(x.shape[0]):
                for u in range(2):
                    exact = Fraction(int(x[b, lo:hi, u].sum()), d)
                    assert got[b, t, u] == math.floor(exact + Fraction(1, 2))


class _Refused(nn.Module):
    def __init__(self, forward, **modules):
        super().__init__()
        for name, module in modules.items():
            setattr(self, name, module)
        self.fn = forward

    def forward(self, x):
        return self.fn(self, x)


def _gru(m, y):
    return m.rnn(_ct(y))[0]


REFUSED = {
    "maxpool-dilation": (
        _Refused(lambda m, x: _gru(m, m.pool(_ct(x))), pool=nn.MaxPool1d(2, dilation=2),
                 rnn=nn.GRU(4, 3, batch_first=True)),
        ["aten.max_pool1d.default", "at pool (MaxPool1d)", "dilation 2"]),
    "maxpool-ceil-stride2": (
        _Refused(lambda m, x: _gru(m, m.pool(_ct(x))), pool=nn.MaxPool1d(3, 2, ceil_mode=True),
                 rnn=nn.GRU(4, 3, batch_first=True)),
        ["ceil_mode=True and stride 2"]),
    "maxpool-indices": (
        _Refused(lambda m, x: _gru(m, m.pool(_ct(x))[0]),
                 pool=nn.MaxPool1d(2, return_indices=True), rnn=nn.GRU(4, 3, batch_first=True)),
        ["aten.max_pool1d_with_indices.default", "return_indices=True"]),
    "circular-pad-and-maxpool-features": (
        _Refused(lambda m, x: m.rnn(m.pool(F.pad(_ct(x), (1, 1), mode="circular"))
                                    .transpose(1, 2))[0],
                 pool=nn.MaxPool1d(1), rnn=nn.GRU(4, 3, batch_first=True)),
        ["padding mode 'circular'", "tinyrnn pads with 'constant', 'reflect' or 'replicate'"]),
    "pool-over-features": (
        _Refused(lambda m, x: m.pool(m.rnn(x)[0]), pool=nn.AvgPool1d(2),
                 rnn=nn.GRU(4, 6, batch_first=True)),
        ["aten.avg_pool1d.default", "of a (B, T, C) value; it reads (B, C, T)"]),
    "embedding": (
        _Refused(lambda m, x: m.rnn(m.emb((x[..., 0] > 0).long()))[0],
                 emb=nn.Embedding(2, 4), rnn=nn.GRU(4, 3, batch_first=True)),
        ["aten.embedding.default", "at emb (Embedding)", "token ids are computed",
         "only as a model input (a forward argument of (B, T) int64)"]),
    "zero-pad-returned-as-bct": (
        _Refused(lambda m, x: F.pad(_ct(m.rnn(x)[0]), (1, 2)),
                 rnn=nn.GRU(4, 3, batch_first=True)),
        ["aten.pad.default", "returns a (B, C, T) value; return it as (B, T, C)"]),
    "reflect-pad-too-long": (
        _Refused(lambda m, x: _gru(m, m.pad(_ct(x))), pad=nn.ReflectionPad1d(STEPS - 1),
                 rnn=nn.GRU(4, 3, batch_first=True)),
        []),  # torch itself accepts it (11 < 12); the export must too: see the test
}


@pytest.mark.parametrize("key", [k for k, (_, phrases) in REFUSED.items() if phrases])
def test_unsupported_forms_are_refused_clearly(key):
    module, phrases = REFUSED[key]
    with pytest.raises(TinyRNNError) as info:
        read_program(capture(module.eval(), (torch.from_numpy(x_of(2, STEPS, 0)),)))
    for phrase in phrases:
        assert phrase in str(info.value), str(info.value)


def test_a_reflect_pad_just_shorter_than_the_sequence_is_read():
    module, _ = REFUSED["reflect-pad-too-long"]
    model = read_program(capture(module.eval(), (torch.from_numpy(x_of(2, STEPS, 0)),)))
    assert isinstance(model.layers[0], PadTime)
    assert model.out_steps(STEPS) == 3 * STEPS - 2 and model.out_steps(STEPS - 1) == 0


def test_an_integer_average_beyond_its_int32_sum_is_refused(built):
    """An AvgPool1d kernel of 2^14 or more could overflow the int32 sum of the integer form:
    the quantizer refuses it by name (the float32 export has no such limit)."""
    from dataclasses import replace

    from tinyrnn.passes.quantize import AVG_POOL_MAX_KERNEL, calibrate, choose_formats, quantize

    model = read_program(built["conv-relu-avgpool2-gru"][1])
    formats = choose_formats(model, calibrate(model, batch_from_arrays(
        model, [x_of(4, STEPS, 0)]), "test"))
    quantize(model, "w8a16", formats)  # kernel 2: fine
    pool = model.layers[2]
    assert isinstance(pool, PoolWindow)
    wide = replace(model, layers=model.layers[:2] + (
        replace(pool, kernel=AVG_POOL_MAX_KERNEL + 1),) + model.layers[3:])
    with pytest.raises(TinyRNNError, match="AvgPool1d pool.*kernel 16384.*float32"):
        quantize(wide, "w8a16", formats)
