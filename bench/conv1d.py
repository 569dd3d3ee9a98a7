"""Speed of Conv1d on a Cortex-M4: MAC/cycle beside the bound, for a generic shape and for
the convs of Silero VAD's 16 kHz branch (issue 12).

    python bench/conv1d.py              # a few minutes
    python bench/conv1d.py --silero     # only the Silero shapes

**Generic shape.** ``Conv1d(64, 64, k, padding=k // 2)`` over the input, then a small
``GRU(64, 4)`` (tinyrnn exports recurrent models), exported in w8a16 and w16a16 and profiled
with ``tinyrnn profile --cpu cortex-m4`` (``tinyrnn.profile``: the estimated M4 cycles of one
``NAME_run`` over 8 steps from the Cortex-M4 TRM cost table, zero wait states; see
docs/profiling.md). The conv's cost is isolated by difference: the same model with kernel 1
and kernel 3 differs only in the conv's taps, so ``(MACs_3 - MACs_1) / (cycles_3 - cycles_1)``
is the conv's MAC/cycle per extra tap, counting the cycles of ``conv_run_impl`` and of the
helpers gcc keeps out of line (``tr_*``); the requantization per output and the GRU cancel.
Also printed: the MACs of the kernel-3 conv over those cycles of ``NAME_run`` (the GRU's
per-unit work and the requantization included), a lower bound of the conv's rate. MACs count
the taps inside the sequence (the C skips the padding).

**Silero shapes.** Each conv of one 32 ms Silero frame as a time-axis conv over its frame's
positions ((T, C) step-major, T = the frame's length at that conv), then a ``GRU(O, 1)``: the
conv's MACs over all the cycles of one ``NAME_run`` over those T steps (input conversion,
the conv's requantization and the one-unit GRU included: a lower bound of the conv's own
rate; the GRU is under 2% of the MACs). The sum of the cycles is the estimated conv cost of one
Silero frame (the LSTMCell and the magnitude not included).

Bounds (shared/reference/cortex-m.md): int8 x int16 at most 0.8 MAC/cycle (LDR, two SXTB16,
two SMLAD per 4 MACs) for one output position per weight load, about 0.57 for a realistic
4-row x 4-column block; int16 x int16 at most 1.0, about 0.68; float32 (VMUL + VADD, 2 cycles
per MAC and a load) about 0.3-0.4.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import tinyrnn
from tinyrnn.api import export_program
from tinyrnn.frontend.reader import capture
from tinyrnn.targets import profile as profile_module
from tinyrnn.targets import profile_image

CHANNELS, HIDDEN, STEPS, RUN_STEPS = 64, 4, 32, 8
BOUND = {"w8a16": (0.8, 0.57), "w16a16": (1.0, 0.68), "float32": (0.5, 0.35)}


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
    # NAME_run's own code and the helpers gcc did not inline into it (the GRU's unit kernel,
    # the input conversion and the C library left out)
    return sum(int(f["cycles"]) for name, f in result.details["functions"].items()
               if name == "conv_run_impl" or name.startswith("tr_"))


@dataclass(frozen=True)
class Shape:
    """One conv of a Silero frame: Conv1d(c, o, kernel, stride, padding) over ``steps``."""

    name: str
    c: int
    o: int
    kernel: int
    stride: int
    padding: int
    steps: int
    bias: bool = True

    @property
    def out_steps(self) -> int:
        return (self.steps + 2 * self.padding - self.kernel) // self.stride + 1

    def macs(self) -> int:
        """MACs of the taps inside the sequence (the C skips the padding)."""
        taps = sum(0 <= t * self.stride + k - self.padding < self.steps
                   for t in range(self.out_steps) for k in range(self.kernel))
        return taps * self.c * self.o


SILERO = (
    Shape("stft 1->258 k256 s128", 1, 258, 256, 128, 0, 640, bias=False),
    Shape("enc0 129->128 k3 p1", 129, 128, 3, 1, 1, 4),
    Shape("enc1 128->64 k3 s2 p1", 128, 64, 3, 2, 1, 4),
    Shape("enc2 64->64 k3 s2 p1", 64, 64, 3, 2, 1, 2),
    Shape("enc3 64->128 k3 p1", 64, 128, 3, 1, 1, 1),
    Shape("dec 128->1 k1", 128, 1, 1, 1, 0, 1),
)


class ShapeGRU(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.conv = nn.Conv1d(s.c, s.o, s.kernel, stride=s.stride, padding=s.padding,
                              bias=s.bias)
        self.rnn = nn.GRU(s.o, 1, batch_first=True)

    def forward(self, x):
        return self.rnn(self.conv(x.transpose(1, 2)).transpose(1, 2))[0]


def shape_cycles(s: Shape, fmt: str, root: Path) -> int:
    """Est. M4 cycles of one ``NAME_run`` over ``s.steps`` steps of the shape's model."""
    torch.manual_seed(s.c * 1000 + s.o)
    model = ShapeGRU(s).eval()
    rng = np.random.default_rng(s.c)
    x = rng.standard_normal((1, s.steps, s.c)).astype(np.float32)
    calibration = rng.standard_normal((8, s.steps, s.c)).astype(np.float32)
    out = root / f"{s.c}_{s.o}_{s.kernel}_{fmt}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_program(capture(model, (torch.from_numpy(x),)), out, name="conv", format=fmt,
                       calibration=calibration if fmt != "float32" else None)
    # the profile counts NAME_run over RUN_STEPS steps: here the frame's length at this conv
    saved = profile_module.RUN_STEPS, profile_image.RUN_STEPS
    profile_module.RUN_STEPS = profile_image.RUN_STEPS = s.steps
    try:
        result = tinyrnn.profile(out, cpu="cortex-m4")
    finally:
        profile_module.RUN_STEPS, profile_image.RUN_STEPS = saved
    return sum(int(f["cycles"]) for f in result.details["functions"].values())


def generic() -> None:
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


def silero(formats: tuple[str, ...]) -> None:
    print("\nSilero VAD's convs, one 32 ms frame, each + GRU(O, 1) over its frame's T steps; "
          "est. Cortex-M4 cycles of NAME_run (tinyrnn profile)")
    print(f"{'shape':24} {'T':>4} {'MACs':>8} " + " ".join(
        f"{fmt + ' cycles':>15} {'MAC/c':>6}" for fmt in formats))
    totals = dict.fromkeys(formats, 0)
    with tempfile.TemporaryDirectory() as work:
        for s in SILERO:
            row = f"{s.name:24} {s.steps:4} {s.macs():8,} "
            for fmt in formats:
                cycles = shape_cycles(s, fmt, Path(work))
                totals[fmt] += cycles
                row += f"{cycles:15,} {s.macs() / cycles:6.3f} "
            print(row)
    macs = sum(s.macs() for s in SILERO)
    print(f"{'total':24} {'':4} {macs:8,} " + " ".join(
        f"{totals[fmt]:15,} {macs / totals[fmt]:6.3f}" for fmt in formats))
    print("bounds (MAC/cycle, one position per weight load): " + ", ".join(
        f"{fmt} {BOUND[fmt][0]} (realistic {BOUND[fmt][1]})" for fmt in formats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silero", action="store_true", help="only the Silero shapes")
    parser.add_argument("--formats", default="w8a16,w16a16,float32")
    args = parser.parse_args()
    if not args.silero:
        generic()
    silero(tuple(args.formats.split(",")))


if __name__ == "__main__":
    main()
