"""Matrix-vector kernels for ARMv6-M (Cortex-M0, M0+): no DSP extension and no
multiply-accumulate instruction, written out as Thumb-1 assembly for each model's sizes.

One *unit kernel* computes the integer sums of the G gate rows of one recurrent unit (LSTM
i f g o, GRU r z n, Elman h) over the ``[x, h]`` buffer, like the DSP unit kernel of
:mod:`tinyrnn.backend.dspasm`. ARMv6-M's cheapest multiply-accumulate of an int8 weight and an int16
activation is ``LDRSB`` + ``MULS`` + ``ADD``, and both signed loads exist only with a register
offset. So one index register K walks the columns of a part for the activations *and* the
weights, and the weights get their own layout (:meth:`V6MUnitKernel.layout`): each gate row
is a byte stream at stride 2 bytes (stride 4 when a step takes 2 columns), so that a row's
weight of column c sits at ``B_row + K`` where the activation sits at ``V + K``. Two rows share
one block (even and odd bytes); with G odd, the last row of the x part shares its block with
the last row of the h part. The layout is as dense as the row-major weights, except for the
difference between the two parts' lengths in the shared block.

Per column and unit: one ``LDRSH`` of the activation, then per row ``LDRSB``, ``MULS``,
``ADD`` into a high register, then ``ADDS K, #2`` (which also ends the loop: K runs from
``-2n`` up to 0). That is ``3 + 2/G`` instructions per MAC (3.5 for the LSTM, 3.67 for the GRU);
the Elman cell (G = 1) takes 2 columns per step through two activation and two weight base
registers, ``4.5``. The low registers decide it: K, the activation, the product and 5 base
pointers are r0-r7; the G sums live in r12, lr, r8, r9. In cycles (2 per load, a
single-cycle multiplier), 4.75 per MAC for the LSTM; with the 32-cycle multiplier some
parts have, the MULS dominate (35.75).

The sums are exact: the exporter proved that every partial sum fits 32 bits (the additions
wrap, and the final sum is in range, so their order does not change it), so the results equal
the portable C kernel and the reference bit for bit. Columns past a part's length (padding)
have zero weights.

The C prototype of a unit kernel (AAPCS; the fifth argument on the stack)::

    void NAME(const int8_t *w, const int16_t *xh, int32_t *acc,
              const int32_t *bx, const int32_t *bh);

``w`` is the unit's row of the layout; ``acc[0..G)`` receives the x-part sums (started from
``bx[0..G)`` or zero), ``acc[G..2G)`` the h-part sums (from ``bh``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dspasm import Line, Rept, expand

CONDITION = "defined(__GNUC__) && defined(__thumb__) && defined(__ARM_ARCH_6M__)"
"""The builds that run these kernels: GNU assembler syntax (gcc or clang), ARMv6-M."""

UNROLL_SPEED = 16
"""Steps per loop iteration at most when the build optimises for speed; the 256 bytes a 16-bit
conditional branch reaches back decide first (9 steps of 4 rows, 11 of 3, 14 of 1)."""
UNROLL_SIZE = 2
"""... and at -Os (``__OPTIMIZE_SIZE__``)."""

_K, _X, _T = "r0", "r1", "r2"
_BASES = ("r3", "r4", "r5", "r6", "r7")  # activation pointers, then weight row pointers
_SUMS = ("r12", "lr", "r8", "r9")  # r8, r9 are saved; lr is pushed anyway
_BRANCH_REACH = 256  # bytes a 16-bit conditional branch reaches back, counting from pc + 4
_HIGH_SAVED = [s for s in _SUMS if s in ("r8", "r9")]


def _const(reg: str, value: int) -> list[str]:
    """Instructions that set a low register to ``0 <= value < 2**32``."""
    if value < 256:
        return [f"movs {reg}, #{value}"]
    shift = (value & -value).bit_length() - 1
    if value >> shift < 256:
        return [f"movs {reg}, #{value >> shift}", f"lsls {reg}, {reg}, #{shift}"]
    return _const(reg, value >> 8) + [f"lsls {reg}, {reg}, #8", f"adds {reg}, #{value & 255}"]


class _Registers:
    """Low registers holding ``w + offset`` or ``xh + offset``, and the scratch r2: emits the
    cheapest instructions that set a register to such a pointer (from another one, or from
    the copy of the argument on the stack)."""

    def __init__(self, lines: list[str], stack: dict[str, int], known: dict) -> None:
        self.lines, self.stack, self.known = lines, stack, dict(known)
        self.scratch: int | None = None

    def forget(self, registers: set[str]) -> None:
        for reg in registers:
            self.known.pop(reg, None)
        if _T in registers:
            self.scratch = None

    def _cost(self, same: bool, v: int) -> int:
        mag = abs(v)
        if v == 0:
            return 0 if same else 1
        if mag < 8 or mag == self.scratch or (same and mag < 256):
            return 1
        return 1 + len(_const(_T, mag))

    def _add(self, rd: str, rs: str, v: int) -> None:
        mag, op = abs(v), ("adds" if v >= 0 else "subs")
        if v == 0:
            if rd != rs:
                self.lines.append(f"movs {rd}, {rs}")
        elif mag < 8:
            self.lines.append(f"{op} {rd}, {rs}, #{mag}")
        elif rd == rs and mag < 256 and mag != self.scratch:
            self.lines.append(f"{op} {rd}, #{mag}")
        else:
            if mag != self.scratch:
                self.lines.extend(_const(_T, mag))
                self.scratch = mag
            self.lines.append(f"{op} {rd}, {rs}, {_T}")

    def set(self, reg: str, base: str, offset: int) -> None:
        """reg = base + offset."""
        options = [(self._cost(src == reg, offset - value), 0, src)
                   for src, (b, value) in self.known.items() if b == base]
        options.append((1 + self._cost(True, offset), 1, ""))  # a register, if as cheap
        _, _, src = min(options)
        if src:
            self._add(reg, src, offset - self.known[src][1])
        else:
            self.lines.append(f"ldr {reg}, [sp, #{self.stack[base]}]")
            self._add(reg, reg, offset)
        self.known[reg] = (base, offset)

    def negate(self, reg: str, value: int) -> None:
        """reg = -value (reg is then no pointer)."""
        if self.scratch != value:
            self.lines.extend(_const(reg, value))
        self.lines.append(f"negs {reg}, {reg if self.scratch != value else _T}")
        self.known.pop(reg, None)


@dataclass(frozen=True, order=True)
class V6MUnitKernel:
    """One ARMv6-M unit kernel: G gate rows, an x part of ``nx`` columns and an h part of
    ``nh`` columns starting at column ``hoff`` of ``xh``, and whether each part starts from
    biases."""

    G: int
    nx: int
    nh: int
    hoff: int
    bx: bool
    bh: bool

    def __post_init__(self) -> None:
        if not 1 <= self.G <= len(_SUMS) or self.nx < 1 or self.nh < 1 or self.hoff < self.nx:
            raise ValueError(f"no ARMv6-M unit kernel for {self}")
        if self.S * (self.G + 1) > len(_BASES):
            raise ValueError(f"{self}: {self.G} rows of {self.S} columns need too many registers")

    @property
    def S(self) -> int:
        """Columns per step: 2 for a single row (4 base registers), else 1."""
        return 2 if self.G == 1 else 1

    def name(self, prefix: str) -> str:
        flags = ("_bx" if self.bx else "") + ("_bh" if self.bh else "")
        return f"{prefix}_v6m_unit{self.G}_x{self.nx}_h{self.nh}{flags}"

    # -- the weight layout -------------------------------------------------------------------

    def _span(self, part: int) -> int:
        """Bytes K walks over in part 0 (x) or 1 (h): 2 bytes per column, whole steps."""
        n = (self.nx, self.nh)[part]
        return 2 * self.S * -(-n // self.S)

    @property
    def unit_bytes(self) -> int:
        pairs = self.G // 2
        shared = max(self._span(0), self._span(1)) if self.G % 2 else 0
        return pairs * (self._span(0) + self._span(1)) + shared

    def _stream(self, part: int, row: int, phase: int) -> int:
        """Where K = 0 points for this row and column phase: the block's end plus its lane,
        in bytes from the unit's start."""
        pairs = self.G // 2
        if row < 2 * pairs:
            start = pairs * self._span(0) if part else 0
            return start + (row // 2 + 1) * self._span(part) + (row % 2) * self.S + phase
        return self.unit_bytes + part * self.S + phase

    def positions(self, part: int, row: int) -> list[int]:
        """Where the kernel reads row ``row``'s weight of each column of part 0 (x) or 1 (h),
        in bytes from the start of the unit's row of the layout."""
        n, span, S = (self.nx, self.nh)[part], self._span(part), self.S
        return [self._stream(part, row, c % S) - span + 2 * (c - c % S) for c in range(n)]

    def layout(self, x_rows: np.ndarray, h_rows: np.ndarray) -> np.ndarray:
        """The weights in the order this kernel reads them, ``(units, unit_bytes)``; zeros
        elsewhere. Inverse: :func:`tinyrnn.passes.layout.decode_v6m_layout`.

        ``x_rows``: ``(units, G, nx)`` and ``h_rows``: ``(units, G, nh)`` integer weights."""
        units = x_rows.shape[0]
        out = np.zeros((units, self.unit_bytes), dtype=np.int64)
        for part, rows in enumerate((x_rows, h_rows)):
            for row in range(self.G):
                out[:, self.positions(part, row)] = rows[:, row, :]
        return out

    # -- the code ----------------------------------------------------------------------------

    def doc(self) -> list[str]:
        """What the kernel computes and how, for the comment above it."""
        return [f"The sums of the {self.G} gate rows of one unit over [x, h]: acc[0..{self.G}) = "
                f"bx + W_x x ({self.nx} columns), acc[{self.G}..{2 * self.G}) = bh + W_h h "
                f"({self.nh} columns); w is the unit's row of the ARMv6-M weight copy.",
                "Per column: LDRSH of the activation, then per row LDRSB, MULS and ADD, then "
                "ADDS of the index. Exact: every partial sum fits 32 bits."]

    @property
    def _macro(self) -> str:
        return f"v6m_step{self.G}"

    def macros(self) -> dict[str, list[str]]:
        """The assembler macro this kernel's loops repeat: one step of S columns."""
        return {self._macro: self._step()}

    def expanded(self, unroll: int) -> list[str]:
        """:meth:`assembly` with the macro written out."""
        return expand(self.assembly(unroll), self.macros())

    def assembly(self, unroll: int) -> list[Line]:
        """The function body (Thumb, unified syntax), one instruction, label or repeated macro
        per line."""
        G, saved = self.G, _HIGH_SAVED[:max(0, self.G - 2)]
        frame = 4 * len(saved)
        at = {"w": frame, "xh": frame + 4, "acc": frame + 8, "bh": frame + 32}
        # The sums go to and come from memory through G low registers and a pointer that
        # leave the activation pointer and the last weight pointers of the x part alive.
        values = [r for r in ("r0", "r1", "r2", "r4", "r5", "r6", "r7")][:G + 1]
        pointer = values.pop()
        lines: list[Line] = ["push {r0, r1, r2, r4, r5, r6, r7, lr}"]
        if saved:
            low = ("r4", "r5")[:len(saved)]
            lines += [f"mov {lo}, {hi}" for lo, hi in zip(low, saved)]
            lines.append(f"push {{{', '.join(low)}}}")
        sums = _SUMS[:G]
        regs = _Registers(lines, at, {"r0": ("w", 0), "r1": ("xh", 0)})
        # x part: the biases at r3 (the fourth argument) or zeros, through r4...
        start = [f"r{4 + g}" for g in range(G)]
        if self.bx:
            lines.append(f"ldm r3!, {{{', '.join(start)}}}")
            lines += [f"mov {s}, {r}" for s, r in zip(sums, start)]
        else:
            lines += ["movs r4, #0"] + [f"mov {s}, r4" for s in sums]
        self._setup(0, regs)
        lines += self._loop(0, unroll, "1")
        lines += [f"ldr {pointer}, [sp, #{at['acc']}]"]
        lines += [f"mov {r}, {s}" for r, s in zip(values, sums)]
        lines.append(f"stm {pointer}!, {{{', '.join(values)}}}")
        regs.forget({_K, _X, _T, pointer, *values})
        # h part: the biases at the fifth argument or zeros
        if self.bh:
            lines += [f"ldr {pointer}, [sp, #{at['bh']}]",
                      f"ldm {pointer}!, {{{', '.join(values)}}}"]
            lines += [f"mov {s}, {r}" for s, r in zip(sums, values)]
        else:
            lines += [f"movs {values[0]}, #0"] + [f"mov {s}, {values[0]}" for s in sums]
        regs.forget({pointer, *values})
        self._setup(1, regs)
        lines += self._loop(1, unroll, "2")
        lines += [f"ldr {pointer}, [sp, #{at['acc']}]", f"adds {pointer}, #{4 * G}"]
        lines += [f"mov {r}, {s}" for r, s in zip(values, sums)]
        lines.append(f"stm {pointer}!, {{{', '.join(values)}}}")
        if saved:
            low = ("r4", "r5")[:len(saved)]
            lines.append(f"pop {{{', '.join(low)}}}")
            lines += [f"mov {hi}, {lo}" for lo, hi in zip(low, saved)]
        return lines + ["pop {r0, r1, r2, r4, r5, r6, r7, pc}"]

    def _setup(self, part: int, regs: _Registers) -> None:
        """The activation and weight base pointers of one part, then K = -span."""
        S, span = self.S, self._span(part)
        first = 2 * (self.hoff if part else 0) + span
        targets = [(_BASES[s], "xh", first + 2 * s) for s in range(S)]
        names = iter(_BASES[S:])
        targets += [(next(names), "w", self._stream(part, row, phase))
                    for row in range(self.G) for phase in range(S)]
        for reg, base, offset in targets:
            regs.set(reg, base, offset)
        regs.negate(_K, span)

    def _step(self) -> list[str]:
        """S columns of all G rows; K advances and sets the flags (no later instruction
        does: ADD to a high register leaves them)."""
        lines = []
        for phase in range(self.S):
            lines.append(f"ldrsh {_X}, [{_BASES[phase]}, {_K}]")
            for row, s in enumerate(_SUMS[:self.G]):
                base = _BASES[self.S + row * self.S + phase]
                lines += [f"ldrsb {_T}, [{base}, {_K}]", f"muls {_T}, {_X}, {_T}",
                          f"add {s}, {_T}"]
        lines.insert(-1, f"adds {_K}, #{2 * self.S}")
        return lines

    def _loop(self, part: int, unroll: int, label: str) -> list[Line]:
        steps = self._span(part) // (2 * self.S)
        unroll = max(1, min(unroll, (_BRANCH_REACH - 4) // (2 * len(self._step()))))
        iterations, rest = divmod(steps, unroll)
        lines: list[Line] = [Rept(rest, self._macro)] if rest else []
        if iterations >= 2:
            lines += [f"{label}:", Rept(unroll, self._macro), f"bne {label}b"]
        elif iterations == 1:
            lines += [Rept(unroll, self._macro)]
        return lines


def steady_instructions_per_mac(G: int) -> float:
    """Instructions per MAC of the unit kernel's inner loop for G gate rows, without loop,
    call and per-unit overhead: per step of S columns (S = 2 for a single row, else 1) S LDRSH,
    then LDRSB, MULS and ADD per row and column, then one ADDS of the index."""
    S = 2 if G == 1 else 1
    return (S + 3 * S * G + 1) / (S * G)
