"""The kernel plan: everything the generated C computes, as typed values.

:mod:`tinyrnn.passes.lower` builds a :class:`Plan` from the (quantized) IR, making every choice the
C makes: folded requantizations, 32- or 64-bit sums, interpolation and saturation forms, weight
layouts per kernel family, buffers. :mod:`tinyrnn.check.evaluate` runs a plan in numpy (the tests
compare it with the reference bit for bit); the templates print it and decide nothing.

A layer becomes one or more :class:`Function` s. A function's body is a list of statements
over a small expression language: named temporaries (:class:`Var`), literals and named
constants (:class:`Lit`), per-unit elements of constant arrays (:class:`Row`), of the unit
sums (:class:`Lane`) and of vectors (:class:`Unit`), pointers (:class:`Ptr`), helper calls
(:class:`Call`, the helpers of :mod:`tinyrnn.numerics.helpers`), ``+ - *`` (:class:`Bin`) and casts.
Loops run over the units ``j`` of a layer: every scalar inside is one value per unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------
# Kernel families and guards

FAMILIES = ("c", "dsp", "v6m", "mve", "fpu")
"""The matrix-vector kernel families a build runs: the portable C kernels, the DSP assembly
unit kernels (Cortex-M4/M7/M33), the ARMv6-M assembly unit kernels (Cortex-M0/M0+), the MVE
(Helium) C kernels (Cortex-M55/M85, which also have the DSP extension: MVE wins) and the float32
assembly unit kernels of cores with an FPU (Cortex-M4F/M7/M33/M55)."""

ALL = frozenset(FAMILIES)


@dataclass(frozen=True)
class Const:
    """A constant array in flash, with the tensor it came from and its format."""

    name: str
    ctype: str
    data: np.ndarray
    comment: str
    families: frozenset[str] = ALL  # the builds that compile it
    symbol: str = ""  # its name in C, when another family's copy has the same (``NAME_l0_fwd_w``)

    @property
    def c_name(self) -> str:
        return self.symbol or self.name

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def bytes(self) -> int:
        return CTYPE_BYTES[self.ctype] * int(self.data.size)


CTYPE_BYTES = {"float": 4, "int8_t": 1, "int16_t": 2, "int32_t": 4, "int64_t": 8, "uint8_t": 1,
               "uint32_t": 4}
CTYPE_RANGE = {"int8_t": (-(2**7), 2**7 - 1), "int16_t": (-(2**15), 2**15 - 1),
               "int32_t": (-(2**31), 2**31 - 1), "int64_t": (-(2**63), 2**63 - 1),
               "uint8_t": (0, 2**8 - 1), "uint32_t": (0, 2**32 - 1)}

# ---------------------------------------------------------------------------------------------
# Expressions


@dataclass(frozen=True)
class Var:
    """A named temporary of the unit loop (``const T name = ...``)."""

    name: str
    ctype: str
    kind: str = field(default="var", init=False)


@dataclass(frozen=True)
class Lit:
    """A literal; with a ``name``, a named constant declared at the top of its function."""

    value: int | float
    ctype: str
    name: str = ""
    comment: str = ""
    kind: str = field(default="lit", init=False)

    @property
    def text(self) -> str:
        if self.name:
            return self.name
        if self.ctype == "float":
            return f"{float(self.value)!r}f"
        return str(int(self.value))

    @property
    def value_text(self) -> str:
        return Lit(self.value, self.ctype).text


@dataclass(frozen=True)
class Row:
    """Unit j's element of a constant array: ``name[j][col]`` (``name[j]`` when 1-D), or
    ``alias[col]`` where the loop names unit j's row of the array (:attr:`Loop.aliases`)."""

    const: str
    col: int | None
    ctype: str
    alias: str = ""
    kind: str = field(default="row", init=False)


@dataclass(frozen=True)
class Lane:
    """Slot ``k`` of unit j's sums: ``ax[k]`` (x parts) or ``ah[k]`` (h parts)."""

    sums: str  # "ax" or "ah"
    k: int
    ctype: str
    kind: str = field(default="lane", init=False)


@dataclass(frozen=True)
class Unit:
    """Unit j's element of a vector parameter: ``name[offset + j]``."""

    vector: str
    offset: int
    ctype: str
    kind: str = field(default="unit", init=False)


@dataclass(frozen=True)
class Ptr:
    """A pointer argument: a vector parameter from ``offset`` (``xh + 4``), or unit j's row of
    a constant matrix from ``offset`` (``w[j] + 4``, ``row=True``)."""

    name: str
    offset: int = 0
    row: bool = False
    ctype: str = ""
    kind: str = field(default="ptr", init=False)


@dataclass(frozen=True)
class Call:
    """A call of a helper of templates/numerics.c.j2 (``prefixed``) or of libm (``tanhf``)."""

    fn: str
    args: tuple[Expr, ...]
    ctype: str
    prefixed: bool = True
    kind: str = field(default="call", init=False)


_PRECEDENCE = {"*": 2, "+": 1, "-": 1}


@dataclass(frozen=True)
class Bin:
    """``a op b`` in ``ctype`` (``op`` is ``+``, ``-`` or ``*``)."""

    op: str
    a: Expr
    b: Expr
    ctype: str
    kind: str = field(default="bin", init=False)

    @property
    def paren_a(self) -> bool:
        return isinstance(self.a, Bin) and _PRECEDENCE[self.a.op] < _PRECEDENCE[self.op]

    @property
    def paren_b(self) -> bool:
        return isinstance(self.b, Bin) and (
            _PRECEDENCE[self.b.op] < _PRECEDENCE[self.op]
            or (_PRECEDENCE[self.b.op] == _PRECEDENCE[self.op] and self.op == "-"))


@dataclass(frozen=True)
class Cast:
    """``(ctype)a``."""

    ctype: str
    a: Expr
    kind: str = field(default="cast", init=False)

    @property
    def paren(self) -> bool:
        return isinstance(self.a, Bin)


Expr = Var | Lit | Row | Lane | Unit | Ptr | Call | Bin | Cast

# ---------------------------------------------------------------------------------------------
# Statements


@dataclass(frozen=True)
class Let:
    """``const ctype name = value;``, with the math it computes as a comment above."""

    var: Var
    value: Expr
    comment: str = ""
    kind: str = field(default="let", init=False)


@dataclass(frozen=True)
class Store:
    """``target = value;``"""

    target: Unit
    value: Expr
    comment: str = ""
    kind: str = field(default="store", init=False)


@dataclass(frozen=True)
class Do:
    """A helper call for its effect (``softmax_q(in, out, ...)``)."""

    call: Call
    comment: str = ""
    kind: str = field(default="do", init=False)


@dataclass(frozen=True)
class Copy:
    """``memcpy(dst + offset, src + src_offset, n * sizeof(T))`` of vector parameters;
    ``memmove`` when ``dst`` and ``src`` are the same parameter (a window shifted in place)."""

    dst: str
    offset: int
    src: str
    n: int
    ctype: str
    src_offset: int = 0
    kind: str = field(default="copy", init=False)

    @property
    def moves(self) -> bool:
        """Whether source and destination are one buffer (``memmove``)."""
        return self.dst == self.src


Stmt = Let | Store | Do | Copy


def walk(node: Stmt | Expr):
    """Every expression in ``node`` (a statement or an expression), outermost first."""
    if isinstance(node, Let | Store):
        if isinstance(node, Store):
            yield node.target
        yield from walk(node.value)
    elif isinstance(node, Do):
        yield from walk(node.call)
    elif not isinstance(node, Copy):
        yield node
        children = (node.args if isinstance(node, Call) else (node.a, node.b)
                    if isinstance(node, Bin) else (node.a,) if isinstance(node, Cast) else ())
        for child in children:
            yield from walk(child)

# ---------------------------------------------------------------------------------------------
# Unit sums: the matrix-vector products of a recurrent layer, per kernel family


@dataclass(frozen=True)
class SumSide:
    """The x or h parts of one unit's G gate rows: ``acc[g] = bias[j][g] + W_g . v``."""

    acc_ctype: str  # int32_t or int64_t: proven from the accumulator bounds; float for float32
    bias: str | None  # const [H][G] in accumulator units
    offset: int  # first column in xh
    cols: int  # columns read (the rest of the groups are zero-weight padding)
    groups: int  # the C kernel's count: groups of 4 columns; columns for the float kernel
    c_kernel: str  # the portable C kernel: NAME_mac{G}_w{bits}_acc{32|64}, NAME_mac{G}_f32


@dataclass(frozen=True)
class UnitSums:
    """How unit j's sums are computed, per kernel family (the C prints one ``#if`` branch each):
    the C kernels and the DSP unit kernel read ``weights``
    (:func:`tinyrnn.passes.layout.kernel_layout`),
    the ARMv6-M unit kernel reads ``v6m_weights``
    (:meth:`tinyrnn.backend.v6masm.V6MUnitKernel.layout`), the MVE kernel ``mve_weights``
    (:func:`tinyrnn.passes.layout.mve_stream`).
    """

    G: int
    bits: int  # 8 or 16; 32 for float32 (layout.float_stream)
    wtype: str
    weights: str  # const (H, unit bytes) in the kernel layout
    x: SumSide
    h: SumSide
    dsp: str | None = None  # symbol of the DSP unit kernel (NAME_kernels.S)
    dsp_block: int = 1  # units per call of the DSP unit kernel (at most dspasm.BLOCK_UNITS)
    dsp_ragged: bool = False  # the last call has fewer units (H % dsp_block != 0)
    v6m: str | None = None  # symbol of the ARMv6-M unit kernel
    v6m_weights: str | None = None  # its copy of the weights
    v6m_stride: int = 0  # bytes per unit of that copy
    mve: str | None = None  # the MVE C kernel: NAME_mve{G}_w{bits}_acc{32|64}, on both parts
    mve_weights: str | None = None  # its copy of the weights
    fpu: str | None = None  # symbol of the float unit kernel (NAME_kernels.S)
    fpu_units: int = 1  # units per call of that kernel (backend/fpuasm.kernel_units)
    fpu_rest: str | None = None  # the kernel of the last hidden % fpu_units units, if any
    fpu_full: int = 0  # units the main kernel covers: hidden - hidden % fpu_units

    @property
    def families(self) -> tuple[str, ...]:
        """In the order the C tests them: MVE cores also have the DSP extension."""
        return tuple(f for f, has in (("mve", self.mve), ("dsp", self.dsp), ("v6m", self.v6m),
                                      ("fpu", self.fpu),
                                      ("c", True)) if has)


@dataclass(frozen=True)
class VectorStage:
    """MVE builds run a recurrent loop in blocks of ``lanes`` units: the MVE kernel's sums of
    each unit of the block, then the body's first ``prefix`` statements once for the whole
    block, one unit per 32-bit lane of a Helium vector (each helper call as its vector form
    ``v_NAME``, equal to the scalar helper lane by lane: ``numerics.c.j2``), then the middle of
    the body unit by unit, then its last ``suffix`` statements as vectors again (element loads
    and stores, ``v_load16`` ... ``v_store32``, touch only the units that exist). A unit's
    statements touch only its own elements, so running them block by block computes what the
    unit loop does: the plan's body
    stays the specification (:mod:`tinyrnn.check.evaluate` runs it as it is).

    ``rows`` maps each per-unit constant the vector statements read (``Row.const``) to its
    MVE copy, blocked as ``[blocks][cols * lanes]`` (element ``[b][lanes * g + u]`` is unit
    ``lanes * b + u``'s ``[g]``, zero beyond the last unit), so one vector load reads a block's
    lanes. ``outputs`` are the vector values the scalar rest reads, stored
    to a lane array per block; ``helpers`` the vector helpers the statements call."""

    lanes: int
    prefix: int  # the body's first statements: vector
    suffix: int  # its last statements: vector, after the scalar middle (reading no value of it)
    rows: tuple[tuple[str, str], ...]  # (Row.const, its blocked MVE copy)
    outputs: tuple[Var, ...]
    helpers: tuple[str, ...]
    biases: tuple[str | None, str | None]  # blocked copies of the x and h sums' biases
    head: tuple[Stmt, ...]  # the first `prefix` statements as the vector code computes them
    tail: tuple[Stmt, ...]  # the last `suffix` ones (dot2_q: its shifts, lower._dot2_shifts)

    scalar_units: bool = True  # the unit loop runs some statements (uses j)
    count: int = 0  # the units of the loop

    @property
    def blocked(self) -> dict[str, str]:
        return dict(self.rows)


@dataclass(frozen=True)
class Loop:
    """``for (j = 0; j < count; ++j)``: the body once per unit (or output row)."""

    count: int
    body: tuple[Stmt, ...]
    sums: UnitSums | None = None
    comment: str = ""
    aliases: tuple[tuple[str, str, str], ...] = ()  # (alias, const, ctype): unit j's rows
    vector: VectorStage | None = None  # MVE builds: blocks of units, the body's head vectorized

    @property
    def head(self) -> tuple[Stmt, ...]:
        return self.vector.head if self.vector else ()

    @property
    def middle(self) -> tuple[Stmt, ...]:
        """The statements a vector stage leaves to the unit loop (the whole body without)."""
        if self.vector is None:
            return self.body
        return self.body[self.vector.prefix:len(self.body) - self.vector.suffix]

    @property
    def tail(self) -> tuple[Stmt, ...]:
        return self.vector.tail if self.vector else ()

    @property
    def rest_aliases(self) -> tuple[tuple[str, str, str], ...]:
        """The aliases the body's scalar rest reads (all of them without a vector stage)."""
        if self.vector is None:
            return self.aliases
        used = {e.alias for s in self.middle for e in walk(s) if isinstance(e, Row) and e.alias}
        return tuple(a for a in self.aliases if a[0] in used)


@dataclass(frozen=True)
class Param:
    """A parameter of a layer function: a vector of ``size`` elements."""

    name: str
    ctype: str  # "const int16_t *", "int16_t *", "const float *", ...
    role: str  # "in", "out", "state", "work", "weights"
    size: int

    @property
    def declaration(self) -> str:
        return f"{self.ctype}{self.name}"


@dataclass(frozen=True)
class Function:
    """One layer function (a recurrent direction, a Linear layer, an activation)."""

    name: str
    kind: str  # "cell", "dense", "activation"
    layer: int  # IR layer index
    comment: tuple[str, ...]  # lines above the function: what it computes
    params: tuple[Param, ...]
    named: tuple[Lit, ...]  # named constants, declared first
    prologue: tuple[Stmt, ...]
    loops: tuple[Loop, ...]
    constants: tuple[Const, ...]  # its arrays, printed above it

    @property
    def mve_unit_loop(self) -> bool:
        """Whether MVE builds run a loop over single units ``j`` (not only vector stages)."""
        return any(lp.vector is None or lp.vector.scalar_units for lp in self.loops)

    @property
    def mve_unused_named(self) -> frozenset[str]:
        """The named constants no statement of an MVE build reads (the vector statements' own
        forms replaced them: a dot2_q's factors and shift)."""
        if not any(lp.vector for lp in self.loops):
            return frozenset()
        stmts = [s for lp in self.loops
                 for s in (lp.head + lp.middle + lp.tail if lp.vector else lp.body)]
        used = {e.name for s in (*self.prologue, *stmts) for e in walk(s)
                if isinstance(e, Lit) and e.name}
        return frozenset(n.name for n in self.named if n.name not in used)

    def param(self, role: str) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.role == role)


# ---------------------------------------------------------------------------------------------
# Buffers and the schedule of the API functions


@dataclass(frozen=True)
class Buffer:
    """A member of ``NAME_state_t``: recurrent state, or scratch shared by the planner."""

    name: str
    size: int
    comment: str
    scratch: bool
    ctype: str = ""  # the plan's T unless set (a 32-bit LSTM cell state: int32_t)


@dataclass(frozen=True)
class Arg:
    """An argument of a scheduled call: the step input, or a state member from ``offset``."""

    buffer: str  # "x_t" (the step's input), a member of NAME_state_t, or a constant
    offset: int = 0
    const: bool = False  # the weights of a cell (``NAME_l0_fwd_w[0]``)


@dataclass(frozen=True)
class Op:
    """One call of a layer function in the schedule, with its arguments in parameter order."""

    fn: str
    args: tuple[Arg, ...]
    kind: str  # "cell", "dense", "conv" (once over a whole sequence: (x, y, T)), "activation",
    # "multi" (element-wise over several values: inputs..., out)
    layer: int
    reverse: bool = False  # layer-major cells: over t from T - 1 down to 0
    src_stride: int = 0  # layer-major: elements per step of the source sequence
    dst: Arg | None = None  # layer-major cells: the sequence the output h goes to
    dst_stride: int = 0
    out_size: int = 0  # layer-major cells: elements of h
    comment: str = ""
    strides: tuple[int, ...] = ()  # layer-major "multi": elements per step of each argument
    steps: int = 0  # layer-major: its input's length, 0 for T, k after Schedule.lengths[:k]


@dataclass(frozen=True)
class StateRow:
    """One (layer, direction) row of a module's h or c in torch's order."""

    buffer: str
    offset: int  # in the flat h0/c0 (h_n/c_n) buffer
    size: int
    comment: str
    frac: int | None = None  # integer formats: the row's format
    shift: int = 0  # a 32-bit c: the state holds c0 * 2^shift; c_n = sat16(rshift_round(c, shift))


@dataclass(frozen=True)
class Output:
    """One output of NAME_run: where it comes from and its format (integer formats)."""

    index: int
    role: str  # "sequence", "vector", "h_n", "c_n"
    width: int  # sequence/vector: features; states: elements
    rows: tuple[StateRow, ...] = ()  # h_n/c_n
    frac: int | None = None  # sequence/vector of integer formats


@dataclass(frozen=True)
class Schedule:
    """The order of calls of NAME_step and NAME_run, over the planner's buffers.

    Time-major (unidirectional models): each step runs ``pre`` on the step's input; the
    sequence outputs take ``pre_result`` at every step, or, with a selected step (``select``),
    ``post`` runs at that step and the vector outputs take ``post_result``. Layer-major
    (bidirectional models): ``pre`` runs layer by layer over whole sequences, the selected step
    is copied to ``select_to`` and ``post`` runs once. ``step`` is NAME_step's order (time-major
    models only), with its result in ``step_result``.
    """

    layer_major: bool
    pre: tuple[Op, ...]
    pre_result: Arg
    post: tuple[Op, ...]
    post_result: Arg
    select: int | None
    select_width: int
    select_to: Arg | None
    step: tuple[Op, ...] | None
    step_result: Arg | None
    input_buffer: str | None  # integer formats: where the float input is converted, per step
    input_sequence: str | None = None  # ... and whole, for a Conv1d reading the model input
    layer_major_why: str = "bidirectional"  # comments of the C: why whole sequences
    no_step_why: str = "a bidirectional layer needs the whole sequence"
    step_input: str | None = None
    """Integer formats, a layer-major model that streams (passes/stream.py): where NAME_step
    converts the float x_t (its own scratch; ``input_buffer`` is NAME_run's)."""
    lengths: tuple[tuple[int, int], ...] = ()
    """Layer-major: ``(add, stride)`` of each Conv1d that changes the length, in order; after
    it the sequence has ``(n + add) / stride + 1`` steps (none when ``n + add < 0``)."""

    def select_at(self, steps: str) -> str:
        """The selected step as a C expression of the final sequence length ``steps``."""
        assert self.select is not None
        return f"{steps} - {-self.select}" if self.select < 0 else str(self.select)

    @property
    def select_c(self) -> str:
        """The selected step as a C expression of the sequence length ``T``."""
        assert self.select is not None
        return f"T - {-self.select}" if self.select < 0 else str(self.select)

    @property
    def select_checked(self) -> bool:
        """Whether some ``T >= 1`` puts the selected step outside the sequence."""
        return self.select not in (0, -1)


@dataclass(frozen=True)
class Plan:
    """A whole model, ready to print (see the module doc)."""

    name: str
    format: str
    T: str  # "float" or "int16_t": the type of every vector
    fixed: bool
    functions: tuple[Function, ...]
    helpers: tuple[str, ...]  # helper names in print order (tinyrnn.numerics.helpers.HELPERS)
    portable_helpers: tuple[str, ...]  # those only builds without the DSP extension call
    c_kernels: tuple[tuple[int, int, int, frozenset[str]], ...]  # (G, bits, acc, families)
    dsp_kernels: tuple = ()  # tinyrnn.backend.dspasm.UnitKernel, each once
    v6m_kernels: tuple = ()  # tinyrnn.backend.v6masm.V6MUnitKernel, each once
    v6m_constants: tuple[Const, ...] = ()
    mve_kernels: tuple[tuple[int, int, int], ...] = ()  # (G, bits, acc) of the MVE C kernels
    mve_helpers: tuple[str, ...] = ()  # the vector helpers of VectorStage (v_NAME), in order
    scalar_only_helpers: tuple[str, ...] = ()  # helpers MVE builds never call (#if !MVE)
    fpu_kernels: tuple = ()  # tinyrnn.backend.fpuasm.FloatUnitKernel, each once
    buffers: tuple[Buffer, ...] = ()
    schedule: Schedule | None = None
    input_size: int = 0
    step_output_size: int = 0
    max_seq_len: int = 0
    input_frac: int | None = None
    final_frac: int | None = None
    set_state: tuple[tuple[str, tuple[StateRow, ...]], ...] = ()  # ("h0", rows), ("c0", rows)
    outputs: tuple[Output, ...] = ()
    vocab: int = 0  # x holds token ids in 0..vocab-1 (the API checks them), else 0

    @property
    def families(self) -> tuple[str, ...]:
        """The kernel families the builds of this model choose between."""
        found = {"c"}
        if self.dsp_kernels:
            found.add("dsp")
        if self.v6m_kernels:
            found.add("v6m")
        if self.mve_kernels:
            found.add("mve")
        if self.fpu_kernels:
            found.add("fpu")
        return tuple(f for f in FAMILIES if f in found)

    @property
    def constants(self) -> tuple[Const, ...]:
        return tuple(c for fn in self.functions for c in fn.constants) + self.v6m_constants

    @property
    def weights_bytes(self) -> int:
        """Flash of the model's arrays, as one build compiles them (the standard layout)."""
        return sum(c.bytes for c in self.constants if "c" in c.families)

    def function(self, name: str) -> Function:
        return next(fn for fn in self.functions if fn.name == name)
