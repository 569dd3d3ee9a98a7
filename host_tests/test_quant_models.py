"""Fixed-point exports beyond the recurrent table: heads (Linear + activations, softmax),
10,000-step sequences (no drift), inputs far outside the calibrated range (saturation, never
wrap-around), the exact float->int16 conversion, and calibration handling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from models import Case, build
from quant_cases import (
    FORMATS,
    MIN_SQNR_DB,
    first_mismatch,
    random_inputs,
    reference_model,
    reference_outputs,
    sqnr_db,
    torch_call,
)
from tinyrnn.api import CalibrationWarning, export_program
from tinyrnn.errors import TinyRNNError
from tinyrnn.frontend.reader import capture
from tinyrnn.targets.host import load_many


class Head(nn.Module):
    """A recurrent module, then optionally a step, Linear layers and activations."""

    def __init__(self, kind: str, head: str, bidirectional: bool = False):
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = cls(5, 12, batch_first=True, bidirectional=bidirectional)
        width = 24 if bidirectional else 12
        self.fc1 = nn.Linear(width, 10)
        self.fc2 = nn.Linear(10, 6)
        self.head = head

    def forward(self, x):
        y, _ = self.rnn(x)
        if self.head == "softmax_last":
            return torch.softmax(self.fc2(torch.relu(self.fc1(y[:, -1]))), dim=-1)
        if self.head == "log_softmax_first":
            return torch.log_softmax(self.fc1(y[:, 0]), dim=-1)
        if self.head == "tanh_seq":
            return torch.tanh(self.fc1(y))
        if self.head == "sigmoid_seq":
            return torch.sigmoid(self.fc2(torch.relu(self.fc1(y))))
        raise ValueError(self.head)


HEADS = [("lstm", "softmax_last", False), ("gru", "log_softmax_first", True),
         ("rnn", "tanh_seq", False), ("lstm", "sigmoid_seq", True), ("gru", "softmax_last", False)]

# one unidirectional 2-layer case per cell kind, for long and saturated sequences
LONG = [Case(cell, False, 2, True, True, False) for cell in
        ("rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru")]


def _x(batch: int, steps: int, seed: int, scale: float = 1.0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(batch, steps, 5, generator=gen)).numpy()


DIRS: dict[tuple, object] = {}  # export folder of each compiled model


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant_models")
    dirs, info = [], []
    for k, (kind, head, bidi) in enumerate(HEADS):
        torch.manual_seed(100 + k)
        model = Head(kind, head, bidi).eval()
        program = capture(model, (torch.from_numpy(_x(2, 20, k)),))
        for fmt in FORMATS:
            name = f"head{k}_{fmt}"
            manifest = export_program(program, root / name, name=name, format=fmt,
                                      calibration=_x(32, 20, 50 + k))
            dirs.append(root / name)
            DIRS[("head", k, fmt)] = root / name
            info.append((("head", k, fmt), model, (), program, manifest))
    for case in LONG:
        model, args = build(case)
        program = capture(model, args)
        for fmt in FORMATS:
            name = f"{case.name}_{fmt}"
            manifest = export_program(program, root / name, name=name, format=fmt,
                                      calibration=random_inputs(case, model, args, 16, 24, 77))
            dirs.append(root / name)
            info.append((("long", case.cell, fmt), model, args, program, manifest))
    return {key: (c, model, args, program, manifest)
            for (key, model, args, program, manifest), c in zip(info, load_many(dirs))}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k", range(len(HEADS)), ids=[f"{h[0]}-{h[1]}" for h in HEADS])
def test_heads_equal_reference_and_track_torch(k: int, fmt: str, compiled):
    c, model, _, program, manifest = compiled[("head", k, fmt)]
    x = _x(6, 20, 200 + k)
    got = c.run(x)
    _, ref = reference_outputs(reference_model(program, manifest), c.interface, [x])
    for g, r in zip(got, ref):
        assert np.array_equal(g, r), first_mismatch(g, r)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    db = sqnr_db(expected, got[0])
    assert db >= MIN_SQNR_DB[fmt], f"SQNR {db:.1f} dB"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", LONG, ids=[c.cell for c in LONG])
def test_long_sequence_keeps_sqnr(case: Case, fmt: str, compiled):
    """10,000 steps: the SQNR over the last 1,000 steps is as good as the threshold (no drift,
    no runaway saturation), and the first 200 steps equal the reference exactly."""
    c, model, args, program, manifest = compiled[("long", case.cell, fmt)]
    x = _x(1, 10_000, 9)
    got = c.run(x)[0]
    expected = torch_call(model, args, [x])[0]
    assert sqnr_db(expected, got) >= MIN_SQNR_DB[fmt]
    tail = sqnr_db(expected[:, -1000:], got[:, -1000:])
    assert tail >= MIN_SQNR_DB[fmt], f"last 1000 steps: SQNR {tail:.1f} dB"
    head = x[:, :200]
    _, ref = reference_outputs(reference_model(program, manifest), c.interface, [head])
    assert np.array_equal(c.run(head)[0], ref[0])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", LONG, ids=[c.cell for c in LONG])
def test_inputs_far_outside_the_calibrated_range_saturate(case: Case, fmt: str, compiled):
    """x 100 times larger than the calibration data: the input saturates (the reference's
    int16 input hits the limits), the C still equals the reference (which saturates by
    construction, so a wrap-around anywhere would differ), and every output is finite and
    inside the range the cell allows."""
    from tinyrnn.check.reference import quantize_batch
    from tinyrnn.check.simulate import batch_from_arrays

    c, _, _, program, manifest = compiled[("long", case.cell, fmt)]
    x = _x(3, 30, 11, scale=100.0)
    q = reference_model(program, manifest)
    x_q = quantize_batch(q, batch_from_arrays(q.model, [x])).x
    assert x_q.max() == 32767 and x_q.min() == -32768
    got = c.run(x)
    _, ref = reference_outputs(q, c.interface, [x])
    for g, r in zip(got, ref):
        assert np.all(np.isfinite(g))
        assert np.array_equal(g, r), first_mismatch(g, r)
    if case.cell in ("rnn_tanh", "lstm", "gru"):
        assert np.abs(got[0]).max() <= 1.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_float_to_int16_conversion_is_exact_at_ties_and_extremes(fmt: str, compiled):
    """The float API's conversion equals the reference's round-half-up on ties, on the
    neighbours of ties, on huge values and on infinities."""
    c, _, _, program, manifest = compiled[("long", "gru", fmt)]
    frac = manifest["interface"]["quantized"]["forward_inputs"][0]["frac"][0]
    step = np.float32(2.0**-frac)
    ties = (np.arange(-40, 40, dtype=np.float32) + np.float32(0.5)) * step
    values = np.concatenate([
        ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
        np.array([3e38, -3e38, np.inf, -np.inf, 1e-45, -1e-45, 0.0, -0.0], np.float32),
        np.float32(32767.5) * step * np.array([1, -1, 1.0000001, -1.0000001], np.float32),
    ]).astype(np.float32)
    values = np.resize(values, (len(values) // 5 + 1) * 5)
    x = values.reshape(-1, 5)
    q = reference_model(program, manifest)
    from tinyrnn.check.reference import dequantize, quantize_batch, run
    from tinyrnn.check.simulate import Batch

    trace = run(q, quantize_batch(q, Batch(x[None])))
    want = dequantize(q, 0, trace.outputs[0])[0].reshape(-1)
    got = c.run_sample({"x": x})[0]
    assert np.array_equal(got, want), first_mismatch(got, want)


def test_manifest_records_formats_scales_and_ranges(compiled):
    _, _, _, _, manifest = compiled[("long", "lstm", "w8a16")]
    quant = manifest["quantization"]
    assert quant["calibration"] == {"source": "calibration data", "sequences": 16, "steps": 24}
    assert quant["input"]["observed_max_abs"] > 0 and "frac" in quant["input"]
    layer = quant["layers"][0]
    assert {"output", "cell", "observed_max_abs", "cell_observed_max_abs"} <= set(layer)
    part = layer["directions"][0]["accumulators"]["i"]["parts"][0]
    assert len(part["weight_scale"]) == 7 and len(part["requant_multiplier"]) == 7
    last = quant["layers"][-1]["output"]["frac"]
    assert manifest["interface"]["quantized"]["step_output_frac"] == last
    json.dumps(manifest)


def test_without_calibration_the_example_is_used_with_a_warning(tmp_path):
    model, args = build(LONG[2])
    with pytest.warns(CalibrationWarning, match="calibrated on the example input"):
        manifest = export_program(capture(model, args), tmp_path / "m", name="m")
    assert manifest["format"] == "w8a16"
    assert manifest["quantization"]["calibration"]["source"] == "example input"


def test_calibration_data_of_the_wrong_shape_is_refused(tmp_path):
    model, args = build(LONG[2])
    with pytest.raises(TinyRNNError, match="calibration data: input in0 .* expected"):
        export_program(capture(model, args), tmp_path / "m", name="m",
                       calibration=np.zeros((4, 10, 3), np.float32))
    with pytest.raises(TinyRNNError, match="unknown format 'int8'"):
        export_program(capture(model, args), tmp_path / "m", name="m", format="int8")


@pytest.mark.parametrize("fmt", FORMATS)
def test_cortex_m_equals_the_host_bit_for_bit(fmt: str, compiled):
    """Under QEMU, a Cortex-M3 (soft float) and a Cortex-M4F give exactly the host's outputs,
    ties and saturating inputs included: the float<->int16 conversions are exact and the rest
    is integer arithmetic. Needs arm-none-eabi-gcc and qemu-system-arm (tools/setup.sh)."""
    from tinyrnn.targets import cross
    from tinyrnn.targets.boards import load_board

    c, _, _, _, manifest = compiled[("head", 0, fmt)]
    frac = manifest["interface"]["quantized"]["forward_inputs"][0]["frac"][0]
    x = _x(3, 20, 300)
    x[0, 0] = np.float32([0.5, 1.5, -0.5, 32767.5, -32768.5]) * np.float32(2.0**-frac)
    x[1, :4] *= 1e6
    host = c.run(x)
    for board in ("mps2-an385", "mps2-an386"):
        got, _, _ = cross.run(DIRS[("head", 0, fmt)], load_board(board), [x])
        for g, h in zip(got, host):
            assert np.array_equal(g.view(np.uint32), h.view(np.uint32)), board
