"""nn.Conv1d in the integer formats (issue 12 item 2): a table of conv options x {w8a16,
w16a16}, every model of the table compiled in one host module; the C against the bit-exact
reference (float API and int16 API), the plan evaluator against the reference, and the C
against torch (SQNR)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from c_checks import compiler_warnings
from quant_cases import first_mismatch, reference_model, reference_run, sqnr_db
from test_conv1d import ConvCase, ConvRNN, _x
from tinyrnn.api import export_program
from tinyrnn.check import evaluate
from tinyrnn.frontend.reader import capture
from tinyrnn.io import assemble_outputs, split_inputs
from tinyrnn.passes.lower import lower
from tinyrnn.passes.quantize import QConv1d
from tinyrnn.targets import cross
from tinyrnn.targets.boards import load_board
from tinyrnn.targets.host import load_many

pytestmark = pytest.mark.filterwarnings(  # torch's note on padding='same' with an even kernel
    "ignore:Using padding='same' with even kernel lengths:UserWarning")

FORMATS = ("w8a16", "w16a16")
MIN_SQNR_DB = {"w8a16": 35.0, "w16a16": 55.0}
STEPS = 12
CASES = [
    ConvCase("k3-pad1", ({"out_channels": 6, "kernel_size": 3, "padding": 1},)),
    ConvCase("same-even-kernel", ({"out_channels": 5, "kernel_size": 4, "padding": "same"},),
             seed=1),
    ConvCase("same-dilation3", ({"out_channels": 6, "kernel_size": 3, "padding": "same",
                                 "dilation": 3},), seed=2),
    ConvCase("groups2", ({"out_channels": 6, "kernel_size": 3, "padding": 1, "groups": 2},),
             seed=3),
    ConvCase("depthwise-nobias", ({"out_channels": 4, "kernel_size": 5, "padding": 2,
                                   "groups": 4, "bias": False},), seed=4),
    ConvCase("conv-reads-input", ({"out_channels": 6, "kernel_size": 3, "padding": 1},),
             layout="bct", seed=5),
    ConvCase("two-convs-bilstm-head", ({"out_channels": 8, "kernel_size": 3, "padding": 1},
                                       {"out_channels": 8, "kernel_size": 3, "padding": "same",
                                        "groups": 8}),
             rnn="bilstm", head=True, seed=6),
    ConvCase("kernel1-time-major", ({"out_channels": 3, "kernel_size": 1},), rnn="gru_tm",
             seed=7),
    ConvCase("wide-depthwise-k1", ({"out_channels": 4, "kernel_size": 1, "groups": 4},),
             seed=8),
    # the length changes
    ConvCase("stride2-pad1-reads-input", ({"out_channels": 6, "kernel_size": 3, "padding": 1,
                                           "stride": 2},), layout="bct", seed=9),
    ConvCase("valid-dilation2-then-stride3-head", ({"out_channels": 6, "kernel_size": 3,
                                                    "dilation": 2},
                                                   {"out_channels": 6, "kernel_size": 2,
                                                    "stride": 3, "groups": 2}),
             rnn="bilstm", head=True, seed=10),
    # the blocked int8 helper (4 output channels per block, SMLAD on DSP cores): one group,
    # dilation 1, channels in multiples of 4; taps cut at both ends, and a stride
    ConvCase("blocked-k4-stride2-pad2", ({"out_channels": 8, "kernel_size": 4, "stride": 2,
                                          "padding": 2},), seed=11),
    # any channel counts take it too: Silero's shapes in small (a one-channel window conv,
    # an STFT; odd channel counts; a stride 2 with padding)
    ConvCase("stft-c1-k8-stride4-nobias", ({"out_channels": 6, "kernel_size": 8, "stride": 4,
                                            "bias": False},), input_size=1, seed=12),
    ConvCase("odd-c9-o5-k3-pad1", ({"out_channels": 5, "kernel_size": 3, "padding": 1},),
             input_size=9, seed=13),
    ConvCase("c6-o10-k3-stride2-pad1", ({"out_channels": 10, "kernel_size": 3, "stride": 2,
                                         "padding": 1},), input_size=6, seed=14),
]
PARAMS = [(case, fmt) for case in CASES for fmt in FORMATS]
IDS = [f"{case.id}-{fmt}" for case, fmt in PARAMS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv1d_int")
    built, dirs = [], []
    for k, (case, fmt) in enumerate(PARAMS):
        torch.manual_seed(case.seed)
        module = ConvRNN(case).eval()
        program = capture(module, (torch.from_numpy(_x(case, 2, STEPS, case.seed)),))
        calibration = _x(case, 32, STEPS, case.seed + 1000)
        manifest = export_program(program, root / f"c{k}", name=f"conv{k}", format=fmt,
                                  calibration=calibration)
        built.append((module, program, manifest))
        dirs.append(root / f"c{k}")
    return {(case.id, fmt): (c, *b) for (case, fmt), c, b in zip(PARAMS, load_many(dirs),
                                                                 built)}


@pytest.mark.parametrize(("case", "fmt"), PARAMS, ids=IDS)
def test_c_equals_reference_and_tracks_torch(case: ConvCase, fmt: str, exported):
    compiled, module, program, manifest = exported[(case.id, fmt)]
    q = reference_model(program, manifest)
    assert any(isinstance(layer, QConv1d) for layer in q.layers)
    for batch, steps in ((3, STEPS), (2, 8)):
        x = _x(case, batch, steps, case.seed + 2000 + steps)
        ref_int, ref_float, batch_q, trace = reference_run(q, compiled.interface, [x])
        plan = lower(q.model, manifest["name"], q)
        planned = evaluate.run(plan, batch_q.x, batch_q.h0, batch_q.c0)
        for k, (g, r) in enumerate(zip(planned, trace.outputs)):
            assert np.array_equal(g, r), f"plan evaluator, out{k}: {first_mismatch(g, r)}"
        got = compiled.run(x)
        for k, (g, r) in enumerate(zip(got, ref_float)):
            assert g.shape == r.shape, f"out{k}"
            assert np.array_equal(g, r), f"out{k}, T={steps}: {first_mismatch(g, r)}"
        for b in range(batch):
            outs_q = compiled.run_sample_q({"x": batch_q.x[b]})
            for k, (g, r) in enumerate(zip(outs_q, ref_int)):
                want = np.reshape(np.take(r, b, axis=compiled.interface["outputs"][k]
                                          ["batch_axis"]), -1)
                assert np.array_equal(g, want), f"sample {b} out{k} (int16 API): " \
                                                f"{first_mismatch(g, want)}"
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        db = sqnr_db(expected, got[0])
        assert db >= MIN_SQNR_DB[fmt], f"T={steps}: SQNR {db:.1f} dB < {MIN_SQNR_DB[fmt]} dB"


def test_the_table_covers_every_conv_helper(exported):
    """Weights of 8 and 16 bits, with 32- and 64-bit sums where the bounds say."""
    kinds = {(layer["accumulator"]["weight_bits"],
              layer["accumulator"]["parts"][0]["accumulator_bits"])
             for _, _, _, manifest in exported.values()
             for layer in manifest["quantization"]["layers"] if layer["kind"] == "conv1d"}
    assert {(8, 32), (16, 32), (16, 64)} <= kinds


def test_the_manifest_records_the_conv_quantization(exported):
    _, module, _, manifest = exported[("groups2", "w8a16")]
    conv = next(layer for layer in manifest["quantization"]["layers"]
                if layer["kind"] == "conv1d")
    part = conv["accumulator"]["parts"][0]
    assert part["columns"] == [0, 3 * 2]  # kernel x in / groups
    assert len(part["weight_scale"]) == 6  # one scale per output channel
    weight = module.convs[0].weight.detach().numpy()
    peak = np.abs(weight).max(axis=(1, 2))
    np.testing.assert_allclose(np.array(part["weight_scale"]) * 127, peak, rtol=1e-6)


def test_the_blocked_helper_runs_where_it_applies(exported):
    """int8 weights with int32 sums or int16 with int64 sums, one group and dilation 1, any
    input channel count and at least 4 output channels: a blocked helper; any other conv the
    per-tap one."""
    seen = set()
    for (case_id, fmt), (c, _, _, manifest) in exported.items():
        text = (c.folder / f"{c.name}.c").read_text()
        convs = [layer for layer in manifest["layers"] if layer["kind"] == "conv1d"]
        quantized = [layer for layer in manifest["quantization"]["layers"]
                     if layer["kind"] == "conv1d"]
        assert len(convs) == len(quantized) > 0
        for conv, q in zip(convs, quantized):
            bits = (q["accumulator"]["weight_bits"],
                    q["accumulator"]["parts"][0]["accumulator_bits"])
            blocked = (conv["groups"] == 1 and conv["dilation"] == 1
                       and conv["out_channels"] >= 4 and bits in ((8, 32), (16, 64)))
            helper = f"conv1d_{'x4_' if blocked else ''}w{bits[0]}_acc{bits[1]}("
            assert helper in text, (case_id, fmt, helper)
            seen.add(blocked)
    assert seen == {True, False}


@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an385", "mps3-an547"],
                         ids=["m4-dsp", "m3", "m55"])
def test_the_boards_equal_the_host_bit_for_bit(board, exported, tmp_path):
    """Every w8a16 model of the table (and five w16a16 ones) in one image under QEMU: the
    Cortex-M4 and the M55 run the blocked helpers' SMLAD/SMLALD paths, the M3 their portable
    C; all equal the host build, which equals the reference."""
    chosen = [key for key in exported if key[1] == "w8a16"] + [
        ("k3-pad1", "w16a16"), ("blocked-k4-stride2-pad2", "w16a16"),
        ("two-convs-bilstm-head", "w16a16"), ("odd-c9-o5-k3-pad1", "w16a16"),
        ("stft-c1-k8-stride4-nobias", "w16a16")]
    cases = {case.id: case for case in CASES}
    jobs, expected = [], []
    for key in chosen:
        compiled = exported[key][0]
        x = _x(cases[key[0]], 2, STEPS, 7)
        model = cross.ExportedModel.load(compiled.folder)
        jobs.append(cross.ModelInputs(model, tuple(split_inputs(model.interface, [x]))))
        expected.append(compiled.run(x))
    result = cross.run_qemu(cross.build(jobs, load_board(board), tmp_path), timeout=60)
    for key, job, outs, want in zip(chosen, jobs, result.outputs, expected):
        got = assemble_outputs(job.model.interface, outs, STEPS)
        for k, (g, w) in enumerate(zip(got, want)):
            assert np.array_equal(g, w), f"{key} out{k} on {board}: {first_mismatch(g, w)}"


def test_generated_files_carry_nothing_unused(exported):
    sources = [c.folder / f"{c.name}.c" for c, *_ in exported.values()]
    assert compiler_warnings(sources) == []
