"""LSTMs whose cell-state range is uneven across units (a few units' c grows to ~40 while the
others stay near 1, as in Silero VAD's decoder): the calibration gives them a 32-bit c, the C
equals the bit-exact reference (float and int16 API, c0 in and c_n out), the plan evaluator
equals the reference, and w16a16 gains at least 20 dB of SQNR against torch over w8a16.
docs/fixed-point.md, "The cell state"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quant_cases import FORMATS, first_mismatch, reference_model, reference_run, sqnr_db
from tinyrnn.api import export_program
from tinyrnn.check import evaluate
from tinyrnn.commands import verify
from tinyrnn.frontend.reader import archive_bytes, capture, trace
from tinyrnn.passes.lower import lower
from tinyrnn.passes.quantize import CELL32_SPREAD
from tinyrnn.targets.host import load_many

STEPS = 48
INPUT = 8
FOLDER: dict = {}  # the fixture's export folder


class Uneven(nn.Module):
    """A batch-first LSTM, given (h0, c0) or not, returning (y, (h_n, c_n)); in every layer a
    few units have a large input and forget bias and a positive g bias, so their c grows by
    about 0.8 per step while the other units' c stays near 1."""

    def __init__(self, hidden: int, layers: int, bidirectional: bool, large: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.rnn = nn.LSTM(INPUT, hidden, layers, batch_first=True, bidirectional=bidirectional)
        units = torch.arange(large) * (hidden // large)
        with torch.no_grad():
            for name, b in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    b[units] += 8.0
                    b[hidden + units] += 8.0
                    b[2 * hidden + units] += 1.0

    def forward(self, x, h0=None, c0=None):
        if h0 is None:
            return self.rnn(x)
        return self.rnn(x, (h0, c0))


# (hidden, layers, bidirectional, large units, initial state)
CASES = [(16, 1, False, 1, True), (12, 2, True, 3, True), (24, 1, False, 3, False)]
IDS = [f"H{h}-L{n}-{'bi' if b else 'uni'}-{k}large-{'h0c0' if s else 'zero'}"
       for h, n, b, k, s in CASES]


def _arrays(model: Uneven, case: tuple, batch: int, seed: int) -> list[np.ndarray]:
    """x ~ N(0, 1); with initial state, the state the model reaches after 16 random steps."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, STEPS, INPUT, generator=gen)
    if not case[4]:
        return [x.numpy()]
    with torch.no_grad():
        _, (h, c) = model(torch.randn(batch, 16, INPUT, generator=gen))
    return [x.numpy(), h.numpy(), c.numpy()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("cellstate")
    dirs, info = [], []
    for k, case in enumerate(CASES):
        model = Uneven(*case[:4], seed=300 + k).eval()
        example = _arrays(model, case, 1, 10 + k)
        program = capture(model, tuple(torch.from_numpy(a) for a in example))
        calibration = _arrays(model, case, 16, 20 + k)
        for fmt in FORMATS:
            name = f"uneven{k}_{fmt}"
            manifest = export_program(program, root / name, name=name, format=fmt,
                                      max_seq_len=STEPS, calibration=calibration)
            dirs.append(root / name)
            info.append(((k, fmt), model, program, manifest))
        (root / f"uneven{k}.pt2").write_bytes(archive_bytes(trace(
            model, tuple(torch.from_numpy(a) for a in example))))
    FOLDER["root"] = root
    return {key: (c, model, program, manifest)
            for (key, model, program, manifest), c in zip(info, load_many(dirs))}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k", range(len(CASES)), ids=IDS)
def test_uneven_cell_state_is_32_bit_and_bit_exact(k: int, fmt: str, exported):
    compiled, model, program, manifest = exported[(k, fmt)]
    for entry in manifest["quantization"]["layers"]:
        if "cell" in entry:  # the calibration saw the uneven range, and chose 32 bits
            assert entry["cell_observed_max_abs"] >= \
                CELL32_SPREAD * entry["cell_observed_median_unit_max_abs"]
            assert entry["cell"]["bits"] == 32 and entry["cell_io"]["bits"] == 16
    arrays = _arrays(model, CASES[k], 3, 40 + k)
    q = reference_model(program, manifest)
    ref_int, ref_float, batch_q, trace = reference_run(q, compiled.interface, arrays)
    plan = lower(q.model, manifest["name"], q)
    for n, (g, r) in enumerate(zip(evaluate.run(plan, batch_q.x, batch_q.h0, batch_q.c0),
                                   trace.outputs)):
        assert np.array_equal(g, r), f"plan evaluator, out{n}: {first_mismatch(g, r)}"
    got = compiled.run(*arrays)
    for n, (g, r) in enumerate(zip(got, ref_float)):
        assert np.array_equal(g, r), f"out{n}: {first_mismatch(g, r)}"
    for b in range(3):
        sample = {"x": batch_q.x[b]}
        if batch_q.h0 is not None:
            sample.update(h0=batch_q.h0[b], c0=batch_q.c0[b])
        for n, (g, r) in enumerate(zip(compiled.run_sample_q(sample), ref_int)):
            want = np.reshape(np.take(r, b, axis=compiled.interface["outputs"][n]["batch_axis"]),
                              -1)
            assert np.array_equal(g, want), f"sample {b} out{n} (int16): {first_mismatch(g, want)}"


@pytest.mark.parametrize("k", range(len(CASES)), ids=IDS)
def test_w16a16_gains_20_db_over_w8a16_on_uneven_cell_state(k: int, exported):
    """SQNR of the output sequence against torch: the cell state no longer limits w16a16.
    Initial states are zero here: c0 and c_n cross the C API as int16 in c's 16-bit format
    (docs/fixed-point.md), so a c0 from outside is rounded to that format once."""
    model = exported[(k, FORMATS[0])][1]
    arrays = _arrays(model, CASES[k], 8, 60 + k)
    arrays = arrays[:1] + [np.zeros_like(a) for a in arrays[1:]]
    with torch.no_grad():
        want = model(*(torch.from_numpy(a) for a in arrays))[0].numpy()
    db = {fmt: sqnr_db(want, exported[(k, fmt)][0].run(*arrays)[0]) for fmt in FORMATS}
    assert db["w16a16"] >= db["w8a16"] + 20.0, db


def test_verify_prints_each_states_format_and_range(exported):
    """verify, per recurrent layer: h and c with their formats and observed ranges; the range
    on the verify input is torch's (the largest |h| is the largest |y|, |c| reaches |c_n|)."""
    compiled, model, _, manifest = exported[(0, "w16a16")]
    root = FOLDER["root"]
    arrays = _arrays(model, CASES[0], 2, 80)
    result = verify(root / "uneven0.pt2", root / "uneven0_w16a16", arrays)
    assert result.ok
    h, c = result.layers[0].states
    with torch.no_grad():
        y, (_, c_n) = model(*(torch.from_numpy(a) for a in arrays))
    recorded = manifest["quantization"]["layers"][0]
    assert (h.state, h.format, h.bits) == ("h", recorded["output"]["format"], 16)
    assert (c.state, c.format, c.bits) == ("c", recorded["cell"]["format"], 32)
    assert h.observed_max_abs == pytest.approx(float(y.abs().max()), rel=1e-5)
    assert c.observed_max_abs >= float(c_n.abs().max()) * (1 - 1e-5)
    assert c.calibration_max_abs == recorded["cell_observed_max_abs"]
    assert f"c {c.format} (32-bit), |c| <= {c.observed_max_abs:.4g} here" in result.text()
