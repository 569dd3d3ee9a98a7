"""Matrix-vector kernels for cores with the DSP extension (ARMv7E-M: Cortex-M4, M7, M33, M55),
written out as Thumb-2 assembly for each model's sizes.

One *unit kernel* computes the integer sums of the G gate rows of one recurrent unit (LSTM
i f g o, GRU r z n) over the concatenated ``[x, h]`` buffer, in the weight order of
:func:`tinyrnn.quantize.kernel_layout`: for each group of 4 columns, one 32-bit word of int8
weights per row, bytes in SXTB16 order (0, 2, 1, 3). Per group it loads the two words of
int16 activations and the G weight words back to back (the M4 pipelines a load that follows a
load), then per row ``SXTB16``, ``SXTB16 ... ROR #8`` and two ``SMLAD``: 3 + G load cycles
and 4G single-cycle instructions for 4G MACs. The register file decides the block: 4 sums,
2 activation words, 4 weight words, one extension temporary, the weight and activation
pointers and the loop count are the 14 registers r0-r12 and lr; a block of 8 rows would need
8 more.

The sums are exact: the exporter proved that every partial sum fits 32 bits (SMLAD wraps,
and the final sum is in range, so the order of the additions does not change it), so the
results equal the portable C kernel and the reference bit for bit.

The C prototype of a unit kernel (AAPCS; the fifth argument on the stack)::

    const int8_t *NAME(const int8_t *w, const int16_t *xh, int32_t *acc,
                       const int32_t *bx, const int32_t *bh);

``acc[0..G)`` receives the x-part sums (started from ``bx[0..G)`` or zero), ``acc[G..2G)``
the h-part sums (from ``bh``); it returns the weights of the next unit.
"""

from __future__ import annotations

from dataclasses import dataclass

UNROLL_SPEED = 8
"""Groups of 4 columns per loop iteration when the build optimises for speed."""
UNROLL_SIZE = 1
"""... and at -Os (``__OPTIMIZE_SIZE__``), where the loop body is one group."""

_W, _V, _N, _T = "r0", "r1", "r2", "r3"
_SUMS = ("r4", "r5", "r6", "r7")
_X01, _X23 = "r8", "r9"
_WORDS = ("r10", "r11", "r12", "lr")
_SAVED = "{r2, r4-r11, lr}"  # r2 keeps acc; 10 words, so the fifth argument is at [sp, #40]
_BH_OFFSET = 40


@dataclass(frozen=True, order=True)
class UnitKernel:
    """One unit kernel: G gate rows, x part and h part of ``xg`` and ``hg`` groups of 4
    columns, and whether each part starts from biases."""

    G: int
    xg: int
    hg: int
    bx: bool
    bh: bool

    def __post_init__(self) -> None:
        if not 1 <= self.G <= len(_SUMS) or self.xg < 1 or self.hg < 1:
            raise ValueError(f"no DSP unit kernel for {self}")

    def name(self, prefix: str) -> str:
        flags = ("_bx" if self.bx else "") + ("_bh" if self.bh else "")
        return f"{prefix}_unit{self.G}_x{self.xg}_h{self.hg}{flags}"

    def assembly(self, unroll: int) -> list[str]:
        """The function body, one instruction or label per line."""
        sums = _SUMS[:self.G]
        reglist = "{" + ", ".join(sums) + "}"
        lines = [f"push {_SAVED}"]
        lines += self._start(self.bx, _T, sums, reglist)
        lines += self._part(self.xg, unroll, "1")
        lines += [f"ldr {_N}, [sp]", f"stm {_N}, {reglist}"]
        if self.bh:
            lines.append(f"ldr {_T}, [sp, #{_BH_OFFSET}]")
        lines += self._start(self.bh, _T, sums, reglist)
        lines += self._part(self.hg, unroll, "2")
        lines += [f"ldr {_N}, [sp]", f"add {_N}, {_N}, #{4 * self.G}", f"stm {_N}, {reglist}",
                  f"pop {_SAVED[:-4]}pc}}"]
        return lines

    @staticmethod
    def _start(bias: bool, pointer: str, sums: tuple[str, ...], reglist: str) -> list[str]:
        if bias:
            return [f"ldm {pointer}, {reglist}"]
        return [f"movs {s}, #0" for s in sums]

    def _group(self) -> list[str]:
        words = _WORDS[:self.G]
        lines = [f"ldr {_X01}, [{_V}], #4", f"ldr {_X23}, [{_V}], #4"]
        lines += [f"ldr {q}, [{_W}], #4" for q in words]
        for q, s in zip(words, _SUMS):
            lines += [f"sxtb16 {_T}, {q}", f"sxtb16 {q}, {q}, ror #8",
                      f"smlad {s}, {_T}, {_X01}, {s}", f"smlad {s}, {q}, {_X23}, {s}"]
        return lines

    def _part(self, groups: int, unroll: int, label: str) -> list[str]:
        iterations, rest = divmod(groups, unroll)
        lines: list[str] = []
        if iterations >= 2:
            mov = "movs" if iterations < 256 else "movw"
            lines += [f"{mov} {_N}, #{iterations}", f"{label}:"]
            for _ in range(unroll):
                lines += self._group()
            lines += [f"subs {_N}, {_N}, #1", f"bne {label}b"]
        elif iterations == 1:
            rest += unroll
        for _ in range(rest):
            lines += self._group()
        return lines
