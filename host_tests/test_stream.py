"""Streaming a causal Conv1d front-end (issue 12 item 3): NAME_step over T steps equals NAME_run
over the same sequence (bit for bit in every format), the integer runs equal the bit-exact
reference and the float runs torch; the plan evaluator's step loop equals the reference; and
``--stream`` refuses a model that cannot stream, naming each layer and why. Every model of the
table is compiled in one host module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from c_checks import compiler_warnings
from quant_cases import first_mismatch, reference_model, reference_run
from sanitize import Target, sanitize
from tinyrnn.api import export_program
from tinyrnn.check import evaluate, reference
from tinyrnn.cli import main
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.reader import capture
from tinyrnn.passes.lower import lower
from tinyrnn.targets import cross
from tinyrnn.targets.costs import reference_board, resolve_core
from tinyrnn.targets.emulator import Emulator
from tinyrnn.targets.host import load_many
from tinyrnn.targets.profile_image import RUN_STEPS, build_image

STEPS = 10
TOL = 1e-5


class DilatedGRU(nn.Module):
    """Conv1d causal k=3 (F.pad), BatchNorm, ReLU, a dilated causal conv (ConstantPad1d), GRU,
    Linear on every step."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3)
        self.bn = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 6, 3, dilation=2)
        self.pad2 = nn.ConstantPad1d((4, 0), 0.0)
        self.gru = nn.GRU(6, 7, batch_first=True)
        self.fc = nn.Linear(7, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(F.pad(x.transpose(1, 2), (2, 0)))))
        y = self.c2(self.pad2(y)).transpose(1, 2)
        return self.fc(self.gru(y)[0])


class DepthwiseLSTM(nn.Module):
    """A depthwise causal conv k=5 on a (B, C, T) input, a kernel-1 conv, LSTM, the last step
    through a Linear."""

    def __init__(self):
        super().__init__()
        self.dw = nn.Conv1d(3, 3, 5, groups=3, padding=0, bias=False)
        self.pw = nn.Conv1d(3, 5, 1)
        self.lstm = nn.LSTM(5, 6, batch_first=True)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):  # x (B, C, T)
        y = torch.tanh(self.pw(self.dw(F.pad(x, (4, 0)))))
        return self.fc(self.lstm(y.transpose(1, 2))[0][:, -1])


class Residual(nn.Module):
    """A residual causal conv block, y = x + relu(conv(x)), before a GRU (float32: the add of
    two data-path values has no integer form yet)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, dilation=3)
        self.gru = nn.GRU(4, 5, batch_first=True)

    def forward(self, x):
        y = x.transpose(1, 2)
        y = y + torch.relu(self.conv(F.pad(y, (6, 0))))
        return self.gru(y.transpose(1, 2))[0]


MODELS = {"dilated-gru": (DilatedGRU, "btc"), "depthwise-lstm": (DepthwiseLSTM, "bct"),
          "residual": (Residual, "btc")}
TABLE = [(m, f) for m in ("dilated-gru", "depthwise-lstm") for f in ("float32", "w8a16",
                                                                     "w16a16")] \
    + [("residual", "float32")]
IDS = [f"{m}-{f}" for m, f in TABLE]


def _x(model: str, batch: int, steps: int, seed: int) -> np.ndarray:
    """Inputs in the forward's layout: (B, T, C), or (B, C, T) for the bct model."""
    x = np.random.default_rng(seed).standard_normal((batch, steps, 4 if model != "depthwise-lstm"
                                                     else 3)).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 1)) if MODELS[model][1] == "bct" else x


def _time_major(model: str, x: np.ndarray) -> np.ndarray:
    """One sample's input as the C takes it: (T, C)."""
    return x.T if MODELS[model][1] == "bct" else x


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    built, dirs = [], []
    for k, (model, fmt) in enumerate(TABLE):
        torch.manual_seed(k)
        module = MODELS[model][0]().eval()
        program = capture(module, (torch.from_numpy(_x(model, 2, STEPS, k)),))
        manifest = export_program(program, root / f"s{k}", name=f"stream{k}", format=fmt,
                                  calibration=None if fmt == "float32"
                                  else _x(model, 16, STEPS, 100 + k), stream=True)
        built.append((module, program, manifest))
        dirs.append(root / f"s{k}")
    return {key: (c, *b) for key, c, b in zip(TABLE, load_many(dirs), built)}


def _steps(c, x: np.ndarray, q: bool = False) -> np.ndarray:
    """NAME_step (NAME_step_q) over every step of one sample (T, C) from NAME_reset."""
    state = c.new_state()
    step = c.step_q if q else c.step
    return np.stack([step(state, x_t) for x_t in x])


@pytest.mark.parametrize(("model", "fmt"), TABLE, ids=IDS)
def test_step_equals_run_and_the_reference(model: str, fmt: str, exported):
    compiled, module, program, manifest = exported[(model, fmt)]
    assert manifest["interface"]["has_step"]
    x = _x(model, 2, STEPS, 7)
    run = compiled.run(x)[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    selects = run.ndim == 2  # the last step only: NAME_step's output at that step
    for b in range(x.shape[0]):
        got = _steps(compiled, _time_major(model, x[b]))
        want = run[b][None] if selects else run[b]
        assert np.array_equal(got[-1:] if selects else got, want), \
            f"sample {b}: step vs run: {first_mismatch(got[-1:] if selects else got, want)}"
        if selects:  # each earlier step equals NAME_run over the sequence up to it
            for t in range(STEPS - 1):
                prefix = x[b:b + 1, :, :t + 1] if MODELS[model][1] == "bct" \
                    else x[b:b + 1, :t + 1]
                head = compiled.run(np.ascontiguousarray(prefix))[0][0]
                assert np.array_equal(got[t], head), f"sample {b}, step {t}"
    if fmt == "float32":
        np.testing.assert_allclose(run, expected, atol=TOL, rtol=0)
        return
    q = reference_model(program, manifest)
    _, ref_float, batch_q, trace = reference_run(q, compiled.interface, [x])
    assert np.array_equal(run, ref_float[0]), first_mismatch(run, ref_float[0])
    # the reference's streaming form: the whole-sequence integers with the head applied at
    # every step (all_steps); the int16 API's step loop and the plan evaluator's equal it
    every = reference.run(q, batch_q, all_steps=True).outputs[0]
    last = every[:, -1] if selects else every
    assert np.array_equal(last, trace.outputs[0]), first_mismatch(last, trace.outputs[0])
    for b in range(x.shape[0]):
        got = _steps(compiled, batch_q.x[b], q=True)
        assert np.array_equal(got, every[b]), \
            f"sample {b} (int16 API): {first_mismatch(got, every[b])}"
    planned = evaluate.run(lower(q.model, manifest["name"], q), batch_q.x, steps=True)[0]
    assert np.array_equal(planned, every), first_mismatch(planned, every)


def test_reset_restarts_the_stream(exported):
    """Windows zero at NAME_reset: a second stream after a reset equals NAME_run of its own
    sequence, not a continuation of the first."""
    compiled = exported[("dilated-gru", "w8a16")][0]
    first, second = _x("dilated-gru", 2, STEPS, 11)
    state = compiled.new_state()
    for x_t in first:
        compiled.step(state, x_t)
    getattr(compiled.lib, f"{compiled.name}_reset")(state)
    fresh = np.stack([compiled.step(state, x_t) for x_t in second])
    assert np.array_equal(fresh, compiled.run(second[None])[0][0])


def test_windows_are_in_the_state(exported):
    """Each conv with a span > 1 keeps span x channels values in NAME_state_t (a kernel-1
    conv none), and the step's scratch is one step's vectors, not NAME_MAX_SEQ_LEN steps."""
    compiled, _, _, manifest = exported[("dilated-gru", "w16a16")]
    header = (compiled.folder / f"{compiled.name}.h").read_text()
    assert "int16_t conv0_step_win[12];" in header  # kernel 3: 3 steps x 4 channels
    assert "int16_t conv2_step_win[40];" in header  # kernel 3, dilation 2: 5 steps x 8
    assert manifest["sizes"]["state_bytes"] == 2 * (12 + 40 + 7)  # the windows and GRU h
    lstm = exported[("depthwise-lstm", "float32")][0]
    text = (lstm.folder / f"{lstm.name}.h").read_text()
    assert "float conv0_step_win[15];" in text and "conv1_step_win" not in text
    widest = max(8, 7 * 2 + 6)  # a conv's output, or the GRU's xh
    for line in header.splitlines():
        if "scratch of" in line:
            size = int(line.split("[")[1].split("]")[0])
            assert size <= widest, line


def test_the_step_on_an_emulated_cortex_m4_equals_the_host(exported, tmp_path):
    """The w8a16 CRNN built for the Cortex-M4 (DSP unit kernels, the SMLAD conv helper) and run
    under unicorn: NAME_step over the profile's steps from NAME_reset equals the host's step
    loop and NAME_run there, bit for bit."""
    compiled = exported[("dilated-gru", "w8a16")][0]
    core = resolve_core("cortex-m4")
    image = build_image(cross.ExportedModel.load(compiled.folder), reference_board(core),
                        tmp_path)
    emu = Emulator(image, core)
    x = _x("dilated-gru", 1, RUN_STEPS, 21)[0]
    emu.write("tinyrnn_profile_x", x)
    state, x_addr = emu.address("tinyrnn_profile_state"), emu.address("tinyrnn_profile_x")
    out_addr, width = emu.address("tinyrnn_profile_out"), 3
    emu.call(f"{compiled.name}_reset", state)
    got = []
    for t in range(RUN_STEPS):
        status, _ = emu.call(f"{compiled.name}_step", state, x_addr + 4 * 4 * t, out_addr)
        assert status == 0
        got.append(emu.read("tinyrnn_profile_out", np.float32, width))
    got = np.stack(got)
    host = _steps(compiled, x)
    assert np.array_equal(got, host), first_mismatch(got, host)
    assert np.array_equal(got, compiled.run(x[None])[0][0])


def test_the_streams_are_clean_under_the_sanitizers(exported, tmp_path):
    """The CRNN in every format under AddressSanitizer and UBSan: random runs and step loops
    (float and int16 APIs, values at the formats' extremes, resets between), every return
    code checked; a window shifted or filled out of its bounds would be caught here."""
    targets = [Target(c.folder, manifest, 300)
               for (model, _), (c, _, _, manifest) in exported.items()
               if model == "dilated-gru"]
    result = sanitize(targets, tmp_path / "sanitize", batches=1)
    assert all(result.steps[t.name] >= 300 for t in targets), result.steps


def test_generated_files_carry_nothing_unused(exported):
    sources = [c.folder / f"{c.name}.c" for c, *_ in exported.values()]
    assert compiler_warnings(sources) == []


class NonCausal(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(4, 6, 3, padding=1), nn.ReLU(),
                                     nn.Conv1d(6, 6, 3, stride=2, padding=(2,)))
        self.gru = nn.GRU(6, 5, batch_first=True)

    def forward(self, x):
        return self.gru(self.encoder(x.transpose(1, 2)).transpose(1, 2))[0].mean(1)


class ShortPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 5)
        self.gru = nn.GRU(4, 3, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.gru(self.conv(F.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2))[0]


class Windows(nn.Module):
    """A causal conv, then a max pool and a reflect pad of the time axis (windows over time)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3)
        self.pool = nn.MaxPool1d(2)
        self.gru = nn.GRU(4, 3, batch_first=True)

    def forward(self, x):
        y = self.pool(self.conv(F.pad(x.transpose(1, 2), (2, 0))))
        return self.gru(F.pad(y, (1, 0), mode="reflect").transpose(1, 2))[0]


REFUSED = [
    (NonCausal, ["encoder.0 (Conv1d) pads 1 step on the right, so a step would need a future "
                 "input: pad on the left only, e.g. F.pad(x, (2, 0)) before a "
                 "Conv1d(padding=0)",
                 "encoder.2 (Conv1d) has stride 2",
                 "encoder.2 (Conv1d) pads 2 steps on the right",
                 "the mean over time (PoolTime) reads every step"]),
    (ShortPad, ["conv (Conv1d) pads 2 steps on the left where its span needs 4",
                "pad exactly (4, 0)", "gru layer 0 is bidirectional"]),
    (Windows, ["the max window over time (pool) reads neighbouring steps",
               "the reflect padding of the time axis reads the sequence's ends"]),
]


@pytest.mark.parametrize(("module", "phrases"), REFUSED, ids=["right-pad-stride-pool",
                                                             "short-pad-bidirectional",
                                                             "pool-and-reflect-pad"])
def test_stream_refuses_what_cannot_stream(module, phrases, tmp_path, capsys):
    """``--stream`` on a model that cannot stream: exit 2, one error naming every layer and
    the rewrite, nothing written; without it the export works and NAME_step is refused."""
    args = (torch.randn(1, 9, 4),)
    torch.export.save(torch.export.export(module().eval(), args), str(tmp_path / "m.pt2"))
    argv = ["export", str(tmp_path / "m.pt2"), "--format", "float32", "--name", "net"]
    assert main(argv + ["--out", str(tmp_path / "c"), "--stream"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --stream asks for a net_step") and "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    assert not (tmp_path / "c").exists()
    with pytest.raises(TinyRNNError, match="cannot give one"):
        export_program(capture(module().eval(), args), tmp_path / "api", format="float32",
                       stream=True)
    assert main(argv + ["--out", str(tmp_path / "ok")]) == 0
    header = (tmp_path / "ok" / "net.h").read_text()
    assert "_step_win" not in header
    assert "ERR_UNSUPPORTED; /*" in (tmp_path / "ok" / "net.c").read_text()
