"""The lowering pass: the IR (float32) or the quantized IR -> a :class:`tinyrnn.backend.plan.Plan`.

Every choice the generated C makes is made here, in Python, and recorded as a typed value:

- which requantization form each accumulator side takes (:mod:`tinyrnn.numerics.folds`: ``c * acc +
  mmulr(acc, k)`` for 32-bit sums, ``mmulr64`` for 64-bit sums, else the int64 ``rescale``),
  and whether a gate's two folded sides are summed in int32 (proven from the bounds) or int64;
- 32- or 64-bit sums (from the quantizer's accumulator bounds), the kernel of each family and
  the weight layout each reads (:mod:`tinyrnn.passes.layout`);
- the interpolation and saturation forms (``mul_q30_hi`` for shifts 16..32, ``sat24_32`` after
  an int32 sum, a format change as a multiply, a rounding shift or nothing);
- the names of constants and temporaries, and the buffers (:class:`_Buffers`: a planner that
  gives every value a buffer from the calls that read and write it).

One lowering function per layer kind (:func:`lower_recurrent`, :func:`lower_dense`,
:func:`lower_activation`) returns the :class:`~tinyrnn.backend.plan.Function` s of that layer;
:func:`lower` adds the schedule of the API functions. The templates print the plan;
:mod:`tinyrnn.check.evaluate` runs it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..backend.dspasm import UnitKernel
from ..backend.fpuasm import FloatUnitKernel, kernel_units
from ..backend.plan import (
    ALL,
    Arg,
    Bin,
    Buffer,
    Call,
    Cast,
    Const,
    Copy,
    Do,
    Expr,
    Function,
    Lane,
    Let,
    Lit,
    Loop,
    Op,
    Output,
    Param,
    Plan,
    Ptr,
    Row,
    Schedule,
    StateRow,
    Store,
    SumSide,
    Unit,
    UnitSums,
    Var,
    VectorStage,
    walk,
)
from ..backend.v6masm import V6MUnitKernel
from ..cells import CellSpec
from ..ir import (
    Activation,
    Binary,
    Carry,
    ChannelSlice,
    Concat,
    Conv1d,
    Dense,
    Embedding,
    FrameConv1d,
    FramePad,
    Hypot,
    Model,
    PadTime,
    PoolTime,
    PoolWindow,
    RecurrentLayer,
    SelectStep,
    length_rules,
    reads,
)
from ..numerics import helpers as nm
from ..numerics.folds import Fold, Fold32, Fold64, fold_side, sum_fits_int32
from .layout import conv_layout, direction_stream, float_stream, mve_stream, padded

WEIGHT_CTYPE = {8: "int8_t", 16: "int16_t"}
ACC_CTYPE = {32: "int32_t", 64: "int64_t"}
INPUT_LIMIT = 2**15
"""The largest |value| of an int16 activation: the accumulator bounds assume every input."""

__all__ = ["conv_rows4", "lower", "lower_activation", "lower_conv1d", "lower_dense",
           "lower_embedding", "lower_pad_time", "lower_pool_time", "lower_pool_window",
           "lower_recurrent"]


# ---------------------------------------------------------------------------------------------
# Small builders


def call(fn: str, *args: Expr, ctype: str) -> Call:
    return Call(fn, tuple(args), ctype)


def shift_round(value: Expr, n: int, ctype: str = "int64_t") -> Expr:
    """``rshift_round(value, n)`` in the form the shift needs: a rounding shift (n > 0), an
    exact multiply by ``2**-n`` (n < 0), or nothing."""
    if n > 0:
        return call("rshift_round64", value, Lit(n, "int"), ctype=ctype)
    if n < 0:
        return Bin("*", Cast(ctype, value), Lit(1 << -n, ctype), ctype)
    return value


def cell_ctype(q) -> str:
    """The C type of a quantized layer's cell state c ("" for the layer's T: no c, or 16 bits)."""
    c = getattr(q, "c", None)
    return "int32_t" if c is not None and c.bits == 32 else ""


def widen_int32(value: Expr, n: int, req: _Requirements) -> Expr:
    """An int32 ``value`` (a 32-bit cell state) in the wide pre-activation format:
    ``sat24(rshift_round(value, n))`` in int64."""
    req.helpers.add("sat24")
    return call("sat24", shift_round(value, n), ctype="int32_t")


def widen_int16(value: Expr, n: int, req: _Requirements) -> Expr:
    """An int16 ``value`` in the wide pre-activation format: ``sat24(rshift_round(value, n))``.
    A left shift by up to 16 stays in int32 (|value| * 2^16 <= 2^31) and saturates with one
    SSAT; by up to 7 it stays below 2^23 and needs no saturation; anything else takes int64."""
    if -16 <= n <= 0:
        scaled = Bin("*", Cast("int32_t", value), Lit(1 << -n, "int32_t"), "int32_t") if n \
            else Cast("int32_t", value)
        if -n <= 7:
            return scaled
        req.helpers.add("sat24_32")
        return call("sat24_32", scaled, ctype="int32_t")
    req.helpers.add("sat24")
    return call("sat24", shift_round(value, n), ctype="int32_t")


def _named(value: int, ctype: str, name: str, comment: str) -> Lit:
    return Lit(value, ctype, name, comment)


class _Constants:
    """The arrays of one function, in print order."""

    def __init__(self) -> None:
        self.items: list[Const] = []

    def add(self, name: str, ctype: str, data: np.ndarray, comment: str,
            families: frozenset[str] = ALL) -> str:
        self.items.append(Const(name, ctype, np.asarray(data), comment, families))
        return name


def compact_sources(sources: Sequence[str]) -> str:
    """Slices of the same tensors, one after the other (``w[0:16] input gate``,
    ``w[16:32] forget gate``...), written as one slice each (``w[0:32]``)."""
    pattern = re.compile(r"([\w.]+)\[(\d+):(\d+)\]")
    parsed = [pattern.findall(s) for s in sources]
    joins = [pattern.sub("@", s).split("@")[1:-1] for s in sources]
    if not parsed or not all(parsed) or any(len(p) != len(parsed[0]) for p in parsed) \
            or any(j != joins[0] for j in joins):
        return ", ".join(sources)
    groups: list[list[tuple[str, int, int]]] = []
    for slices in parsed:
        slices_ = [(name, int(a), int(b)) for name, a, b in slices]
        last = groups[-1] if groups else None
        if last and all(n == m and b == a for (n, _, b), (m, a, _) in zip(last, slices_)):
            groups[-1] = [(n, a, b) for (n, a, _), (_, _, b) in zip(last, slices_)]
        else:
            groups.append(slices_)
    return ", ".join(
        "".join(f"{n}[{a}:{b}]" + (joins[0][k] if k < len(joins[0]) else "")
                for k, (n, a, b) in enumerate(g)) for g in groups)


def _formats(q) -> str:
    return ", ".join(f"{k} {v}" for k, v in (("x", q.x), ("h", q.h), ("c", getattr(q, "c", None)),
                                              ("o*tanh(c)", getattr(q, "hc", None)))
                     if v is not None and not (k == "o*tanh(c)" and not q.ir.projected))


def _title(layer: RecurrentLayer, reverse: bool) -> str:
    return (f"{layer.module or 'rnn'} layer {layer.layer}, "
            f"{'reverse' if reverse else 'forward'} direction")


# ---------------------------------------------------------------------------------------------
# Recurrent layers


@dataclass
class _Requirements:
    """What the model's functions call: helpers, C kernels and assembly kernels."""

    helpers: set[str] = field(default_factory=set)
    c_kernels: dict[tuple[int, int, int], set[str]] = field(default_factory=dict)
    dsp: set[UnitKernel] = field(default_factory=set)
    v6m: dict[str, V6MUnitKernel] = field(default_factory=dict)
    fpu: set[FloatUnitKernel] = field(default_factory=set)
    v6m_constants: list[Const] = field(default_factory=list)
    mve: set[tuple[int, int, int]] = field(default_factory=set)  # (G, bits, acc)
    mve_helpers: set[str] = field(default_factory=set)  # the vector helpers (VectorStage)


def lower_recurrent(p: str, index: int, layer: RecurrentLayer, q, req: _Requirements
                    ) -> list[Function]:
    """One function per direction: one step of the cell (``q`` the quantized layer, or None)."""
    return [(_fixed_cell if q is not None else _float_cell)(p, index, layer, d, q, req)
            for d in range(layer.num_directions)]


def _cell_params(layer: RecurrentLayer, T: str, xh_size: int, c_type: str = "") -> list[Param]:
    params = [Param("x", f"const {T} *", "in", layer.input_size),
              Param("h", f"{T} *", "state", layer.state_size)]
    if layer.spec.cell_state:
        params.append(Param("c", f"{c_type or T} *", "state", layer.hidden_size))
    params.append(Param("xh", f"{T} *", "work", xh_size))
    if layer.projected:
        params.append(Param("tmp", f"{T} *", "work", layer.hidden_size))
    return params


def _cell_comment(layer: RecurrentLayer, reverse: bool, integers: str) -> tuple[str, ...]:
    """The function's comment: what it computes (each gate's math is above its code)."""
    spec: CellSpec = layer.spec
    lines = [f"{_title(layer, reverse)}: one {spec.title} step ({spec.module}"
             f"{f', projected to {layer.state_size}' if layer.projected else ''}). W_* x, W_* h "
             "are the gate's rows of weight_ih and weight_hh, b_* its rows of bias_ih and bias_hh."]
    if integers:
        lines.append(integers)
    return tuple(lines)


def _float_cell(p: str, index: int, layer: RecurrentLayer, d: int, q, req: _Requirements
                ) -> Function:
    direction = layer.directions[d]
    fn = f"{p}_l{index}_{'rev' if direction.reverse else 'fwd'}"
    spec = layer.spec
    consts = _Constants()
    I, P, H = layer.input_size, layer.state_size, layer.hidden_size
    G = spec.G
    f32 = "float"
    # one fused kernel per part: G gate rows at once, G independent sums (passes/layout.py)
    gates = direction.gates
    stream = float_stream([g.w_x.data for g in gates], [g.w_h.data for g in gates])
    sources = "; ".join(f"{g.w_x.source} | {g.w_h.source}" for g in gates)
    w_name = consts.add(
        f"{fn}_w", f32, stream,
        f"per unit: {'/'.join(spec.gate_names)} rows interleaved in groups of 4 columns, then "
        f"each row's last columns, x columns then h columns; float32, from {sources}")
    sides: list[SumSide] = []
    for k, (tag, cols) in enumerate((("x", I), ("h", P))):
        # the x sum carries a gate's bias (b_ih + b_hh folded), the h sum only a split gate's
        biases = [next((a.bias for a in g.accumulators if (a.w_x is not None) == (k == 0)
                        and a.bias is not None), None) for g in gates]
        bias = None
        if any(b is not None for b in biases):
            table = np.stack([b.data if b is not None else np.zeros(H, np.float32)
                              for b in biases], axis=1)
            bias = consts.add(f"{fn}_b{tag}", f32, table, f"biases of the {tag} sums: " +
                              compact_sources([b.source for b in biases if b is not None]))
        req.c_kernels.setdefault((G, 32, 32), set()).add("c")
        sides.append(SumSide(f32, bias, 0 if k == 0 else I, cols, cols, f"{p}_mac{G}_f32"))
    # cores with an FPU run the float unit kernel of NAME_kernels.S (backend/fpuasm.py)
    # (several units per call when that shares the activation loads: fpuasm.kernel_units)
    U = kernel_units(G, H)
    full, rest = H - H % U, H % U
    bias_x, bias_h = sides[0].bias is not None, sides[1].bias is not None
    fpu = FloatUnitKernel(G, I, P, bias_x, bias_h, U, U)
    req.fpu.add(fpu)
    fpu_rest = None
    if rest:
        fpu_rest = FloatUnitKernel(G, I, P, bias_x, bias_h, rest, U)
        req.fpu.add(fpu_rest)
    sums = UnitSums(G, 32, f32, w_name, sides[0], sides[1], fpu=fpu.name(p), fpu_units=U,
                    fpu_rest=fpu_rest.name(p) if fpu_rest else None, fpu_full=full)
    pre: dict[str, Expr] = {}
    for g, gate in enumerate(gates):
        if len(gate.accumulators) == 2:  # a split gate (GRU n): the x and h sums stay apart
            for acc in gate.accumulators:
                pre[acc.name] = Lane("ax" if acc.w_x is not None else "ah", g, f32)
        else:
            pre[gate.name] = Bin("+", Lane("ax", g, f32), Lane("ah", g, f32), f32)
    body: list = []
    act: dict[str, Expr] = {}
    # the LSTM's i and o only multiply a tanh (i g, o tanh(c)): they stay denominators, and
    # tanh_div divides the tanh's numerator by the product, one VDIV instead of two
    dens = ("i", "o") if spec.family == "lstm" else ()
    for gate, math in zip(spec.gates, spec.math):
        if gate.split or (spec.family == "lstm" and gate.name == "g"):
            continue
        if gate.name in dens:
            req.helpers.add("sigmoid_den")
            den = Var(f"{gate.name}_den", "float")
            body.append(Let(den, call("sigmoid_den", pre[gate.name], ctype="float"),
                            f"{math}: {gate.name} = 1 / {gate.name}_den"))
            act[gate.name] = den
            continue
        req.helpers.add(gate.activation)
        value = call(gate.activation, pre[gate.name], ctype="float")
        if spec.family == "rnn":
            body.append(Store(Unit("h", 0, "float"), value, math))
        else:
            body.append(Let(Var(gate.name, "float"), value, math))
            act[gate.name] = Var(gate.name, "float")
    if spec.family == "lstm":
        c = Unit("c", 0, f32)
        req.helpers.add("tanh_div")
        body.append(Store(c, Bin("+", Bin("*", act["f"], c, f32), call(
            "tanh_div", pre["g"], act["i"], ctype=f32), f32),
            f"{spec.math[2]}; {spec.math[4]}: i g = tanh_div(pre_g, i_den)"))
        h_target = Unit("tmp" if layer.projected else "h", 0, f32)
        body.append(Store(h_target, call("tanh_div", c, act["o"], ctype=f32),
                          f"{spec.math[5]}: tanh_div(c, o_den)"))
    elif spec.family == "gru":
        name_x, name_h = spec.gate("n").accumulators
        nx, nh = Var(f"pre_{name_x}", f32), Var(f"pre_{name_h}", f32)
        body.append(Let(nx, pre[name_x], "W_in x + b_in"))
        body.append(Let(nh, pre[name_h], "W_hn h + b_hn"))
        n = Var("n", f32)
        req.helpers.add("tanh")
        body.append(Let(n, call("tanh", Bin("+", nx, Bin("*", act["r"], nh, f32), f32), ctype=f32),
                        spec.math[2]))
        body.append(Store(Unit("h", 0, f32), Bin(
            "+", Bin("*", Bin("-", Lit(1.0, f32), act["z"], f32), n, f32),
            Bin("*", act["z"], Unit("xh", I, f32), f32), f32), spec.math[3]))
    loops = [Loop(H, tuple(body), sums, f"the {', '.join(spec.gate_names)} rows of unit j: "
                  "x part and h part")]
    if layer.projected:
        req.helpers.add("dot")
        assert direction.w_proj is not None
        w_name = consts.add(f"{fn}_w_proj", "float", direction.w_proj.data,
                            f"{direction.w_proj.source}, float32")
        loops.append(Loop(P, (Store(Unit("h", 0, f32), call(
            "dot", Ptr(w_name, 0, row=True), Ptr("tmp"), Lit(H, "int"), ctype=f32),
            "h = W_hr (o * tanh(c))"),)))
    return Function(
        name=fn, kind="cell", layer=index, comment=_cell_comment(layer, direction.reverse, ""),
        params=(*_cell_params(layer, "float", I + P),
                Param("w", "const float *", "weights", int(stream.size))), named=(),
        prologue=(Copy("xh", 0, "x", I, f32), Copy("xh", I, "h", P, f32)),
        loops=tuple(loops), constants=tuple(consts.items))


def _acc_bound(part) -> np.ndarray:
    return nm.acc_bound(part.weights, INPUT_LIMIT, part.bias)


def _fixed_cell(p: str, index: int, layer: RecurrentLayer, d: int, q, req: _Requirements
                ) -> Function:
    direction = layer.directions[d]
    qd = q.directions[d]
    fn = f"{p}_l{index}_{'rev' if direction.reverse else 'fwd'}"
    spec = layer.spec
    consts = _Constants()
    I, P, H = layer.input_size, layer.state_size, layer.hidden_size
    I4 = padded(I)
    G = spec.G
    bits = qd.accs[0].bits
    wtype = WEIGHT_CTYPE[bits]
    sides: list[list] = [[], []]  # each gate's x part and h part
    for gate in spec.gates:
        parts = [part for name in gate.accumulators for part in qd.acc(name).parts]
        sides[0].append(next(part for part in parts if part.offset == 0))
        sides[1].append(next(part for part in parts if part.offset != 0))
    names = spec.gate_names
    sources = compact_sources([part.source for part in sides[0]]) + ", " + compact_sources(
        [part.source for part in sides[1]])
    stream = direction_stream([part.weights for part in sides[0]],
                              [part.weights for part in sides[1]], bits)
    order = ("bytes of each 4-column group in SXTB16 order 0,2,1,3" if bits == 8
             else "4-column groups")

    folds: list[Fold] = []
    sum_sides: list[SumSide] = []
    for k, (side, tag) in enumerate(zip(sides, "xh")):
        acc_bits = max(part.acc_bits for part in side)
        acc_t = ACC_CTYPE[acc_bits]
        fold = fold_side([_acc_bound(part) for part in side], [part.mult for part in side],
                         [part.shift for part in side], acc_bits)
        folds.append(fold)
        bias = None
        if any(part.bias is not None for part in side):
            b = np.stack([part.bias if part.bias is not None else np.zeros(H, np.int64)
                          for part in side], axis=1)
            bias = consts.add(f"{fn}_b{tag}", acc_t, b,
                              f"biases of the {tag} parts, {acc_t} in accumulator units: "
                              + compact_sources([part.bias_source for part in side
                                                 if part.bias is not None]))
        cols = I if k == 0 else P
        req.c_kernels.setdefault((G, bits, acc_bits), set())
        sum_sides.append(SumSide(acc_t, bias, 0 if k == 0 else I4, cols, padded(cols) // 4,
                                 f"{p}_mac{G}_w{bits}_acc{acc_bits}"))
        # the fold's arrays
        if isinstance(fold, Fold64):
            consts.add(f"{fn}_m{tag}", "uint32_t", fold.k,
                       f"requant of the {tag} parts: k = M * 2^(32 - n); the rounded high word "
                       "of acc times it is rshift_round(acc * M, n)")
        elif isinstance(fold, Fold32):
            consts.add(f"{fn}_m{tag}", "int32_t", fold.k,
                       f"requant of the {tag} parts: k with k + c * 2^32 = M * 2^(32 - n), "
                       "c * acc + mmulr(acc, k) = rshift_round(acc * M, n)"
                       if k == 0 or not isinstance(folds[0], Fold32) else
                       f"requant of the {tag} parts: k (as {fn}_mx)")
            if fold.has_c:
                consts.add(f"{fn}_c{tag}", "int32_t", fold.c,
                           f"requant of the {tag} parts: c (see {fn}_m{tag})")
        else:
            consts.add(f"{fn}_m{tag}", "int16_t", fold.mult,
                       f"requant multipliers M of the {tag} parts")
            consts.add(f"{fn}_s{tag}", "uint8_t", fold.shift,
                       f"requant shifts n of the {tag} parts")

    # the kernels of each family
    dsp = v6m = v6m_w = None
    v6m_stride = 0
    if all(s.acc_ctype == {8: "int32_t", 16: "int64_t"}[bits] for s in sum_sides):
        kernel = UnitKernel(G, sum_sides[0].groups, sum_sides[1].groups,
                            sum_sides[0].bias is not None, sum_sides[1].bias is not None, bits)
        req.dsp.add(kernel)
        dsp = kernel.name(p)
    if bits == 8 and all(s.acc_ctype == "int32_t" for s in sum_sides):
        m0 = V6MUnitKernel(G, I, P, I4, sum_sides[0].bias is not None,
                           sum_sides[1].bias is not None)
        v6m = m0.name(p)
        req.v6m.setdefault(v6m, m0)
        rows = [np.stack([part.weights for part in side], axis=1) for side in sides]
        v6m_w = f"{fn}_w_v6m"
        v6m_layout = m0.layout(*rows)
        v6m_stride = int(v6m_layout.shape[1])
        req.v6m_constants.append(Const(
            v6m_w, "int8_t", v6m_layout,
            f"{fn}_w for the ARMv6-M unit kernel: per unit, each {'/'.join(names)} row of the x "
            "part, then of the h part, at a stride of 2 bytes per column, two rows to a block "
            f"{'(the last rows of x and h share one) ' if G % 2 else ''}"
            "(backend/v6masm.py); int8_t", frozenset({"v6m"}), symbol=f"{fn}_w"))
    # the MVE kernels: one kernel for both parts, so both sums must have one width
    mve = mve_w = None
    if sum_sides[0].acc_ctype == sum_sides[1].acc_ctype:
        acc_bits = 64 if sum_sides[0].acc_ctype == "int64_t" else 32
        req.mve.add((G, bits, acc_bits))
        mve = f"{p}_mve{G}_w{bits}_acc{acc_bits}"
        mve_w = f"{fn}_w_mve"
        consts.items.insert(0, Const(
            mve_w, wtype, mve_stream([part.weights for part in sides[0]],
                                     [part.weights for part in sides[1]]),
            f"{fn}_w for the MVE kernels: per unit, x columns then h columns in chunks of 8, "
            f"each chunk the 8 weights of the {'/'.join(names)} rows, padded with zeros "
            f"(passes/layout.py: mve_layout); {wtype}, per-row scale for each part; from "
            f"{sources}", frozenset({"mve"}), symbol=f"{fn}_w"))
    families = ALL - ({"v6m"} if v6m else set()) - ({"mve"} if mve else set())
    consts.items.insert(0, Const(
        f"{fn}_w", wtype, stream,
        f"per unit: {'/'.join(names)} rows interleaved, x columns then h columns, each padded "
        f"to a multiple of 4 with zeros, {order}; {wtype}, per-row scale for each part; from "
        f"{sources}", families))
    # the portable C kernels run where no assembly kernel does
    used = {"c"} | ({"dsp"} if dsp is None else set()) | ({"v6m"} if v6m is None else set()) \
        | ({"mve"} if mve is None else set())
    for side in sum_sides:
        req.c_kernels[(G, bits, 64 if side.acc_ctype == "int64_t" else 32)] |= used
    block = min(kernel.block, H) if dsp else 1
    sums = UnitSums(G, bits, wtype, f"{fn}_w", sum_sides[0], sum_sides[1], dsp, block,
                    H % block != 0, v6m, v6m_w, v6m_stride, mve, mve_w)

    # the gate math
    aliases: dict[str, tuple[str, str, str]] = {}

    def row(alias: str, g: int, ctype: str) -> Row:
        """Element g of unit j's row of the fold array ``{fn}_{alias}``, through a local alias."""
        aliases.setdefault(alias, (alias, f"{fn}_{alias}", ctype))
        return Row(f"{fn}_{alias}", g, ctype, alias)

    def term(k: int, g: int, add: Expr | None = None) -> Expr:
        fold = folds[k]
        tag = "xh"[k]
        acc = Lane(f"a{tag}", g, sum_sides[k].acc_ctype)
        if isinstance(fold, Fold32):
            if fold.has_c:
                cterm = Bin("*", acc, row(f"c{tag}", g, "int32_t"), "int32_t")
                add = cterm if add is None else Bin("+", cterm, add, "int32_t")
            k_row = row(f"m{tag}", g, "int32_t")
            req.helpers.add("mmlar" if add is not None else "mmulr")
            if add is not None:
                return call("mmlar", acc, k_row, add, ctype="int32_t")
            return call("mmulr", acc, k_row, ctype="int32_t")
        if isinstance(fold, Fold64):
            req.helpers.add("mmulr64")
            value: Expr = call("mmulr64", acc, row(f"m{tag}", g, "uint32_t"), ctype="int32_t")
        else:
            req.helpers.add("rescale")
            value = call("rescale", acc, row(f"m{tag}", g, "int16_t"),
                         row(f"s{tag}", g, "uint8_t"), ctype="int64_t")
        if add is None:
            return value
        return Bin("+", add, value, value.ctype)

    def widen(e: Expr) -> Expr:
        return Cast("int64_t", e) if e.ctype != "int64_t" else e

    def saturate(e: Expr) -> Expr:
        if e.ctype == "int32_t":
            req.helpers.add("sat24_32")
            return call("sat24_32", e, ctype="int32_t")
        req.helpers.add("sat24")
        return call("sat24", e, ctype="int32_t")

    body: list = []
    act: dict[str, Var] = {}
    pre_vars: dict[str, Var] = {}
    for g, gate in enumerate(spec.gates):
        if gate.split:  # GRU n: the x sum and the h sum stay apart
            for k, name in enumerate(gate.accumulators):
                var = Var(f"pre_{name}", "int32_t")
                body.append(Let(var, saturate(term(k, g)),
                                ("W_in x + b_in" if k == 0 else "W_hn h + b_hn")
                                + f", in {nm.ACT_WIDE}"))
                pre_vars[name] = var
            continue
        math = spec.math[g]
        out = q.directions[d].acc(gate.name).out
        act_t = "int16_t" if gate.activation == "sigmoid" else "int32_t"
        result = "" if spec.family == "rnn" else \
            f", {gate.name} in {'Q0.15' if act_t == 'int16_t' else 'Q0.30'}"
        x_term = term(0, g)
        x_var = Var(f"{gate.name}_x", x_term.ctype)
        body.append(Let(x_var, x_term, f"{math}: the x and h sums rescaled to {out}{result}"))
        if sum_fits_int32(folds[0], folds[1], g):
            value = saturate(term(1, g, x_var))
        else:
            value = saturate(Bin("+", widen(x_var), widen(term(1, g)), "int64_t"))
        if spec.family == "rnn":
            pre_vars[gate.name] = Var("pre", "int32_t")
            body.append(Let(pre_vars[gate.name], value))
            continue
        var = Var(f"pre_{gate.name}", "int32_t")
        helper = "sigmoid_wide" if gate.activation == "sigmoid" else "tanh_wide"
        req.helpers.add(helper)
        body.append(Let(var, value))
        act[gate.name] = Var(gate.name, act_t)
        body.append(Let(act[gate.name], call(helper, var, ctype=act_t)))

    named: list[Lit] = []
    if spec.family == "lstm":
        q15, q30 = nm.ACT_OUT.frac, 30
        fc = _named(q.fc_mul, "int64_t", "fc_scale",
                    f"f * c: Q0.{q15} x {q.c} to Q{q15 + q30}, 2^{q.fc_mul.bit_length() - 1}")
        ig = _named(q.ig_mul, "int64_t", "ig_scale", f"i * g: Q0.{q15} x Q0.{q30}, already "
                                                     f"Q{q15 + q30}")
        cs = _named(q.c_shift, "int", "c_shift", f"Q{q15 + q30} to c's {q.c}")
        named += [fc, ig, cs]
        wide_c = q.c.bits == 32
        dot2 = "dot2_q32" if wide_c else "dot2_q"
        c_t = "int32_t" if wide_c else "int16_t"
        req.helpers.update({dot2, "tanh_wide"})
        c = Unit("c", 0, c_t)
        body.append(Store(c, call(dot2, act["f"], c, fc, act["i"], act["g"], ig, cs,
                                  ctype=c_t), spec.math[4]
                          + (f" (c in 32 bits, {q.c}: the units' ranges are uneven)"
                             if wide_c else "")))
        widen = widen_int32 if wide_c else widen_int16
        tanh_c = Var("tanh_c", "int32_t")
        body.append(Let(tanh_c, call("tanh_wide", widen(c, q.c_wide_shift, req),
                                     ctype="int32_t"),
                        f"tanh(c): c from {q.c} to {nm.ACT_WIDE}, tanh in Q0.30"))
        target = Unit("tmp" if layer.projected else "h", 0, "int16_t")
        if q.oc_shift in nm.MUL_Q30_HI_SHIFTS:
            up = _named(32 - q.oc_shift, "int", "oc_up",
                        f"o * tanh(c): Q0.{q15} x Q0.{q30} to {q.hc} is a shift by "
                        f"{q.oc_shift}: a high-word multiply of o * 2^{32 - q.oc_shift}")
            req.helpers.add("mul_q30_hi")
            value = call("mul_q30_hi", act["o"], tanh_c, up, ctype="int16_t")
        else:
            shift = _named(q.oc_shift, "int", "oc_shift", f"o * tanh(c): Q{q15 + q30} to {q.hc}")
            req.helpers.add("mul_q30")
            value = call("mul_q30", act["o"], tanh_c, shift, ctype="int16_t")
        named.append(value.args[2])  # type: ignore[arg-type]
        body.append(Store(target, value, spec.math[5]))
    elif spec.family == "gru":
        zh = _named(q.zh_mul, "int64_t", "zh_scale", f"z * h: Q0.15 x {q.h} to Q45")
        zn = _named(q.zn_mul, "int64_t", "zn_scale", "(1 - z) * n: Q0.15 x Q0.30, already Q45")
        hs = _named(q.h_shift, "int", "h_shift", f"Q45 to h's {q.h}")
        one = _named(q.one, "int32_t", "one", "1.0 in Q0.15")
        req.helpers.update({"tanh_wide", "dot2_q"})
        nx, nh = (pre_vars[name] for name in spec.gate("n").accumulators)
        n = Var("n", "int32_t")
        if q.rn_shift in RN_HI_SHIFTS:
            # rshift_round(r * nh, s) = mmulr(r * 2^16, nh * 2^(16 - s)): |r| <= 2^15 and
            # |nh| < 2^23, so both factors fit int32; nx + it lies below 2^24 (one SSAT)
            rn = _named(1 << (16 - q.rn_shift), "int32_t", "rn_scale", f"r * (W_hn h + b_hn): "
                        f"Q0.15 x {nm.ACT_WIDE} back to {nm.ACT_WIDE} is a shift by {q.rn_shift}: "
                        "a high-word multiply of r * 2^16 and (W_hn h + b_hn) times this")
            req.helpers.update({"sat24_32", "mmlar"})
            pre = call("sat24_32", call("mmlar", Bin(
                "*", Cast("int32_t", act["r"]), Lit(1 << 16, "int32_t"), "int32_t"),
                Bin("*", nh, rn, "int32_t"), nx,
                ctype="int32_t"), ctype="int32_t")
        else:
            rn = _named(q.rn_shift, "int", "rn_shift", f"r * (W_hn h + b_hn): Q0.15 x "
                                                       f"{nm.ACT_WIDE} back to {nm.ACT_WIDE}")
            req.helpers.update({"sat24", "rshift_round64"})
            pre = call("sat24", Bin(
                "+", Cast("int64_t", nx), call("rshift_round64", Bin(
                    "*", Cast("int64_t", act["r"]), nh, "int64_t"), rn, ctype="int64_t"),
                "int64_t"), ctype="int32_t")
        named += [rn, zh, zn, hs, one]
        body.append(Let(n, call("tanh_wide", pre, ctype="int32_t"), f"{spec.math[2]}: Q0.30"))
        body.append(Store(Unit("h", 0, "int16_t"), call(
            "dot2_q", act["z"], Unit("xh", I4, "int16_t"), zh,
            Cast("int16_t", Bin("-", one, act["z"], "int32_t")), n, zn, hs, ctype="int16_t"),
            spec.math[3]))
    else:
        out = _named(q.out_shift, "int", "out_shift", "")
        pre = pre_vars["h"]
        req.helpers.add("sat_shift")
        if spec.gates[0].activation == "relu":
            out = _named(q.out_shift, "int", "out_shift",
                         f"{q.directions[d].acc('h').out} to h's {q.h}")
            req.helpers.add("relu_q")
            value = call("relu_q", call("sat_shift", pre, out, ctype="int16_t"), ctype="int16_t")
        else:
            out = _named(q.out_shift, "int", "out_shift", f"Q0.30 to h's {q.h}")
            req.helpers.add("tanh_wide")
            value = call("sat_shift", call("tanh_wide", pre, ctype="int32_t"), out,
                         ctype="int16_t")
        named.append(out)
        body.append(Store(Unit("h", 0, "int16_t"), value, spec.math[0]))

    vector = None
    if mve is not None and all(s.acc_ctype == "int32_t" for s in sum_sides):
        vector = _vector_stage(H, body, [side.bias for side in sum_sides], consts, req)
    loops = [Loop(H, tuple(body), sums,
                  f"the {', '.join(names)} rows of unit j: x part and h part, exact",
                  tuple(aliases[a] for a in sorted(aliases)), vector)]
    if layer.projected:
        assert qd.proj is not None and direction.w_proj is not None
        w_name = consts.add(f"{fn}_w_proj", wtype, qd.proj.parts[0].weights,
                            f"{direction.w_proj.source}, {wtype}, per-row scale")
        loops.append(Loop(P, _requant_rows(p, f"{fn}_proj", qd.proj, w_name, Ptr("tmp"), "h",
                                           consts, req, "h = W_hr (o * tanh(c))")))
    integers = (f"Integers ({_formats(q)}): each gate row sums W_x x and W_h h exactly, "
                f"rescales each into {nm.ACT_WIDE} and applies sigmoid_wide (Q0.15) or "
                "tanh_wide (Q0.30); state updates round once into the state's format.")
    return Function(
        name=fn, kind="cell", layer=index,
        comment=_cell_comment(layer, direction.reverse, integers),
        params=(*_cell_params(layer, "int16_t", I4 + padded(P), cell_ctype(q)),
                Param("w", f"const {wtype} *", "weights", int(stream.size))),
        named=tuple(named),
        prologue=(Copy("xh", 0, "x", I, "int16_t"), Copy("xh", I4, "h", P, "int16_t")),
        loops=tuple(loops), constants=tuple(consts.items))


RN_HI_SHIFTS = range(8, 17)
"""The shifts s of the GRU's r * (W_hn h + b_hn) computed as one high-word multiply-accumulate
(``mmlar``): r * 2^16 and the 24-bit sum * 2^(16 - s) both fit int32."""
MVE_LANES = 4
"""Units per block of a :class:`~tinyrnn.backend.plan.VectorStage`: one int32 per lane of a
128-bit Helium vector."""
VECTOR_HELPERS = ("load16", "load32", "store16", "store32", "mmulr", "mmlar", "sat24_32",
                  "sigmoid_wide", "tanh_wide", "mul_q30_hi", "sat_shift", "relu_q", "dot2_q")
"""The helpers with a Helium form ``v_NAME`` (templates/numerics.c.j2) equal lane by lane."""
LANE_CTYPES = ("int16_t", "int32_t")
CTYPE_BITS = {"int16_t": 16, "int32_t": 32}


def _vectorizable(e: Expr, known: set[str]) -> bool:
    """Whether the MVE vector statements compute ``e`` in 32-bit lanes exactly as the scalar C
    does: int16 and int32 values (an int16 is an int32 lane holding the same number), sums,
    per-unit constants and vector elements of those types, a cast to int32 (nothing to do),
    ``+`` and ``*`` in int32 (the C's own type: no wider intermediate) and the helpers of
    :data:`VECTOR_HELPERS`; ``known`` names the values the vector statements computed."""
    if isinstance(e, Var):
        return e.name in known
    if isinstance(e, (Lane, Row)):
        return e.ctype == "int32_t"
    if isinstance(e, Unit):
        return e.ctype in LANE_CTYPES
    if isinstance(e, Lit):
        return e.ctype in ("int32_t", "int")
    if isinstance(e, Cast):
        return e.ctype == "int32_t" and e.a.ctype in LANE_CTYPES and _vectorizable(e.a, known)
    if isinstance(e, Call) and e.fn == "dot2_q":
        return _dot2_shifts(e) is not None and all(
            _vectorizable(e.args[k], known) for k in (0, 1, 3, 4))
    if isinstance(e, Call):
        return e.fn in VECTOR_HELPERS and all(_vectorizable(a, known) for a in e.args)
    if isinstance(e, Bin):
        return (e.op in "+*" and e.ctype == "int32_t" and _vectorizable(e.a, known)
                and _vectorizable(e.b, known))
    return False


def _dot2_shifts(e: Call) -> tuple[int, int] | None:
    """``dot2_q(a, b, 2^A, c, d, 2^C, s)`` in 32-bit lanes (``v_dot2_q``: the sum scaled by
    ``2^(32 - s)``, split at bit 32) takes the shifts ``A + 32 - s`` in 1..31 and
    ``C + 32 - s`` in 0..16 (``c`` shifted by it stays an int32); None when they fall outside."""
    ka, kc, shift = (int(a.value) if isinstance(a, Lit) else None for a in
                     (e.args[2], e.args[5], e.args[6]))
    if ka is None or kc is None or shift is None or shift > 32:
        return None
    up_a, up_c = ka.bit_length() - 1 + 32 - shift, kc.bit_length() - 1 + 32 - shift
    return (up_a, up_c) if 1 <= up_a <= 31 and 0 <= up_c <= 16 else None


def _vector_form(e: Expr, stored: dict | None = None) -> Expr:
    """``e`` as the vector statements compute it: ``dot2_q`` takes its two shifts
    (:func:`_dot2_shifts`) in place of the factors and the shift, and an element the vector
    statements stored before is that stored value (``stored``: (vector, offset) -> Var), not
    read back from memory (one load less)."""
    stored = stored or {}
    if isinstance(e, Unit) and (e.vector, e.offset) in stored:
        return stored[(e.vector, e.offset)]
    if isinstance(e, Call):
        args = tuple(_vector_form(a, stored) for a in e.args)
        if e.fn == "dot2_q":
            shifts = _dot2_shifts(e)
            assert shifts is not None
            args = (args[0], args[1], args[3], args[4], Lit(shifts[0], "int"),
                    Lit(shifts[1], "int"))
        return Call(e.fn, args, e.ctype)
    if isinstance(e, Bin):
        return Bin(e.op, _vector_form(e.a, stored), _vector_form(e.b, stored), e.ctype)
    if isinstance(e, Cast):
        return Cast(e.ctype, _vector_form(e.a, stored))
    return e


def _vector_stmts(stmts: Sequence) -> tuple:
    """``stmts`` as the vector statements run them (:func:`_vector_form`); a store of a value
    of the element's own type first names it (``stored_NAME``) when a later statement reads
    that element."""
    out: list = []
    stored: dict = {}
    for k, stmt in enumerate(stmts):
        if isinstance(stmt, Let):
            out.append(Let(stmt.var, _vector_form(stmt.value, stored), stmt.comment))
            continue
        value = _vector_form(stmt.value, stored)
        key = (stmt.target.vector, stmt.target.offset)
        if stmt.value.ctype == stmt.target.ctype and any(  # the lane holds what memory will
                isinstance(e, Unit) and (e.vector, e.offset) == key
                for later in stmts[k + 1:] for e in walk(later.value)):
            var = Var(f"stored_{stmt.target.vector}", stmt.target.ctype)
            out.append(Let(var, value, stmt.comment))
            value, stored[key] = var, var
            out.append(Store(stmt.target, value))
        else:
            out.append(Store(stmt.target, value, stmt.comment))
    return tuple(out)


def _vector_run(stmts: Sequence, known: set[str]) -> bool:
    """Whether the vector statements compute all of ``stmts`` in order (``known`` grows by the
    values they define): lets, and stores to int16 or int32 vector elements."""
    for stmt in stmts:
        if isinstance(stmt, Let) and _vectorizable(stmt.value, known):
            known.add(stmt.var.name)
        elif not (isinstance(stmt, Store) and stmt.target.ctype in LANE_CTYPES
                  and _vectorizable(stmt.value, known)):
            return False
    return True


def _vector_stage(H: int, body: list, biases: list[str | None], consts: _Constants,
                  req: _Requirements) -> VectorStage | None:
    """The MVE builds' vector statements of a recurrent loop body (:class:`VectorStage`): its
    longest head and then its longest tail that :func:`_vector_run` accepts, the tail reading
    no value of the scalar middle, when the middle reads no unit sum; the per-unit constants
    they read get a blocked MVE copy, and lose their MVE build when the middle does not read
    them. The sums' biases (``biases``: of the x and the h parts) are blocked the same way: a
    block's sums start from them."""
    known: set[str] = set()
    prefix = 0
    while prefix < len(body) and _vector_run(body[prefix:prefix + 1], known):
        prefix += 1
    if prefix == 0:
        return None
    start = next(k for k in range(prefix, len(body) + 1) if _vector_run(body[k:], set(known)))
    middle = [e for s in body[prefix:start] for e in walk(s)]
    if any(isinstance(e, Lane) for e in middle):
        return None
    vector = [e for s in body[:prefix] + body[start:] for e in walk(s)]
    middle_rows = {e.const for e in middle if isinstance(e, Row)}
    rows: dict[str, str] = {}
    blocks = -(-H // MVE_LANES)
    for name in [b for b in biases if b is not None] + [e.const for e in vector
                                                          if isinstance(e, Row)]:
        if name not in rows:
            k = next(i for i, c in enumerate(consts.items) if c.name == name)
            const = consts.items[k]
            data = const.data.reshape(H, -1)
            padded_ = np.zeros((blocks * MVE_LANES, data.shape[1]), dtype=data.dtype)
            padded_[:H] = data
            blocked = np.ascontiguousarray(
                padded_.reshape(blocks, MVE_LANES, -1).transpose(0, 2, 1)).reshape(blocks, -1)
            rows[name] = f"{name}_v"
            consts.items.insert(k + 1, Const(
                rows[name], const.ctype, blocked,
                f"{const.name} for the MVE vector statements: blocks of {MVE_LANES} units, "
                f"element [b][{MVE_LANES} g + u] is unit {MVE_LANES} b + u's [g] (zero beyond "
                f"unit {H - 1})",
                frozenset({"mve"})))
            if name not in middle_rows:
                consts.items[k] = replace(const, families=const.families - {"mve"})
    outputs = tuple(s.var for s in body[:prefix] if isinstance(s, Let) and any(
        isinstance(e, Var) and e.name == s.var.name for e in middle))
    stages = _vector_stmts(body[:prefix]), _vector_stmts(body[start:])
    lanes = {f"{how}{CTYPE_BITS[t]}" for how, t in
             [("load", e.ctype) for st in stages[0] + stages[1] for e in walk(st.value)
              if isinstance(e, Unit)]
             + [("store", st.target.ctype) for st in stages[0] + stages[1]
                if isinstance(st, Store)]}
    helpers = tuple(h for h in VECTOR_HELPERS
                    if h in lanes or any(isinstance(e, Call) and e.fn == h for e in vector))
    req.mve_helpers.update(helpers)
    return VectorStage(MVE_LANES, prefix, len(body) - start, tuple(rows.items()), outputs,
                       helpers, tuple(rows[b] if b is not None else None for b in biases),
                       *stages, start > prefix, H)


def _scalar_only_helpers(functions: dict[int, list[Function]], req: _Requirements
                         ) -> tuple[str, ...]:
    """The helpers that MVE builds never call: those only the vector stages' statements call
    (their vector forms run instead), unless another statement or helper calls them on a core
    with the DSP extension (every MVE core has it)."""
    vector: set[str] = set()
    scalar: set[str] = set()
    for fns in functions.values():
        for fn in fns:
            for stmt in fn.prologue:
                scalar |= {e.fn for e in walk(stmt) if isinstance(e, Call)}
            for lp in fn.loops:
                v = lp.vector
                head, tail = (v.prefix, len(lp.body) - v.suffix) if v else (0, len(lp.body))
                for k, stmt in enumerate(lp.body):
                    (vector if k < head or k >= tail else scalar).update(
                        e.fn for e in walk(stmt) if isinstance(e, Call))
    only = vector - scalar
    if not only:
        return ()
    # MVE cores have the DSP extension: what the rest needs only without it, they never call
    kept = {h.name for h, portable in nm.helper_guards(req.helpers - only) if not portable}
    return tuple(h.name for h in nm.helper_closure(req.helpers) if h.name not in kept)


def _requant_rows(p: str, fn: str, acc, w_name: str, source: Ptr, target: str,
                  consts: _Constants, req: _Requirements, comment: str) -> tuple:
    """``target[j] = requant(bias[j] + W[j] . source, M[j], n[j])``: one int16 row of a
    single-part accumulator (Linear layers, the LSTM projection)."""
    part = acc.parts[0]
    acc_t = ACC_CTYPE[part.acc_bits]
    dot = f"dot_w{acc.bits}_acc{part.acc_bits}"
    req.helpers.update({dot, "requant"})
    value: Expr = call(dot, Ptr(w_name, 0, row=True), source, Lit(part.cols, "int"),
                       ctype=acc_t)
    if part.bias is not None:
        b = consts.add(f"{fn}_b", acc_t, part.bias,
                       f"{part.bias_source}, {acc_t} in accumulator units")
        value = Bin("+", Row(b, None, acc_t), value, acc_t)
    m = consts.add(f"{fn}_m", "int16_t", part.mult, f"requant multipliers of {part.source}")
    s = consts.add(f"{fn}_s", "uint8_t", part.shift, f"requant shifts of {part.source}")
    total = Var("acc", acc_t)
    return (Let(total, value, f"the exact sum, {acc_t}"),
            Store(Unit(target, 0, "int16_t"), call(
                "requant", total, Row(m, None, "int16_t"), Row(s, None, "uint8_t"),
                ctype="int16_t"), comment))


# ---------------------------------------------------------------------------------------------
# Linear layers and activations


def lower_dense(p: str, index: int, layer: Dense, q, req: _Requirements) -> list[Function]:
    """``y = W x + b`` over one vector."""
    fn = f"{p}_dense{index}"
    consts = _Constants()
    T = "int16_t" if q is not None else "float"
    what = f"y = W x{' + b' if layer.bias is not None else ''}"
    if layer.diagonal:
        return [_lower_diagonal(fn, index, layer, q, req)]
    if q is None:
        w = consts.add(f"{fn}_w", "float", layer.weight.data, f"{layer.weight.source}, float32")
        req.helpers.add("dot")
        value: Expr = call("dot", Ptr(w, 0, row=True), Ptr("x"),
                           Lit(layer.in_features, "int"), ctype="float")
        if layer.bias is not None:
            b = consts.add(f"{fn}_b", "float", layer.bias.data, f"{layer.bias.source}, float32")
            value = Bin("+", Row(b, None, "float"), value, "float")
        body: tuple = (Store(Unit("y", 0, "float"), value, what),)
        formats = ""
    else:
        wtype = WEIGHT_CTYPE[q.acc.bits]
        w = consts.add(f"{fn}_w", wtype, q.acc.parts[0].weights,
                       f"{layer.weight.source}, {wtype}, per-row scale")
        body = _requant_rows(p, fn, q.acc, w, Ptr("x"), "y", consts, req, what)
        formats = f"; x {q.x}, y {q.out}"
    return [Function(
        name=fn, kind="dense", layer=index,
        comment=(f"{layer.name}: {what} ({layer.out_features} x {layer.in_features}){formats}",),
        params=(Param("x", f"const {T} *", "in", layer.in_features),
                Param("y", f"{T} *", "out", layer.out_features)),
        named=(), prologue=(), loops=(Loop(layer.out_features, body),),
        constants=tuple(consts.items))]


def _lower_diagonal(fn: str, index: int, layer: Dense, q, req: _Requirements) -> Function:
    """A Dense layer whose weights are diagonal (:attr:`tinyrnn.ir.Dense.diagonal`): one
    multiply per feature, ``y[j] = s[j] x[j] + b[j]``. The integers are those of the full
    matrix (per-row scales, the same accumulator bounds): the zeros add nothing, so the result
    is the Dense layer's to the bit."""
    consts = _Constants()
    n = layer.out_features
    scale = np.diag(layer.weight.data)
    what = f"y = s x{' + b' if layer.bias is not None else ''}, per feature"
    if q is None:
        T = "float"
        s = consts.add(f"{fn}_s", "float", scale, f"diagonal of {layer.weight.source}, float32")
        value: Expr = Bin("*", Row(s, None, "float"), Unit("x", 0, "float"), "float")
        if layer.bias is not None:
            b = consts.add(f"{fn}_b", "float", layer.bias.data, f"{layer.bias.source}, float32")
            value = Bin("+", value, Row(b, None, "float"), "float")
        body: tuple = (Store(Unit("y", 0, "float"), value, what),)
        formats = ""
    else:
        T = "int16_t"
        part = q.acc.parts[0]
        wtype, acc_t = WEIGHT_CTYPE[q.acc.bits], ACC_CTYPE[part.acc_bits]
        s = consts.add(f"{fn}_s", wtype, np.diag(part.weights),
                       f"diagonal of {layer.weight.source}, {wtype}, per-row scale")
        value = Bin("*", Cast(acc_t, Unit("x", 0, "int16_t")), Row(s, None, wtype), acc_t)
        if part.bias is not None:
            b = consts.add(f"{fn}_b", acc_t, part.bias,
                           f"{part.bias_source}, {acc_t} in accumulator units")
            value = Bin("+", Row(b, None, acc_t), value, acc_t)
        m = consts.add(f"{fn}_m", "int16_t", part.mult, f"requant multipliers of {part.source}")
        sh = consts.add(f"{fn}_sh", "uint8_t", part.shift, f"requant shifts of {part.source}")
        req.helpers.add("requant")
        total = Var("acc", acc_t)
        body = (Let(total, value, f"the exact product and bias, {acc_t}"),
                Store(Unit("y", 0, "int16_t"), call(
                    "requant", total, Row(m, None, "int16_t"), Row(sh, None, "uint8_t"),
                    ctype="int16_t"), what))
        formats = f"; x {q.x}, y {q.out}"
    return Function(
        name=fn, kind="dense", layer=index,
        comment=(f"{layer.name}: {what} ({n} features){formats}",),
        params=(Param("x", f"const {T} *", "in", n), Param("y", f"{T} *", "out", n)),
        named=(), prologue=(), loops=(Loop(n, body),), constants=tuple(consts.items))
def conv_rows4(layer: Conv1d | FrameConv1d, q) -> bool:
    """Whether an integer Conv1d takes a blocked helper, ``conv1d_x4_w8_acc32`` (SMLAD on the
    DSP cores) or ``conv1d_x4_w16_acc64`` (SMLALD): int8 weights with int32 sums or int16
    weights with int64 sums, one group and dilation 1 (so that the taps of an output step
    inside x are one contiguous run of x and of each weight row), any input channel count and
    at least 4 output channels (zero rows pad the last block of 4: with 1 to 3 channels they
    would double to quadruple the weights of a layer whose few outputs cost little anyway)."""
    return ((q.acc.bits, q.acc.parts[0].acc_bits) in ((8, 32), (16, 64))
            and layer.groups == 1 and layer.dilation == 1 and layer.out_channels >= 4)


def lower_conv1d(p: str, index: int, layer: Conv1d, q, req: _Requirements) -> list[Function]:
    """A Conv1d once over a whole sequence ``x`` (T, C) -> ``y`` (T_out, O): float32, the helper
    ``conv1d_f``; the integer formats, ``conv1d_w{bits}_acc{32,64}`` (exact sums, one
    requantization per output, :class:`tinyrnn.passes.quantize.QConv1d`). The weights are
    (O, kernel, C / groups), so that each tap's channels are one contiguous dot product with
    one step of x (and, with dilation 1 and one group, all taps one run)."""
    fn = f"{p}_conv{index}"
    consts = _Constants()
    what = (f"y = conv1d(x) over the whole sequence: {_conv_geometry(layer)}")
    T = "int16_t" if q is not None else "float"
    helper, args, formats = _conv_call(fn, layer, q, consts, req, Var("T", "int"))
    return [Function(
        name=fn, kind="conv", layer=index, comment=(f"{layer.name}: {what}{formats}",),
        params=(Param("x", f"const {T} *", "in", layer.in_channels),
                Param("y", f"{T} *", "out", layer.out_channels),
                Param("T", "int ", "steps", 0)),
        named=(), prologue=(Do(call(helper, *args, ctype="void"), "every step and channel"),),
        loops=(),
        constants=tuple(consts.items))]


def _conv_geometry(layer: Conv1d | FrameConv1d) -> str:
    return (f"{layer.in_channels} -> {layer.out_channels} channels, kernel {layer.kernel}, "
            f"stride {layer.stride}, dilation {layer.dilation}, groups {layer.groups}, zero "
            f"padding {layer.pad_left} left and {layer.pad_right} right")


def _conv_call(fn: str, layer: Conv1d | FrameConv1d, q, consts: _Constants, req: _Requirements,
               steps: Expr) -> tuple[str, tuple, str]:
    """The helper call of a Conv1d over ``steps`` steps (a sequence's T, or a frame's L as a
    literal) and its weights: ``(helper, args, formats)``; the helper is required."""
    shape = f"({layer.out_channels}, {layer.kernel}, {layer.weight.shape[1]})"
    geometry = (Lit(layer.in_channels, "int"), Lit(layer.out_channels, "int"),
                Lit(layer.kernel, "int"), Lit(layer.groups, "int"), Lit(layer.dilation, "int"),
                Lit(layer.stride, "int"), Lit(layer.pad_left, "int"),
                Lit(layer.pad_right, "int"))
    if q is None:
        data = np.ascontiguousarray(layer.weight.data.transpose(0, 2, 1)).reshape(-1)
        w = consts.add(f"{fn}_w", "float", data,
                       f"{layer.weight.source} as (out, kernel, in / groups) = {shape}, float32")
        bias: Expr = Lit(0, "const float *", name="NULL")
        if layer.bias is not None:
            bias = Ptr(consts.add(f"{fn}_b", "float", layer.bias.data,
                                  f"{layer.bias.source}, float32"))
        helper = "conv1d_f"
        args: tuple = (Ptr("x"), Ptr("y"), steps, Ptr(w), bias, *geometry)
        formats = ""
    else:
        part = q.acc.parts[0]
        wtype, acc_t = WEIGHT_CTYPE[q.acc.bits], ACC_CTYPE[part.acc_bits]
        rows4 = conv_rows4(layer, q)
        if rows4:
            order = ("one word per channel, bytes in SXTB16 order 0,2,1,3" if q.acc.bits == 8
                     else "the 4 weights of each channel")
            w = consts.add(f"{fn}_w", wtype, conv_layout(part.weights, q.acc.bits).reshape(-1),
                f"{layer.weight.source} as (out, kernel, in) = {shape} in blocks of 4 output "
                f"channels (zero rows pad the last): per group of 4 of the kernel x in "
                f"columns (zero columns pad the last), {order}; {wtype}, per-channel scale")
        else:
            w = consts.add(f"{fn}_w", wtype, part.weights.reshape(-1),
                           f"{layer.weight.source} as (out, kernel, in / groups) = {shape}, "
                           f"{wtype}, per-channel scale")
        bias = Lit(0, f"const {acc_t} *", name="NULL")
        if part.bias is not None:
            bias = Ptr(consts.add(f"{fn}_b", acc_t, part.bias,
                                  f"{part.bias_source}, {acc_t} in accumulator units"))
        m = consts.add(f"{fn}_m", "int16_t", part.mult,
                       f"requant multipliers of {layer.weight.source}, per channel")
        sh = consts.add(f"{fn}_s", "uint8_t", part.shift,
                        f"requant shifts of {layer.weight.source}, per channel")
        if rows4:  # no groups, no dilation: those geometry arguments drop out
            helper = f"conv1d_x4_w{q.acc.bits}_acc{part.acc_bits}"
            args = (Ptr("x"), Ptr("y"), steps, Ptr(w), bias, Ptr(m), Ptr(sh),
                    *geometry[:3], *geometry[5:])
        else:
            helper = f"conv1d_w{q.acc.bits}_acc{part.acc_bits}"
            args = (Ptr("x"), Ptr("y"), steps, Ptr(w), bias, Ptr(m), Ptr(sh), *geometry)
        formats = f"; x {q.x}, y {q.out}, exact {acc_t} sums (|sum| <= {part.bound})"
    req.helpers.add(helper)
    return helper, args, formats

def lower_activation(p: str, index: int, layer: Activation, q, req: _Requirements
                     ) -> list[Function]:
    """An element-wise or last-axis function; ``in`` and ``out`` may be the same buffer."""
    fn = f"{p}_{layer.kind}{index}"
    T = "int16_t" if q is not None else "float"
    n = layer.features
    x, y = Unit("in", 0, T), Unit("out", 0, T)
    named: list[Lit] = []
    loops: tuple = ()
    prologue: tuple = ()
    kind = layer.kind
    if q is None:
        if kind in ("softmax", "log_softmax"):
            req.helpers.add(f"{kind}_f")
            prologue = (Do(call(f"{kind}_f", Ptr("in"), Ptr("out"), Lit(n, "int"),
                                ctype="void"), f"{kind} over the last axis"),)
        elif kind in _FLOAT_POINTWISE:
            loops = (Loop(n, (Store(y, _float_pointwise(layer, x, req), kind),)),)
        else:
            req.helpers.add(kind)
            loops = (Loop(n, (Store(y, call(kind, x, ctype=T), kind),)),)
        formats = ""
    else:
        formats = f" (x {q.x}, y {q.out})"
        if kind in ("softmax", "log_softmax"):
            sm = q.softmax
            req.helpers.add(f"{kind}_q")
            named = [_named(sm.dclamp, "int32_t", "dclamp", "max - x beyond this gives exp 0"),
                     _named(sm.exp_mult, "int32_t", "exp_mult",
                            f"(max - x) * log2(e) in Q.{nm.EXP_FRAC}: M"),
                     _named(sm.exp_shift, "int", "exp_shift", "... and n")]
            if kind == "log_softmax":
                named += [_named(sm.ln2_mult, "int32_t", "ln2_mult", "log2(S) * ln 2: M"),
                          _named(sm.ln2_shift, "int", "ln2_shift", "... and n"),
                          _named(sm.up, "int", "up", "x - max to the wide format"),
                          _named(sm.down, "int", "down", "the wide format to the output")]
            prologue = (Do(call(f"{kind}_q", Ptr("in"), Ptr("out"), Lit(n, "int"), *named,
                                ctype="void"), f"{kind} over the last axis"),)
        elif kind == "relu":
            req.helpers.add("relu_q")
            loops = (Loop(n, (Store(y, call("relu_q", x, ctype=T), "relu"),)),)
        elif kind in _INT_POINTWISE:
            value, what, named = _int_pointwise(layer, q, x, req)
            loops = (Loop(n, (Store(y, value, what),)),)
        else:
            wide = widen_int16(x, q.in_shift, req)
            if kind == "sigmoid":
                req.helpers.add("sigmoid_wide")
                value: Expr = call("sigmoid_wide", wide, ctype=T)
            else:
                req.helpers.update({"tanh_wide", "sat_shift"})
                out = _named(q.out_shift, "int", "out_shift", f"Q0.30 to {q.out}")
                named.append(out)
                value = call("sat_shift", call("tanh_wide", wide, ctype="int32_t"), out,
                             ctype=T)
            loops = (Loop(n, (Store(y, value, f"{kind}: x to {nm.ACT_WIDE} first"),)),)
    return [Function(
        name=fn, kind="activation", layer=index,
        comment=(f"{kind} over {n} features{formats}; in and out may be the same buffer",),
        params=(Param("in", f"const {T} *", "in", n), Param("out", f"{T} *", "out", n)),
        named=tuple(named), prologue=prologue, loops=loops, constants=())]


def lower_pool_time(p: str, index: int, layer: PoolTime, q, req: _Requirements
                    ) -> list[Function]:
    """The mean, sum or max over the whole sequence ``x`` (T, n) into one step ``y`` (n),
    once per sequence (a ``conv`` op: it reads every step); integers: the exact int64 sum,
    then the rounded mean, or the sum shifted into its format."""
    fn = f"{p}_{layer.kind}_time{index}"
    helper = f"{layer.kind}_time_{'q' if q is not None else 'f'}"
    req.helpers.add(helper)
    n = layer.features
    T = "int16_t" if q is not None else "float"
    args: tuple = (Ptr("x"), Ptr("y"), Var("T", "int"), Lit(n, "int"))
    formats = ""
    if q is not None:
        formats = f"; x {q.x}, y {q.out}"
        if layer.kind == "sum":
            args += (Lit(q.shift, "int"),)
    return [Function(
        name=fn, kind="conv", layer=index,
        comment=(f"y = the {layer.kind} of x over its T steps, {n} features{formats}",),
        params=(Param("x", f"const {T} *", "in", n), Param("y", f"{T} *", "out", n),
                Param("T", "int ", "steps", 0)),
        named=(), prologue=(Do(call(helper, *args, ctype="void"),
                               f"the {layer.kind} over time"),),
        loops=(), constants=())]


def lower_pool_window(p: str, index: int, layer: PoolWindow, q, req: _Requirements
                      ) -> list[Function]:
    """MaxPool1d / AvgPool1d over the whole sequence ``x`` (T, n) -> ``y`` (T_out, n), once per
    sequence (a ``conv`` op): the helper ``{max,avg}_pool_{f,q}``. Integers keep x's format:
    the max is exact; the average is the exact int32 sum divided by the window's count,
    rounded half up (:func:`tinyrnn.numerics.helpers.avg_pool_q`)."""
    fn = f"{p}_{layer.kind}pool{index}"
    helper = f"{layer.kind}_pool_{'q' if q is not None else 'f'}"
    req.helpers.add(helper)
    n = layer.features
    T = "int16_t" if q is not None else "float"
    args: tuple = (Ptr("x"), Ptr("y"), Var("T", "int"), Lit(n, "int"), Lit(layer.kernel, "int"),
                   Lit(layer.stride, "int"), Lit(layer.pad, "int"))
    what = (f"y = the {layer.kind} of x over windows of {layer.kernel} steps, stride "
            f"{layer.stride}, padding {layer.pad}")
    if layer.kind == "avg":
        args += (Lit(int(layer.count_include_pad), "int"),)
        what += (", divided by the kernel" if layer.count_include_pad
                 else ", divided by the steps inside the sequence")
    formats = f"; x {q.x}, y {q.out}" if q is not None else ""
    return [Function(
        name=fn, kind="conv", layer=index,
        comment=(f"{layer.name + ': ' if layer.name else ''}{what}, {n} features{formats}",),
        params=(Param("x", f"const {T} *", "in", n), Param("y", f"{T} *", "out", n),
                Param("T", "int ", "steps", 0)),
        named=(), prologue=(Do(call(helper, *args, ctype="void"),
                               "every window and feature"),),
        loops=(), constants=())]


def lower_pad_time(p: str, index: int, layer: PadTime, q, req: _Requirements
                   ) -> list[Function]:
    """Padding of the time axis of the whole sequence ``x`` (T, n) -> ``y`` (T + left + right,
    n), once per sequence (a ``conv`` op): float32 ``frame_pad_f`` over T positions; integers
    ``pad_time_q`` (the constant in the output format, the steps shifted into it)."""
    fn = f"{p}_padtime{index}"
    n = layer.features
    mode = Lit(FRAME_PAD_MODES[layer.mode], "int")
    fill = f" {layer.value!r}" if layer.mode == "constant" else ""
    if q is None:
        T, helper, formats = "float", "frame_pad_f", ""
        args: tuple = (Ptr("x"), Ptr("y"), Var("T", "int"), Lit(n, "int"),
                       Lit(layer.left, "int"), Lit(layer.right, "int"), mode,
                       Lit(layer.value, "float"))
    else:
        T, helper = "int16_t", "pad_time_q"
        args = (Ptr("x"), Ptr("y"), Var("T", "int"), Lit(n, "int"), Lit(layer.left, "int"),
                Lit(layer.right, "int"), mode, Lit(q.value, "int16_t"), Lit(q.shift, "int"))
        formats = f"; x {q.x}, y {q.out}"
    req.helpers.add(helper)
    return [Function(
        name=fn, kind="conv", layer=index,
        comment=(f"{layer.name + ': ' if layer.name else ''}y = x padded by {layer.left} steps "
                 f"left and {layer.right} right ({layer.mode}{fill}), {n} features{formats}",),
        params=(Param("x", f"const {T} *", "in", n), Param("y", f"{T} *", "out", n),
                Param("T", "int ", "steps", 0)),
        named=(), prologue=(Do(call(helper, *args, ctype="void"), layer.mode),),
        loops=(), constants=())]


_FLOAT_POINTWISE = {"relu6", "hardtanh", "leaky_relu", "hardsigmoid", "hardswish", "abs",
                    "square", "sqrt"}
_INT_POINTWISE = {"relu6", "hardtanh", "leaky_relu", "hardsigmoid", "hardswish", "abs",
                  "square", "sqrt"}


def _float_pointwise(layer: Activation, x: Expr, req: _Requirements) -> Expr:
    """The float32 value of one of :data:`_FLOAT_POINTWISE` at ``x``."""
    kind = layer.kind
    if kind in ("relu6", "hardtanh"):
        req.helpers.add("clamp_f")
        return call("clamp_f", x, Lit(layer.low, "float"), Lit(layer.high, "float"),
                    ctype="float")
    if kind == "leaky_relu":
        req.helpers.add("leaky_relu_f")
        return call("leaky_relu_f", x, Lit(layer.slope, "float"), ctype="float")
    if kind == "square":
        return Bin("*", x, x, "float")
    helper = f"{kind}_f"
    req.helpers.add(helper)
    return call(helper, x, ctype="float")


def _int_pointwise(layer: Activation, q, x: Expr, req: _Requirements
                   ) -> tuple[Expr, str, list[Lit]]:
    """The int16 value of one of :data:`_INT_POINTWISE` at ``x`` (the quantizer's constants in
    ``q``: clamp bounds, a multiplier ``M * 2^-n``), what it computes, its named constants."""
    kind = layer.kind
    if kind in ("relu6", "hardtanh"):
        req.helpers.add("clamp_q")
        lo = _named(q.low, "int32_t", "lo", f"{layer.low!r} in {q.x}")
        hi = _named(q.high, "int32_t", "hi", f"{layer.high!r} in {q.x}")
        return (call("clamp_q", Cast("int32_t", x), lo, hi, ctype="int16_t"),
                f"{kind}: clamp to [{layer.low!r}, {layer.high!r}]", [lo, hi])
    if kind == "abs":
        req.helpers.add("abs_q")
        return call("abs_q", x, ctype="int16_t"), "|x|", []
    if kind == "sqrt":
        req.helpers.add("sqrt_q")
        e = _named(q.shift, "int", "e", f"sqrt(x * 2^e) of x in {q.x} is in {q.out}")
        return call("sqrt_q", x, e, ctype="int16_t"), "sqrt(x), exact, rounded (0 for x <= 0)", [e]
    mult = _named(q.mult, "int32_t", "mult", "M of the multiplier M * 2^-n")
    shift = _named(q.shift, "int", "shift", "... and n")
    if kind == "leaky_relu":
        req.helpers.add("leaky_q")
        return (call("leaky_q", x, mult, shift, ctype="int16_t"),
                f"leaky_relu: x, or x * {layer.slope!r} below 0", [mult, shift])
    if kind == "square":
        req.helpers.add("requant")
        square = Bin("*", Cast("int32_t", x), Cast("int32_t", x), "int32_t")
        return (call("requant", square, mult, shift, ctype="int16_t"),
                f"x * x ({q.x} squared) to {q.out}", [mult, shift])
    # hardsigmoid in Q0.15: clamp(x / 6 + 1/2, 0, 1); hardswish: x * that, in x's format
    req.helpers.update({"requant", "clamp_q"})
    half = Lit(1 << (nm.ACT_OUT.frac - 1), "int32_t")
    sixth = Bin("+", Cast("int32_t", call("requant", x, mult, shift, ctype="int16_t")), half,
                "int32_t")
    hs = call("clamp_q", sixth, Lit(0, "int32_t"), Lit(nm.ACT_OUT.qmax, "int32_t"),
              ctype="int16_t")
    if kind == "hardsigmoid":
        return hs, f"hardsigmoid: clamp(x / 6 + 1/2, 0, 1) in {q.out}", [mult, shift]
    req.helpers.add("mul_q30")
    return (call("mul_q30", x, Cast("int32_t", hs), Lit(nm.ACT_OUT.frac, "int"),
                 ctype="int16_t"),
            f"hardswish: x * hardsigmoid(x), hardsigmoid in {nm.ACT_OUT}", [mult, shift])


# ---------------------------------------------------------------------------------------------
# Values beyond the chain: residual add/mul, channel slices, cat, frame layers, carried values


def _moved(value: Expr, n: int, req: _Requirements) -> Expr:
    """An int16 ``value`` into a format ``n`` fraction bits coarser (``sat_shift``; nothing
    for ``n == 0``), as :class:`tinyrnn.passes.quantize.QMulti` says."""
    if n == 0:
        return value
    req.helpers.add("sat_shift")
    return call("sat_shift", Cast("int32_t", value), Lit(n, "int"), ctype="int16_t")


def lower_binary(p: str, index: int, layer: Binary, q, req: _Requirements) -> list[Function]:
    """``y = a + b`` (or ``a * b``) element-wise; ``y`` may be ``a``'s buffer. Integers: the
    exact int32 sum of both inputs in the finer format, or the exact product, then one
    ``sat_shift`` into y's format."""
    n, op = layer.features, "+" if layer.kind == "add" else "*"
    T = "int16_t" if q is not None else "float"
    a, b = Unit("a", 0, T), Unit("b", 0, T)
    if q is None:
        value: Expr = Bin(op, a, b, "float")
        formats, what = "float32", f"a {op} b"
    else:
        shifts = q.shifts()
        req.helpers.add("sat_shift")
        if layer.kind == "mul":
            total: Expr = Bin("*", Cast("int32_t", a), Cast("int32_t", b), "int32_t")
            what = f"a * b ({q.xs[0]} x {q.xs[1]}, exact in int32) to {q.out}"
        else:
            ka, kb = ((Bin("*", Cast("int32_t", v), Lit(1 << k, "int32_t"), "int32_t") if k
                       else Cast("int32_t", v)) for v, k in ((a, shifts[0]), (b, shifts[1])))
            total = Bin("+", ka, kb, "int32_t")
            fine = max(q.xs[0].frac, q.xs[1].frac)
            what = (f"a + b ({q.xs[0]} + {q.xs[1]}, exact in int32 with {fine} fraction bits) "
                    f"to {q.out}")
        value = call("sat_shift", total, Lit(shifts[-1], "int"), ctype="int16_t")
        formats = f"a {q.xs[0]}, b {q.xs[1]}, y {q.out}"
    return [Function(
        name=f"{p}_{layer.kind}{index}", kind="multi", layer=index,
        comment=(f"y = a {op} b over {n} features, {formats}; y and a may be the same buffer",),
        params=(Param("a", f"const {T} *", "in", n), Param("b", f"const {T} *", "in", n),
                Param("y", f"{T} *", "out", n)),
        named=(), prologue=(), loops=(Loop(n, (Store(Unit("y", 0, T), value, what),)),),
        constants=())]


def lower_concat(p: str, index: int, layer: Concat, q, req: _Requirements) -> list[Function]:
    """``y = cat(x0, x1, ...)`` along the features: one copy loop per part (integers: each
    part into y's format, the coarsest of theirs)."""
    T = "int16_t" if q is not None else "float"
    shifts = q.shifts() if q is not None else (0,) * len(layer.sizes)
    loops, offset, total = [], 0, sum(layer.sizes)
    for p_ in range(layer.length):  # a frame's positions, each (channels) of every part
        for k, size in enumerate(layer.sizes):
            at = p_ * total + offset
            moved = f", {q.xs[k]} to {q.out}" if q is not None and shifts[k] else ""
            loops.append(Loop(size, (Store(Unit("y", at, T),
                                           _moved(Unit(f"x{k}", p_ * size, T), shifts[k], req),
                                           f"part {k}: y[{at}:{at + size}]{moved}"),)))
            offset = (offset + size) % total
    params = tuple(Param(f"x{k}", f"const {T} *", "in", size * layer.length)
                   for k, size in enumerate(layer.sizes))
    formats = f"y {q.out}" if q is not None else "float32"
    return [Function(
        name=f"{p}_cat{index}", kind="multi", layer=index,
        comment=(f"y = cat({', '.join(f'x{k}' for k in range(len(layer.sizes)))}) along the "
                 f"features: {' + '.join(map(str, layer.sizes))} = {layer.features}, "
                 f"{formats}",),
        params=params + (Param("y", f"{T} *", "out", layer.features),),
        named=(), prologue=(), loops=tuple(loops), constants=())]


def lower_channel_slice(p: str, index: int, layer: ChannelSlice, q, req: _Requirements
                        ) -> list[Function]:
    """``y = x[start:stop]`` over the features (integers: x's format)."""
    T = "int16_t" if q is not None else "float"
    width = layer.stop - layer.start
    return [Function(
        name=f"{p}_slice{index}", kind="multi", layer=index,
        comment=(f"y = x[{layer.start}:{layer.stop}] of {layer.in_features} channels"
                 + (f" at each of {layer.length} positions" if layer.length > 1 else "")
                 + (f", {q.out}" if q is not None else ", float32"),),
        params=(Param("x", f"const {T} *", "in", layer.in_features * layer.length),
                Param("y", f"{T} *", "out", layer.features)),
        named=(), prologue=(), loops=tuple(Loop(width, (
            Store(Unit("y", p_ * width, T),
                  Unit("x", p_ * layer.in_features + layer.start, T),
                  f"x[{p_ * layer.in_features + layer.start} + j]"),))
            for p_ in range(layer.length)),
        constants=())]


def lower_hypot(p: str, index: int, layer: Hypot, q, req: _Requirements) -> list[Function]:
    """``y = sqrt(a^2 + b^2)`` element-wise (the quantizer's fused magnitude): ``hypot_q``,
    the exact 32-bit sum of squares and its rounded integer root; float32: ``sqrt_f``."""
    n = layer.features
    T = "int16_t" if q is not None else "float"
    a, b = Unit("a", 0, T), Unit("b", 0, T)
    named: list[Lit] = []
    if q is None:
        req.helpers.add("sqrt_f")
        value: Expr = call("sqrt_f", Bin("+", Bin("*", a, a, T), Bin("*", b, b, T), T), ctype=T)
        formats = "float32"
    else:
        req.helpers.add("hypot_q")
        k = _named(q.pad, "int", "k", f"a and b in {q.xs[0]}, y in {q.out}: 2^-k")
        named.append(k)
        value = call("hypot_q", a, b, k, ctype=T)
        formats = f"a and b {q.xs[0]}, y {q.out}, the sum of squares exact in uint32"
    return [Function(
        name=f"{p}_hypot{index}", kind="multi", layer=index,
        comment=(f"y = sqrt(a^2 + b^2) over {n} features, {formats}",),
        params=(Param("a", f"const {T} *", "in", n), Param("b", f"const {T} *", "in", n),
                Param("y", f"{T} *", "out", n)),
        named=tuple(named), prologue=(),
        loops=(Loop(n, (Store(Unit("y", 0, T), value, "sqrt(a^2 + b^2)"),)),), constants=())]


def lower_frame_conv1d(p: str, index: int, layer: FrameConv1d, q, req: _Requirements
                       ) -> list[Function]:
    """A Conv1d over one step's frame (L, C) -> (L_out, O): a frame is stored as a sequence is
    (position-major), so it is the time-axis Conv1d's helper and integers
    (:func:`lower_conv1d`) with T the frame's L, a literal."""
    fn = f"{p}_fconv{index}"
    consts = _Constants()
    T = "int16_t" if q is not None else "float"
    helper, args, formats = _conv_call(fn, layer, q, consts, req, Lit(layer.length, "int"))
    what = (f"y = conv1d(x) over the {layer.length} positions of one frame: "
            f"{_conv_geometry(layer)}, {layer.out_length} positions out")
    return [Function(
        name=fn, kind="frame", layer=index, comment=(f"{layer.name}: {what}{formats}",),
        params=(Param("x", f"const {T} *", "in", layer.length * layer.in_channels),
                Param("y", f"{T} *", "out", layer.features)),
        named=(), prologue=(Do(call(helper, *args, ctype="void"),
                                "every position and channel"),),
        loops=(), constants=tuple(consts.items))]


FRAME_PAD_MODES = {"constant": 0, "reflect": 1, "replicate": 2}
"""The ``mode`` argument of the helper ``frame_pad_f``."""


def lower_frame_pad(p: str, index: int, layer: FramePad, q, req: _Requirements
                    ) -> list[Function]:
    """Padding of one step's frame (L, C) -> (L + left + right, C): ``frame_pad_f``, or
    ``frame_pad_q`` in x's format with the constant quantized to it."""
    T = "int16_t" if q is not None else "float"
    helper = "frame_pad_q" if q is not None else "frame_pad_f"
    req.helpers.add(helper)
    fill = f" {layer.value!r}" if layer.mode == "constant" else ""
    value = Lit(q.pad, "int16_t") if q is not None else Lit(layer.value, "float")
    if q is not None and layer.mode == "constant":
        fill += f" ({q.pad} in {q.out})"
    args = (Ptr("x"), Ptr("y"), Lit(layer.length, "int"), Lit(layer.channels, "int"),
            Lit(layer.left, "int"), Lit(layer.right, "int"),
            Lit(FRAME_PAD_MODES[layer.mode], "int"), value)
    return [Function(
        name=f"{p}_pad{index}", kind="frame", layer=index,
        comment=(f"y = x padded by {layer.left} positions left and {layer.right} right "
                 f"({layer.mode}{fill}): {layer.length} positions of {layer.channels} "
                 f"channel(s), {q.out if q is not None else 'float32'}",),
        params=(Param("x", f"const {T} *", "in", layer.length * layer.channels),
                Param("y", f"{T} *", "out", layer.features)),
        named=(), prologue=(Do(call(helper, *args, ctype="void"), layer.mode),),
        loops=(), constants=())]


def lower_embedding(p: str, index: int, layer: Embedding, q, req: _Requirements
                    ) -> list[Function]:
    """``y = table[x[0]]``: the row of the step's token id (``embedding_f``, or
    ``embedding_q`` over the int16 table in y's format); the API checked the id
    (``NAME_ERR_INPUT``). No multiply: 0 MACs."""
    fn = f"{p}_embed{index}"
    consts = _Constants()
    V, D = layer.num_embeddings, layer.features
    if q is None:
        T, table, formats = "float", layer.weight.data, "float32"
    else:
        T, table, formats = "int16_t", q.table, f"int16 in {q.out}"
    helper = "embedding_q" if q is not None else "embedding_f"
    req.helpers.add(helper)
    t = consts.add(f"{fn}_table", T, np.ascontiguousarray(table).reshape(-1),
                   f"{layer.weight.source} ({V}, {D}) row-major, {formats}")
    return [Function(
        name=fn, kind="dense", layer=index,
        comment=(f"{layer.name}: y = {layer.name}.weight[id] for the step's token id x[0] "
                 f"(0..{V - 1}), {D} values, {formats}",),
        params=(Param("x", f"const {T} *", "in", 1), Param("y", f"{T} *", "out", D)),
        named=(), prologue=(Do(call(helper, Ptr("x"), Ptr(t), Ptr("y"), Lit(D, "int"),
                                    ctype="void"), "the id's row"),),
        loops=(), constants=tuple(consts.items))]


def lower_carry(p: str, index: int, layer: Carry, q, req: _Requirements) -> list[Function]:
    """The end of a step: the carried value's new value ``x`` into its ``NAME_state_t``
    member ``y`` (read as the Carry layer's output by the next step); integers: one format
    for both (the quantizer checked)."""
    n = layer.features
    T = "int16_t" if q is not None else "float"
    what = f"{n} int16 in {q.out}" if q is not None else f"{n} floats"
    return [Function(
        name=f"{p}_carry{index}", kind="multi", layer=index,
        comment=(f"the carried value ({what}) for the next step: y = x",),
        params=(Param("x", f"const {T} *", "in", n), Param("y", f"{T} *", "out", n)),
        named=(), prologue=(Copy("y", 0, "x", n, T),), loops=(), constants=())]


def carry_buffer(index: int) -> str:
    """The NAME_state_t member holding the value of the Carry layer ``index``."""
    return f"carry{index}"


# ---------------------------------------------------------------------------------------------
# Buffers: a planner over the calls' inputs and outputs


@dataclass(eq=False)
class _Value:
    """A vector (or a sequence of them) one call writes and later calls read."""

    size: int
    pool: str = ""  # "scratch" or "seq": planned; "" when fixed (a state member, the input)
    buffer: str = ""
    last: int = -1  # the last call that reads it
    role: str = ""  # a cell's working memory: its parameter ("xh"), kept in one buffer


@dataclass(eq=False)
class _Call:
    fn: Function | None  # None: the copy of the selected step (layer-major models)
    ins: list[_Value]
    out: _Value | None  # None: a cell of a time-major model, whose output is its state
    works: list[_Value]
    in_place: bool = False  # the output may take the input's buffer (element-wise)
    meta: dict = field(default_factory=dict)


class _Pool:
    """Buffers of ``NAME_state_t`` shared by values whose lives do not overlap: a value gets
    the first buffer that holds nothing still to be read (growing it), else a new one; working
    memory of a role (every cell's ``xh``) goes back to the buffer that role had, when it is
    free, so that the cells share one (the compiler then reuses its address)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sizes: list[int] = []
        self.busy: list[int] = []  # per buffer: the last call that reads its value
        self.roles: list[str] = []  # per buffer: the role of its last value

    def take(self, value: _Value, now: int, avoid: set[str]) -> None:
        free = [k for k, busy in enumerate(self.busy) if busy < now and self.name(k) not in avoid]
        same = [k for k in free if value.role and self.roles[k] == value.role]
        if same or free:
            k = (same or free)[0]
        else:
            self.sizes.append(0)
            self.busy.append(-1)
            self.roles.append("")
            k = len(self.sizes) - 1
        self.sizes[k] = max(self.sizes[k], value.size)
        self.busy[k] = max(value.last, now)
        self.roles[k] = value.role
        value.buffer = self.name(k)

    def keep(self, value: _Value, until: int) -> None:
        k = int(value.buffer[len(self.prefix):])
        self.busy[k] = max(self.busy[k], until)

    def name(self, k: int) -> str:
        return f"{self.prefix}{k}"

    def buffers(self, comment: str) -> list[Buffer]:
        return [Buffer(self.name(k), size, comment, True) for k, size in enumerate(self.sizes)]


def _plan_buffers(calls: list[_Call], pools: dict[str, _Pool], reserved: list[_Value]) -> None:
    """Give every planned value a buffer, in call order, from the calls' reads and writes:
    an output never shares a buffer with a value still to be read, except an element-wise
    call's output with its own input when nothing reads that input afterwards."""
    for k, c in enumerate(calls):
        for value in c.ins:
            value.last = max(value.last, k)
    for value in reserved:  # live from before the first call
        pools[value.pool].take(value, -1, set())
    for k, c in enumerate(calls):
        reading = {v.buffer for v in c.ins}
        out = c.out
        if out is not None and out.pool and not out.buffer:
            src = c.ins[0] if c.ins else None
            if c.in_place and src is not None and src.pool == out.pool and src.last == k:
                out.buffer = src.buffer
                pools[out.pool].keep(out, out.last)
            else:
                pools[out.pool].take(out, k, reading)
        busy = reading | ({out.buffer} if out is not None else set())
        for work in c.works:
            work.last = k
            pools[work.pool].take(work, k, busy)
            busy.add(work.buffer)


def _args(c: _Call) -> tuple[Arg, ...]:
    """The arguments of a call in its function's parameter order."""
    assert c.fn is not None
    works = iter(c.works)
    ins = iter(c.ins)
    args = [Arg(next(ins).buffer)]
    for param in c.fn.params[1:]:
        if param.role == "in":
            args.append(Arg(next(ins).buffer))
        elif param.role == "state":
            args.append(Arg(_state_member(c.fn, param.name)))
        elif param.role == "work":
            args.append(Arg(next(works).buffer))
        elif param.role == "weights":
            args.append(Arg(f"{c.fn.name}_w", const=True))
        elif param.role == "steps":  # the sequence length T, which the template passes
            continue
        else:
            assert c.out is not None
            args.append(Arg(c.out.buffer))
    return tuple(args)


def _state_member(fn: Function, param: str) -> str:
    """The NAME_state_t member of a cell's state vector: ``l0_fwd_h``."""
    return f"{fn.name.rsplit('_', 2)[-2]}_{fn.name.rsplit('_', 1)[-1]}_{param}"


def _state_buffers(model: Model, functions: dict[int, list[Function]]) -> list[Buffer]:
    state = []
    for index, layer in enumerate(model.layers):
        if isinstance(layer, RecurrentLayer):
            for fn, direction in zip(functions[index], layer.directions):
                side = "reverse" if direction.reverse else "forward"
                what = f"{layer.module} layer {layer.layer} {side}"
                for param in fn.param("state"):
                    ctype = param.ctype.rstrip(" *").replace("const ", "")
                    state.append(Buffer(_state_member(fn, param.name), param.size,
                                        f"{param.name}, {what}", False, ctype))
    return state


def _time_major(model: Model, functions: dict[int, list[Function]], fixed: bool
                ) -> tuple[Schedule, list[Buffer]]:
    """Unidirectional models: every layer at every step, no sequence buffers."""
    pools = {"scratch": _Pool("scratch")}
    current = _Value(model.input_size, buffer="x_t")
    values = [current]  # by value index (ir.reads)
    calls: list[_Call] = []
    select_at = pre_result = None
    for index, layer in enumerate(model.layers):
        if isinstance(layer, SelectStep):
            select_at, pre_result = len(calls), current
            values.append(current)
            continue
        if isinstance(layer, Carry):  # the state member itself, read in place
            values.append(_Value(layer.features, buffer=carry_buffer(index)))
            continue
        if index not in functions:  # nothing reads it (lower's _unread)
            values.append(current)
            continue
        ins = [values[k] for k in reads(model.layers, index)]
        for fn in functions[index]:
            works = [_Value(p.size, "scratch", role=p.name) for p in fn.param("work")]
            if fn.kind == "cell":
                calls.append(_Call(fn, ins, None, works))
                current = _Value(fn.param("state")[0].size, buffer=_state_member(fn, "h"))
            else:
                out = _Value(fn.param("out")[0].size, "scratch")
                calls.append(_Call(fn, ins, out, works, fn.kind == "activation"
                                   or isinstance(layer, (Binary, Hypot))))
                current = out
        values.append(current)
    for index, new in model.carries:  # after every read of the carried values
        fn = functions[index][0]
        calls.append(_Call(fn, [values[new]], _Value(fn.param("out")[0].size,
                                                     buffer=carry_buffer(index)), []))
    current.last = len(calls)  # the step's result is read after the last call
    if pre_result is None:
        pre_result = current
    reserved = []
    if fixed:  # the float API converts x_t into this buffer (the _q API passes its own)
        reserved.append(_Value(model.input_size, "scratch", last=0))
    _plan_buffers(calls, pools, reserved)
    ops = [Op(c.fn.name, _args(c), c.fn.kind, c.fn.layer) for c in calls if c.fn is not None]
    cut = select_at if select_at is not None else len(ops)
    select = next((lay.index for lay in model.layers if isinstance(lay, SelectStep)), None)
    return Schedule(
        layer_major=False, pre=tuple(ops[:cut]), pre_result=Arg(pre_result.buffer),
        post=tuple(ops[cut:]), post_result=Arg(current.buffer), select=select,
        select_width=pre_result.size if select is not None else 0, select_to=None,
        step=tuple(ops), step_result=Arg(current.buffer),
        input_buffer=reserved[0].buffer if fixed else None,
    ), _state_buffers(model, functions) + [
        Buffer(carry_buffer(index), model.layers[index].features,  # type: ignore[union-attr]
               "a carried value (the forward's argument after x_t)", False)
        for index, _ in model.carries] + pools["scratch"].buffers("scratch")


def _layer_major(model: Model, functions: dict[int, list[Function]], fixed: bool
                 ) -> tuple[Schedule, list[Buffer]]:
    """Bidirectional models and models with a Conv1d: layer by layer over whole sequences of
    NAME_MAX_SEQ_LEN steps (a Conv1d in one call, other layers once per step); the selected step
    is copied into a vector, and the layers after it run once."""
    steps = model.max_seq_len  # of the stage's sequence: a Conv1d may change it
    first_steps = steps
    length = 0  # which length the stage has: 0 for T, k after k length-changing convs
    pools = {"seq": _Pool("seq"), "scratch": _Pool("scratch")}
    x = _Value(model.input_size, buffer="x_t")
    current, width = x, model.input_size
    values, widths = [x], [width]  # by value index (ir.reads)
    calls: list[_Call] = []
    pre_result = selected = None
    select_width = 0
    for index, layer in enumerate(model.layers):
        if isinstance(layer, SelectStep):
            pre_result, selected, select_width = current, _Value(width, "scratch"), width
            calls.append(_Call(None, [current], selected, [], meta=dict(width=width)))
            current = selected
            values.append(current)
            widths.append(width)
            continue
        if index not in functions:  # nothing reads it (lower's _unread)
            values.append(current)
            widths.append(width)
            continue
        if isinstance(layer, (Binary, Concat, ChannelSlice, Hypot)):
            fn = functions[index][0]
            read = reads(model.layers, index)
            out_w = fn.param("out")[0].size
            out = _Value((steps if selected is None else 1) * out_w,
                         "seq" if selected is None else "scratch")
            calls.append(_Call(fn, [values[k] for k in read], out, [],
                               isinstance(layer, (Binary, Hypot)), meta=dict(
                                   steps=length,
                                   strides=tuple(widths[k] for k in read) + (out_w,))))
            current, width = out, out_w
            values.append(current)
            widths.append(width)
            continue
        pool = "seq" if selected is None else "scratch"
        if isinstance(layer, RecurrentLayer):
            out = _Value(steps * layer.output_size, pool)
            for fn, direction in zip(functions[index], layer.directions):
                works = [_Value(p.size, "scratch", role=p.name) for p in fn.param("work")]
                calls.append(_Call(fn, [current], out, works, meta=dict(
                    steps=length, reverse=direction.reverse, src_stride=width,
                    dst_offset=layer.state_size if direction.reverse else 0,
                    dst_stride=layer.output_size, out_size=layer.state_size,
                    comment=_title(layer, direction.reverse))))
            current, width = out, layer.output_size
            values.append(current)
            widths.append(width)
            continue
        fn = functions[index][0]
        out_w = fn.param("out")[0].size
        meta = dict(steps=length, src_stride=width, dst_stride=out_w)
        rules = length_rules(layer)
        if rules:  # a length-changing Conv1d, PoolWindow or PadTime
            steps, length = layer.out_steps(steps), length + len(rules)  # type: ignore[union-attr]
        one = selected is not None or isinstance(layer, PoolTime)  # a pooling gives one step
        out = _Value((1 if one else steps) * out_w, pool)
        source = reads(model.layers, index)[0]
        meta["src_stride"] = widths[source]
        calls.append(_Call(fn, [values[source]], out, [], fn.kind == "activation", meta=meta))
        current, width = out, out_w
        values.append(current)
        widths.append(width)
    current.last = len(calls)
    if pre_result is None:
        pre_result = current
    reserved = []
    step_input = seq_input = None
    if fixed:  # the float input converted one step at a time (cells, Linear layers) or whole
        readers = [(k, c.fn is not None and c.fn.kind == "conv") for k, c in enumerate(calls)
                   if c.ins and c.ins[0] is x]
        per_step = [k for k, whole in readers if not whole]
        per_sequence = [k for k, whole in readers if whole]
        if per_step:
            step_input = _Value(model.input_size, "scratch", last=max(per_step))
            reserved.append(step_input)
        if per_sequence:
            seq_input = _Value(first_steps * model.input_size, "seq", last=max(per_sequence))
            reserved.append(seq_input)
    _plan_buffers(calls, pools, reserved)
    ops, post, select_to = [], [], None
    for c in calls:
        if c.fn is None:
            assert c.out is not None
            select_to = Arg(c.out.buffer)
            continue
        m = c.meta
        if c.fn.kind == "cell":
            assert c.out is not None
            op = Op(c.fn.name, _args(c), "cell", c.fn.layer, reverse=m["reverse"],
                    src_stride=m["src_stride"], dst=Arg(c.out.buffer, m["dst_offset"]),
                    dst_stride=m["dst_stride"], out_size=m["out_size"], comment=m["comment"],
                    steps=m["steps"])
        elif c.fn.kind == "multi":
            op = Op(c.fn.name, _args(c), "multi", c.fn.layer, strides=m["strides"] if
                    select_to is None else (0,) * len(m["strides"]), steps=m["steps"])
        else:
            op = Op(c.fn.name, _args(c), c.fn.kind, c.fn.layer,
                    src_stride=m["src_stride"], dst_stride=m["dst_stride"], steps=m["steps"])
        (ops if select_to is None else post).append(op)
    select = next((lay.index for lay in model.layers if isinstance(lay, SelectStep)), None)
    return Schedule(
        layer_major=True, pre=tuple(ops), pre_result=Arg(pre_result.buffer), post=tuple(post),
        post_result=Arg(current.buffer), select=select,
        select_width=select_width, select_to=select_to, step=None, step_result=None,
        lengths=model.length_rules,
        input_buffer=step_input.buffer if step_input is not None else None,
        input_sequence=seq_input.buffer if seq_input is not None else None,
    ), (_state_buffers(model, functions) + pools["seq"].buffers(f"scratch: {steps} steps")
        + pools["scratch"].buffers("scratch"))


def _add_streaming(model: Model, functions: dict[int, list[Function]], fixed: bool,
                   schedule: Schedule, buffers: list[Buffer]) -> tuple[Schedule, list[Buffer]]:
    """A causal conv model's NAME_step beside its layer-major NAME_run (passes/stream.py);
    other conv models keep none."""
    from .stream import no_step_reason, streaming_schedule
    why = no_step_reason(model)
    if why:
        return replace(schedule, no_step_why=why), buffers
    schedule, buffers, added = streaming_schedule(model, functions, fixed, schedule, buffers,
                                                  _time_major)
    for fn in added:  # printed after the whole-sequence conv whose arrays it reads
        functions[fn.layer] = [*functions[fn.layer], fn]
    return schedule, buffers


# ---------------------------------------------------------------------------------------------
# The whole model


def _state_rows(model: Model, q, functions: dict[int, list[Function]], group_index: int,
                k: int) -> tuple[StateRow, ...]:
    """The rows of a module's h (k=0) or c (k=1) in torch's (layers*directions) order."""
    rows, offset = [], 0
    group = model.groups[group_index]
    for index in group.layers:
        layer = model.layers[index]
        size = layer.state_size if k == 0 else layer.hidden_size
        qlayer = q.layers[index] if q is not None else None
        fmt = (qlayer.h if k == 0 else qlayer.c_io) if qlayer is not None else None
        shift = qlayer.io_shift if qlayer is not None and k == 1 else 0
        for fn, direction in zip(functions[index], layer.directions):
            comment = f"row {len(rows)}: {_title(layer, direction.reverse)}"
            if fmt is not None:
                comment += f", {fmt}"
            if shift:
                comment += f" (held in 32 bits as {qlayer.c}: c = c0 * 2^{shift})"
            rows.append(StateRow(_state_member(fn, "hc"[k]), offset, size, comment,
                                 fmt.frac if fmt is not None else None, shift))
            offset += size
    return tuple(rows)


def _unread(model: Model) -> set[int]:
    """The layers whose value nothing reads (a fused magnitude's squares and their sum): they
    are not lowered. The last layer's value is the result; a carry's new value is read."""
    needed = {len(model.layers)} | {new for _, new in model.carries}
    needed |= {index + 1 for index, layer in enumerate(model.layers)
               if isinstance(layer, Carry)}
    for index in range(len(model.layers) - 1, -1, -1):
        if index + 1 in needed or isinstance(model.layers[index], (RecurrentLayer, SelectStep)):
            needed |= set(reads(model.layers, index))
            needed.add(index + 1)
    return {index for index in range(len(model.layers)) if index + 1 not in needed}


def lower(model: Model, name: str, q=None) -> Plan:
    """The plan of ``model`` (``q``: its :class:`tinyrnn.passes.quantize.QModel` for the integer
    formats, None for float32)."""
    req = _Requirements()
    fixed = q is not None
    if fixed:  # the quantizer's form of the model (fused magnitudes)
        model = q.model
    T = "int16_t" if fixed else "float"
    functions: dict[int, list[Function]] = {}
    unread = _unread(model)
    for index, layer in enumerate(model.layers):
        if index in unread:
            continue
        qlayer = q.layers[index] if fixed else None
        if isinstance(layer, RecurrentLayer):
            functions[index] = lower_recurrent(name, index, layer, qlayer, req)
        elif isinstance(layer, Dense):
            functions[index] = lower_dense(name, index, layer, qlayer, req)
        elif isinstance(layer, Conv1d):
            functions[index] = lower_conv1d(name, index, layer, qlayer, req)
        elif isinstance(layer, Activation):
            functions[index] = lower_activation(name, index, layer, qlayer, req)
        elif isinstance(layer, PoolTime):
            functions[index] = lower_pool_time(name, index, layer, qlayer, req)
        elif isinstance(layer, Binary):
            functions[index] = lower_binary(name, index, layer, qlayer, req)
        elif isinstance(layer, Concat):
            functions[index] = lower_concat(name, index, layer, qlayer, req)
        elif isinstance(layer, ChannelSlice):
            functions[index] = lower_channel_slice(name, index, layer, qlayer, req)
        elif isinstance(layer, FrameConv1d):
            functions[index] = lower_frame_conv1d(name, index, layer, qlayer, req)
        elif isinstance(layer, FramePad):
            functions[index] = lower_frame_pad(name, index, layer, qlayer, req)
        elif isinstance(layer, Carry):
            functions[index] = lower_carry(name, index, layer, qlayer, req)
        elif isinstance(layer, PoolWindow):
            functions[index] = lower_pool_window(name, index, layer, qlayer, req)
        elif isinstance(layer, PadTime):
            functions[index] = lower_pad_time(name, index, layer, qlayer, req)
        elif isinstance(layer, Hypot):
            functions[index] = lower_hypot(name, index, layer, qlayer, req)
        elif isinstance(layer, Embedding):
            functions[index] = lower_embedding(name, index, layer, qlayer, req)
    whole = model.bidirectional or model.convolves or model.pools or model.windows
    schedule, buffers = (_layer_major if whole else _time_major)(model, functions, fixed)
    if model.convolves:
        schedule = replace(schedule, layer_major_why="a Conv1d reads neighbouring steps",
                           no_step_why="a Conv1d needs the whole sequence")
        schedule, buffers = _add_streaming(model, functions, fixed, schedule, buffers)
    elif model.windows:
        schedule = replace(schedule, layer_major_why="a pooling window or a padding of the "
                           "time axis reads neighbouring steps",
                           no_step_why="a pooling window or a padding of the time axis needs "
                           "the whole sequence")
    elif model.pools:
        schedule = replace(schedule, layer_major_why="a pooling over time reads every step",
                           no_step_why="a pooling over time needs the whole sequence")
    outputs = []
    final_frac = q.final_format.frac if fixed else None
    for k, spec in enumerate(model.outputs):
        if spec.role in ("sequence", "vector"):
            outputs.append(Output(k, spec.role, spec.features, frac=final_frac))
        elif spec.role == "carry_n":
            index = model.carries[spec.group][0]
            frac = q.carry_format(spec.group).frac if fixed else None
            outputs.append(Output(k, spec.role, spec.size, (StateRow(
                carry_buffer(index), 0, spec.size, "the carried value after the last step",
                frac),)))
        else:
            rows = _state_rows(model, q, functions, spec.group, 0 if spec.role == "h_n" else 1)
            outputs.append(Output(k, spec.role, spec.size, rows))
    group = model.groups[model.state_group]
    set_state = [("h0", _state_rows(model, q, functions, model.state_group, 0))]
    if group.cell == "lstm":
        set_state.append(("c0", _state_rows(model, q, functions, model.state_group, 1)))
    if fixed:
        req.helpers.add("from_float")
        if any(row.shift for o in outputs for row in o.rows):  # c_n of a 32-bit c
            req.helpers.update({"sat16_i64", "rshift_round64"})
    dsp_families = frozenset({"dsp"}) if req.dsp else frozenset()
    v6m_families = frozenset({"v6m"}) if req.v6m else frozenset()
    mve_families = frozenset({"mve"}) if req.mve else frozenset()
    kernel_families = frozenset({"c"}) | dsp_families | v6m_families | mve_families
    c_kernels = tuple(sorted((G, bits, acc, frozenset(fams) & kernel_families)
                             for (G, bits, acc), fams in req.c_kernels.items()))
    return Plan(
        name=name, format=q.format if fixed else "float32", T=T, fixed=fixed,
        functions=tuple(fn for index in sorted(functions) for fn in functions[index]),
        helpers=tuple(h.name for h in nm.helper_closure(req.helpers)),
        portable_helpers=tuple(h.name for h, only in nm.helper_guards(req.helpers) if only),
        c_kernels=c_kernels, dsp_kernels=tuple(sorted(req.dsp)),
        v6m_kernels=tuple(req.v6m[k] for k in sorted(req.v6m)),
        v6m_constants=tuple(req.v6m_constants), mve_kernels=tuple(sorted(req.mve)),
        mve_helpers=tuple(h for h in VECTOR_HELPERS if h in req.mve_helpers),
        scalar_only_helpers=_scalar_only_helpers(functions, req),
        fpu_kernels=tuple(sorted(req.fpu)),
        buffers=tuple(buffers), schedule=schedule,
        input_size=model.input_size, step_output_size=model.step_output_size,
        max_seq_len=model.max_seq_len if whole else 0,
        input_frac=q.input.frac if fixed else None, final_frac=final_frac,
        set_state=tuple(set_state), outputs=tuple(outputs), vocab=model.vocab)
