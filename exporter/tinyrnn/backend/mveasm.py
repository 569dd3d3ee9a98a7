"""The MVE (Helium) kernels of Cortex-M55/M85 builds: C functions whose chunk loop is inline
assembly, printed by ``templates/kernels.c.j2`` (``mve_kernels``).

One kernel, ``NAME_mve{G}_w{bits}_acc{acc}``, adds to G sums the products of G weight rows
and n int16 activations, reading the weights in the order of
:func:`tinyrnn.passes.layout.mve_layout`: per chunk of 8 columns, the 8 weights of each row.
Per chunk: one ``VLDRH.S16`` of 8 activations, then per row one ``VLDRB.S16`` (int8 weights,
widened to int16 lanes) or ``VLDRH.S16`` (int16 weights) with post-increment, and one
``VMLADAVA.S16`` (the 8 products added to a 32-bit sum) or ``VMLALDAVA.S16`` (to a 64-bit sum):
1 + 2G instructions for 8G MACs, and ``LE`` closes the loop (``WLS`` skips it for no full
chunk). A last partial chunk loads its activations under a ``VCTP.16`` tail predicate
(inactive lanes zero, nothing read past the vector). The loads alternate between two vector
registers, so each row's load overlaps the previous row's multiply-accumulate.

Why assembly: gcc 12's intrinsics code (``vldrbq_s16`` + ``vmladavaq_s16``) keeps a second
pointer per row and adds 2 instructions per chunk. The sums live in fixed registers (local
register variables, the only use gcc and clang define for them): VMLADAVA needs an even
register, VMLALDAVA an even/odd pair; r7 (the Thumb frame pointer at -O0) is never taken.
The weight pointer of int8 weights is a low register: a widening load takes no other.

The sums are exact: each instruction adds its 8 products exactly and wraps modulo 2^32
(2^64) as the C sum would, and the quantizer proved every partial sum fits the sum's type.
"""

from __future__ import annotations

from dataclasses import dataclass

SUM_REGISTERS = {32: ("r4", "r6", "r8", "r10"), 64: ("r4", "r8", "r10", "r2")}
"""The register of each row's sum: even registers for 32-bit sums; for 64-bit sums the low
register of an even/odd pair (r4:r5, r8:r9, r10:r11, r2:r3)."""


@dataclass(frozen=True, order=True)
class MveKernel:
    """The MVE kernel of G rows of ``bits``-bit weights with ``acc``-bit sums."""

    G: int
    bits: int
    acc: int

    def __post_init__(self) -> None:
        if not 1 <= self.G <= 4 or self.bits not in (8, 16) or self.acc not in (32, 64):
            raise ValueError(f"no MVE kernel for {self}")

    def name(self, prefix: str) -> str:
        return f"{prefix}_mve{self.G}_w{self.bits}_acc{self.acc}"

    @property
    def wtype(self) -> str:
        return f"int{self.bits}_t"

    @property
    def acc_t(self) -> str:
        return f"int{self.acc}_t"

    @property
    def registers(self) -> tuple[str, ...]:
        return SUM_REGISTERS[self.acc][:self.G]

    @property
    def w_constraint(self) -> str:
        """The asm constraint of the weight pointer: a widening load (VLDRB.S16) takes only a
        low register (r0-r7, ``l``); VLDRH.S16 any (``r``)."""
        return "l" if self.bits == 8 else "r"

    @property
    def mac(self) -> str:
        return "VMLADAVA.S16" if self.acc == 32 else "VMLALDAVA.S16"

    def rows(self) -> list[str]:
        """The instructions after the activation load of one chunk (in q0): per row the weight
        load and the multiply-accumulate, each load one row ahead of its MAC."""
        load = ("vldrb.s16 q{q}, [%[w]], #8" if self.bits == 8
                else "vldrh.s16 q{q}, [%[w]], #16")
        loads = [load.format(q=1 + r % 2) for r in range(self.G)]
        macs = [(f"vmladava.s16 %[a{r}], q{1 + r % 2}, q0" if self.acc == 32
                 else f"vmlaldava.s16 %Q[a{r}], %R[a{r}], q{1 + r % 2}, q0")
                for r in range(self.G)]
        lines = [loads[0]]
        for r in range(1, self.G):
            lines += [loads[r], macs[r - 1]]
        return lines + [macs[-1]]

    def loop(self) -> list[str]:
        """The chunk loop: ``chunks`` full chunks (LR counts them)."""
        return (["wls lr, %[chunks], 2f", "1:", "vldrh.s16 q0, [%[v]], #16", *self.rows(),
                 "le lr, 1b", "2:"])

    def tail(self) -> list[str]:
        """The last partial chunk: ``rest`` activations under a tail predicate."""
        return ["vctp.16 %[rest]", "vpst", "vldrht.s16 q0, [%[v]]", *self.rows()]

    @staticmethod
    def literals(lines: list[str]) -> list[str]:
        """``lines`` as the C string literals of an ``__asm__`` statement, one per line."""
        out = []
        for k, line in enumerate(lines):
            last = k == len(lines) - 1
            end = "" if last else ("\\n" if line.endswith(":") or lines[k + 1].endswith(":")
                                   else "\\n\\t")
            out.append(f'"{line}{end}"')
        return out

    def steady_instructions(self, x_cols: int, h_cols: int) -> int:
        """Instructions of one unit's chunk loops over ``x_cols`` and ``h_cols`` columns
        (2 + 2G per chunk, LE included), before the loop set-up, the sums' loads and stores
        and the per-unit work: the floor of this kernel design."""
        return (-(-x_cols // 8) + -(-h_cols // 8)) * (2 + 2 * self.G)
