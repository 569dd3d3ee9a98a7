"""Integer functions of the fixed-point cells beyond :mod:`tinyrnn.fixedpoint`: the bit-exact
specification of the C helpers of the same names in ``templates/numeric_fixed.c.j2``.

Wide pre-activations
--------------------
A gate's pre-activation is held in ``ACT_WIDE`` = Q3.20 (24-bit values in an int32) instead of
Q3.12. :func:`sigmoid_wide` interpolates the same 513-point table as
:func:`tinyrnn.fixedpoint.sigmoid_q` with 14 fraction bits per segment instead of 6 (for an
input ``x << 8`` it returns exactly ``sigmoid_q(x)``); :func:`tanh_wide` interpolates a table
of tanh in Q0.30 at the same points and returns Q0.30 (int32), so that small values keep their
relative precision (tanh's output is the cell's signal; sigmoid's is a factor near 1/2).

- :func:`sat24`: clamp to the 24-bit range of ``ACT_WIDE``;
- :func:`rescale`: ``rshift_round(acc * M, n)`` without saturation (one part of a gate's
  pre-activation, in the wide format);
- :func:`dot2_q`: ``sat16(rshift_round(a*b*ka + c*d*kc, shift))``, the LSTM cell update
  ``f*c + i*g`` and the GRU update ``(1-z)*n + z*h`` with one rounding.

softmax and log_softmax
-----------------------
(docs/fixed-point.md, "softmax and log_softmax"):

- ``d = max(x) - x`` (an integer >= 0 in the input format ``Q.f``), clamped to ``dclamp``;
- ``u = rshift_round(d * M_e, n_e)`` with ``M_e * 2**-n_e ~= log2(e) * 2**(16 - f)``: ``u`` is
  ``d * log2(e)`` in Q.16, so ``exp(-d) = 2**(-u / 2**16)``;
- ``2**-u`` by splitting ``u`` into its integer part ``i`` and fraction ``r``: a 129-entry table
  of ``2**(-k/128)`` in Q.30 with linear interpolation gives ``2**-r``, then a rounding shift by
  ``i`` (``e = 0`` for ``i >= 32``). The largest input gives ``e = 2**30`` exactly;
- softmax: ``p = min(floor((e * 2**16 + S) / (2 * S)), 32767)`` in Q0.15, which is
  ``round_half_up(e / S * 2**15)`` computed exactly (``S = sum(e)``);
- log_softmax: ``log2(S / 2**30)`` from a 129-entry table of ``log2(1 + k/128)`` in Q.30, times
  ``ln 2``, subtracted from ``x - max`` in a wide format ``Q.W`` and rounded once to the output.

Every operation is an integer operation with the module's one rounding rule
(:func:`tinyrnn.fixedpoint.rshift_round`), so the C computes the same integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .fixedpoint import (
    ACT_SEGMENT_SHIFT,
    INT16_MAX,
    REQUANT_ACC_LIMIT,
    SIGMOID_TABLE,
    TANH_TABLE,
    QFormat,
    quantize_multiplier,
    round_half_up,
    rshift_round,
    sat16,
    saturate,
)

ACT_WIDE = QFormat(24, 20)
"""Wide pre-activation format: Q3.20, 24-bit values held in int32."""

WIDE_EXTRA = ACT_WIDE.frac - 12
"""Fraction bits the wide format adds to Q3.12 (8)."""

WIDE_SEGMENT_SHIFT = ACT_SEGMENT_SHIFT + WIDE_EXTRA
"""Input steps per table segment of the wide activations: 2**14."""

WIDE_MAX = 2 ** (ACT_WIDE.bits - 1) - 1


def sat24(x: np.ndarray) -> np.ndarray:
    """Clamp integers to ``[-2**23, 2**23 - 1]`` (C: ``sat24(int64_t)``)."""
    return saturate(np.asarray(x, dtype=np.int64), ACT_WIDE.bits)


def rescale(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``rshift_round(acc * M, n)`` in int64, not saturated (C: ``rescale``).

    Same domain as :func:`tinyrnn.fixedpoint.requant`: ``|acc| < 2**47``, ``M < 2**15``,
    ``0 <= n <= 62``, so nothing overflows.
    """
    a = np.asarray(acc, dtype=np.int64)
    if (np.abs(a) >= REQUANT_ACC_LIMIT).any():
        raise OverflowError("rescale needs |acc| < 2**47")
    return rshift_round(a * np.asarray(mult, dtype=np.int64), shift)


def _interp_wide(table: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.int64)
    if ((x < -WIDE_MAX - 1) | (x > WIDE_MAX)).any():
        raise ValueError("wide activations take 24-bit values")
    u = np.minimum(np.abs(x), WIDE_MAX)
    i = u >> WIDE_SEGMENT_SHIFT
    f = u & ((1 << WIDE_SEGMENT_SHIFT) - 1)
    lo = table[i]
    return lo + rshift_round((table[i + 1] - lo) * f, WIDE_SEGMENT_SHIFT), x < 0


def sigmoid_wide(x: np.ndarray) -> np.ndarray:
    """sigmoid of Q3.20 (24-bit) inputs in Q0.15 (C: ``sigmoid_wide(int32_t)``).

    ``u = min(|x|, 2**23 - 1)``, ``i = u >> 14``, ``f = u & (2**14 - 1)``,
    ``p = T[i] + rshift_round((T[i+1] - T[i]) * f, 14)``; ``p`` for ``x >= 0``, else
    ``32768 - p``. ``T`` is :data:`tinyrnn.fixedpoint.SIGMOID_TABLE`.
    """
    p, neg = _interp_wide(SIGMOID_TABLE, x)
    return np.where(neg, 2**15 - p, p)


TANH30_TABLE = np.array(
    [int(round_half_up(math.tanh(k / 2**ACT_SEGMENT_SHIFT) * 2**30))
     for k in range(len(TANH_TABLE))], dtype=np.int64)
"""tanh at ``0, 1/64, ..., 8`` in Q0.30 (0 .. 1073741711)."""
TANH30_TABLE.setflags(write=False)


def tanh_wide(x: np.ndarray) -> np.ndarray:
    """tanh of Q3.20 (24-bit) inputs in Q0.30 (C: ``tanh_wide(int32_t)``): as
    :func:`sigmoid_wide` with :data:`TANH30_TABLE` (the interpolation product in int64) and
    ``-p`` for ``x < 0``. The result lies in ``[-2**30 + 1, 2**30 - 1]``."""
    p, neg = _interp_wide(TANH30_TABLE, x)
    return np.where(neg, -p, p)


def mul_q30(a: np.ndarray, t: np.ndarray, shift: int) -> np.ndarray:
    """``sat16(rshift_round(a * t, shift))`` for int16 ``a`` and a Q0.30 int32 ``t``
    (C: ``mul_q30``); ``|a * t| < 2**45``, exact in int64."""
    return sat16(rshift_round(np.asarray(a, np.int64) * np.asarray(t, np.int64), shift))


DOT2_KA_MAX = 2**31
DOT2_KC_MAX = 2**16


def dot2_q(a, b, ka: int, c, d, kc: int, shift: int) -> np.ndarray:
    """``sat16(rshift_round(a*b*ka + c*d*kc, shift))`` (C: ``dot2_q``) for int16 ``a, b, c``, a
    Q0.30 int32 ``d`` (``|d| < 2**30``) and powers of two ``ka <= 2**31``, ``kc <= 2**16``:
    ``|a*b*ka| <= 2**61``, ``|c*d*kc| < 2**61``, so the int64 sum is exact."""
    for k, top in ((ka, DOT2_KA_MAX), (kc, DOT2_KC_MAX)):
        if not (0 < k <= top and k & (k - 1) == 0):
            raise ValueError(f"dot2_q factors must be powers of two up to {top}, got {k}")
    total = (np.asarray(a, np.int64) * np.asarray(b, np.int64) * ka
             + np.asarray(c, np.int64) * np.asarray(d, np.int64) * kc)
    return sat16(rshift_round(total, shift))

TABLE_BITS = 7
"""Both tables have ``2**7 + 1 = 129`` points over ``[0, 1]``."""

TABLE_LEN = 2**TABLE_BITS + 1

EXP_FRAC = 16
"""``u = d * log2(e)`` is held in Q.16."""

EXP_ZERO_AT = 32
"""``2**-u`` rounds to 0 in Q.30 once the integer part of ``u`` reaches 32."""

ONE_Q30 = 2**30

EXP2_TABLE = np.array(
    [int(round_half_up(2.0 ** (-k / 2**TABLE_BITS) * ONE_Q30)) for k in range(TABLE_LEN)],
    dtype=np.int64,
)
"""``2**(-k/128)`` in Q.30, ``k = 0..128`` (``2**30`` down to ``2**29``)."""

LOG2_TABLE = np.array(
    [int(round_half_up(math.log2(1 + k / 2**TABLE_BITS) * ONE_Q30)) for k in range(TABLE_LEN)],
    dtype=np.int64,
)
"""``log2(1 + k/128)`` in Q.30, ``k = 0..128`` (0 up to ``2**30``)."""

EXP_SEG = EXP_FRAC - TABLE_BITS  # 9: fraction bits interpolated inside one exp segment
LOG_SEG = 30 - TABLE_BITS  # 23: fraction bits interpolated inside one log segment

for _table in (EXP2_TABLE, LOG2_TABLE):
    _table.setflags(write=False)


@dataclass(frozen=True)
class SoftmaxParams:
    """Constants of one softmax / log_softmax layer, all computed here in Python.

    ``dclamp``: ``d = max - x`` is clamped to this (from there on ``exp`` is 0 in Q.30);
    ``exp_mult, exp_shift``: ``u = rshift_round(d * exp_mult, exp_shift)`` is ``d * log2 e``
    in Q.16. log_softmax only: ``ln2_mult, ln2_shift`` turn ``log2 S`` (Q.30) into ``ln S``
    in Q.W; ``up = W - f`` brings ``x - max`` to Q.W; ``down = W - g`` rounds to the output.
    """

    log: bool
    in_frac: int
    out_frac: int
    dclamp: int
    exp_mult: int
    exp_shift: int
    ln2_mult: int = 0
    ln2_shift: int = 0
    up: int = 0
    down: int = 0


def softmax_params(log: bool, x: QFormat, out: QFormat) -> SoftmaxParams:
    """Constants for an input in format ``x`` and an output in ``out`` (Q0.15 for softmax).

    Raises ``ValueError`` when the input format is too coarse (range beyond +-2**13) for the
    exp multiplier to be an integer multiply-and-shift.
    """
    f = x.frac
    exp_mult, exp_shift = quantize_multiplier(math.log2(math.e) * 2.0 ** (EXP_FRAC - f))
    limit = EXP_ZERO_AT << EXP_FRAC
    # the smallest d whose u reaches the limit; u is non-decreasing in d
    dclamp = max(1, (limit << exp_shift) // exp_mult - 2)
    while int(rshift_round(dclamp * exp_mult, exp_shift)) < limit:
        dclamp += 1
    dclamp = min(dclamp, 2**16 - 1)  # d never exceeds 65535 for int16 inputs
    if not log:
        return SoftmaxParams(False, f, out.frac, dclamp, exp_mult, exp_shift)
    wide = max(30, f)
    ln2_mult, ln2_shift = quantize_multiplier(math.log(2) * 2.0 ** (wide - 30))
    if not 0 <= wide - out.frac <= 62:
        raise ValueError(f"log_softmax output format {out} is outside the supported range")
    return SoftmaxParams(True, f, out.frac, dclamp, exp_mult, exp_shift, ln2_mult, ln2_shift,
                         up=wide - f, down=wide - out.frac)


def exp2_neg_q30(u: np.ndarray) -> np.ndarray:
    """``2**(-u / 2**16)`` in Q.30 for integers ``u >= 0`` (C: ``exp2_neg_q30``).

    ``i = u >> 16``, ``r = u & 0xFFFF``, ``k = r >> 9``, ``t = r & 511``;
    ``p = T[k] + rshift_round((T[k+1] - T[k]) * t, 9)``; result ``rshift_round(p, i)`` for
    ``i < 32``, else 0.
    """
    u = np.asarray(u, dtype=np.int64)
    i = u >> EXP_FRAC
    r = u & ((1 << EXP_FRAC) - 1)
    k = r >> EXP_SEG
    t = r & ((1 << EXP_SEG) - 1)
    lo = EXP2_TABLE[k]
    p = lo + rshift_round((EXP2_TABLE[k + 1] - lo) * t, EXP_SEG)
    return np.where(i >= EXP_ZERO_AT, 0, rshift_round(p, np.minimum(i, EXP_ZERO_AT - 1)))


def log2_q30(s: np.ndarray) -> np.ndarray:
    """``log2(s / 2**30)`` in Q.30 for integers ``2**30 <= s < 2**53`` (C: ``log2_q30``).

    ``b`` = position of the top bit of ``s``; ``v = min(rshift_round(s - 2**b, b - 30),
    2**30 - 1)`` is the mantissa's fraction in Q.30; ``k = v >> 23``, ``t = v & (2**23 - 1)``;
    result ``(b - 30) * 2**30 + L[k] + rshift_round((L[k+1] - L[k]) * t, 23)``.
    """
    s = np.asarray(s, dtype=np.int64)
    if (s < ONE_Q30).any() or (s >= 2**53).any():
        raise ValueError("log2_q30 needs 2**30 <= s < 2**53")
    _, e = np.frexp(s.astype(np.float64))  # exact: s < 2**53
    b = e.astype(np.int64) - 1
    v = np.minimum(rshift_round(s - (np.int64(1) << b), b - 30), ONE_Q30 - 1)
    k = v >> LOG_SEG
    t = v & ((1 << LOG_SEG) - 1)
    lo = LOG2_TABLE[k]
    return (b - 30) * ONE_Q30 + lo + rshift_round((LOG2_TABLE[k + 1] - lo) * t, LOG_SEG)


def _exp_terms(x: np.ndarray, p: SoftmaxParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.int64)
    top = x.max(axis=-1, keepdims=True)
    d = np.minimum(top - x, p.dclamp)
    e = exp2_neg_q30(rshift_round(d * p.exp_mult, p.exp_shift))
    return x, top, e


def softmax_q(x: np.ndarray, p: SoftmaxParams) -> np.ndarray:
    """softmax over the last axis, int16 in ``Q.f`` -> int16 in Q0.15 (C: ``softmax_q``)."""
    _, _, e = _exp_terms(x, p)
    s = e.sum(axis=-1, keepdims=True)
    return np.minimum((e * 2**16 + s) // (2 * s), INT16_MAX)


def log_softmax_q(x: np.ndarray, p: SoftmaxParams) -> np.ndarray:
    """log_softmax over the last axis, int16 in ``Q.f`` -> int16 in ``Q.g``
    (C: ``log_softmax_q``)."""
    x, top, e = _exp_terms(x, p)
    s = e.sum(axis=-1, keepdims=True)
    ln_s = rshift_round(log2_q30(s) * p.ln2_mult, p.ln2_shift)
    wide = (x - top) * (np.int64(1) << p.up) - ln_s
    return sat16(rshift_round(wide, p.down))


def table_bytes(softmax: bool, log_softmax: bool) -> int:
    """Flash taken by the lookup tables of numeric_fixed.c.j2 a model uses."""
    size = 2 * len(SIGMOID_TABLE) + 4 * len(TANH30_TABLE)
    if softmax or log_softmax:
        size += 4 * TABLE_LEN
    if log_softmax:
        size += 4 * TABLE_LEN
    return size


def numeric_context() -> dict[str, object]:
    """The tables and constants ``templates/numeric_fixed.c.j2`` prints for these helpers."""
    return dict(
        sigmoid_table=[int(v) for v in SIGMOID_TABLE],
        tanh30_table=[int(v) for v in TANH30_TABLE],
        act_table_len=len(SIGMOID_TABLE),
        wide_bits=ACT_WIDE.bits,
        wide_max=WIDE_MAX,
        wide_min=-WIDE_MAX - 1,
        wide_format=str(ACT_WIDE),
        wide_segment_shift=WIDE_SEGMENT_SHIFT,
        wide_segment_mask=(1 << WIDE_SEGMENT_SHIFT) - 1,
        exp2_table=[int(v) for v in EXP2_TABLE],
        log2_table=[int(v) for v in LOG2_TABLE],
        table_len=TABLE_LEN,
        exp_frac=EXP_FRAC,
        exp_seg=EXP_SEG,
        exp_mask=(1 << EXP_FRAC) - 1,
        exp_seg_mask=(1 << EXP_SEG) - 1,
        log_seg_mask=(1 << LOG_SEG) - 1,
        act_table_last=len(SIGMOID_TABLE) - 1,
        exp_zero_at=EXP_ZERO_AT,
        log_seg=LOG_SEG,
        table_step=f"1/{2**TABLE_BITS}",
    )
