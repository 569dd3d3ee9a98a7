"""nn.Conv1d front-ends (issue 12 item 2): torch -> IR (exact arrays), the float references, and
float32 C against torch for a table of options, all models built in one host module; the forms
tinyrnn refuses, each with its reason and module path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from c_checks import compiler_warnings
from tinyrnn.api import export_program
from tinyrnn.check import evaluate, torchref
from tinyrnn.check.simulate import batch_from_arrays, run_float
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.reader import capture, read_program
from tinyrnn.io import assemble_outputs, split_inputs
from tinyrnn.ir import Conv1d
from tinyrnn.numerics.helpers import TANH_MAX_ERROR
from tinyrnn.passes.lower import lower
from tinyrnn.targets import cross
from tinyrnn.targets.boards import load_board
from tinyrnn.targets.host import load_many
from tinyrnn.targets.profile import layer_macs, macs_per_step

TOL = 1e-5
pytestmark = pytest.mark.filterwarnings(  # torch's note on padding='same' with an even kernel
    "ignore:Using padding='same' with even kernel lengths:UserWarning")


@dataclass(frozen=True)
class ConvCase:
    id: str
    convs: tuple[dict, ...]  # nn.Conv1d keyword arguments, in order (ReLU between them)
    input_size: int = 4
    layout: str = "btc"  # the forward's x: (B, T, C) permuted for the conv, or (B, C, T)
    rnn: str = "gru"  # "gru", "bilstm" (bidirectional LSTM), "gru_tm" (batch_first=False)
    head: bool = False  # a Linear on the last step
    seed: int = 0


CASES = [
    ConvCase("pad1", ({"out_channels": 6, "kernel_size": 3, "padding": 1},)),
    ConvCase("same-even-kernel", ({"out_channels": 5, "kernel_size": 4, "padding": "same"},)),
    ConvCase("same-dilation", ({"out_channels": 6, "kernel_size": 3, "padding": "same",
                                "dilation": 3},), seed=1),
    ConvCase("groups2", ({"out_channels": 6, "kernel_size": 3, "padding": 1, "groups": 2},),
             seed=2),
    ConvCase("depthwise-nobias", ({"out_channels": 4, "kernel_size": 5, "padding": 2,
                                   "groups": 4, "bias": False},), seed=3),
    ConvCase("bct-input", ({"out_channels": 6, "kernel_size": 3, "padding": 1},),
             layout="bct", seed=4),
    ConvCase("two-convs-bilstm-head", ({"out_channels": 8, "kernel_size": 3, "padding": 1},
                                       {"out_channels": 8, "kernel_size": 3, "padding": "same",
                                        "groups": 8}),
             rnn="bilstm", head=True, seed=5),
    ConvCase("kernel1-time-major", ({"out_channels": 3, "kernel_size": 1},), rnn="gru_tm",
             seed=6),
    # the length changes: stride, padding short of the span, padding beyond it
    ConvCase("stride2-pad1", ({"out_channels": 6, "kernel_size": 3, "padding": 1,
                               "stride": 2},), seed=7),
    ConvCase("valid-then-stride3-bilstm-head", ({"out_channels": 6, "kernel_size": 3},
                                                {"out_channels": 6, "kernel_size": 2,
                                                 "stride": 3, "groups": 3}),
             rnn="bilstm", head=True, seed=8),
    ConvCase("pad-beyond-kernel-bct", ({"out_channels": 5, "kernel_size": 1, "padding": 2},),
             layout="bct", seed=9),
    # Silero's shapes in small: a one-channel window conv (an STFT), odd channel counts
    ConvCase("stft-c1-k4-stride2", ({"out_channels": 6, "kernel_size": 4, "stride": 2,
                                     "bias": False},), input_size=1, seed=10),
    ConvCase("odd-c9-o7-k3-pad1", ({"out_channels": 7, "kernel_size": 3, "padding": 1},),
             input_size=9, seed=11),
]
STEPS = 9


class ConvRNN(nn.Module):
    def __init__(self, case: ConvCase):
        super().__init__()
        convs, channels = [], case.input_size
        for options in case.convs:
            convs.append(nn.Conv1d(channels, **options))
            channels = options["out_channels"]
        self.convs = nn.ModuleList(convs)
        self.case = case
        if case.rnn == "bilstm":
            self.rnn: nn.Module = nn.LSTM(channels, 5, batch_first=True, bidirectional=True)
        else:
            self.rnn = nn.GRU(channels, 5, batch_first=case.rnn == "gru")
        self.head = nn.Linear(10 if case.rnn == "bilstm" else 5, 3) if case.head else None

    def forward(self, x):
        if self.case.rnn == "gru_tm":
            y = x.permute(1, 2, 0)  # (T, B, C) -> (B, C, T)
        else:
            y = x.transpose(1, 2) if self.case.layout == "btc" else x
        for k, conv in enumerate(self.convs):
            y = conv(y) if k == 0 else conv(torch.relu(y))
        y = y.permute(2, 0, 1) if self.case.rnn == "gru_tm" else y.transpose(1, 2)
        out, _ = self.rnn(y)
        return self.head(out[:, -1]) if self.head is not None else out


def _x(case: ConvCase, batch: int, steps: int, seed: int) -> np.ndarray:
    shape = {"btc": (batch, steps, case.input_size), "bct": (batch, case.input_size, steps)}
    if case.rnn == "gru_tm":
        return np.random.default_rng(seed).normal(size=(steps, batch, case.input_size)
                                                  ).astype(np.float32)
    return np.random.default_rng(seed).normal(size=shape[case.layout]).astype(np.float32)


def _built(case: ConvCase):
    torch.manual_seed(case.seed)
    module = ConvRNN(case).eval()
    x = _x(case, 2, STEPS, case.seed)
    return module, x, capture(module, (torch.from_numpy(x),))


def _torch(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def built():
    return {case.id: _built(case) for case in CASES}


@pytest.fixture(scope="module")
def compiled(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("conv1d")
    dirs = []
    for k, case in enumerate(CASES):
        export_program(built[case.id][2], root / f"conv{k}", name=f"conv{k}", format="float32")
        dirs.append(root / f"conv{k}")
    return {case.id: c for case, c in zip(CASES, load_many(dirs))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_torch_to_ir_keeps_the_conv_arrays_and_options(case: ConvCase, built):
    module, _, program = built[case.id]
    model = read_program(program)
    convs = [layer for layer in model.layers if isinstance(layer, Conv1d)]
    assert len(convs) == len(module.convs)
    for k, (layer, conv) in enumerate(zip(convs, module.convs)):
        assert layer.name == f"convs.{k}" and layer.weight.source == f"convs.{k}.weight"
        np.testing.assert_array_equal(layer.weight.data, conv.weight.detach().numpy())
        if conv.bias is None:
            assert layer.bias is None
        else:
            np.testing.assert_array_equal(layer.bias.data, conv.bias.detach().numpy())
        span = conv.dilation[0] * (conv.kernel_size[0] - 1)
        padding = conv.padding if isinstance(conv.padding, str) else conv.padding[0]
        left = span // 2 if padding == "same" else padding
        right = span - left if padding == "same" else padding
        assert (layer.stride, layer.dilation, layer.groups, layer.pad_left, layer.pad_right) == (
            conv.stride[0], conv.dilation[0], conv.groups, left, right)
    x = model.inputs[0]
    axes = {"btc": (0, 1), "bct": (0, 2)}[case.layout] if case.rnn != "gru_tm" else (1, 0)
    assert (x.batch_axis, x.time_axis, x.features) == (*axes, case.input_size)
    assert model.convolves


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_float32_c_equals_torch(case: ConvCase, built, compiled):
    """NAME_run against the eager module at the export's length and at a shorter one (the
    padding at both ends moves), the plan run in numpy against the IR's float model, and the
    torch reference rebuilt from the IR (what verify runs) against the module."""
    module, _, program = built[case.id]
    model = read_program(program)
    for batch, steps in ((2, STEPS), (3, 4)):
        x = _x(case, batch, steps, 100 + steps)
        expected = _torch(module, x)
        got = compiled[case.id].run(x)[0]
        assert got.shape == expected.shape
        scale = float(np.max(np.abs(expected)))
        assert 0.05 < scale < 20, "outputs of order 1, for the tolerance to mean anything"
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, err_msg=f"C, T={steps}")
        np.testing.assert_allclose(torchref.run(model, [x])[0], expected, rtol=0, atol=1e-6,
                                   err_msg=f"torchref, T={steps}")
        fb = batch_from_arrays(model, [x])
        planned = evaluate.run(lower(model, "m"), fb.x)[0]
        simulated = run_float(model, fb)[0].outputs[0]
        # the plan computes the C's rational tanh/sigmoid, the simulation exact ones
        np.testing.assert_allclose(planned, simulated, rtol=0, atol=2.5 * TANH_MAX_ERROR,
                                   err_msg="plan")
        in_torch_layout = simulated.transpose(1, 0, 2) if case.rnn == "gru_tm" else simulated
        np.testing.assert_allclose(in_torch_layout, expected, rtol=0, atol=TOL,
                                   err_msg="simulate")


def test_the_profiler_counts_the_conv_macs(compiled):
    """Per step: out x in / groups x kernel for the conv, beside the recurrent layer's."""
    layers = compiled["groups2"].manifest["layers"]
    conv = next(layer for layer in layers if layer["kind"] == "conv1d")
    assert layer_macs(conv) == 6 * (4 // 2) * 3
    gru = next(layer for layer in layers if layer["kind"] == "gru")
    assert macs_per_step(compiled["groups2"].manifest) == 6 * 2 * 3 + layer_macs(gru)


def test_the_profiler_counts_a_strided_conv_at_its_output_positions(compiled):
    """Conv1d(4, 6, 3, stride 2, padding 1): one output position per 2 input steps, and the
    GRU after it runs over the conv's output length (5 positions out of 9 steps)."""
    manifest = compiled["stride2-pad1"].manifest
    conv = next(layer for layer in manifest["layers"] if layer["kind"] == "conv1d")
    gru = next(layer for layer in manifest["layers"] if layer["kind"] == "gru")
    assert layer_macs(conv) == 6 * 4 * 3 / 2
    assert macs_per_step(manifest) == (6 * 4 * 3 + layer_macs(gru)) / 2
    out = (9 + 2 - 3) // 2 + 1
    assert macs_per_step(manifest, steps=9) == pytest.approx(
        out * (6 * 4 * 3 + layer_macs(gru)) / 9)


def test_generated_files_carry_nothing_unused(compiled):
    """clang -Weverything and gcc -Wunused on every export of the table: no unused helper,
    macro or array (the new helper and the layer-major schedule included)."""
    sources = [c.folder / f"{c.name}.c" for c in compiled.values()]
    assert compiler_warnings(sources) == []


def test_step_is_refused_and_the_length_is_bounded(compiled):
    """A Conv1d padded on the right reads the next step: NAME_step returns
    NAME_ERR_UNSUPPORTED, NAME_run takes at most NAME_MAX_SEQ_LEN steps (its sequence
    buffers)."""
    c = compiled["pad1"]
    with pytest.raises(TinyRNNError, match="unsupported"):
        c.step(c.new_state(), np.zeros(4, np.float32))
    with pytest.raises(TinyRNNError, match=f"max-seq-len is {STEPS}"):
        c.run_sample({"x": np.zeros((STEPS + 1, 4), np.float32)})


class _Conv(nn.Module):
    def __init__(self, forward, **options):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(4, 6, 3, **options))
        self.rnn = nn.GRU(6, 5, batch_first=True)
        self.fn = forward

    def forward(self, x):
        return self.fn(self, x)


def _through_gru(self, x):
    return self.rnn(self.encoder(x.transpose(1, 2)).transpose(1, 2))[0]


REFUSED = [
    (_Conv(_through_gru, padding=1, padding_mode="circular"),
     ["aten.pad.default", "at encoder.0 (Conv1d)", "padding_mode='circular' is not supported",
      "padding_mode='zeros'"]),
    (_Conv(lambda self, x: self.encoder(x.transpose(1, 2)), padding=1),
     ["returns a (B, C, T) value", "y.transpose(1, 2)"]),
    (_Conv(lambda self, x: self.encoder(x.transpose(1, 2)).transpose(1, 2), padding=1),
     ["the model has no recurrent layer", "optionally behind Conv1d layers"]),
]


@pytest.mark.parametrize("module, phrases", REFUSED,
                         ids=["circular", "bct-output", "no-recurrent-layer"])
def test_forms_tinyrnn_cannot_export_are_named(module, phrases):
    with pytest.raises(TinyRNNError) as info:
        read_program(capture(module.eval(), (torch.randn(2, 9, 4),)))
    text = str(info.value)
    for phrase in phrases:
        assert phrase in text, (phrase, text)


def test_a_sequence_too_short_for_the_conv_is_refused(compiled):
    """The valid (unpadded) kernel-3 conv has no output step for T = 1, and for T = 3 it gives
    one, too few for the kernel-2 conv after it: NAME_run returns NAME_ERR_SEQ_LEN. T = 4
    gives 2 steps, then 1."""
    c = compiled["valid-then-stride3-bilstm-head"]
    for steps in (1, 3):
        with pytest.raises(TinyRNNError, match="returned -2: a sequence length outside"):
            c.run_sample({"x": np.zeros((steps, 4), np.float32)})
    assert c.run_sample({"x": np.ones((4, 4), np.float32)})[0].shape == (3,)


def test_the_m4f_equals_the_host_bit_for_bit(compiled, tmp_path):
    """Every model of the table in one image under QEMU on the Cortex-M4F (mps2-an386): the
    window dot products run dot4_f's FPU path (VLDM, then VMUL and VADD per row in column
    order, the order of its portable C), so the outputs equal the host build's bit for bit."""
    jobs, expected = [], []
    for case in CASES:
        c = compiled[case.id]
        x = _x(case, 2, STEPS, 7)
        model = cross.ExportedModel.load(c.folder)
        jobs.append(cross.ModelInputs(model, tuple(split_inputs(model.interface, [x]))))
        expected.append(c.run(x))
    result = cross.run_qemu(cross.build(jobs, load_board("mps2-an386"), tmp_path), timeout=60)
    for case, job, outs, want in zip(CASES, jobs, result.outputs, expected):
        got = assemble_outputs(job.model.interface, outs, STEPS)
        for k, (g, w) in enumerate(zip(got, want)):
            assert np.array_equal(g, w), (case.id, k, np.argwhere(g != w)[:3])
