"""Run a :class:`tinyrnn.backend.plan.Plan` in numpy: what the generated C computes, statement by
statement, over the planner's buffers.

Every helper call goes to the numpy reference of that helper (:mod:`tinyrnn.numerics.helpers`),
every temporary is checked against the range of its C type (so a fold or a sum the lowering proved
to fit int32 would fail here if the proof were wrong), and the unit sums read the weights back
from each kernel family's layout (:mod:`tinyrnn.passes.layout`): the plan's layouts and folds are
checked against the reference (:mod:`tinyrnn.check.reference`) without a compiler. Float plans run
in float64 (what torch computes, up to rounding). Arrays are batched: one row per sample.
"""

from __future__ import annotations

import numpy as np

from ..backend.plan import (
    CTYPE_RANGE,
    Arg,
    Bin,
    Call,
    Cast,
    Copy,
    Do,
    Expr,
    Function,
    Lane,
    Let,
    Lit,
    Loop,
    Op,
    Plan,
    Ptr,
    Row,
    Store,
    Unit,
    UnitSums,
    Var,
)
from ..numerics import helpers as nm
from ..passes.layout import (
    decode_conv_layout,
    decode_float_stream,
    decode_mve_stream,
    decode_stream,
    decode_v6m_layout,
)

__all__ = ["PlanError", "Run", "run"]


class PlanError(AssertionError):
    """A value left the range of its C type, or two kernel families disagree."""


def _check(value, ctype: str, what: str):
    if ctype in CTYPE_RANGE:
        lo, hi = CTYPE_RANGE[ctype]
        arr = np.asarray(value)
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise PlanError(f"{what} leaves {ctype}: [{arr.min()}, {arr.max()}]")
    return value


def _softmax_params(log: bool, args: list) -> nm.SoftmaxParams:
    names = ("dclamp", "exp_mult", "exp_shift", "ln2_mult", "ln2_shift", "up", "down")
    values = dict(zip(names, (int(a) for a in args)))
    return nm.SoftmaxParams(log, 0, 0, **values)  # type: ignore[arg-type]


def _float_softmax(x: np.ndarray, log: bool) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    log_sum = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted - log_sum if log else np.exp(shifted - log_sum)


_HELPERS = {
    "sat24": nm.sat24, "sat24_32": nm.sat24_32, "mmulr": nm.mmulr, "mmlar": nm.mmlar,
    "mmulr64": nm.mmulr64, "rescale": nm.rescale, "requant": nm.requant,
    "sat_shift": lambda x, n: nm.sat_shift(x, int(n)), "relu_q": nm.relu_q,
    "sigmoid_wide": nm.sigmoid_wide, "tanh_wide": nm.tanh_wide,
    "mul_q30": lambda a, t, s: nm.mul_q30(a, t, int(s)),
    "mul_q30_hi": lambda a, t, up: nm.mul_q30_hi(a, t, int(up)),
    "dot2_q": lambda a, b, ka, c, d, kc, s: nm.dot2_q(a, b, int(ka), c, d, int(kc), int(s)),
    "dot2_q32": lambda a, b, ka, c, d, kc, s: nm.dot2_q32(a, b, int(ka), c, d, int(kc), int(s)),
    "rshift_round64": nm.rshift_round,
    "sigmoid": nm.sigmoid_f, "relu": lambda v: np.maximum(v, 0.0), "tanh": nm.tanh_f,
    "clamp_q": lambda x, lo, hi: nm.clamp_q(x, int(lo), int(hi)),
    "leaky_q": lambda x, m, n: nm.leaky_q(x, int(m), int(n)), "abs_q": nm.abs_q,
    "sqrt_q": lambda x, e: nm.sqrt_q(x, int(e)),
    "hypot_q": lambda a, b, k: nm.hypot_q(a, b, int(k)),
    "clamp_f": lambda v, lo, hi: np.minimum(np.maximum(v, lo), hi),
    "leaky_relu_f": lambda v, slope: np.where(v < 0, v * slope, v),
    "hardsigmoid_f": lambda v: np.clip(v + 3.0, 0.0, 6.0) / 6.0,
    "hardswish_f": lambda v: v * np.clip(v + 3.0, 0.0, 6.0) / 6.0,
    "abs_f": np.abs, "sqrt_f": np.sqrt,
    "sqrtf": np.sqrt, "fabsf": np.abs,
}


_POOL_TIME = {"mean_time_f": np.mean, "sum_time_f": np.sum, "max_time_f": np.max,
              "mean_time_q": nm.mean_time_q, "max_time_q": nm.max_time_q,
              "sum_time_q": nm.sum_time_q}


class _Frame:
    """One call of one function: its parameters (views into the buffers) and temporaries."""

    def __init__(self, ev: Run, fn: Function, views: dict[str, np.ndarray]) -> None:
        self.ev, self.fn, self.views = ev, fn, views
        self.env: dict[str, np.ndarray] = {}
        self.count = 0

    def run(self) -> None:
        for stmt in self.fn.prologue:
            self.statement(stmt)
        for loop in self.fn.loops:
            self.loop(loop)

    def loop(self, loop: Loop) -> None:
        self.count, self.env = loop.count, {}
        if loop.sums is not None:
            self.sums(loop.sums)
        for stmt in loop.body:
            self.statement(stmt)

    def statement(self, stmt) -> None:
        where = f"{self.fn.name}"
        if isinstance(stmt, Copy):
            src = self.views[stmt.src][:, stmt.src_offset:stmt.src_offset + stmt.n].copy()
            self.views[stmt.dst][:, stmt.offset:stmt.offset + stmt.n] = src
        elif isinstance(stmt, Let):
            self.env[stmt.var.name] = _check(self.expr(stmt.value), stmt.var.ctype,
                                             f"{where}: {stmt.var.name}")
        elif isinstance(stmt, Store):
            t = stmt.target
            value = _check(self.expr(stmt.value), t.ctype, f"{where}: {t.vector}[j]")
            self.views[t.vector][:, t.offset:t.offset + self.count] = value
        elif isinstance(stmt, Do):
            self.do(stmt.call)
        else:
            raise TypeError(f"unknown statement {stmt!r}")

    def do(self, c: Call) -> None:
        if c.fn.startswith("conv1d_"):
            self.conv1d(c)
            return
        if c.fn in _POOL_TIME:
            x, y = (self.views[a.name] for a in c.args[:2])  # type: ignore[union-attr]
            n = int(self.value(c.args[3]))
            steps = x.shape[1] // n
            seq = x[:, :steps * n].reshape(x.shape[0], steps, n)
            if c.fn == "sum_time_q":
                y[:, :n] = nm.sum_time_q(seq, int(self.value(c.args[4])))
            elif c.fn.endswith("_q"):
                y[:, :n] = _POOL_TIME[c.fn](seq)
            else:
                y[:, :n] = _POOL_TIME[c.fn](seq, axis=1)
            return
        if c.fn in ("max_pool_f", "avg_pool_f", "max_pool_q", "avg_pool_q"):
            self.pool_window(c)
            return
        if c.fn == "pad_time_q" or (c.fn == "frame_pad_f" and isinstance(c.args[2], Var)):
            self.pad_time(c)
            return
        if c.fn in ("frame_pad_f", "frame_pad_q"):
            self.frame_pad(c)
            return
        if c.fn in ("embedding_f", "embedding_q"):
            x_arg, t_arg, y_arg = c.args[:3]
            assert isinstance(x_arg, Ptr) and isinstance(t_arg, Ptr) and isinstance(y_arg, Ptr)
            d = int(self.value(c.args[3]))
            table = self.ev.const(t_arg.name).reshape(-1, d)
            self.views[y_arg.name][:, :d] = nm.embedding_rows(table, self.views[x_arg.name][:, 0])
            return
        src, dst = (self.views[a.name] for a in c.args[:2])  # type: ignore[union-attr]
        n = int(self.value(c.args[2]))
        rest = [self.value(a) for a in c.args[3:]]
        if c.fn in ("softmax_q", "log_softmax_q"):
            log = c.fn == "log_softmax_q"
            fn = nm.log_softmax_q if log else nm.softmax_q
            dst[:, :n] = fn(src[:, :n], _softmax_params(log, rest))
        elif c.fn in ("softmax_f", "log_softmax_f"):
            dst[:, :n] = _float_softmax(src[:, :n], c.fn == "log_softmax_f")
        else:
            raise TypeError(f"no evaluator for {c.fn}")

    def conv1d(self, c: Call) -> None:
        """``conv1d_f(x, y, T, w, b, geometry)`` in float64, or ``conv1d_w*_acc*(x, y, T, w, b,
        m, s, geometry)`` in integers (every sum checked against its C type), over the whole
        sequence the frame's views hold; geometry is ``c, o, kernel, groups, dilation, stride,
        pad, pad_right``. As the C: per output step, the taps inside x only."""
        fixed = c.fn != "conv1d_f"
        x_arg, y_arg, _, w_arg, b_arg = c.args[:5]
        rest = [int(self.value(a)) for a in (c.args[7:] if fixed else c.args[5:])]
        blocked = c.fn.startswith("conv1d_x4_")  # one group, dilation 1, rows in blocks of 4
        if blocked:
            rest = rest[:3] + [1, 1] + rest[3:]
        cin, cout, kernel, groups, dilation, stride, pad, pad_right = rest
        assert isinstance(x_arg, Ptr) and isinstance(y_arg, Ptr) and isinstance(w_arg, Ptr)
        x, y = self.views[x_arg.name], self.views[y_arg.name]
        steps = x.shape[1] // cin
        out_steps = (steps + pad + pad_right - dilation * (kernel - 1) - 1) // stride + 1
        cg, og = cin // groups, cout // groups
        dtype = np.int64 if fixed else np.float64
        w = self.ev.const(w_arg.name).astype(dtype)
        if blocked:  # (blocks, groups of 4 columns, 4 channels, 4 weights; int8 in SXTB16 order)
            w = decode_conv_layout(w, cout, kernel * cin, 8 if "_w8_" in c.fn else 16)
        w = w.reshape(cout, kernel, cg)
        b = (self.ev.const(b_arg.name).astype(dtype) if isinstance(b_arg, Ptr)
             else np.zeros(cout, dtype))
        xs = x.reshape(x.shape[0], steps, cin).astype(dtype)
        out = np.broadcast_to(b, (x.shape[0], out_steps, cout)).copy()
        for t in range(out_steps):
            for k in range(kernel):
                s = t * stride + k * dilation - pad
                if 0 <= s < steps:
                    for g in range(groups):
                        out[:, t, g * og:(g + 1) * og] += (
                            xs[:, s, g * cg:(g + 1) * cg] @ w[g * og:(g + 1) * og, k].T)
        if fixed:
            acc_t = "int32_t" if c.fn.endswith("acc32") else "int64_t"
            _check(out, acc_t, f"{self.fn.name}: {c.fn} sums")
            m_arg, s_arg = c.args[5:7]
            assert isinstance(m_arg, Ptr) and isinstance(s_arg, Ptr)
            out = nm.requant(out, self.ev.const(m_arg.name).astype(np.int64),
                             self.ev.const(s_arg.name).astype(np.int64))
        y[:, :out_steps * cout] = out.reshape(x.shape[0], -1)

    def frame_pad(self, c: Call) -> None:
        """``frame_pad_f``/``frame_pad_q(x, y, L, c, left, right, mode, value)`` over one frame
        per sample."""
        x_arg, y_arg = c.args[:2]
        length, channels, left, right, mode = (int(self.value(a)) for a in c.args[2:7])
        value = self.value(c.args[7])
        assert isinstance(x_arg, Ptr) and isinstance(y_arg, Ptr)
        x, y = self.views[x_arg.name], self.views[y_arg.name]
        for p in range(length + left + right):
            s = p - left
            if not 0 <= s < length:
                if mode == 0:
                    y[:, p * channels:(p + 1) * channels] = value
                    continue
                s = (-s if s < 0 else 2 * (length - 1) - s) if mode == 1 else min(
                    max(s, 0), length - 1)
            y[:, p * channels:(p + 1) * channels] = x[:, s * channels:(s + 1) * channels]

    def sequence(self, c: Call) -> tuple[np.ndarray, np.ndarray, int]:
        """A whole-sequence call's ``x`` as (B, T, n) (T from its view), ``y`` and n."""
        x_arg, y_arg = c.args[:2]
        assert isinstance(x_arg, Ptr) and isinstance(y_arg, Ptr)
        x, y = self.views[x_arg.name], self.views[y_arg.name]
        n = int(self.value(c.args[3]))
        steps = x.shape[1] // n
        return x[:, :steps * n].reshape(x.shape[0], steps, n), y, n

    def pool_window(self, c: Call) -> None:
        """``{max,avg}_pool_{f,q}(x, y, T, n, kernel, stride, pad[, count_include_pad])``:
        the integers by :mod:`tinyrnn.numerics.helpers`, floats in float64 per window."""
        x, y, n = self.sequence(c)
        kernel, stride, pad = (int(self.value(a)) for a in c.args[4:7])
        include = bool(int(self.value(c.args[7]))) if c.fn.startswith("avg") else True
        if c.fn == "max_pool_q":
            out = nm.max_pool_q(x, kernel, stride, pad)
        elif c.fn == "avg_pool_q":
            out = nm.avg_pool_q(x, kernel, stride, pad, include)
        else:
            windows = nm.pool_windows(x.shape[1], kernel, stride, pad)
            out = np.stack([x[:, lo:hi].max(axis=1) if c.fn == "max_pool_f" else
                            x[:, lo:hi].sum(axis=1) / (kernel if include else hi - lo)
                            for lo, hi in windows], axis=1)
        y[:, :out.shape[1] * n] = out.reshape(x.shape[0], -1)

    def pad_time(self, c: Call) -> None:
        """``frame_pad_f(x, y, T, n, left, right, mode, value)`` over a whole sequence, or
        ``pad_time_q(x, y, T, n, left, right, mode, value, shift)``."""
        x, y, n = self.sequence(c)
        left, right, mode = (int(self.value(a)) for a in c.args[4:7])
        name = ("constant", "reflect", "replicate")[mode]
        if c.fn == "pad_time_q":
            out = nm.pad_time_q(x, left, right, name, int(self.value(c.args[7])),
                                int(self.value(c.args[8])))
        else:
            fill = {"constant_values": float(self.value(c.args[7]))} if mode == 0 else {}
            out = np.pad(x, ((0, 0), (left, right), (0, 0)),
                         mode={"reflect": "reflect", "replicate": "edge"}.get(name, name),
                         **fill)
        y[:, :out.shape[1] * n] = out.reshape(x.shape[0], -1)

    def value(self, e: Expr):
        return self.expr(e)

    def expr(self, e: Expr):
        if isinstance(e, Var):
            return self.env[e.name]
        if isinstance(e, Lit):
            return float(e.value) if e.ctype == "float" else np.int64(e.value)
        if isinstance(e, Row):
            data = self.ev.const(e.const)
            column = data[:self.count] if e.col is None else data[:self.count, e.col]
            return column.astype(np.float64 if self.ev.plan.T == "float" else np.int64)
        if isinstance(e, Lane):
            return self.env[e.sums][..., e.k]
        if isinstance(e, Unit):
            return self.views[e.vector][:, e.offset:e.offset + self.count]
        if isinstance(e, Cast):
            return _check(self.expr(e.a), e.ctype, f"{self.fn.name}: ({e.ctype})")
        if isinstance(e, Bin):
            a, b = self.expr(e.a), self.expr(e.b)
            result = a + b if e.op == "+" else a - b if e.op == "-" else a * b
            return _check(result, e.ctype, f"{self.fn.name}: {e.op}")
        if isinstance(e, Call):
            return _check(self.call(e), e.ctype, f"{self.fn.name}: {e.fn}")
        raise TypeError(f"cannot evaluate {e!r}")

    def call(self, c: Call):
        if c.fn == "dot" or c.fn.startswith("dot_w"):
            w, v, n = c.args
            assert isinstance(w, Ptr) and isinstance(v, Ptr)
            cols = int(self.value(n))
            weights = self.ev.const(w.name)[:self.count, w.offset:w.offset + cols]
            vector = self.views[v.name][:, v.offset:v.offset + cols]
            if self.ev.plan.T == "float":
                return vector.astype(np.float64) @ weights.astype(np.float64).T
            return vector.astype(np.int64) @ weights.astype(np.int64).T
        args = [self.expr(a) for a in c.args]
        return _HELPERS[c.fn](*args)

    def sums(self, sums: UnitSums) -> None:
        """ax, ah of every unit: read back from each kernel family's layout, all equal."""
        dtype = np.float64 if self.ev.plan.T == "float" else np.int64
        xh = self.views["xh"].astype(dtype)
        results = []
        for family in sums.families:
            if family == "v6m":
                kernel = self.ev.v6m[sums.v6m]  # type: ignore[index]
                wx, wh = decode_v6m_layout(kernel, self.ev.const(sums.v6m_weights))
            elif family == "mve":
                wx, wh = decode_mve_stream(self.ev.const(sums.mve_weights), sums.G,
                                           sums.x.cols, sums.h.cols)
            elif sums.wtype == "float":
                wx, wh = decode_float_stream(self.ev.const(sums.weights), sums.G, sums.x.cols,
                                             sums.h.cols)
            else:
                wx, wh = decode_stream(self.ev.const(sums.weights), sums.G, sums.x.cols,
                                       sums.h.cols, sums.bits)
            out = []
            for side, w in ((sums.x, wx), (sums.h, wh)):
                v = xh[:, side.offset:side.offset + side.cols]
                acc = np.einsum("bc,ugc->bug", v, w[:self.count].astype(dtype))
                if side.bias is not None:
                    acc = acc + self.ev.const(side.bias)[:self.count]
                out.append(_check(acc, side.acc_ctype, f"{self.fn.name}: sums"))
            results.append((family, out))
        family, (ax, ah) = results[0]
        for other, (bx, bh) in results[1:]:
            if not (np.array_equal(ax, bx) and np.array_equal(ah, bh)):
                raise PlanError(f"{self.fn.name}: the {family} and {other} kernels' weights "
                                "give different sums")
        self.env["ax"], self.env["ah"] = ax, ah


class Run:
    """The buffers of one batch and the plan's functions over them."""

    def __init__(self, plan: Plan, batch: int) -> None:
        self.plan = plan
        dtype = np.float64 if plan.T == "float" else np.int64
        self.memory = {b.name: np.zeros((batch, b.size), dtype=dtype) for b in plan.buffers}
        self.consts = {c.name: c.data for c in plan.constants}
        self.v6m = {k.name(plan.name): k for k in plan.v6m_kernels}
        self.functions = {fn.name: fn for fn in plan.functions}
        self.x_t: np.ndarray | None = None

    def const(self, name: str) -> np.ndarray:
        return self.consts[name]

    def view(self, arg: Arg, size: int, offset: int = 0) -> np.ndarray:
        if arg.buffer == "x_t":
            assert self.x_t is not None
            return self.x_t
        start = arg.offset + offset
        return self.memory[arg.buffer][:, start:start + size]

    def call(self, op: Op, offsets: dict[int, int] | None = None) -> None:
        fn = self.functions[op.fn]
        views = {p.name: self.view(a, p.size, (offsets or {}).get(k, 0))
                 for k, (p, a) in enumerate(zip(fn.params, op.args)) if not a.const}
        _Frame(self, fn, views).run()

    def call_sequence(self, op: Op, x: np.ndarray | None, steps: int) -> None:
        """A ``conv`` op: once over the whole sequence (``x`` when it reads the input)."""
        fn = self.functions[op.fn]
        src, dst = fn.params[0], fn.params[1]
        views = {src.name: (x.reshape(x.shape[0], -1) if x is not None
                            else self.view(op.args[0], steps * src.size)),
                 dst.name: self.memory[op.args[1].buffer]}  # the conv sets its length
        _Frame(self, fn, views).run()

    def set_state(self, role: str, flat: np.ndarray) -> None:
        rows = dict(self.plan.set_state)[role]
        for row in rows:
            value = flat[:, row.offset:row.offset + row.size].astype(np.int64) * (1 << row.shift) \
                if row.shift else flat[:, row.offset:row.offset + row.size]
            self.memory[row.buffer][:, :row.size] = _check(value, "int32_t" if row.shift else "",
                                                           f"set_state {row.buffer}")


def run(plan: Plan, x: np.ndarray, h0: np.ndarray | None = None, c0: np.ndarray | None = None,
        steps: bool = False) -> list[np.ndarray]:
    """The outputs of NAME_run (of NAME_step at every step with ``steps``) on a batch: ``x`` is
    ``(B, T, I)`` (int16 values for the integer formats, as NAME_run_q takes them), ``h0``/``c0``
    ``(B, rows * size)``. Outputs as :class:`tinyrnn.check.simulate.Trace` holds them."""
    schedule = plan.schedule
    assert schedule is not None
    batch, T = x.shape[0], x.shape[1]
    r = Run(plan, batch)
    if h0 is not None:
        r.set_state("h0", h0)
    if c0 is not None:
        r.set_state("c0", c0)
    dtype = np.float64 if plan.T == "float" else np.int64
    x = np.asarray(x, dtype=dtype)
    if steps:
        assert schedule.step is not None and schedule.step_result is not None
        out = []
        for t in range(T):
            r.x_t = x[:, t]
            for op in schedule.step:
                r.call(op)
            out.append(r.view(schedule.step_result, plan.step_output_size).copy())
        return [np.stack(out, axis=1)]
    sel = None
    if schedule.select is not None:
        sel = schedule.select + T if schedule.select < 0 else schedule.select
        if not 0 <= sel < T and not schedule.lengths:
            raise ValueError(f"the model takes time step {schedule.select} of {T}")
    seq = vec = None
    if not schedule.layer_major:
        collected = []
        for t in range(T):
            r.x_t = x[:, t]
            for op in schedule.pre:
                r.call(op)
            if sel is None:
                collected.append(r.view(schedule.pre_result, plan.step_output_size).copy())
            elif t == sel:
                for op in schedule.post:
                    r.call(op)
                vec = r.view(schedule.post_result, plan.step_output_size).copy()
        if sel is None:
            seq = np.stack(collected, axis=1)
    else:
        lengths = [T]  # the sequence's length after each length-changing Conv1d
        for add, stride in schedule.lengths:
            if lengths[-1] + add < 0:
                raise ValueError(f"{lengths[-1]} steps are too few for a Conv1d (no output)")
            lengths.append((lengths[-1] + add) // stride + 1)
        final = lengths[-1]
        if sel is not None and schedule.select is not None:
            sel = schedule.select + final if schedule.select < 0 else schedule.select
            if not 0 <= sel < final:
                raise ValueError(f"the model takes time step {schedule.select} of {final}")
        for op in schedule.pre:
            n = lengths[op.steps]
            order = range(n - 1, -1, -1) if op.reverse else range(n)
            for t in order:
                r.x_t = x[:, t] if op.args[0].buffer == "x_t" else None
                src = 0 if op.args[0].buffer == "x_t" else t * op.src_stride
                if op.kind == "conv":
                    r.call_sequence(op, x if op.args[0].buffer == "x_t" else None, n)
                    break
                if op.kind == "multi":
                    r.x_t = x[:, t]
                    r.call(op, {k: t * stride for k, stride in enumerate(op.strides)})
                    continue
                if op.kind == "cell":
                    r.call(op, {0: src})
                    assert op.dst is not None
                    h = r.view(op.args[1], op.out_size)
                    dst = r.memory[op.dst.buffer]
                    start = t * op.dst_stride + op.dst.offset
                    dst[:, start:start + op.out_size] = h
                else:
                    r.call(op, {0: src, 1: t * op.dst_stride})
        result = r.memory[schedule.pre_result.buffer] if schedule.pre_result.buffer != "x_t" \
            else x
        if sel is None:
            width = plan.step_output_size
            seq = result[:, :final * width].reshape(batch, final, width).copy()
        else:
            w = schedule.select_width
            assert schedule.select_to is not None
            r.memory[schedule.select_to.buffer][:, :w] = result[:, sel * w:(sel + 1) * w]
            for op in schedule.post:
                r.call(op)
            vec = r.view(schedule.post_result, plan.step_output_size).copy()
    outputs = []
    for output in plan.outputs:
        if output.role == "sequence":
            outputs.append(seq)
        elif output.role == "vector":
            outputs.append(vec)
        else:
            outputs.append(np.concatenate(
                [nm.sat16(nm.rshift_round(r.memory[row.buffer][:, :row.size], row.shift))
                 if row.shift else r.memory[row.buffer][:, :row.size]
                 for row in output.rows], axis=1))
    return outputs
