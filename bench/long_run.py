"""One LSTM for 10**6 time steps: the state stays bounded and the C equals the reference.

    python bench/long_run.py [--steps 1000000] [--format w8a16] [--hidden 32]

An LSTM (8 inputs, 32 units, forward(x, (h0, c0)) -> (y, (h_n, c_n))) is exported in an integer
format, calibrated on 64 random sequences of 200 steps, compiled on the host, and fed one
stream of N(0, 1) inputs through NAME_run_q in chunks of 1,000 steps without a reset (the
state carries over, as on a device). Then:

- bit-exactness: the integer reference is a function of (state, inputs). Chunk k of the C is
  checked by running the reference from the state the C had at the start of chunk k (its
  h_n, c_n after chunk k-1; zeros for the first): the reference must give the C's 1,000
  outputs and its state at the end of the chunk. By induction, every one of the steps equals
  a reference run over the whole stream from reset. All chunks go through the reference as one
  batch, so this takes seconds;
- bounded state: the largest |h| and |c| over every step (recorded inside the reference, which
  the C equals), and how often c or h sat at the int16 limits;
- no drift: the C's outputs against torch in float64 over the same stream, as SQNR per window
  of 100,000 steps, and over the last 1,000 steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))

from tinyrnn.api import export_program  # noqa: E402
from tinyrnn.check import reference  # noqa: E402
from tinyrnn.check.metrics import sqnr_db  # noqa: E402
from tinyrnn.check.simulate import Batch  # noqa: E402
from tinyrnn.frontend.reader import capture, read_program  # noqa: E402
from tinyrnn.passes.quantize import formats_from_manifest, quantize  # noqa: E402
from tinyrnn.targets.host import load  # noqa: E402

CHUNK = 1_000
WINDOW = 100_000


class Stream(nn.Module):
    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, batch_first=True)

    def forward(self, x, state):
        y, (h, c) = self.lstm(x, state)
        return y, (h, c)


class Recording(reference.IntNumerics):
    """The reference's arithmetic, recording the largest |h|, |c| and the saturated values."""

    def __init__(self, q):
        super().__init__(q)
        self.peak = {"h": 0, "c": 0}
        self.saturated = {"h": 0, "c": 0}
        self.values = 0

    def cell(self, index, direction, x_t, state):
        out, new = super().cell(index, direction, x_t, state)
        for key, v in zip(("h", "c"), new):
            self.peak[key] = max(self.peak[key], int(np.abs(v).max()))
            self.saturated[key] += int(np.count_nonzero((v >= 32767) | (v <= -32768)))
        self.values += new[0].size
        return out, new


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--format", default="w8a16", choices=("w8a16", "w16a16"))
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps % CHUNK:
        parser.error(f"--steps must be a multiple of {CHUNK}")
    chunks = args.steps // CHUNK
    started = time.perf_counter()

    torch.manual_seed(args.seed)
    model = Stream(args.inputs, args.hidden).eval()
    rng = np.random.default_rng(args.seed)
    zeros = np.zeros((1, 1, args.hidden), np.float32)
    example = (torch.from_numpy(rng.normal(size=(1, 20, args.inputs)).astype(np.float32)),
               (torch.from_numpy(zeros), torch.from_numpy(zeros)))
    program = capture(model, example)
    calib_x = rng.normal(size=(64, 200, args.inputs)).astype(np.float32)
    calib_state = np.zeros((1, 64, args.hidden), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "stream"
        manifest = export_program(program, folder, name="stream", format=args.format,
                                  calibration=[calib_x, calib_state, calib_state])
        compiled = load(folder)
        ir = read_program(program, manifest["interface"].get("max_seq_len"))
        q = quantize(ir, args.format, formats_from_manifest(ir, manifest["quantization"]))

        x = rng.normal(size=(args.steps, args.inputs)).astype(np.float32)
        xq = q.input.quantize(x).astype(np.int16)

        # the C: one state, chunk after chunk (run_q continues from the state it left)
        t0 = time.perf_counter()
        state = compiled.new_state()
        y_c = np.empty((args.steps, args.hidden), np.int16)
        h_ends = np.empty((chunks, args.hidden), np.int16)
        c_ends = np.empty((chunks, args.hidden), np.int16)
        for k in range(chunks):
            y, h_n, c_n = compiled.run_sample_q({"x": xq[k * CHUNK:(k + 1) * CHUNK]}, state)
            y_c[k * CHUNK:(k + 1) * CHUNK] = y.reshape(CHUNK, args.hidden)
            h_ends[k], c_ends[k] = h_n, c_n
        seconds_c = time.perf_counter() - t0

    # the reference, every chunk from the C's state at its start, as batches of chunks
    t0 = time.perf_counter()
    h0 = np.vstack([np.zeros((1, args.hidden), np.int64), h_ends[:-1].astype(np.int64)])
    c0 = np.vstack([np.zeros((1, args.hidden), np.int64), c_ends[:-1].astype(np.int64)])
    xs = xq.reshape(chunks, CHUNK, args.inputs).astype(np.int64)
    numerics = Recording(q)
    equal = np.empty(args.steps, dtype=bool)
    states_equal = True
    group = 100  # chunks per batch: bounds the reference's memory
    for first in range(0, chunks, group):
        part = slice(first, min(first + group, chunks))
        batch = Batch(xs[part], h0[part], c0[part])
        trace = reference.walk(q.model, numerics, batch, batch.x)
        steps = slice(first * CHUNK, part.stop * CHUNK)
        y_ref = trace.outputs[0].reshape(-1, args.hidden)
        equal[steps] = (y_ref == y_c[steps]).all(axis=1)
        states_equal &= (np.array_equal(trace.outputs[1], h_ends[part])
                         and np.array_equal(trace.outputs[2], c_ends[part]))
    seconds_ref = time.perf_counter() - t0
    mismatched = np.flatnonzero(~equal)

    # torch in float64 over the same stream, from a zero state
    t0 = time.perf_counter()
    with torch.no_grad():
        y_t, _ = model.double()(torch.from_numpy(x[None].astype(np.float64)),
                                (torch.zeros(1, 1, args.hidden, dtype=torch.float64),) * 2)
    y_t = y_t[0].numpy()
    seconds_torch = time.perf_counter() - t0
    y_f = q.out_format(0).dequantize(y_c)
    h_fmt, c_fmt = q.layers[0].h, q.layers[0].c

    print(f"LSTM {args.inputs}->{args.hidden}, {args.format}, {args.steps:,} steps in chunks of "
          f"{CHUNK:,} (C {seconds_c:.1f} s, reference {seconds_ref:.1f} s, torch float64 "
          f"{seconds_torch:.1f} s)")
    print(f"  C == reference: {int(equal.sum()):,} of {args.steps:,} steps, "
          f"last {CHUNK:,}: {'all equal' if equal[-CHUNK:].all() else 'DIFFER'}; chunk-end "
          f"states equal: {states_equal}"
          + (f"; first differing step {int(mismatched[0]):,}" if mismatched.size else ""))
    print(f"  state: max |h| {h_fmt.dequantize(numerics.peak['h']):.4f} ({h_fmt}), max |c| "
          f"{c_fmt.dequantize(numerics.peak['c']):.4f} ({c_fmt}); values at the int16 limits: "
          f"h {numerics.saturated['h']:,}, c {numerics.saturated['c']:,} of "
          f"{numerics.values:,}")
    windows = []
    for start in range(0, args.steps, WINDOW):
        part = slice(start, min(start + WINDOW, args.steps))
        windows.append(sqnr_db(y_t[part], y_f[part]))
    print("  against torch float64, SQNR per 100,000 steps (dB): "
          + ", ".join(f"{v:.1f}" for v in windows))
    last = slice(args.steps - CHUNK, args.steps)
    print(f"  last {CHUNK:,} steps: SQNR {sqnr_db(y_t[last], y_f[last]):.1f} dB, max abs "
          f"error {np.max(np.abs(y_t[last] - y_f[last])):.2e}; total "
          f"{time.perf_counter() - started:.0f} s")
    ok = bool(equal.all() and states_equal)
    print("RESULT: OK" if ok else "RESULT: MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
