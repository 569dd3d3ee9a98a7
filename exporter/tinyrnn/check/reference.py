"""The bit-exact reference of the fixed-point C: a numpy integer simulator of a
:class:`~tinyrnn.passes.quantize.QModel`.

It computes, with the integer functions of :mod:`tinyrnn.numerics.helpers`,
exactly what the generated C computes: the same integers, the same order of requantization,
the same saturation. The C must equal it element for element (``host_tests`` and
``tinyrnn verify`` check that). The float API's conversions are specified here too:
:func:`quantize_batch` (float32 -> int16, round half up, saturating) and :func:`dequantize`.
"""

from __future__ import annotations

import numpy as np

from ..ir import Binary, FramePad, Hypot
from ..numerics.helpers import (
    ACT_OUT,
    QFormat,
    abs_q,
    avg_pool_q,
    clamp_q,
    dot2_q,
    dot2_q32,
    embedding_rows,
    hypot_q,
    leaky_q,
    log_softmax_q,
    max_pool_q,
    max_time_q,
    mean_time_q,
    mul_q30,
    pad_time_q,
    relu_q,
    requant,
    rescale,
    rshift_round,
    sat24,
    sat_shift,
    saturate,
    sigmoid_wide,
    softmax_q,
    sqrt_q,
    sum_time_q,
    tanh_wide,
)
from ..passes.quantize import (
    QAccumulator,
    QActivation,
    QConv1d,
    QDense,
    QEmbedding,
    QGRULayer,
    QLSTMLayer,
    QModel,
    QMulti,
    QPadTime,
    QPoolTime,
    QPoolWindow,
    QRNNLayer,
)
from .simulate import (
    Batch,
    State,
    Trace,
    check_pad,
    check_window,
    combine,
    conv1d_taps,
    split_state,
    walk,
)


def evaluate(acc: QAccumulator, v: np.ndarray) -> np.ndarray:
    """``saturate(sum_p rescale(bias_p + W_p @ v[p's columns], M_p, n_p), out.bits)`` per row,
    on the last axis of the int16 vector(s) ``v``. The int64 sums are exact: the quantizer
    proved ``|acc_p| <= bound_p < 2**47``. A single part with a 16-bit result is exactly
    :func:`tinyrnn.numerics.helpers.requant`."""
    total = np.zeros(v.shape[:-1] + (acc.rows,), dtype=np.int64)
    for part in acc.parts:
        segment = v[..., part.offset:part.offset + part.cols]
        a = segment @ part.weights.T
        if part.bias is not None:
            a = a + part.bias
        total = total + rescale(a, part.mult, part.shift)
    return saturate(total, acc.out.bits)


class IntNumerics:
    """The integer arithmetic of the generated C, layer by layer."""

    def __init__(self, q: QModel):
        self.q = q

    def zero_state(self, index: int, batch: int) -> State:
        layer = self.q.model.layers[index]
        h = np.zeros((batch, layer.state_size), dtype=np.int64)
        if layer.spec.cell_state:
            return h, np.zeros((batch, layer.hidden_size), dtype=np.int64)
        return (h,)

    def initial_state(self, batch: Batch) -> dict[tuple[int, int], State]:
        if batch.h0 is None:
            return {}
        hs = split_state(self.q.model, batch.h0, 0)
        if batch.c0 is None:
            return {key: (h,) for key, h in hs.items()}
        cs = split_state(self.q.model, batch.c0, 1)
        return {key: (h, self._cell_in(key[0], cs[key])) for key, h in hs.items()}

    def _cell_in(self, index: int, c0: np.ndarray) -> np.ndarray:
        """c0 (int16, in c's API format) in c's own format: exact, ``c0 * 2**io_shift``."""
        layer = self.q.layers[index]
        assert isinstance(layer, QLSTMLayer)
        return c0 * (1 << layer.io_shift)

    def cell(self, index: int, direction: int, x_t: np.ndarray, state: State
             ) -> tuple[np.ndarray, State]:
        layer = self.q.layers[index]
        h = state[0]
        v = np.concatenate([x_t, h], axis=1)
        if isinstance(layer, QLSTMLayer):
            d = layer.directions[direction]
            i = sigmoid_wide(evaluate(d.acc("i"), v))
            f = sigmoid_wide(evaluate(d.acc("f"), v))
            g = tanh_wide(evaluate(d.acc("g"), v))
            o = sigmoid_wide(evaluate(d.acc("o"), v))
            c = (dot2_q32 if layer.c.bits == 32 else dot2_q)(
                f, state[1], layer.fc_mul, i, g, layer.ig_mul, layer.c_shift)
            t = tanh_wide(sat24(rshift_round(c, layer.c_wide_shift)))
            hc = mul_q30(o, t, layer.oc_shift)
            h_new = evaluate(d.proj, hc) if d.proj is not None else hc
            return h_new, (h_new, c)
        if isinstance(layer, QGRULayer):
            d = layer.directions[direction]
            r = sigmoid_wide(evaluate(d.acc("r"), v))
            z = sigmoid_wide(evaluate(d.acc("z"), v))
            nh = rshift_round(r * evaluate(d.acc("nh"), v), layer.rn_shift)
            n = tanh_wide(sat24(evaluate(d.acc("n"), v) + nh))
            h_new = dot2_q(z, h, layer.zh_mul, layer.one - z, n, layer.zn_mul, layer.h_shift)
            return h_new, (h_new,)
        assert isinstance(layer, QRNNLayer)
        pre = evaluate(layer.directions[direction].acc("h"), v)
        if layer.ir.nonlinearity == "relu":
            h_new = relu_q(sat_shift(pre, layer.out_shift))
        else:
            h_new = sat_shift(tanh_wide(pre), layer.out_shift)
        return h_new, (h_new,)

    def combine(self, index: int, parts: list[np.ndarray]) -> np.ndarray:
        """A layer over several values or over a step's frame, in integers: a frame conv as
        :func:`conv1d_int` over the frame's positions; the others as :class:`QMulti` says."""
        layer = self.q.layers[index]
        lead = parts[0].shape[:-1]
        if isinstance(layer, QConv1d):  # (..., L * C) frames -> (N, L, C)
            conv = layer.ir
            frames = parts[0].reshape(-1, conv.length, conv.in_channels)  # type: ignore[union-attr]
            return conv1d_int(layer, frames).reshape(*lead, -1)
        assert isinstance(layer, QMulti)
        shifts = layer.shifts()
        if isinstance(layer.ir, Hypot):
            return hypot_q(parts[0], parts[1], layer.pad)
        if isinstance(layer.ir, Binary):
            a, b = parts
            if layer.ir.kind == "mul":
                return sat_shift(a * b, shifts[0])
            return sat_shift((a << shifts[0]) + (b << shifts[1]), shifts[2])
        moved = [p if n == 0 else sat_shift(p, n) for p, n in zip(parts, shifts)]
        fill = layer.pad if isinstance(layer.ir, FramePad) else None
        return combine(layer.ir, moved, fill)  # type: ignore[arg-type]

    def head(self, index: int, value: np.ndarray) -> np.ndarray:
        layer = self.q.layers[index]
        if isinstance(layer, QDense):
            return evaluate(layer.acc, value)
        if isinstance(layer, QPoolTime):
            if layer.ir.kind == "sum":
                return sum_time_q(value, layer.shift)[:, None]
            return (mean_time_q if layer.ir.kind == "mean" else max_time_q)(value)[:, None]
        if isinstance(layer, QConv1d):
            return conv1d_int(layer, value)
        if isinstance(layer, QPoolWindow):
            pool = layer.ir
            check_window(pool, value.shape[1])
            if pool.kind == "max":
                return max_pool_q(value, pool.kernel, pool.stride, pool.pad)
            return avg_pool_q(value, pool.kernel, pool.stride, pool.pad, pool.count_include_pad)
        if isinstance(layer, QEmbedding):  # value: (B, T, 1) token ids
            return embedding_rows(layer.table.astype(np.int64), value[..., 0])
        if isinstance(layer, QPadTime):
            check_pad(layer.ir, value.shape[1])
            return pad_time_q(value, layer.ir.left, layer.ir.right, layer.ir.mode, layer.value,
                              layer.shift)
        assert isinstance(layer, QActivation)
        kind = layer.ir.kind
        if kind == "relu":
            return relu_q(value)
        if kind in ("relu6", "hardtanh"):
            return clamp_q(value, layer.low, layer.high)
        if kind == "leaky_relu":
            return leaky_q(value, layer.mult, layer.shift)
        if kind == "abs":
            return abs_q(value)
        if kind == "sqrt":
            return sqrt_q(value, layer.shift)
        if kind == "square":
            return requant(value * value, layer.mult, layer.shift)
        if kind in ("hardsigmoid", "hardswish"):
            hs = clamp_q(requant(value, layer.mult, layer.shift) + (1 << (ACT_OUT.frac - 1)),
                         0, ACT_OUT.qmax)
            return hs if kind == "hardsigmoid" else mul_q30(value, hs, ACT_OUT.frac)
        if kind == "sigmoid":
            return sigmoid_wide(sat24(rshift_round(value, layer.in_shift)))
        if kind == "tanh":
            return sat_shift(tanh_wide(sat24(rshift_round(value, layer.in_shift))),
                             layer.out_shift)
        assert layer.softmax is not None
        return (softmax_q if kind == "softmax" else log_softmax_q)(value, layer.softmax)


def conv1d_int(layer: QConv1d, x: np.ndarray) -> np.ndarray:
    """A Conv1d on int16 ``x`` (B, T, C) -> (B, T_out, O): per output step and channel the
    exact sum of its row of weights (kernel, in / groups) against the taps of its group's
    channels (zeros outside the sequence), plus the bias, then ``requant`` (what the C's
    ``conv1d_w*`` helpers compute)."""
    conv = layer.ir
    taps = conv1d_taps(conv, x)  # (B, T_out, kernel, C)
    part = layer.acc.parts[0]
    cg, og = conv.weight.shape[1], conv.out_channels // conv.groups
    acc = np.empty(taps.shape[:2] + (conv.out_channels,), dtype=np.int64)
    for g in range(conv.groups):
        v = taps[..., g * cg:(g + 1) * cg].reshape(taps.shape[:2] + (-1,)).astype(np.int64)
        acc[..., g * og:(g + 1) * og] = v @ part.weights[g * og:(g + 1) * og].T
    if part.bias is not None:
        acc = acc + part.bias
    return requant(acc, part.mult, part.shift)


def _rows(q: QModel, flat: np.ndarray, fmts: list[QFormat], fn) -> np.ndarray:
    """Apply ``fn(fmt, part)`` to each row of a ``(B, rows * size)`` state buffer."""
    parts = np.split(flat, len(fmts), axis=1)
    return np.concatenate([fn(f, p) for f, p in zip(fmts, parts)], axis=1)


def _float_input(values: np.ndarray) -> np.ndarray:
    """What the C's ``from_float`` reads: float32, with NaN taken as 0 (the C returns 0 for a
    NaN; +-Inf and values beyond the format saturate, as :meth:`QFormat.quantize` does)."""
    v = np.asarray(values, dtype=np.float32)
    return np.where(np.isnan(v), np.float32(0), v)


def quantize_batch(q: QModel, batch: Batch) -> Batch:
    """The float API's input conversion: each float32 value ``v`` becomes
    ``sat16(round_half_up(v * 2**frac))`` in its format (x: the input format; h0/c0: the
    format of each (layer, direction) row). Any float32 is accepted, as by the C: +-Inf and
    +-FLT_MAX saturate, denormals round to 0, NaN becomes 0."""
    x = q.input.quantize(_float_input(batch.x))
    group = q.model.state_group
    h0 = c0 = None
    if batch.h0 is not None:
        h0 = _rows(q, _float_input(batch.h0), q.state_formats(group, 0),
                   lambda f, p: f.quantize(p))
    if batch.c0 is not None:
        c0 = _rows(q, _float_input(batch.c0), q.state_formats(group, 1),
                   lambda f, p: f.quantize(p))
    return Batch(x, h0, c0)


def run(q: QModel, batch_q: Batch, all_steps: bool = False) -> Trace:
    """Run the integer model on int16 inputs (:func:`quantize_batch`); integer outputs."""
    trace = walk(q.model, IntNumerics(q), batch_q, batch_q.x.astype(np.int64), all_steps)
    for k, spec in enumerate(q.model.outputs):
        if spec.role == "c_n":
            trace.outputs[k] = _cell_out(q, spec.group, trace.outputs[k])
    return trace


def _cell_out(q: QModel, group: int, flat: np.ndarray) -> np.ndarray:
    """c_n in its int16 API format: ``sat16(rshift_round(c, io_shift))`` per row (c itself for
    a 16-bit c)."""
    parts, offset = [], 0
    for index in q.model.groups[group].layers:
        layer = q.layers[index]
        assert isinstance(layer, QLSTMLayer)
        for _ in layer.directions:
            row = flat[:, offset:offset + layer.ir.hidden_size]
            parts.append(saturate(rshift_round(row, layer.io_shift), 16) if layer.io_shift
                         else row)
            offset += layer.ir.hidden_size
    return np.concatenate(parts, axis=1)


def dequantize(q: QModel, output: int, values: np.ndarray) -> np.ndarray:
    """The float API's output conversion of output ``output`` (batched, as in a Trace):
    ``(float)v * 2**-frac``, exact in float32."""
    _, fmts, _ = q.output_row_formats()[output]
    if len(fmts) == 1:
        return fmts[0].dequantize(values).astype(np.float32)
    return _rows(q, values, fmts, lambda f, p: f.dequantize(p)).astype(np.float32)


def dequantize_layer(q: QModel, index: int, values: np.ndarray) -> np.ndarray:
    """IR layer ``index``'s integer output as real values (float64)."""
    return q.out_format(index).dequantize(values)
