"""float32 matrix-vector kernels for M-profile cores with a single-precision FPU (FPv4-SP:
Cortex-M4F; FPv5: M7, M33; the scalar FPU of the M55), written out as Thumb-2 assembly for
each model's sizes.

One *float unit kernel* computes the float sums of the G gate rows (LSTM i f g o, GRU r z n,
Elman h) of U consecutive recurrent units over the ``[x, h]`` buffer, each unit's weights in the
order of :func:`tinyrnn.passes.layout.float_stream`: for each full group of 4 columns the 4
weights of each gate row (row after row), then the last ``cols % 4`` weights of each row. These
FPUs have 32 single-precision registers: the U G sums live in ``s0..``, the activations of a
*block* of ``b`` groups (4b columns) in the top registers, and the weights stream through the
registers between, in ``VLDM`` bursts of one unit's group (4G words; each unit has its own
pointer, r0 and r4..). Per block: one ``VLDM`` of the 4b activations, shared by the U units,
then per group and unit one ``VLDM`` of its 4G weights and per weight ``VMUL`` (the product
overwrites the weight) and ``VADD`` into the row's sum, the ``VADD`` two instructions behind its
``VMUL`` and the rows interleaved, so no instruction waits for the one before it (the M7's and
M55's FPU pipelines) and no sum is touched twice in a row.

Cost on the Cortex-M4 table (VLDM 1 + N, VMUL and VADD 1): per group and unit 1 + 4G load
cycles and 8G arithmetic, per block 1 + 4b: **3 + (1 + 4b) / (4bUG) + 1 / (4G) cycles per
MAC** (:func:`overhead_per_mac`): the U G sums, 4b activations and 4G weights share the 32
registers, so more units per call leave fewer activations per block, and
:func:`kernel_units` picks the U (a power of two) that costs least: U = 2 and b = 2 for the
LSTM (G = 4, 3.20 cycles per MAC; one unit per call, b = 3, cost 3.33), U = 4 and b = 2 for
the GRU (3.18, against 3.44), U = 8 and b = 4 for the Elman cell (3.38, against 4.31). VMUL +
VADD (2 cycles) is cheaper than one VFMA or VMLA (3) on the M4, and it rounds as the portable
C kernel does (the product, then the sum; the rows' columns in the same order), so the
assembly and the C compiled without contraction give the same sums bit for bit.
``s16-s31`` are callee-saved (``VPUSH``/``VPOP``, 34 cycles per call), and so are the extra
weight pointers (``PUSH``/``POP``).

The C prototype of a float unit kernel (AAPCS; the fifth argument on the stack; no float
arguments, so the same for the hard and the softfp calling conventions)::

    const float *NAME(const float *w, const float *xh, float *acc,
                      const float *bx, const float *bh);

``acc[uG..uG + G)`` receives unit u's x-part sums (started from ``bx[uG..uG + G)`` or zero:
the bias rows of consecutive units are consecutive), ``acc[SG + uG..)`` its h-part sums (from
``bh``), S the layer's main kernel's U (the last call of a layer may have fewer units); it
returns the weights after its units.
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
MAX_UNITS = 8
"""At most this many units per kernel call: their weight pointers take r0 and r4-r10."""
_W, _V, _ACC, _BIAS, _N = "r0", "r1", "r2", "r3", "r12"
_S_SAVED_BYTES = 64  # vpush {s16-s31}


def block_groups(G: int, units: int = 1) -> int:
    """Groups of 4 columns whose activations one block keeps in registers: as many as fit
    beside the ``units * G`` sums and one group's 4G weights, at most 4 (one VLDM of 16)."""
    return min(4, (REGISTERS - units * G - 4 * G) // 4)


def overhead_per_mac(G: int, units: int) -> float:
    """Cycles per MAC above the 3 of VLDM + VMUL + VADD on the Cortex-M4 table: the block's
    VLDM of its 4b activations (1 + 4b cycles, shared by the units' G rows each) and the VLDM
    start of each group's 4G weights."""
    b = block_groups(G, units)
    return (1 + 4 * b) / (4 * b * units * G) + 1 / (4 * G)


def kernel_units(G: int, hidden: int) -> int:
    """Units per call of the float unit kernel of a layer: the power of two (at most
    :data:`MAX_UNITS`, and at most ``hidden``) whose blocks cost least per MAC on the M4 table
    (:func:`overhead_per_mac`; the smaller on a tie). A power of two so that the C finds a
    unit's place in the kernel's sums with a mask."""
    candidates = [u for u in (1, 2, 4, 8) if u <= min(MAX_UNITS, hidden)
                  and block_groups(G, u) >= 1]
    return min(candidates, key=lambda u: (overhead_per_mac(G, u), u))


def _s(k: int) -> str:
    return f"s{k}"


def _range(first: int, count: int) -> str:
    return f"{{s{first}}}" if count == 1 else f"{{s{first}-s{first + count - 1}}}"


@dataclass(frozen=True, order=True)
class FloatUnitKernel:
    """One float unit kernel: G gate rows of ``units`` consecutive units (each unit's weights
    in its own :func:`tinyrnn.passes.layout.float_stream` row), an x part of ``nx`` columns and
    an h part of ``nh`` columns, and whether each part starts from biases. ``slots``: the
    units of the sums buffer (the h sums start at ``acc[slots * G]``), the layer's main
    kernel's ``units``, so that the last call of a layer (``hidden % slots`` units) fills the
    same buffer."""

    G: int
    nx: int
    nh: int
    bx: bool
    bh: bool
    units: int = 1
    slots: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.G <= 4 or self.nx < 1 or self.nh < 1 or \
                not 1 <= self.units <= self.slots <= MAX_UNITS or self.b < 1:
            raise ValueError(f"no float unit kernel for {self}")

    @property
    def b(self) -> int:
        return block_groups(self.G, self.units)

    @property
    def _weights(self) -> int:
        """First register of the weights (after the sums)."""
        return self.units * self.G

    @property
    def _acts(self) -> int:
        """First register of the activations (the top 4b)."""
        return REGISTERS - 4 * self.b

    @property
    def _pointers(self) -> list[str]:
        """The weight pointer of each unit: r0, then r4, r5, ..."""
        return [_W] + [f"r{3 + u}" for u in range(1, self.units)]

    @property
    def _stride(self) -> int:
        """Bytes of one unit's weights."""
        return 4 * self.G * (self.nx + self.nh)

    def name(self, prefix: str) -> str:
        flags = ("_bx" if self.bx else "") + ("_bh" if self.bh else "")
        units = f"_u{self.units}" if self.slots > 1 else ""
        return f"{prefix}_fpu{self.G}_x{self.nx}_h{self.nh}{flags}{units}"

    def doc(self) -> list[str]:
        """What the kernel computes and how, for the comment above it."""
        G, U, S = self.G, self.units, self.slots
        if S == 1:
            return [f"The float sums of the {G} gate rows of one unit over [x, h]: "
                    f"acc[0..{G}) = bx + W_x x ({self.nx} columns), acc[{G}..{2 * G})"
                    f" = bh + W_h h ({self.nh} columns); returns the next unit's weights.",
                    f"Blocks of {self.b} groups of 4 columns: one VLDM of the activations, per "
                    f"group one VLDM of its {4 * G} weights, per weight VMUL and VADD (the C "
                    "kernel's rounding and order; backend/fpuasm.py)."]
        return [f"The float sums of the {G} gate rows of {U} units over [x, h] (unit u's "
                f"weights at w + {G * (self.nx + self.nh)} u): acc[{G} u + g] = bx + W_x x "
                f"({self.nx} columns), acc[{G * S} + {G} u + g] = bh + W_h h ({self.nh} "
                f"columns); returns the weights after the {U} units.",
                f"Blocks of {self.b} groups of 4 columns: one VLDM of the activations for the "
                f"{U} units, per group and unit one VLDM of its {4 * G} weights, per weight "
                "VMUL and VADD (the C kernel's rounding and order; backend/fpuasm.py)."]

    def macros(self) -> dict[str, list[str]]:
        """The assembler macros this kernel's body repeats: one full block."""
        return {self._macro: self._block(self.b)}

    @property
    def _macro(self) -> str:
        return f"f32_block{self.G}x{self.b}" + (f"u{self.units}" if self.units > 1 else "")

    def expanded(self, unroll: int) -> list[str]:
        """:meth:`assembly` with the macros written out."""
        return expand(self.assembly(unroll), self.macros())

    def assembly(self, unroll: int) -> list[Line]:
        """The function body, one instruction, label or repeated macro per line."""
        sums = self.units * self.G
        saved = self._pointers[1:]
        lines: list[Line] = []
        if saved:
            lines.append(f"push {{{saved[0]}-{saved[-1]}}}" if len(saved) > 1
                         else f"push {{{saved[0]}}}")
        lines.append("vpush {s16-s31}")
        if saved:
            stride = self._stride
            lines += [f"movw {_N}, #{stride & 0xFFFF}"]
            if stride >> 16:
                lines.append(f"movt {_N}, #{stride >> 16}")
            previous = _W
            for reg in saved:
                lines.append(f"add {reg}, {previous}, {_N}")
                previous = reg
        lines += self._start(self.bx)
        lines += self._part(self.nx, unroll, "1")
        lines.append(f"vstmia {_ACC}!, {_range(0, sums)}")
        if self.units < self.slots:
            lines.append(f"add {_ACC}, {_ACC}, #{4 * self.G * (self.slots - self.units)}")
        if self.bh:
            lines.append(f"ldr {_BIAS}, [sp, #{_S_SAVED_BYTES + 4 * len(saved)}]")
        lines += self._start(self.bh)
        lines += self._part(self.nh, unroll, "2")
        lines += [f"vstmia {_ACC}, {_range(0, sums)}", "vpop {s16-s31}"]
        if saved:
            lines.append(f"mov {_W}, {saved[-1]}")  # the last unit's pointer: the next unit
            lines.append(f"pop {{{saved[0]}-{saved[-1]}}}" if len(saved) > 1
                         else f"pop {{{saved[0]}}}")
        return lines + ["bx lr"]

    def _start(self, bias: bool) -> list[str]:
        sums = self.units * self.G
        if bias:
            return [f"vldmia {_BIAS}, {_range(0, sums)}"]
        return [f"movs {_BIAS}, #0", f"vmov s0, {_BIAS}"] + \
            [f"vmov.f32 s{r}, s0" for r in range(1, sums)]

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
        """``groups`` full groups of 4 columns: their activations, then group by group and
        unit by unit."""
        G, a = self.G, self._acts
        lines = [f"vldmia {_V}!, {_range(a, 4 * groups)}"]
        for g in range(groups):
            for u, pointer in enumerate(self._pointers):
                lines.append(f"vldmia {pointer}!, {_range(self._weights, 4 * G)}")
                # weight k of the unit's group: row k // 4, column k % 4
                lines += self._products([(self._weights + 4 * r + c, u * G + r, a + 4 * g + c)
                                         for c in range(4) for r in range(G)])
        return lines

    def _tail(self, t: int) -> list[str]:
        """The last ``t`` (< 4) columns: t activations, then per unit G rows of t weights."""
        G, a = self.G, self._acts
        lines = [f"vldmia {_V}!, {_range(a, t)}"]
        for u, pointer in enumerate(self._pointers):
            lines.append(f"vldmia {pointer}!, {_range(self._weights, G * t)}")
            lines += self._products([(self._weights + t * r + c, u * G + r, a + c)
                                     for c in range(t) for r in range(G)])
        return lines

    @staticmethod
    def _products(order: list[tuple[int, int, int]]) -> list[str]:
        """VMUL of each (weight register, sum register, activation register) in ``order`` into
        the weight register, each VADD into its sum two instructions later."""
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


def steady_cycles(G: int, cols: int, units: int = 1) -> float:
    """Cycles per unit the float unit kernel's blocks take for one part of ``cols`` columns (a
    multiple of 4) with ``units`` units per call on the static Cortex-M4 table, without the
    loop branches, the call, the sums' start and store and the per-unit work: the floor of
    this kernel design (the activations' VLDM shared by the units)."""
    groups = cols // 4
    b = block_groups(G, units)
    blocks = -(-groups // b)
    return (blocks + 4 * groups) / units + groups * (1 + 4 * G) + groups * 8 * G
