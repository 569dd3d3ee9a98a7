"""SQNR against torch of LSTMs whose cell-state range is uneven across units, w8a16 and w16a16.

    python bench/cell_state.py

Each model is a single-layer batch-first LSTM (I = H) with seed-fixed random weights. In the
"uneven" models a few units get a large input and forget bias and a positive g bias, so their
cell state c grows to about 40 over the sequence while the other units stay near 1 (as in
Silero VAD's decoder, where one unit of 128 reaches |c| = 49). The "even" models are the same
without the large units. Calibration and test inputs are N(0, 1), drawn with different seeds.

The figures are those of the bit-exact integer reference (tinyrnn.check.reference), which the
C equals element for element (host_tests/test_quant_*.py); the SQNR is over the output
sequence against torch (float32). Also printed: the largest observed |c| and the median over
units of each unit's largest |c|.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from tinyrnn.api import quantize_model
from tinyrnn.check import reference
from tinyrnn.check.simulate import batch_from_arrays
from tinyrnn.frontend.reader import capture, read_program

STEPS = 48
FORMATS = ("w8a16", "w16a16")


class Seq(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.rnn = nn.LSTM(size, size, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


def build(size: int, large: int, seed: int) -> Seq:
    torch.manual_seed(seed)
    model = Seq(size).eval()
    with torch.no_grad():
        H = size
        units = torch.arange(large) * (H // max(large, 1))
        b = model.rnn.bias_ih_l0
        b[units] += 8.0           # i -> 1
        b[H + units] += 8.0       # f -> 1
        b[2 * H + units] += 1.0   # g -> tanh(1 + ...), positive: c grows ~0.8 per step
    return model


def unit_peaks(model: Seq, x: torch.Tensor) -> np.ndarray:
    """Each unit's largest |c| over the batch and the sequence (torch, step by step)."""
    cell = model.rnn
    B, T, _ = x.shape
    h = torch.zeros(B, cell.hidden_size)
    c = torch.zeros(B, cell.hidden_size)
    peak = torch.zeros(cell.hidden_size)
    with torch.no_grad():
        for t in range(T):
            _, (h1, c1) = cell(x[:, t:t + 1], (h[None], c[None]))
            h, c = h1[0], c1[0]
            peak = torch.maximum(peak, c.abs().amax(0))
    return peak.numpy()


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    err = got.astype(np.float64) - ref.astype(np.float64)
    noise = float(np.sum(err * err))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2))
                                                        / noise)


def measure(size: int, large: int, seed: int) -> tuple[dict, float, float, str]:
    model = build(size, large, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    calib = torch.randn(16, STEPS, size, generator=gen)
    test = torch.randn(8, STEPS, size, generator=gen)
    with torch.no_grad():
        want = model(test).numpy()
    program = capture(model, (test[:1],))
    ir = read_program(program, None)
    out = {}
    cfmt = ""
    for fmt in FORMATS:
        q = quantize_model(ir, fmt, [calib.numpy()], None)
        batch_q = reference.quantize_batch(q, batch_from_arrays(ir, [test.numpy()]))
        trace = reference.run(q, batch_q)
        got = reference.dequantize(q, 0, trace.outputs[0]).reshape(want.shape)
        out[fmt] = sqnr_db(want, got)
        cfmt = str(q.layers[0].c)
    peaks = unit_peaks(model, calib)
    return out, float(peaks.max()), float(np.median(peaks)), cfmt


def main() -> int:
    start = time.perf_counter()
    print(f"{'model':<24} {'max|c|':>7} {'median':>7} {'c format':>16} "
          f"{'w8a16 dB':>9} {'w16a16 dB':>10} {'gain':>6}")
    for size in (16, 32, 64, 128):
        for large in (0, 1, 3):
            for seed in (0, 1):
                res, top, median, cfmt = measure(size, large, seed)
                name = f"H={size} large={large} s={seed}"
                gain = res["w16a16"] - res["w8a16"]
                print(f"{name:<24} {top:7.2f} {median:7.2f} {cfmt:>16} {res['w8a16']:9.2f} "
                      f"{res['w16a16']:10.2f} {gain:6.2f}")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
