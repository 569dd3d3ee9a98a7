"""float32 matrix-vector kernels for M-profile cores with a single-precision FPU (FPv4-SP:
Cortex-M4F; FPv5: M7, M33; the scalar FPU of the M55), written out as Thumb-2 assembly for
each model's sizes.

One *float unit kernel* computes the float sums of the G gate rows of one recurrent unit (LSTM
i f g o, GRU r z n, Elman h) over the ``[x, h]`` buffer, in the weight order of
:func:`tinyrnn.passes.layout.float_stream`: for each full group of 4 columns the 4 weights of
each gate row (row after row), then the last ``cols % 4`` weights of each row. These FPUs have
32 single-precision registers: the G sums live in ``s0..``, the activations of a *block* of
``b`` groups (4b columns) in the top registers, and the weights stream through the registers
between, in ``VLDM`` bursts of whole groups (4G words). Per block: one ``VLDM`` of the 4b
activations, then per group one ``VLDM`` of its 4G weights and per weight ``VMUL`` (the product
overwrites the weight) and ``VADD`` into the row's sum, the ``VADD`` two instructions behind
its ``VMUL`` and the rows interleaved, so no instruction waits for the one before it (the M7's
and M55's FPU pipelines) and no sum is touched twice in a row.

Cost on the Cortex-M4 table (VLDM 1 + N, VMUL and VADD 1): per group 1 + 4G load cycles and
8G arithmetic, per block 1 + 4b: **3 + (1 + 4b) / (4Gb) + 1 / (4G) cycles per MAC**, 3.33 for
the LSTM (G = 4, b = 3), 3.44 for the GRU (G = 3, b = 4). VMUL + VADD (2 cycles) is cheaper
than one VFMA or VMLA (3) on the M4, and it rounds as the portable C kernel does (the
product, then the sum; the rows' columns in the same order), so the assembly and the C
compiled without contraction give the same sums bit for bit. The register file decides the
block: G sums, 4b activations and 4G weights within 32 registers (b = 3 for G = 4, 4 for
G = 3 and G = 1); ``s16-s31`` are callee-saved (``VPUSH``/``VPOP``, 34 cycles per call).

The C prototype of a float unit kernel (AAPCS; the fifth argument on the stack; no float
arguments, so the same for the hard and the softfp calling conventions)::

    const float *NAME(const float *w, const float *xh, float *acc,
                      const float *bx, const float *bh);

``acc[0..G)`` receives the x-part sums (started from ``bx[0..G)`` or zero), ``acc[G..2G)``
the h-part sums (from ``bh``); it returns the next unit's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dspasm import Line, Rept, expand

CONDITION = ("defined(__GNUC__) && defined(__thumb__) && defined(__ARM_ARCH_PROFILE) && "
             "__ARM_ARCH_PROFILE == 'M' && defined(__ARM_FP) && (__ARM_FP & 4)")
"""The builds that run these kernels (a preprocessor condition, in the C file and the .S
file): GNU assembler syntax (gcc or clang), Thumb state, an M-profile core with a
single-precision FPU (every M-profile FPU has 32 S registers), whatever the float ABI."""

UNROLL_SPEED = 2
"""Blocks per loop iteration when the build optimises for speed."""
UNROLL_SIZE = 1
"""... and at -Os (``__OPTIMIZE_SIZE__``)."""

REGISTERS = 32
_W, _V, _ACC, _BIAS, _N = "r0", "r1", "r2", "r3", "r12"
_SAVED_BYTES = 64  # vpush {s16-s31}: the fifth argument moves from [sp] to [sp, #64]


def block_groups(G: int) -> int:
    """Groups of 4 columns whose activations one block keeps in registers: as many as fit
    beside the G sums and one group's 4G weights, at most 4 (one VLDM of 16)."""
    return min(4, (REGISTERS - G - 4 * G) // 4)


def _s(k: int) -> str:
    return f"s{k}"


def _range(first: int, count: int) -> str:
    return f"{{s{first}}}" if count == 1 else f"{{s{first}-s{first + count - 1}}}"


@dataclass(frozen=True, order=True)
class FloatUnitKernel:
    """One float unit kernel: G gate rows, an x part of ``nx`` columns and an h part of ``nh``
    columns, and whether each part starts from biases."""

    G: int
    nx: int
    nh: int
    bx: bool
    bh: bool

    def __post_init__(self) -> None:
        if not 1 <= self.G <= 4 or self.nx < 1 or self.nh < 1:
            raise ValueError(f"no float unit kernel for {self}")

    @property
    def b(self) -> int:
        return block_groups(self.G)

    @property
    def _weights(self) -> int:
        """First register of the weights (after the sums)."""
        return self.G

    @property
    def _acts(self) -> int:
        """First register of the activations (the top 4b)."""
        return REGISTERS - 4 * self.b

    def name(self, prefix: str) -> str:
        flags = ("_bx" if self.bx else "") + ("_bh" if self.bh else "")
        return f"{prefix}_fpu{self.G}_x{self.nx}_h{self.nh}{flags}"

    def doc(self) -> list[str]:
        """What the kernel computes and how, for the comment above it."""
        return [f"The float sums of the {self.G} gate rows of one unit over [x, h]: "
                f"acc[0..{self.G}) = bx + W_x x ({self.nx} columns), acc[{self.G}..{2 * self.G})"
                f" = bh + W_h h ({self.nh} columns); returns the next unit's weights.",
                f"Blocks of {self.b} groups of 4 columns: one VLDM of the activations, per group "
                f"one VLDM of its {4 * self.G} weights, per weight VMUL and VADD (the C "
                "kernel's rounding and order; backend/fpuasm.py)."]

    def macros(self) -> dict[str, list[str]]:
        """The assembler macros this kernel's body repeats: one full block."""
        return {self._macro: self._block(self.b)}

    @property
    def _macro(self) -> str:
        return f"f32_block{self.G}x{self.b}"

    def expanded(self, unroll: int) -> list[str]:
        """:meth:`assembly` with the macros written out."""
        return expand(self.assembly(unroll), self.macros())

    def assembly(self, unroll: int) -> list[Line]:
        """The function body, one instruction, label or repeated macro per line."""
        G = self.G
        lines: list[Line] = ["vpush {s16-s31}"]
        lines += self._start(self.bx)
        lines += self._part(self.nx, unroll, "1")
        lines.append(f"vstmia {_ACC}!, {_range(0, G)}")
        if self.bh:
            lines.append(f"ldr {_BIAS}, [sp, #{_SAVED_BYTES}]")
        lines += self._start(self.bh)
        lines += self._part(self.nh, unroll, "2")
        lines += [f"vstmia {_ACC}, {_range(0, G)}", "vpop {s16-s31}", "bx lr"]
        return lines

    def _start(self, bias: bool) -> list[str]:
        if bias:
            return [f"vldmia {_BIAS}, {_range(0, self.G)}"]
        return [f"movs {_BIAS}, #0", f"vmov s0, {_BIAS}"] + \
            [f"vmov.f32 s{r}, s0" for r in range(1, self.G)]

    def _part(self, cols: int, unroll: int, label: str) -> list[Line]:
        """One part: its full blocks (a counted loop of ``unroll`` blocks per iteration, then
        the rest straight), the last groups, then the last ``cols % 4`` columns."""
        groups, tail = divmod(cols, 4)
        blocks, rest = divmod(groups, self.b)
        iterations, straight = divmod(blocks, unroll)
        lines: list[Line] = []
        if iterations >= 2:
            lines += [f"mov {_N}, #{iterations}", f"{label}:", Rept(unroll, self._macro),
                      f"subs {_N}, {_N}, #1", f"bne {label}b"]
        else:
            straight += unroll * iterations
        if straight:
            lines.append(Rept(straight, self._macro))
        if rest:
            lines += self._block(rest)
        if tail:
            lines += self._tail(tail)
        return lines

    def _block(self, groups: int) -> list[str]:
        """``groups`` full groups of 4 columns: their activations, then group by group."""
        G, a = self.G, self._acts
        lines = [f"vldmia {_V}!, {_range(a, 4 * groups)}"]
        for g in range(groups):
            lines.append(f"vldmia {_W}!, {_range(self._weights, 4 * G)}")
            # weight k of the group: row k // 4, column k % 4
            lines += self._products([(self._weights + 4 * r + c, r, a + 4 * g + c)
                                     for c in range(4) for r in range(G)])
        return lines

    def _tail(self, t: int) -> list[str]:
        """The last ``t`` (< 4) columns: t activations, then G rows of t weights."""
        G, a = self.G, self._acts
        lines = [f"vldmia {_V}!, {_range(a, t)}", f"vldmia {_W}!, {_range(self._weights, G * t)}"]
        return lines + self._products([(self._weights + t * r + c, r, a + c)
                                       for c in range(t) for r in range(G)])

    @staticmethod
    def _products(order: list[tuple[int, int, int]]) -> list[str]:
        """VMUL of each (weight register, row, activation register) in ``order`` into the
        weight register, each VADD into its row's sum two instructions later."""
        lines: list[str] = []
        pending: list[tuple[int, int]] = []
        for w, r, x in order:
            lines.append(f"vmul.f32 {_s(w)}, {_s(w)}, {_s(x)}")
            pending.append((w, r))
            if len(pending) == 2:
                w0, r0 = pending.pop(0)
                lines.append(f"vadd.f32 {_s(r0)}, {_s(r0)}, {_s(w0)}")
        for w0, r0 in pending:
            lines.append(f"vadd.f32 {_s(r0)}, {_s(r0)}, {_s(w0)}")
        return lines


def steady_cycles(G: int, cols: int) -> int:
    """Cycles the float unit kernel's blocks take for one part of ``cols`` columns (a multiple
    of 4) on the static Cortex-M4 table, without the loop branches, the call, the sums' start
    and store and the per-unit work: the floor of this kernel design."""
    groups = cols // 4
    b = block_groups(G)
    blocks = -(-groups // b)
    return blocks + 4 * groups + groups * (1 + 4 * G) + groups * 8 * G
