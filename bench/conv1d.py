"""Speed of the integer Conv1d on a Cortex-M4: MAC/cycle beside the bound.

    python bench/conv1d.py            # about a minute

Each model is ``Conv1d(64, 64, k, padding=k // 2)`` over the input, then a small
``GRU(64, 4)`` (tinyrnn exports recurrent models), exported in w8a16 and w16a16 and profiled
with ``tinyrnn profile --cpu cortex-m4`` (``tinyrnn.profile``: the estimated M4 cycles of one
``NAME_run`` over 8 steps from the Cortex-M4 TRM cost table, zero wait states; see
docs/profiling.md). The conv runs inside ``NAME_run``'s own code (its helper is inlined), so the
conv's cost is isolated by difference: the same model with kernel 1 and kernel 3 differs only
in the conv's taps, so ``(MACs_3 - MACs_1) / (cycles_3 - cycles_1)`` is the conv's MAC/cycle
per extra tap (the requantization per output and the GRU cancel). Also printed: the MACs of the
kernel-3 conv over all the cycles of ``NAME_run`` (GRU and requantization included), a lower
bound of the conv's rate. MACs count the taps inside the sequence (the C skips the padding).

Bounds (shared/reference/cortex-m.md): int8 x int16 at most 0.8 MAC/cycle (LDR, two SXTB16,
two SMLAD per 4 MACs), about 0.57 for a realistic 4-row x 4-column block; int16 x int16 at most
1.0, about 0.68.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import tinyrnn
from tinyrnn.api import export_program
from tinyrnn.frontend.reader import capture

CHANNELS, HIDDEN, STEPS, RUN_STEPS = 64, 4, 32, 8
BOUND = {"w8a16": (0.8, 0.57), "w16a16": (1.0, 0.68)}


class ConvGRU(nn.Module):
    def __init__(self, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(CHANNELS, CHANNELS, kernel, padding=kernel // 2)
        self.rnn = nn.GRU(CHANNELS, HIDDEN, batch_first=True)

    def forward(self, x):
        return self.rnn(self.conv(x.transpose(1, 2)).transpose(1, 2))[0]


def conv_macs(kernel: int, steps: int) -> int:
    """MACs of the taps inside a sequence of ``steps`` (stride 1, padding kernel // 2)."""
    pad = kernel // 2
    taps = sum(sum(0 <= t + k - pad < steps for k in range(kernel)) for t in range(steps))
    return taps * CHANNELS * CHANNELS


def run_cycles(kernel: int, fmt: str, root: Path) -> int:
    torch.manual_seed(kernel)
    model = ConvGRU(kernel).eval()
    rng = np.random.default_rng(kernel)
    x = rng.standard_normal((1, STEPS, CHANNELS)).astype(np.float32)
    calibration = rng.standard_normal((16, STEPS, CHANNELS)).astype(np.float32)
    out = root / f"k{kernel}_{fmt}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_program(capture(model, (torch.from_numpy(x),)), out, name="conv", format=fmt,
                       calibration=calibration)
    result = tinyrnn.profile(out, cpu="cortex-m4")
    return int(result.details["functions"]["conv_run_impl"]["cycles"])


def main() -> None:
    print(f"Conv1d({CHANNELS}, {CHANNELS}, k, padding=k // 2) + GRU({CHANNELS}, {HIDDEN}), "
          f"NAME_run over {RUN_STEPS} steps, est. Cortex-M4 cycles (tinyrnn profile)")
    print(f"{'format':8} {'cycles k=1':>11} {'cycles k=3':>11} {'conv MAC/cycle':>15} "
          f"{'whole run':>10} {'bound':>6} {'realistic':>10}")
    with tempfile.TemporaryDirectory() as work:
        for fmt in ("w8a16", "w16a16"):
            c1, c3 = (run_cycles(k, fmt, Path(work)) for k in (1, 3))
            m1, m3 = conv_macs(1, RUN_STEPS), conv_macs(3, RUN_STEPS)
            bound, real = BOUND[fmt]
            print(f"{fmt:8} {c1:11,} {c3:11,} {(m3 - m1) / (c3 - c1):15.3f} {m3 / c3:10.3f} "
                  f"{bound:6.2f} {real:10.2f}")


if __name__ == "__main__":
    main()
