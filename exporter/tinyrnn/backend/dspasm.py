"""Matrix-vector kernels for cores with the DSP extension (ARMv7E-M: Cortex-M4, M7, M33, M55),
written out as Thumb-2 assembly for each model's sizes.

One *unit kernel* computes the integer sums of the G gate rows of one recurrent unit (LSTM
i f g o, GRU r z n) over the concatenated ``[x, h]`` buffer, in the weight order of
:func:`tinyrnn.passes.layout.kernel_layout`: for each group of 4 columns, one 32-bit word of int8
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

The C prototype of an int8 unit kernel (AAPCS; the fifth and sixth arguments on the stack)::

    const int8_t *NAME(const int8_t *w, const int16_t *xh, int32_t *acc,
                       const int32_t *bx, const int32_t *bh, int n);

It computes the sums of ``n >= 1`` consecutive units (one C call per :data:`BLOCK_UNITS`
units, not one per unit: the call, the register saves and the reloads of the arguments are
paid once per block): unit u's x-part sums go to ``acc[2Gu..2Gu + G)`` (started from its
row of ``bx`` or zero), its h-part sums to ``acc[2Gu + G..2G(u + 1))`` (from ``bh``); ``bx``
and ``bh`` point at the first unit's rows. It returns the weights of the next unit. Between
units the acc, bias and end pointers live in the stack frame, so the column loops keep all 14
registers.

16-bit weights with 64-bit sums (w16a16) take ``const int16_t *w`` and ``int64_t`` sums and
biases, one unit per call (no ``n``). A 64-bit sum needs two registers, so the kernel makes
passes of 2 rows over ``[x, h]``: per group 2 activation loads, 4 weight loads (rows r and
r + 1, 2 words each; the last one post-indexed to the next group), 4 ``SMLALD``: 11 cycles
for 8 MACs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rept:
    """``count`` copies of the assembler macro ``macro`` (``.rept`` ... ``.endr``)."""

    count: int
    macro: str


Line = str | Rept
"""One line of a kernel: an instruction or label, or a repeated macro."""


def expand(lines: list[Line], macros: dict[str, list[str]]) -> list[str]:
    """The instructions and labels of ``lines`` with every macro written out."""
    out: list[str] = []
    for line in lines:
        out += macros[line.macro] * line.count if isinstance(line, Rept) else [line]
    return out

CONDITION = ("defined(__GNUC__) && defined(__thumb__) && defined(__ARM_ARCH_PROFILE) && "
             "__ARM_ARCH_PROFILE == 'M' && defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP")
"""The builds that run these kernels (a preprocessor condition, in the C file and the .S file):
GNU assembler syntax (gcc or clang), Thumb state, an M-profile core with the DSP extension."""

UNROLL_SPEED = 8
"""Groups of 4 columns per loop iteration when the build optimises for speed."""
UNROLL_SIZE = 1
"""... and at -Os (``__OPTIMIZE_SIZE__``), where the loop body is one group."""
STRAIGHT_GROUPS = 16
"""When the build optimises for speed, an int8 part of up to this many groups is straight code:
no loop count, so the acc pointer stays in r2 (a unit of I = H = 64 saves 14 cycles of loop
control and 6 of pointer reloads; the kernel's code doubles to about 2.6 KB)."""


def part_unroll(groups: int, unroll: int, bits: int = 8) -> int:
    """Groups per loop iteration of a part of ``groups`` groups in the build variant with
    ``unroll`` (:data:`UNROLL_SPEED` or :data:`UNROLL_SIZE`): int8 parts of at most
    :data:`STRAIGHT_GROUPS` groups are straight code at speed."""
    if bits == 8 and unroll == UNROLL_SPEED and groups <= STRAIGHT_GROUPS:
        return groups
    return unroll

PASS_UNITS = {1: 4, 2: 2, 3: 2, 4: 1}
"""Units whose rows one pass over [x, h] sums together (:meth:`UnitKernel.pass_units`): their
rows share each group's two activation loads. The weights stay in the per-unit layout; unit
k's words of a group are read at an immediate offset of k units' bytes from unit 0's."""
_POOL = ("r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "lr", "r2")
"""The registers of a pass besides w, v and the extension temporary: sums, the two activation
words, then weight words (no loop count: a pass is straight code)."""

_W, _V, _N, _T = "r0", "r1", "r2", "r3"
_SUMS = ("r4", "r5", "r6", "r7")
_X01, _X23 = "r8", "r9"
_WORDS = ("r10", "r11", "r12", "lr")
_SAVED = "{r1-r11, lr}"  # 12 words: [sp] xh, [sp, #4] acc, [sp, #8] bx, then r4-r11, lr
_XH, _ACC, _BX = "[sp]", "[sp, #4]", "[sp, #8]"
_BH, _END = "[sp, #48]", "[sp, #52]"  # the fifth and sixth arguments; n becomes acc's end

BLOCK_UNITS = 4
"""Units per call of an int8 unit kernel: the C loop calls it when ``j % BLOCK_UNITS == 0`` and
reads the sums of units j .. j + 3 from a local ``int32_t [BLOCK_UNITS][2G]`` (64 bytes of
stack per gate); 4 units amortize the call to about 10 cycles per unit."""


@dataclass(frozen=True, order=True)
class UnitKernel:
    """One unit kernel: G gate rows, x part and h part of ``xg`` and ``hg`` groups of 4
    columns, and whether each part starts from biases."""

    G: int
    xg: int
    hg: int
    bx: bool
    bh: bool
    bits: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.G <= len(_SUMS) or self.xg < 1 or self.hg < 1 \
                or self.bits not in (8, 16):
            raise ValueError(f"no DSP unit kernel for {self}")

    def name(self, prefix: str) -> str:
        flags = ("_bx" if self.bx else "") + ("_bh" if self.bh else "")
        wide = "_w16" if self.bits == 16 else ""
        return f"{prefix}_unit{self.G}{wide}_x{self.xg}_h{self.hg}{flags}"

    @property
    def stride(self) -> int:
        """Bytes of one unit's weights (x part, then h part)."""
        return (self.bits // 2) * self.G * (self.xg + self.hg)

    @property
    def _straight_at_speed(self) -> bool:
        return all(groups // part_unroll(groups, UNROLL_SPEED) < 2
                   for groups in (self.xg, self.hg))

    def pass_units(self, unroll: int) -> int:
        """Units per pass in the build variant with ``unroll``: :data:`PASS_UNITS` when both
        parts are straight code and the last unit's words are within an LDR offset (4095)."""
        P = PASS_UNITS[self.G] if self.bits == 8 else 1
        straight = all(groups // part_unroll(groups, unroll) < 2 for groups in (self.xg, self.hg))
        if P == 1 or not straight or (P - 1) * self.stride - 4 > 4095:
            return 1
        return P

    @property
    def block(self) -> int:
        """Units per call: :data:`BLOCK_UNITS` for int8 weights, 1 for int16 weights."""
        return BLOCK_UNITS if self.bits == 8 else 1

    def doc(self) -> list[str]:
        """What the kernel computes and how, for the comment above it."""
        if self.bits == 8:
            lines = [f"The sums of the {self.G} gate rows of n units over [x, h]: for unit u, "
                     f"acc[{2 * self.G}u..{2 * self.G}u + {self.G}) = bx + W_x x ({self.xg} groups "
                     f"of 4 columns), acc[{2 * self.G}u + {self.G}..{2 * self.G}(u + 1)) = "
                     f"bh + W_h h ({self.hg} groups); returns the next unit's weights.",
                     f"Per group: 2 + {self.G} loads back to back, then per row SXTB16, "
                     "SXTB16 ROR 8 and two SMLAD. Exact: every partial sum fits 32 bits."]
        else:
            lines = [f"The sums of the {self.G} gate rows of one unit over [x, h]: "
                     f"acc[0..{self.G}) = bx + W_x x ({self.xg} groups of 4 columns), "
                     f"acc[{self.G}..{2 * self.G}) = bh + W_h h ({self.hg} groups); "
                     "returns the next unit's weights.",
                     "Passes of 2 rows; per group: 6 loads back to back, then 4 SMLALD "
                     "into 64-bit sums. Exact."]
        return lines

    def macros(self) -> dict[str, list[str]]:
        """The assembler macros this kernel's body repeats: one group of 4 columns."""
        if self.bits == 8:
            out = {self._macro8: self._group()}
            P = self.pass_units(UNROLL_SPEED)
            if P > 1:
                out[self._pass_macro(P)] = self._pass_group(P)
            if not (self.bx and self.bh) and self._straight_at_speed:  # a part starts with SMUAD
                out[self._macro8 + "_first"] = self._group(first=True)
                if P > 1:
                    out[self._pass_macro(P) + "_first"] = self._pass_group(P, first=True)
            return out
        return {self._macro16(min(2, self.G - first)): self._group16(min(2, self.G - first),
                                                                      8 * self.G)
                for first in range(0, self.G, 2)}

    @property
    def _macro8(self) -> str:
        return f"w8_group{self.G}"

    def _macro16(self, rows: int) -> str:
        return f"w16_group{rows}_stride{8 * self.G}"

    def expanded(self, unroll: int) -> list[str]:
        """:meth:`assembly` with the macros written out."""
        return expand(self.assembly(unroll), self.macros())

    def assembly(self, unroll: int) -> list[Line]:
        """The function body, one instruction, label or repeated macro per line."""
        if self.bits == 16:
            return self._assembly16(unroll)
        sums = _SUMS[:self.G]
        # acc's end (acc + n * 8G bytes) replaces n, so the unit loop compares pointers
        s0 = sums[0]
        lines: list[Line] = [f"push {_SAVED}", f"ldr {s0}, {_END}", f"movs {_T}, #{8 * self.G}",
                             f"mul {s0}, {s0}, {_T}", f"add {s0}, {s0}, r2", f"str {s0}, {_END}"]
        ux, uh = part_unroll(self.xg, unroll), part_unroll(self.hg, unroll)
        P = self.pass_units(unroll)
        if P > 1:  # passes of P units while P are left, then one unit at a time
            lines += self._passes(P)
        if self.xg // ux < 2 and self.hg // uh < 2:  # straight code: acc stays in r2
            if P > 1:  # units left after the passes?
                lines += [f"ldr {_T}, {_END}", f"cmp {_N}, {_T}", "beq 8f"]
            lines.append("3:")
            lines += self._start(self.bx, _BX, sums, straight=True)
            lines.append(f"ldr {_V}, {_XH}")
            lines += self._straight(self.xg, self.bx, self._macro8)
            lines.append(_multiple_wb("stm", _N, sums))
            lines += self._start(self.bh, _BH, sums, straight=True)
            lines += self._straight(self.hg, self.bh, self._macro8)
            lines += [_multiple_wb("stm", _N, sums), f"ldr {_T}, {_END}", f"cmp {_N}, {_T}",
                      "bne 3b"] + (["8:"] if P > 1 else []) + [f"pop {_SAVED[:-4]}pc}}"]
            return lines
        lines.append("3:")
        lines += self._start(self.bx, _BX, sums)
        lines.append(f"ldr {_V}, {_XH}")
        lines += self._part(self.xg, ux, "1")
        lines += [f"ldr {_N}, {_ACC}", _multiple_wb("stm", _N, sums)]
        lines += self._start(self.bh, _BH, sums)
        lines.append(f"str {_N}, {_ACC}")
        lines += self._part(self.hg, uh, "2")  # v goes on from x's end to h
        lines += [f"ldr {_N}, {_ACC}", _multiple_wb("stm", _N, sums), f"str {_N}, {_ACC}",
                  f"ldr {_T}, {_END}", f"cmp {_N}, {_T}", "bne 3b",
                  f"pop {_SAVED[:-4]}pc}}"]
        return lines

    def _pass_macro(self, P: int) -> str:
        return f"w8_pass{self.G}x{P}_stride{self.stride}"

    def _pass_registers(self, P: int) -> tuple[tuple[str, ...], str, str, tuple[str, ...]]:
        R = P * self.G
        return _POOL[:R], _POOL[R], _POOL[R + 1], _POOL[R + 2:]

    def _pass_group(self, P: int, first: bool = False) -> list[str]:
        """One group of 4 columns for the P * G rows of a pass: the activation words once, then
        the weight words in bursts as many as the free registers hold (unit 0's post-indexed,
        unit k's at k * stride bytes on), each burst's rows extended and multiplied."""
        sums, x01, x23, words = self._pass_registers(P)
        G = self.G
        rows = [(k, g) for k in range(P) for g in range(G)]
        lines = [f"ldr {x01}, [{_V}], #4", f"ldr {x23}, [{_V}], #4"]
        for start in range(0, len(rows), len(words)):
            chunk = rows[start:start + len(words)]
            for q, (k, g) in zip(words, chunk):
                lines.append(f"ldr {q}, [{_W}], #4" if k == 0 else
                             f"ldr {q}, [{_W}, #{k * self.stride - 4 * G + 4 * g}]")
            for q, (k, g) in zip(words, chunk):
                s = sums[k * G + g]
                lines += [f"sxtb16 {_T}, {q}", f"sxtb16 {q}, {q}, ror #8",
                          f"smuad {s}, {_T}, {x01}" if first else f"smlad {s}, {_T}, {x01}, {s}",
                          f"smlad {s}, {q}, {x23}, {s}"]
        return lines

    def _passes(self, P: int) -> list[Line]:
        """Passes over P units at a time while at least P are left (acc in r2 between them);
        the acc pointer waits in the frame during a pass, which needs r2 for a weight word."""
        G = self.G
        sums = self._pass_registers(P)[0]
        lines: list[Line] = ["6:", f"ldr {_T}, {_END}", f"sub {_T}, {_T}, {_N}",
                             f"cmp {_T}, #{P * 8 * G}", "blt 7f", f"str {_N}, {_ACC}"]
        for part, bias, slot, groups in (("x", self.bx, _BX, self.xg),
                                         ("h", self.bh, _BH, self.hg)):
            lines += self._start(bias, slot, sums, straight=True)
            if part == "x":
                lines.append(f"ldr {_V}, {_XH}")
            lines += self._straight(groups, bias, self._pass_macro(P))
            lines.append(f"ldr {_T}, {_ACC}")
            offset = 0 if part == "x" else 4 * G
            lines += [f"str {sums[k * G + g]}, [{_T}, #{8 * G * k + offset + 4 * g}]"
                      for k in range(P) for g in range(G)]
        lines += [f"add {_N}, {_T}, #{P * 8 * G}"]
        lines += _add_constant(_W, (P - 1) * self.stride, _T)
        lines += ["b 6b", "7:"]
        return lines

    @staticmethod
    def _start(bias: bool, slot: str, sums: tuple[str, ...], straight: bool = False
               ) -> list[str]:
        """The sums from the next row of the biases at the pointer in ``slot`` (moved on), or
        zero (in straight code nothing: the first group starts them with SMUAD)."""
        if bias:
            return [f"ldr {_T}, {slot}", _multiple_wb("ldm", _T, sums), f"str {_T}, {slot}"]
        return [] if straight else [f"movs {s}, #0" for s in sums]

    @staticmethod
    def _straight(groups: int, bias: bool, macro: str) -> list[Line]:
        """A straight part of ``groups`` copies of ``macro``; without a bias the first is its
        ``_first`` variant, whose SMUAD starts each sum (the same integer as SMLAD onto 0)."""
        if bias:
            return [Rept(groups, macro)]
        return [Rept(1, macro + "_first")] + ([Rept(groups - 1, macro)] if groups > 1 else [])

    def _group(self, first: bool = False) -> list[str]:
        words = _WORDS[:self.G]
        lines = [f"ldr {_X01}, [{_V}], #4", f"ldr {_X23}, [{_V}], #4"]
        lines += [f"ldr {q}, [{_W}], #4" for q in words]
        for q, s in zip(words, _SUMS):
            lines += [f"sxtb16 {_T}, {q}", f"sxtb16 {q}, {q}, ror #8",
                      f"smuad {s}, {_T}, {_X01}" if first else f"smlad {s}, {_T}, {_X01}, {s}",
                      f"smlad {s}, {q}, {_X23}, {s}"]
        return lines

    def _part(self, groups: int, unroll: int, label: str) -> list[Line]:
        return _loop(groups, unroll, label, self._macro8)

    # -----------------------------------------------------------------------------------------
    # 16-bit weights, 64-bit sums

    def _assembly16(self, unroll: int) -> list[Line]:
        G = self.G
        stride = 8 * G  # bytes of one group: G rows x 4 int16 weights
        # saved: r0 (w), r1 (xh), r2 (acc), r3 (bx), r4-r11, lr: 13 words; bh at [sp, #52]
        lines: list[Line] = ["push {r0-r11, lr}"]
        for first in range(0, G, 2):
            rows = min(2, G - first)
            sums = _SUMS[:2 * rows]
            reglist = "{" + ", ".join(sums) + "}"
            for part, groups, bias, bias_at, label in (
                    ("x", self.xg, self.bx, "[sp, #12]", "1"),
                    ("h", self.hg, self.bh, "[sp, #52]", "2")):
                if bias:
                    lines += [f"ldr {_T}, {bias_at}", f"add {_T}, {_T}, #{8 * first}",
                              f"ldm {_T}, {reglist}"]
                else:
                    lines += [f"movs {s}, #0" for s in sums]
                w_offset = 8 * first + (stride * self.xg if part == "h" else 0)
                lines += ["ldr r0, [sp]"] + _add_constant("r0", w_offset, _T)
                if part == "x":
                    lines.append("ldr r1, [sp, #4]")
                lines += self._part16(groups, rows, stride, unroll, label)
                acc_offset = 8 * first + (8 * G if part == "h" else 0)
                lines += [f"ldr {_T}, [sp, #8]"] + _add_constant(_T, acc_offset, _N)
                lines.append(f"stm {_T}, {reglist}")
        lines += ["ldr r0, [sp]"] + _add_constant("r0", stride * (self.xg + self.hg), _T)
        lines += ["add sp, sp, #4", "pop {r1-r11, pc}"]
        return lines

    @staticmethod
    def _group16(rows: int, stride: int) -> list[str]:
        lines = [f"ldr {_X01}, [{_V}], #4", f"ldr {_X23}, [{_V}], #4"]
        words = _WORDS[:2 * rows]
        lines += [f"ldr {q}, [{_W}, #{4 * k}]" for k, q in enumerate(words) if k]
        lines.append(f"ldr {words[0]}, [{_W}], #{stride}")
        for r in range(rows):
            lo, hi = _SUMS[2 * r], _SUMS[2 * r + 1]
            lines += [f"smlald {lo}, {hi}, {words[2 * r]}, {_X01}",
                      f"smlald {lo}, {hi}, {words[2 * r + 1]}, {_X23}"]
        return lines

    def _part16(self, groups: int, rows: int, stride: int, unroll: int,
                label: str) -> list[Line]:
        return _loop(groups, unroll, label, self._macro16(rows))


def _loop(groups: int, unroll: int, label: str, group: str) -> list[Line]:
    """The macro ``group`` (the code of one group of 4 columns) ``groups`` times: a counted
    loop of ``unroll`` groups per iteration (count in r2, numeric ``label``), then the rest
    straight."""
    iterations, rest = divmod(groups, unroll)
    lines: list[Line] = []
    if iterations >= 2:
        mov = "movs" if iterations < 256 else "movw"
        lines += [f"{mov} {_N}, #{iterations}", f"{label}:", Rept(unroll, group),
                  f"subs {_N}, {_N}, #1", f"bne {label}b"]
    elif iterations == 1:
        rest += unroll
    return lines + ([Rept(rest, group)] if rest else [])


def _multiple(op: str, base: str, registers: tuple[str, ...]) -> str:
    """LDM/STM of ``registers`` at ``base``, or LDR/STR for one register: a Thumb-2 LDM or STM
    of fewer than two registers is UNPREDICTABLE (gas rewrites it, clang does not)."""
    if len(registers) == 1:
        return f"{'ldr' if op == 'ldm' else 'str'} {registers[0]}, [{base}]"
    return f"{op} {base}, {{{', '.join(registers)}}}"


def _multiple_wb(op: str, base: str, registers: tuple[str, ...]) -> str:
    """:func:`_multiple` with the base moved past the registers (``ldm base!``, or a
    post-indexed LDR/STR for one register)."""
    if len(registers) == 1:
        return f"{'ldr' if op == 'ldm' else 'str'} {registers[0]}, [{base}], #4"
    return f"{op} {base}!, {{{', '.join(registers)}}}"


def _add_constant(reg: str, value: int, scratch: str) -> list[str]:
    """``reg += value`` for 0 <= value < 2**32, through ``scratch`` when it needs a MOVW."""
    if value == 0:
        return []
    if value < 4096:
        return [f"addw {reg}, {reg}, #{value}"]
    lines = [f"movw {scratch}, #{value & 0xFFFF}"]
    if value >> 16:
        lines.append(f"movt {scratch}, #{value >> 16}")
    return lines + [f"add {reg}, {reg}, {scratch}"]


def steady_cycles(G: int, bits: int, groups: int, units_per_pass: int = 1) -> float:
    """Cycles the unit kernel's inner loops take for one unit over ``groups`` groups of 4
    columns on the static Cortex-M4 table (a load after a load costs 1), without the loop
    branches, the call and the per-unit work: the floor of this kernel design.

    int8 weights, a pass of P units (R = P G rows): 2 activation loads, R weight loads, one
    cycle more per burst of loads (the first load of a burst pays the load-use cycle; a burst
    fills the free registers: 4 words with a loop count, 9 - R in a straight pass), and 4R for
    the SXTB16 and SMLAD pairs, shared by P units (G = 4: 23 per unit; a GRU pass of 2 units
    34, 17 per unit; an RNN pass of 4 units 23, 5.75 per unit). int16 weights: per pass of 2
    rows 3 + 4 load cycles and 4 SMLALD, per pass of 1 row 3 + 2 and 2.
    """
    if bits == 8:
        R = units_per_pass * G
        free = len(_WORDS) if units_per_pass == 1 else len(_POOL) - 2 - R
        return groups * (2 + R + -(-R // free) + 4 * R) / units_per_pass
    pairs, single = divmod(G, 2)
    return groups * (11 * pairs + 7 * single)
