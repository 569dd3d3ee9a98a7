"""Tests of tinyrnn.numerics.helpers (the integer specification) and of templates/numerics.c.j2
(its C).

Expected values come from the rules themselves, evaluated exactly with Python integers and
fractions (``_ref_*`` below), never from earlier runs. The C helpers are rendered as an export
renders them (tinyrnn.backend.render.helpers_source), compiled with the project's warning flags in a
pytest temporary directory, loaded with cffi and compared with numpy element for element:
exhaustively over the 2**24 inputs of the wide activations, on large random sets with the
extremes elsewhere.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import cffi
import numpy as np
import pytest
import torch

from tinyrnn.backend.render import helpers_source
from tinyrnn.numerics import helpers as fp
from tinyrnn.numerics.helpers import QFormat

CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
ALL_INT16 = np.arange(-(2**15), 2**15, dtype=np.int64)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ACC_MAX = fp.REQUANT_ACC_LIMIT - 1

# ----------------------------------------------------------------------------------------------
# Exact references: the rules as written in the docs, on Python integers and fractions
# ----------------------------------------------------------------------------------------------


def _ref_round(x: Fraction) -> int:
    """Round half up: floor(x + 1/2)."""
    return math.floor(x + Fraction(1, 2))


def _ref_rshift(v: int, n: int) -> int:
    """v / 2**n rounded half up for n >= 0; v * 2**-n for n < 0."""
    return _ref_round(Fraction(v, 2**n)) if n >= 0 else v * 2**-n


def _ref_sat(v: int, bits: int = 16) -> int:
    return min(max(v, -(2 ** (bits - 1))), 2 ** (bits - 1) - 1)


def _ref_array(fn: Callable[..., int], *columns: np.ndarray) -> np.ndarray:
    return np.array([fn(*map(int, args)) for args in zip(*columns)], dtype=np.int64)


def _extremes_and_random(rng: np.random.Generator, lo: int, hi: int, count: int) -> np.ndarray:
    """The ends of [lo, hi], values around 0, and ``count`` uniform draws."""
    edges = [lo, lo + 1, -1, 0, 1, hi - 1, hi]
    return np.concatenate(
        [np.array(edges, dtype=np.int64), rng.integers(lo, hi, count, endpoint=True)]
    )


# ----------------------------------------------------------------------------------------------
# Rounding, saturation, QFormat
# ----------------------------------------------------------------------------------------------


def test_ties_round_up() -> None:
    q = fp.QFormat(16, 0).quantize([0.5, -0.5, -1.5, 1.5, 2.5, -2.5])
    assert q.tolist() == [1, 0, -1, 2, 3, -2]
    # The same rule in the shift: 1/2 -> 1, -1/2 -> 0, -3/2 -> -1, 3/2 -> 2.
    assert fp.rshift_round([1, -1, -3, 3], 1).tolist() == [1, 0, -1, 2]


def test_round_half_up_is_exact_next_to_ties() -> None:
    # floor(x + 0.5) in float64 gets this wrong (0.49999999999999994 + 0.5 == 1.0).
    below = np.nextafter(0.5, 0.0)
    assert fp.QFormat(16, 0).quantize([below, -below, np.nextafter(-0.5, 0.0)]).tolist() == [
        0,
        0,
        0,
    ]
    assert fp.QFormat(16, 0).quantize([np.nextafter(-0.5, -1.0)]).tolist() == [-1]


@pytest.mark.parametrize(
    "fmt",
    [
        fp.QFormat(8, 4),
        fp.QFormat(16, 12),
        fp.QFormat(16, 15),
        fp.QFormat(16, -3),
        fp.QFormat(32, 40),
    ],
    ids=str,
)
def test_quantize_follows_the_rule(fmt: fp.QFormat) -> None:
    rng = np.random.default_rng(1)
    span = 1.5 * fmt.max
    ties = (rng.integers(-2 * fmt.qmax, 2 * fmt.qmax, 200) + 0.5) * fmt.step  # exact ties
    x = np.concatenate(
        [rng.uniform(-span, span, 2000), ties, np.nextafter(ties, 0), np.nextafter(ties, np.inf)]
    )
    expected = [
        _ref_sat(_ref_round(Fraction(float(v)) * Fraction(2) ** fmt.frac), fmt.bits) for v in x
    ]
    assert fmt.quantize(x).tolist() == expected


def test_saturation_never_wraps() -> None:
    fmt = fp.QFormat(8, 4)  # Q3.4: [-8, 7.9375]
    x = [7.9375, 7.96875, 8.0, 1e9, 1e300, np.inf, -8.0, -8.03125, -8.04, -1e300, -np.inf]
    # 7.96875 * 16 = 127.5 rounds to 128 and saturates; -8.03125 * 16 = -128.5 rounds to -128;
    # -8.04 * 16 = -128.64 rounds to -129 and saturates.
    assert fmt.quantize(x).tolist() == [127, 127, 127, 127, 127, 127, -128, -128, -128, -128, -128]
    assert fp.sat16([2**40, -(2**40), 32768, -32769, 32767, -32768]).tolist() == [
        32767,
        -32768,
        32767,
        -32768,
        32767,
        -32768,
    ]


@pytest.mark.parametrize(
    "fmt",
    [
        fp.QFormat(8, 4),
        fp.QFormat(16, 12),
        fp.QFormat(16, 15),
        fp.QFormat(16, -3),
        fp.QFormat(16, 20),
    ],
    ids=str,
)
def test_round_trip(fmt: fp.QFormat) -> None:
    q = np.arange(fmt.qmin, fmt.qmax + 1, dtype=np.int64)
    assert np.array_equal(fmt.quantize(fmt.dequantize(q)), q)
    x = np.random.default_rng(2).uniform(fmt.min, fmt.max, 5000)
    assert np.abs(fmt.dequantize(fmt.quantize(x)) - x).max() <= fmt.step / 2


def test_qformat_value() -> None:
    fmt = fp.QFormat(16, 12)
    assert (fmt.qmin, fmt.qmax, fmt.min, fmt.max, fmt.step) == (
        -32768,
        32767,
        -8.0,
        32767 / 4096,
        2**-12,
    )
    assert str(fmt) == "Q3.12" and str(fp.QFormat(16, 15)) == "Q0.15"
    assert fmt == fp.QFormat(16, 12) and len({fmt, fp.QFormat(16, 12)}) == 1
    with pytest.raises(ValueError, match="NaN"):
        fmt.quantize([0.0, np.nan])
    with pytest.raises(ValueError):
        fp.QFormat(1, 0)


@pytest.mark.parametrize(
    ("max_abs", "bits", "headroom", "frac"),
    [
        (1.0, 16, 1.0, 14),  # 1.0 is just outside Q0.15
        (0.99, 16, 1.0, 15),
        (8.0, 16, 1.0, 11),
        (7.99, 16, 1.0, 12),
        (3.0, 16, 2.0, 12),  # 6.0 fits in Q3.12
        (1000.0, 8, 1.0, -3),  # 1000 / 8 = 125 <= 127
        (1e-6, 16, 1.0, 34),
        (0.0, 8, 1.0, 7),
    ],
)
def test_choose(max_abs: float, bits: int, headroom: float, frac: int) -> None:
    fmt = fp.QFormat.choose(max_abs, bits, headroom=headroom)
    assert fmt == fp.QFormat(bits, frac)
    v = max_abs * headroom
    assert v <= fmt.max
    q = fmt.quantize([v, -v])  # neither end saturates: both round to within half a step
    assert np.abs(fmt.dequantize(q) - [v, -v]).max() <= fmt.step / 2
    if v > 0:
        assert v > fp.QFormat(bits, frac + 1).max  # largest such frac


# ----------------------------------------------------------------------------------------------
# Weights, accumulators, multipliers, requant
# ----------------------------------------------------------------------------------------------


def test_acc_bound() -> None:
    w_q = np.array([[1, -2, 3], [0, 0, 0], [-128, 127, -128]])
    bias = np.array([5, -7, 0])
    assert fp.acc_bound(w_q, 10, bias).tolist() == [65, 7, 3830]
    assert fp.acc_bound(w_q, [10, 0, 1], bias).tolist() == [18, 7, 1408]


def test_acc_bound_is_attained() -> None:
    rng = np.random.default_rng(4)
    w_q = rng.integers(-128, 128, size=(5, 40))
    bias = rng.integers(0, 1000, size=5)
    xmax = 32768
    for r in range(5):  # x = xmax * sign(w) reaches the bound (a bound must be tight to be useful)
        x = xmax * np.sign(w_q[r])
        assert int(w_q[r] @ x + bias[r]) == int(fp.acc_bound(w_q, xmax, bias)[r])


def test_quantize_multiplier_rule_and_bound() -> None:
    assert fp.quantize_multiplier(1.0) == (2**14, 14)
    assert fp.quantize_multiplier(0.75) == (24576, 15)
    assert fp.quantize_multiplier(1 - 2**-20) == (2**14, 14)  # M rounded to 2**15 is renormalized
    rng = np.random.default_rng(5)
    for m in np.exp2(rng.uniform(-47, 14.9, 3000)):
        big_m, n = fp.quantize_multiplier(float(m))
        assert 2**14 <= big_m < 2**15 and 0 <= n <= 62
        assert big_m == _ref_round(Fraction(float(m)) * 2**n)  # M = round_half_up(m * 2**n)
        assert abs(Fraction(big_m, 2**n) - Fraction(float(m))) <= Fraction(float(m)) * Fraction(
            1, 2**15
        )
    big_ms, ns = fp.quantize_multipliers(np.array([1.0, 0.75]))
    assert big_ms.tolist() == [2**14, 24576] and ns.tolist() == [14, 15]


@pytest.mark.parametrize("m", [0.0, -1.0, math.nan, math.inf, 2.0**15, 2.0**-60])
def test_quantize_multiplier_refuses(m: float) -> None:
    with pytest.raises(ValueError):
        fp.quantize_multiplier(m)


def _requant_cases(count: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accumulators at the ends of the domain (with both extreme M), random big and small ones."""
    rng = np.random.default_rng(6)
    edges = np.array([-ACC_MAX, -ACC_MAX + 1, INT32_MIN, -1, 0, 1, INT32_MAX, ACC_MAX - 1, ACC_MAX])
    acc = np.concatenate(
        [
            edges,
            edges,
            rng.integers(-ACC_MAX, ACC_MAX, count, endpoint=True),
            rng.integers(-(2**20), 2**20, count),
        ]
    )
    big_m = rng.integers(2**14, 2**15, acc.size)
    big_m[: 2 * edges.size] = [2**14] * edges.size + [2**15 - 1] * edges.size
    n = rng.integers(0, 63, acc.size)
    n[-10:] = [0, 1, 2, 15, 31, 47, 48, 61, 62, 62]
    return acc, big_m, n


def test_requant_follows_the_rule() -> None:
    acc, big_m, n = _requant_cases()
    expected = _ref_array(lambda a, m, s: _ref_sat(_ref_rshift(a * m, s)), acc, big_m, n)
    assert np.array_equal(fp.requant(acc, big_m, n), expected)


def test_requant_error_bound() -> None:
    rng = np.random.default_rng(7)
    for m in np.exp2(rng.uniform(-30, 2, 200)):
        big_m, n = fp.quantize_multiplier(float(m))
        acc = rng.integers(-(2**31), 2**31, 50)
        exact = acc.astype(np.float64) * m
        fits = np.abs(exact) < 32767
        err = np.abs(fp.requant(acc, big_m, n) - exact)[fits]
        assert (err <= np.abs(exact[fits]) * fp.MULTIPLIER_REL_ERROR + 0.5 + 1e-9).all()


def test_requant_domain() -> None:
    with pytest.raises(OverflowError):
        fp.requant([2**47], 2**14, 10)
    with pytest.raises(ValueError):
        fp.requant([1], 2**15, 10)
    with pytest.raises(ValueError):
        fp.requant([1], 2**14, 63)
    with pytest.raises(TypeError):
        fp.requant([1.0], 2**14, 10)  # floats are never truncated silently


def test_rshift_round() -> None:
    rng = np.random.default_rng(8)
    v = _extremes_and_random(rng, -(2**40), 2**40, 2000)
    n = rng.integers(-20, 63, v.size)
    assert np.array_equal(fp.rshift_round(v, n), _ref_array(_ref_rshift, v, n))
    assert fp.rshift_round([5, -5], 0).tolist() == [5, -5]
    assert fp.rshift_round([5, -5], -3).tolist() == [40, -40]
    with pytest.raises(OverflowError):
        fp.rshift_round(2**63 - 1, 1)
    with pytest.raises(OverflowError):
        fp.rshift_round(2**40, -23)


# ----------------------------------------------------------------------------------------------
# Element-wise helpers
# ----------------------------------------------------------------------------------------------


def _int16_pairs(count: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    edges = np.array([-32768, -32767, -16384, -1, 0, 1, 16384, 32766, 32767])
    a, b = np.meshgrid(edges, edges)
    return (
        np.concatenate([a.ravel(), rng.integers(-32768, 32768, count)]),
        np.concatenate([b.ravel(), rng.integers(-32768, 32768, count)]),
    )


def test_sat_shift_relu() -> None:
    a, b = _int16_pairs()
    x = _extremes_and_random(np.random.default_rng(10), INT32_MIN, INT32_MAX, 2000)
    for n in (-31, -3, 0, 1, 3, 16, 31):
        assert np.array_equal(
            fp.sat_shift(x, n), _ref_array(lambda v, s=n: _ref_sat(_ref_rshift(v, s)), x)
        ), n
    assert np.array_equal(fp.relu_q(a), np.where(a > 0, a, 0))


# ----------------------------------------------------------------------------------------------
# The wide activations and the high-word multiplies
# ----------------------------------------------------------------------------------------------

ALL_WIDE = np.arange(fp.ACT_WIDE.qmin, fp.ACT_WIDE.qmax + 1, dtype=np.int64)


@pytest.fixture(scope="module")
def wide() -> tuple[np.ndarray, np.ndarray]:
    """sigmoid_wide and tanh_wide (the reference) of every 24-bit input, computed once for the
    module's exhaustive tests (2**24 values each)."""
    return fp.sigmoid_wide(ALL_WIDE), fp.tanh_wide(ALL_WIDE)


def test_tables() -> None:
    assert fp.SIGMOID_TABLE.shape == fp.TANH30_TABLE.shape == (fp.ACT_TABLE_LEN,) == (513,)
    x = [k / 64 for k in range(fp.ACT_TABLE_LEN)]  # exact in float64
    sig = [1.0 / (1.0 + math.exp(-v)) for v in x]
    assert fp.SIGMOID_TABLE.tolist() == [_ref_sat(_ref_round(Fraction(v) * 2**15)) for v in sig]
    assert fp.TANH30_TABLE.tolist() == [_ref_round(Fraction(math.tanh(v)) * 2**30) for v in x]
    with pytest.raises(ValueError):
        fp.SIGMOID_TABLE[0] = 0  # read-only


def test_wide_activations_follow_the_rule() -> None:
    """The interpolation rule of the docstrings, on Python integers, at the segment ends, the
    clamp, the extremes and random points."""
    rng = np.random.default_rng(5)
    x = np.concatenate([np.array([fp.ACT_WIDE.qmin, fp.ACT_WIDE.qmin + 1, -1, 0, 1,
                                  fp.WIDE_MAX - 1, fp.WIDE_MAX, 2**14, -2**14, 2**14 - 1]),
                        rng.integers(fp.ACT_WIDE.qmin, fp.ACT_WIDE.qmax + 1, 5000)])

    def interp(table, v: int) -> int:
        u = min(abs(v), fp.WIDE_MAX)
        i, f = u >> 14, u & (2**14 - 1)
        return int(table[i]) + _ref_rshift((int(table[i + 1]) - int(table[i])) * f, 14)

    sig = [interp(fp.SIGMOID_TABLE, int(v)) for v in x]
    assert fp.sigmoid_wide(x).tolist() == [p if v >= 0 else 2**15 - p for v, p in zip(x, sig)]
    tanh = [interp(fp.TANH30_TABLE, int(v)) for v in x]
    assert fp.tanh_wide(x).tolist() == [p if v >= 0 else -p for v, p in zip(x, tanh)]


def test_dsp_packed_activation_tables() -> None:
    """The DSP cores' steps of sigmoid_wide and tanh_wide (numerics.c.j2) for every |x|: the
    packed word's halves read as SMLAD reads them (signed 16-bit), T 2^14 + D f + 2^13 shifted
    right by 14; mmlar of the tanh pair with f * 2^17 (the C's (u << 18) >> 1 as uint32).
    Every 5th |x| and the last one."""
    u = np.append(np.arange(0, fp.WIDE_MAX + 1, 5, dtype=np.int64), fp.WIDE_MAX)
    i, f = u >> 14, u & (2**14 - 1)
    w = fp.SIGMOID_PACKED[i]
    lo, hi = ((w & 0xFFFF) ^ 0x8000) - 0x8000, (((w >> 16) & 0xFFFF) ^ 0x8000) - 0x8000
    assert np.array_equal((lo * 2**14 + hi * f + 2**13) >> 14, fp.sigmoid_wide(u))
    pair = fp.TANH30_PAIRS[i]
    f17 = ((u << 18) & 0xFFFFFFFF) >> 1
    assert np.array_equal(fp.mmlar(pair[:, 1], f17, pair[:, 0]), fp.tanh_wide(u))


def test_wide_activation_error_exhaustive(wide) -> None:
    s, t = wide
    v = fp.ACT_WIDE.dequantize(ALL_WIDE)
    sig = np.abs(s / 2**15 - 1 / (1 + np.exp(-v))).max()
    tanh = np.abs(t / 2**30 - np.tanh(v)).max()
    assert sig <= 3.1e-5
    assert tanh <= 2.4e-5  # interpolation, h**2/8 * max|tanh''| = 2.35e-5
    small = np.abs(v) < 2**-6  # near 0 tanh_wide keeps relative precision
    rel = np.abs(t[small] / 2**30 - np.tanh(v[small]))
    assert rel.max() <= 2e-8 + 1e-4 * np.abs(v[small]).max()


def test_wide_activation_shape(wide) -> None:
    s, t = wide
    # -2**23 has no 24-bit negation; over the rest, ALL_WIDE[1:][::-1] is -ALL_WIDE[1:]
    assert np.array_equal(ALL_WIDE[1:][::-1], -ALL_WIDE[1:])
    assert np.array_equal(s[1:] + s[1:][::-1], np.full(s.size - 1, fp.ACT_ONE))
    assert np.array_equal(t[1:][::-1], -t[1:])
    assert (np.diff(s) >= 0).all() and (np.diff(t) >= 0).all()  # monotone
    assert s.min() >= 0 and s.max() <= 32767 and abs(t).max() < 2**30


def _exact_high(a: np.ndarray, k: np.ndarray) -> list[int]:
    return [(int(x) * int(m) + 2**31) >> 32 for x, m in zip(a, k)]


def test_mmulr_mmlar_mmulr64_are_the_rounded_high_words() -> None:
    rng = np.random.default_rng(6)
    a = np.concatenate([np.array([-2**31, -1, 0, 1, 2**31 - 1]), rng.integers(-2**31, 2**31, 5000)])
    m = np.concatenate([np.array([2**31 - 1, -2**31, 7, -7, 1]), rng.integers(-2**31, 2**31, 5000)])
    assert fp.mmulr(a, m).tolist() == _exact_high(a, m)
    r = rng.integers(-2**20, 2**20, a.size)
    assert fp.mmlar(a >> 12, m, r).tolist() == [
        int(v) + h for v, h in zip(r, _exact_high(a >> 12, m))]
    with pytest.raises(OverflowError):
        fp.mmlar(np.array([2**31 - 1]), np.array([2**31 - 1]), np.array([2**31 - 1]))
    wide = rng.integers(-2**46, 2**46, 5000)
    k = rng.integers(0, 2**15, 5000)  # results within int32
    assert fp.mmulr64(wide, k).tolist() == _exact_high(wide, k)
    with pytest.raises(OverflowError):
        fp.mmulr64(np.array([2**46]), np.array([2**32 - 1]))


def test_mul_q30_hi_is_mul_q30() -> None:
    """The high-word form the lowering picks for shifts 16..32 is the same integer."""
    rng = np.random.default_rng(8)
    a = np.concatenate([np.array([-32768, -32767, -1, 0, 1, 32767]), rng.integers(-32768, 32768,
                                                                                  20000)])
    t = np.concatenate([np.array([-(2**30) + 1, -1, 0, 1, 2**30 - 1, 12345]),
                        rng.integers(-(2**30) + 1, 2**30, 20000)])
    for shift in fp.MUL_Q30_HI_SHIFTS:
        assert np.array_equal(fp.mul_q30_hi(a, t, 32 - shift), fp.mul_q30(a, t, shift)), shift


def test_log2_q30_against_math():
    s = np.array([2**30, 2**30 + 1, 3 * 2**29, 7 * 2**30 + 12345, 2**52 - 1], dtype=np.int64)
    got = fp.log2_q30(s) / 2**30
    want = np.array([math.log2(int(v) / 2**30) for v in s])
    assert np.abs(got - want).max() < 2e-5


# ----------------------------------------------------------------------------------------------
# The C helpers
# ----------------------------------------------------------------------------------------------

_DECLS = """
void w_sigmoid(const int32_t *x, int16_t *y, int n);
void w_tanh(const int32_t *x, int32_t *y, int n);
void w_dot2(const int16_t *a, const int16_t *b, int64_t ka, const int16_t *c, const int32_t *d,
            int64_t kc, int shift, int16_t *y, int n);
void w_mul_q30(const int16_t *a, const int32_t *t, int shift, int16_t *y, int n);
void w_mul_q30_hi(const int16_t *a, const int32_t *t, int up, int16_t *y, int n);
void w_from_float(const float *v, int frac, int16_t *y, int n);
void w_mmulr(const int32_t *a, const int32_t *m, int32_t *y, int n);
void w_mmlar(const int32_t *a, const int32_t *m, const int32_t *r, int32_t *y, int n);
void w_mmulr64(const int64_t *a, const uint32_t *k, int32_t *y, int n);
void w_sat24_32(const int32_t *x, int32_t *y, int n);
void w_sat24(const int64_t *x, int32_t *y, int n);
void w_requant(const int64_t *acc, const int32_t *mult, const int32_t *shift, int16_t *y, int n);
void w_dot2_q32(const int16_t *a, const int32_t *b, int64_t ka, const int16_t *c,
               const int32_t *d, int64_t kc, int shift, int32_t *y, int n);
void w_sat16(const int32_t *x, int16_t *y, int n);
void w_sat16_i64(const int64_t *x, int16_t *y, int n);
void w_sat_shift(const int32_t *x, int shift, int16_t *y, int n);
void w_relu(const int16_t *x, int16_t *y, int n);
void w_rshift_round64(const int64_t *v, const int32_t *s, int64_t *y, int n);
void w_softmax(const int16_t *x, int16_t *y, int rows, int n, int32_t dclamp, int32_t mult,
               int shift);
void w_log_softmax(const int16_t *x, int16_t *y, int rows, int n, int32_t dclamp, int32_t mult,
                   int shift, int32_t ln2_mult, int ln2_shift, int up, int down);
void w_softmax_f(const float *x, float *y, int rows, int n);
void w_log_softmax_f(const float *x, float *y, int rows, int n);
void w_float_cell(const float *w, const float *x, float *y, int rows, int n);
void w_conv1d_f(const float *x, float *y, int T, const float *w, const float *b, int c, int o,
                int kernel, int groups, int dilation, int stride, int pad, int pad_right);
void w_sqrt_q(const int16_t *x, int e, int16_t *y, int n);
void w_frame_pad_q(const int16_t *x, int16_t *y, int L, int c, int left, int right, int mode,
                   int16_t value);
void w_mean_time_f(const float *x, float *y, int T, int n);
void w_sum_time_f(const float *x, float *y, int T, int n);
void w_max_time_f(const float *x, float *y, int T, int n);
void w_mean_time_q(const int16_t *x, int16_t *y, int T, int n);
void w_sum_time_q(const int16_t *x, int16_t *y, int T, int n, int shift);
void w_max_time_q(const int16_t *x, int16_t *y, int T, int n);
void w_embedding_f(const float *x, const float *table, float *y, int d);
void w_embedding_q(const int16_t *x, const int16_t *table, int16_t *y, int d);
void w_max_pool_q(const int16_t *x, int16_t *y, int T, int n, int kernel, int stride, int pad);
void w_avg_pool_q(const int16_t *x, int16_t *y, int T, int n, int kernel, int stride, int pad,
                  int include);
void w_max_pool_f(const float *x, float *y, int T, int n, int kernel, int stride, int pad);
void w_avg_pool_f(const float *x, float *y, int T, int n, int kernel, int stride, int pad,
                  int include);
void w_pad_time_q(const int16_t *x, int16_t *y, int T, int n, int left, int right, int mode,
                  int16_t value, int shift);
void w_frame_pad_f(const float *x, float *y, int L, int c, int left, int right, int mode,
                   float value);
void w_conv1d_w8_acc32(const int16_t *x, int16_t *y, int T, const int8_t *w,
    const int32_t *b, const int16_t *m, const uint8_t *s, int c, int o, int kernel, int groups,
    int dilation, int stride, int pad, int pad_right);
void w_conv1d_w8_acc64(const int16_t *x, int16_t *y, int T, const int8_t *w,
    const int64_t *b, const int16_t *m, const uint8_t *s, int c, int o, int kernel, int groups,
    int dilation, int stride, int pad, int pad_right);
void w_conv1d_w16_acc32(const int16_t *x, int16_t *y, int T, const int16_t *w,
    const int32_t *b, const int16_t *m, const uint8_t *s, int c, int o, int kernel, int groups,
    int dilation, int stride, int pad, int pad_right);
void w_conv1d_w16_acc64(const int16_t *x, int16_t *y, int T, const int16_t *w,
    const int64_t *b, const int16_t *m, const uint8_t *s, int c, int o, int kernel, int groups,
    int dilation, int stride, int pad, int pad_right);
void w_conv1d_x4_w8_acc32(const int16_t *x, int16_t *y, int T, const int8_t *w,
    const int32_t *b, const int16_t *m, const uint8_t *s, int c, int o, int kernel, int stride,
    int pad, int pad_right);
void w_conv1d_x4_w16_acc64(const int16_t *x, int16_t *y, int T, const int16_t *w,
    const int64_t *b, const int16_t *m, const uint8_t *s, int c, int o, int kernel, int stride,
    int pad, int pad_right);
"""

_BODIES = {
    "w_sigmoid": "for (k = 0; k < n; ++k) y[k] = t_sigmoid_wide(x[k]);",
    "w_tanh": "for (k = 0; k < n; ++k) y[k] = t_tanh_wide(x[k]);",
    "w_dot2": "for (k = 0; k < n; ++k) y[k] = t_dot2_q(a[k], b[k], ka, c[k], d[k], kc, shift);",
    "w_dot2_q32": "for (k = 0; k < n; ++k)\n"
                  "    y[k] = t_dot2_q32(a[k], b[k], ka, c[k], d[k], kc, shift);",
    "w_mul_q30": "for (k = 0; k < n; ++k) y[k] = t_mul_q30(a[k], t[k], shift);",
    "w_mul_q30_hi": "for (k = 0; k < n; ++k) y[k] = t_mul_q30_hi(a[k], t[k], up);",
    "w_from_float": "for (k = 0; k < n; ++k) y[k] = t_from_float(v[k], frac);",
    "w_mmulr": "for (k = 0; k < n; ++k) y[k] = t_mmulr(a[k], m[k]);",
    "w_mmlar": "for (k = 0; k < n; ++k) y[k] = t_mmlar(a[k], m[k], r[k]);",
    "w_mmulr64": "for (k = 0; k < n; ++k) y[k] = t_mmulr64(a[k], k_[k]);",
    "w_sat24_32": "for (k = 0; k < n; ++k) y[k] = t_sat24_32(x[k]);",
    "w_sat24": "for (k = 0; k < n; ++k) y[k] = t_sat24(x[k]);",
    "w_requant": "for (k = 0; k < n; ++k) y[k] = t_requant(acc[k], mult[k], shift[k]);",
    "w_sat16": "for (k = 0; k < n; ++k) y[k] = t_sat16(x[k]);",
    "w_sat16_i64": "for (k = 0; k < n; ++k) y[k] = t_sat16_i64(x[k]);",
    "w_sat_shift": "for (k = 0; k < n; ++k) y[k] = t_sat_shift(x[k], shift);",
    "w_relu": "for (k = 0; k < n; ++k) y[k] = t_relu_q(x[k]);",
    "w_rshift_round64": "for (k = 0; k < n; ++k) y[k] = t_rshift_round64(v[k], s[k]);",
    "w_softmax": "for (k = 0; k < rows; ++k)\n"
                 "    t_softmax_q(x + k * n, y + k * n, n, dclamp, mult, shift);",
    "w_log_softmax": "for (k = 0; k < rows; ++k)\n"
                     "    t_log_softmax_q(x + k * n, y + k * n, n, dclamp, mult, shift,\n"
                     "                    ln2_mult, ln2_shift, up, down);",
    "w_softmax_f": "for (k = 0; k < rows; ++k) t_softmax_f(x + k * n, y + k * n, n);",
    "w_log_softmax_f": "for (k = 0; k < rows; ++k) t_log_softmax_f(x + k * n, y + k * n, n);",
    # y[k] = sigmoid(w_k . x) + relu(w_k . x): the float32 exports' other helpers
    "w_conv1d_f": "k = 0;\n    t_conv1d_f(x, y, T, w, b, c, o, kernel, groups, dilation, stride, "
                  "pad + k, pad_right);",
    "w_sqrt_q": "for (k = 0; k < n; ++k) y[k] = t_sqrt_q(x[k], e);",
    "w_frame_pad_q": "k = 0;\n    t_frame_pad_q(x, y, L, c, left, right, mode + k, value);",
    **{f"w_{kind}_time_{t}": f"k = 0;\n    t_{kind}_time_{t}(x, y, T, n + k);"
       for kind in ("mean", "sum", "max") for t in ("f", "q") if (kind, t) != ("sum", "q")},
    "w_sum_time_q": "k = 0;\n    t_sum_time_q(x, y, T, n + k, shift);",
    **{f"w_embedding_{t}": f"k = 0;\n    t_embedding_{t}(x + k, table, y, d);"
       for t in ("f", "q")},
    **{f"w_max_pool_{t}": f"k = 0;\n    t_max_pool_{t}(x, y, T, n + k, kernel, stride, pad);"
       for t in ("f", "q")},
    **{f"w_avg_pool_{t}": f"k = 0;\n    t_avg_pool_{t}(x, y, T, n + k, kernel, stride, pad, "
                          "include);" for t in ("f", "q")},
    "w_pad_time_q": "k = 0;\n    t_pad_time_q(x, y, T, n + k, left, right, mode, value, shift);",
    "w_frame_pad_f": "k = 0;\n    t_frame_pad_f(x, y, L, c, left, right, mode + k, value);",
    **{f"w_conv1d_w{w}_acc{a}": f"k = 0;\n    t_conv1d_w{w}_acc{a}(x, y, T, w, b, m, s, c, o, "
                                "kernel, groups, dilation, stride, pad + k, pad_right);"
       for w in (8, 16) for a in (32, 64)},
    **{f"w_conv1d_x4_w{w}_acc{a}": f"k = 0;\n    t_conv1d_x4_w{w}_acc{a}(x, y, T, w, b, m, s, c, "
                                   "o, kernel, stride, pad + k, pad_right);"
       for w, a in ((8, 32), (16, 64))},
    "w_float_cell": "for (k = 0; k < rows; ++k)\n"
                    "    y[k] = t_sigmoid(t_dot(w + k * n, x, n))\n"
                    "           + t_relu(t_dot(w + k * n, x, n));",
}

EVERY_HELPER = [h.name for h in fp.HELPERS]


def _wrappers() -> str:
    """Each declaration of _DECLS with a loop body calling the helper."""
    out = []
    for decl in _DECLS.strip().split(";"):
        decl = decl.strip()
        if decl:
            name = decl.split("(")[0].split()[-1]
            body = _BODIES[name]
            if name == "w_mmulr64":
                decl = decl.replace("*k,", "*k_,")
            out.append(f"{decl}\n{{\n    int k;\n    {body}\n}}\n")
    return "\n".join(out)


def _gcc(args: list[str], cwd: Path, compiler: str = "gcc") -> None:
    proc = subprocess.run([compiler, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{compiler} {' '.join(args)} failed:\n{proc.stderr}")


def _source(names: list[str] = EVERY_HELPER) -> str:
    return ("#include <math.h>\n#include <stdint.h>\n#include <string.h>\n"
            + helpers_source(names, prefix="t_", P="T"))


@pytest.fixture(scope="module", params=["host", "armv6m"])
def clib(request, tmp_path_factory):
    """Every helper compiled for the host, and once more with ``__ARM_ARCH_6M__`` defined, which
    selects the ARMv6-M branches (mmulr, mul16x32 without a 64-bit product) in a host build."""
    build = tmp_path_factory.mktemp("numerics")
    (build / "h.c").write_text(_source() + _wrappers())
    defines = ["-D__ARM_ARCH_6M__=1"] if request.param == "armv6m" else []
    _gcc([*CFLAGS, *defines, "-fPIC", "-shared", "h.c", "-o", "libh.so", "-lm"], build)
    ffi = cffi.FFI()
    ffi.cdef(_DECLS)
    return ffi, ffi.dlopen(str(build / "libh.so"))


def _buf(ffi, ctype: str, a: np.ndarray):
    return ffi.from_buffer(f"{ctype}[]", a)


def test_helpers_say_what_they_call():
    """Each helper compiles with only the helpers HELPERS says it needs (so an export that
    prints the closure of what its plan calls always compiles)."""
    for helper in fp.HELPERS:
        text = helpers_source([helper.name], prefix="t_", P="T")
        called = set(re.findall(r"\bt_(\w+)\(", text)) - {helper.name}
        defined = set(re.findall(r"static inline \w+ \**t_(\w+)\(", text))
        assert called <= defined, (helper.name, called - defined)


def test_c_wide_activations_exhaustive(clib, wide):
    ffi, lib = clib
    x = ALL_WIDE.astype(np.int32)
    ys = np.zeros(x.size, np.int16)
    yt = np.zeros(x.size, np.int32)
    lib.w_sigmoid(_buf(ffi, "int32_t", x), _buf(ffi, "int16_t", ys), x.size)
    lib.w_tanh(_buf(ffi, "int32_t", x), _buf(ffi, "int32_t", yt), x.size)
    assert np.array_equal(ys, wide[0])
    assert np.array_equal(yt, wide[1])


def test_c_requant_saturation_and_shifts(clib):
    ffi, lib = clib
    acc, big_m, n = _requant_cases(200_000)
    y = np.zeros(acc.size, np.int16)
    lib.w_requant(_buf(ffi, "int64_t", acc.astype(np.int64)), _buf(ffi, "int32_t", big_m.astype(
        np.int32)), _buf(ffi, "int32_t", n.astype(np.int32)), _buf(ffi, "int16_t", y), acc.size)
    assert np.array_equal(y, fp.requant(acc, big_m, n))
    rng = np.random.default_rng(11)
    x32 = _extremes_and_random(rng, INT32_MIN, INT32_MAX, 100_000)
    y = np.zeros(x32.size, np.int16)
    lib.w_sat16(_buf(ffi, "int32_t", x32.astype(np.int32)), _buf(ffi, "int16_t", y), x32.size)
    assert np.array_equal(y, fp.sat16(x32))
    for n_ in range(-fp.SAT_SHIFT_MAX, fp.SAT_SHIFT_MAX + 1):
        lib.w_sat_shift(_buf(ffi, "int32_t", x32.astype(np.int32)), n_, _buf(ffi, "int16_t", y),
                        x32.size)
        assert np.array_equal(y, fp.sat_shift(x32, n_)), n_
    y24 = np.zeros(x32.size, np.int32)
    lib.w_sat24_32(_buf(ffi, "int32_t", x32.astype(np.int32)), _buf(ffi, "int32_t", y24),
                   x32.size)
    assert np.array_equal(y24, fp.sat24_32(x32))
    x64 = np.concatenate([_extremes_and_random(rng, -(2**63), 2**63 - 1, 50_000), x32])
    y = np.zeros(x64.size, np.int16)
    lib.w_sat16_i64(_buf(ffi, "int64_t", x64), _buf(ffi, "int16_t", y), x64.size)
    assert np.array_equal(y, fp.sat16(x64))
    y24 = np.zeros(x64.size, np.int32)
    lib.w_sat24(_buf(ffi, "int64_t", x64), _buf(ffi, "int32_t", y24), x64.size)
    assert np.array_equal(y24, fp.sat24(x64))
    a16, _ = _int16_pairs(20000)
    y = np.zeros(a16.size, np.int16)
    lib.w_relu(_buf(ffi, "int16_t", a16.astype(np.int16)), _buf(ffi, "int16_t", y), a16.size)
    assert np.array_equal(y, fp.relu_q(a16))


def test_c_rshift_round64(clib):
    ffi, lib = clib
    rng = np.random.default_rng(12)
    # inside the documented domain: |v| <= 2**62 and n <= 62 (|v| < 2**31 by up to 31 left)
    v64 = _extremes_and_random(rng, -(2**62), 2**62, 100_000)
    n64 = rng.integers(0, 63, v64.size)
    small = np.abs(v64) < 2**31
    n64[small] = rng.integers(-31, 63, int(small.sum()))
    y = np.zeros(v64.size, np.int64)
    lib.w_rshift_round64(_buf(ffi, "int64_t", v64), _buf(ffi, "int32_t", n64.astype(np.int32)),
                         _buf(ffi, "int64_t", y), v64.size)
    assert np.array_equal(y, fp.rshift_round(v64, n64))


def test_dot2_and_mul_q30_in_c(clib):
    ffi, lib = clib
    rng = np.random.default_rng(0)
    n = 200_000
    edges = np.array([-32768, -32767, -1, 0, 1, 32766, 32767])
    a, b, c = (np.concatenate([edges, rng.integers(-32768, 32768, n)]).astype(np.int16)
               for _ in range(3))
    d = np.concatenate([np.array([-(2**30) + 1, -1, 0, 1, 2**30 - 1, 5, 7]),
                        rng.integers(-(2**30) + 1, 2**30, n)]).astype(np.int32)
    for ka, kc, shift in [(2**30, 1, 45), (2**15, 1, 30), (1, 2**16, 61), (2**31, 1, 46),
                          (2**17, 1, 32), (2**16, 1, 31)]:
        y = np.zeros(a.size, np.int16)
        lib.w_dot2(_buf(ffi, "int16_t", a), _buf(ffi, "int16_t", b), ka,
                   _buf(ffi, "int16_t", c), _buf(ffi, "int32_t", d), kc, shift,
                   _buf(ffi, "int16_t", y), a.size)
        assert np.array_equal(y, fp.dot2_q(a, b, ka, c, d, kc, shift)), (ka, kc, shift)
    b32 = np.concatenate([np.array([-(2**31), -(2**31) + 1, -1, 0, 1, 2**31 - 2, 2**31 - 1]),
                          rng.integers(-(2**31), 2**31, n)]).astype(np.int32)
    for ka, kc, shift in [(2**14, 1, 45), (1, 1, 15), (2**7, 2**16, 61), (2**14, 1, 29),
                          (2**2, 1, 28), (1, 1, 0)]:  # c in 32 bits: frac 16..30
        y32 = np.zeros(a.size, np.int32)
        lib.w_dot2_q32(_buf(ffi, "int16_t", a), _buf(ffi, "int32_t", b32), ka,
                       _buf(ffi, "int16_t", c), _buf(ffi, "int32_t", d), kc, shift,
                       _buf(ffi, "int32_t", y32), a.size)
        assert np.array_equal(y32, fp.dot2_q32(a, b32, ka, c, d, kc, shift)), (ka, kc, shift)
    for shift in (15, 16, 17, 24, 30, 31, 32, 33, 45):
        y = np.zeros(a.size, np.int16)
        lib.w_mul_q30(_buf(ffi, "int16_t", a), _buf(ffi, "int32_t", d), shift,
                      _buf(ffi, "int16_t", y), a.size)
        assert np.array_equal(y, fp.mul_q30(a, d, shift)), shift
    for shift in fp.MUL_Q30_HI_SHIFTS:
        y = np.zeros(a.size, np.int16)
        lib.w_mul_q30_hi(_buf(ffi, "int16_t", a), _buf(ffi, "int32_t", d), 32 - shift,
                         _buf(ffi, "int16_t", y), a.size)
        assert np.array_equal(y, fp.mul_q30(a, d, shift)), shift


def test_mmulr_is_the_rounded_high_word(clib):
    """mmulr(a, m) = (a * m + 2^31) >> 32 exactly, on the extremes and 200,000 random pairs."""
    ffi, lib = clib
    rng = np.random.default_rng(7)
    edges = np.array([0, 1, -1, 2, -2, 2**31 - 1, -2**31, 2**15, -2**15, 2**16 - 1, -(2**16 - 1),
                      2**16, -2**16, 0x12345678, -0x12345678], np.int64)
    a = np.concatenate([np.repeat(edges, edges.size), rng.integers(-2**31, 2**31, 200_000),
                        rng.integers(-2**20, 2**20, 100_000)]).astype(np.int32)
    m = np.concatenate([np.tile(edges, edges.size),
                        rng.integers(-2**31, 2**31, 300_000)]).astype(np.int32)
    y = np.zeros(a.size, np.int32)
    lib.w_mmulr(_buf(ffi, "int32_t", a), _buf(ffi, "int32_t", m), _buf(ffi, "int32_t", y), a.size)
    expected = _exact_high(a, m)
    assert y.tolist() == expected
    r = rng.integers(-2**30, 2**30, a.size).astype(np.int32)
    ok = np.abs(r.astype(np.int64) + np.array(expected)) < 2**31
    lib.w_mmlar(_buf(ffi, "int32_t", a[ok]), _buf(ffi, "int32_t", m[ok]),
                _buf(ffi, "int32_t", r[ok]), _buf(ffi, "int32_t", y), int(ok.sum()))
    assert np.array_equal(y[:int(ok.sum())], fp.mmlar(a[ok], m[ok], r[ok]))
    wide = np.concatenate([np.array([-(2**47) + 1, 2**47 - 1, -1, 0, 1]),
                           rng.integers(-(2**47), 2**47, 100_000)])
    k = np.concatenate([np.array([2**16 - 1] * 5), rng.integers(0, 2**16, 100_000)])
    y = np.zeros(wide.size, np.int32)
    lib.w_mmulr64(_buf(ffi, "int64_t", wide), _buf(ffi, "uint32_t", k.astype(np.uint32)),
                  _buf(ffi, "int32_t", y), wide.size)
    assert y.tolist() == _exact_high(wide, k)


def test_from_float_is_round_half_up_with_saturation(clib):
    """Ties, their float neighbours, huge values, infinities and subnormals, for several
    formats: the C equals QFormat.quantize of the float32 value."""
    ffi, lib = clib
    rng = np.random.default_rng(1)
    for frac in (-20, -3, 0, 5, 12, 15, 20, 40, 140):
        step = 2.0**-frac
        ties = ((np.arange(-300, 300) + 0.5) * step).astype(np.float32)
        v = np.concatenate([
            ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
            (rng.normal(size=20_000) * 40000 * step).astype(np.float32),
            np.array([np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, -1e-45, 0.0, -0.0,
                      32767.5 * step, -32768.5 * step, 32766.5 * step], np.float32)]
        ).astype(np.float32)
        y = np.zeros(v.size, np.int16)
        lib.w_from_float(_buf(ffi, "float", v), frac, _buf(ffi, "int16_t", y),
                         v.size)
        assert np.array_equal(y, QFormat(16, frac).quantize(v)), frac
    nan = np.array([np.nan, -np.nan], np.float32)  # the C maps NaN to 0 (quantize refuses it)
    y = np.ones(2, np.int16)
    lib.w_from_float(_buf(ffi, "float", nan), 5, _buf(ffi, "int16_t", y), 2)
    assert y.tolist() == [0, 0]


CONV_OPTIONS = [(3, 1, 1, 1, 1, 1, True), (4, 2, 1, 1, 1, 2, False), (3, 6, 2, 1, 2, 2, True),
                (1, 3, 1, 1, 0, 0, True), (3, 1, 1, 2, 1, 0, True), (2, 2, 3, 3, 0, 0, False),
                (1, 1, 1, 1, 2, 2, True)]
CONV_IDS = [f"k{k}-g{g}-d{d}-s{st}-p{pl}.{pr}{'' if b else '-nobias'}"
            for k, g, d, st, pl, pr, b in CONV_OPTIONS]


def _conv_layer(rng, kernel, groups, dilation, stride, pad_left, pad_right, bias):
    from tinyrnn.ir import Conv1d, Tensor

    cin, cout = 6, 6
    w = rng.standard_normal((cout, cin // groups, kernel)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    return Conv1d("c", Tensor(w.astype(np.float64), "w"),
                  Tensor(b.astype(np.float64), "b") if bias else None, stride, dilation, groups,
                  pad_left, pad_right)


@pytest.mark.parametrize("kernel, groups, dilation, stride, pad_left, pad_right, bias",
                         CONV_OPTIONS, ids=CONV_IDS)
def test_conv1d_helper_in_c(clib, kernel, groups, dilation, stride, pad_left, pad_right, bias):
    """conv1d_f (the float32 Conv1d) against the float64 reference of check/simulate.py, on
    a sequence shorter than the kernel's span too (every tap then reads the padding)."""
    from tinyrnn.check.simulate import conv1d_float

    ffi, lib = clib
    rng = np.random.default_rng(kernel * 10 + groups)
    layer = _conv_layer(rng, kernel, groups, dilation, stride, pad_left, pad_right, bias)
    packed = np.ascontiguousarray(layer.weight.data.transpose(0, 2, 1)).astype(np.float32)
    b = layer.bias.data.astype(np.float32) if bias else None
    for steps in (11, 2):
        if layer.out_steps(steps) < 1:
            continue
        x = rng.standard_normal((steps, 6)).astype(np.float32)
        y = np.zeros((layer.out_steps(steps), 6), np.float32)
        lib.w_conv1d_f(_buf(ffi, "float", x), _buf(ffi, "float", y), steps,
                       _buf(ffi, "float", packed), _buf(ffi, "float", b) if bias else ffi.NULL,
                       6, 6, kernel, groups, dilation, stride, pad_left, pad_right)
        expected = conv1d_float(layer, x[None].astype(np.float64))[0]
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5, err_msg=f"T={steps}")


def test_sqrt_q_is_the_rounded_exact_root_in_c(clib):
    """sqrt_q against Python's exact integer root, rounded half up (math.isqrt), for every
    int16 x at the ends of its shift range and in the middle, and against its numpy
    reference."""
    import math

    from tinyrnn.numerics.helpers import sqrt_q

    ffi, lib = clib
    x = np.arange(-(2**15), 2**15, dtype=np.int16)
    for e in (0, 7, 14, 15):
        y = np.zeros_like(x)
        lib.w_sqrt_q(_buf(ffi, "int16_t", x), e, _buf(ffi, "int16_t", y), x.size)
        want = np.array([0 if v <= 0 else min(math.isqrt(4 * (int(v) << e)) + 1 >> 1, 32767)
                         for v in x], np.int64)
        np.testing.assert_array_equal(y, want, err_msg=f"e={e}")
        np.testing.assert_array_equal(sqrt_q(x, e), want, err_msg=f"numpy, e={e}")


@pytest.mark.parametrize("mode, code", [("constant", 0), ("reflect", 1), ("edge", 2)])
def test_frame_pad_helper_in_c(clib, mode, code):
    """frame_pad_f against numpy.pad (replicate is numpy's 'edge')."""
    ffi, lib = clib
    x = np.random.default_rng(code).standard_normal((5, 2)).astype(np.float32)
    y = np.zeros((5 + 3 + 4, 2), np.float32)
    lib.w_frame_pad_f(_buf(ffi, "float", x), _buf(ffi, "float", y), 5, 2, 3, 4, code, 0.5)
    fill = {"constant_values": 0.5} if mode == "constant" else {}
    np.testing.assert_array_equal(y, np.pad(x, ((3, 4), (0, 0)), mode=mode, **fill))
    xq = (x * 1000).astype(np.int16)
    yq = np.zeros((5 + 3 + 4, 2), np.int16)
    lib.w_frame_pad_q(_buf(ffi, "int16_t", xq), _buf(ffi, "int16_t", yq), 5, 2, 3, 4, code, -7)
    fill = {"constant_values": -7} if mode == "constant" else {}
    np.testing.assert_array_equal(yq, np.pad(xq, ((3, 4), (0, 0)), mode=mode, **fill))


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("kernel, groups, dilation, stride, pad_left, pad_right, bias",
                         CONV_OPTIONS, ids=CONV_IDS)
def test_conv1d_integer_helpers_in_c(clib, bits, kernel, groups, dilation, stride, pad_left,
                                     pad_right, bias):
    """conv1d_w{8,16}_acc{32,64} against the bit-exact reference (check/reference.py), on
    full-range int16 inputs and a sequence shorter than the span."""
    from tinyrnn.check.reference import conv1d_int
    from tinyrnn.numerics.helpers import QFormat
    from tinyrnn.passes.quantize import quantize_conv1d

    ffi, lib = clib
    rng = np.random.default_rng(kernel * 10 + groups + bits)
    layer = _conv_layer(rng, kernel, groups, dilation, stride, pad_left, pad_right, bias)
    q = quantize_conv1d(layer, 0, QFormat(16, 13), QFormat(16, 11), bits)
    part = q.acc.parts[0]
    wtype = f"int{bits}_t"
    for acc_bits in (32, 64):
        if acc_bits < part.acc_bits:
            continue  # the exporter would not call it: the sum may not fit
        fn = getattr(lib, f"w_conv1d_w{bits}_acc{acc_bits}")
        for steps in (11, 2):
            if layer.out_steps(steps) < 1:
                continue
            x = rng.integers(-32768, 32768, (steps, 6)).astype(np.int16)
            y = np.zeros((layer.out_steps(steps), 6), np.int16)
            bias_buf = (_buf(ffi, f"int{acc_bits}_t", part.bias.astype(f"int{acc_bits}"))
                        if bias else ffi.NULL)
            fn(_buf(ffi, "int16_t", x), _buf(ffi, "int16_t", y), steps,
               _buf(ffi, wtype, part.weights.astype(f"int{bits}")), bias_buf,
               _buf(ffi, "int16_t", part.mult.astype(np.int16)),
               _buf(ffi, "uint8_t", part.shift.astype(np.uint8)),
               6, 6, kernel, groups, dilation, stride, pad_left, pad_right)
            want = conv1d_int(q, x[None].astype(np.int64))[0]
            assert np.array_equal(y, want), (acc_bits, steps, np.argwhere(y != want)[:3])


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("cin, cout, kernel, stride, pad_left, pad_right, bias", [
    (8, 12, 3, 1, 1, 1, True), (8, 12, 4, 2, 1, 2, False), (8, 12, 1, 1, 0, 0, True),
    (8, 12, 5, 3, 4, 0, True), (8, 12, 2, 1, 3, 3, False),
    # any channel counts: a one-channel window conv (an STFT), odd counts cut at both ends
    (1, 6, 8, 3, 0, 0, False), (5, 7, 3, 1, 1, 1, True), (3, 2, 3, 2, 1, 1, True),
    (5, 5, 1, 1, 0, 0, True)])
def test_blocked_conv_helper_in_c(clib, bits, cin, cout, kernel, stride, pad_left, pad_right,
                                  bias):
    """conv1d_x4_w8_acc32 and conv1d_x4_w16_acc64 (4 output channels per block, the DSP
    cores' SMLAD/SMLALD path; here their portable path) against the bit-exact reference."""
    from tinyrnn.check.reference import conv1d_int
    from tinyrnn.ir import Conv1d, Tensor
    from tinyrnn.numerics.helpers import QFormat
    from tinyrnn.passes.layout import conv_layout, decode_conv_layout
    from tinyrnn.passes.quantize import quantize_conv1d

    ffi, lib = clib
    rng = np.random.default_rng(kernel * 7 + stride + 100 * cin)
    w = rng.standard_normal((cout, cin, kernel))
    layer = Conv1d("c", Tensor(w, "w"), Tensor(rng.standard_normal(cout), "b") if bias else None,
                   stride, 1, 1, pad_left, pad_right)
    q = quantize_conv1d(layer, 0, QFormat(16, 13), QFormat(16, 11), bits)
    part = q.acc.parts[0]
    acc = {8: 32, 16: 64}[bits]
    assert part.acc_bits <= acc
    blocked = conv_layout(part.weights, bits).reshape(-1)
    assert np.array_equal(decode_conv_layout(blocked, cout, kernel * cin, bits), part.weights)
    for steps in (9, 2, 17):
        if layer.out_steps(steps) < 1:
            continue
        x = rng.integers(-32768, 32768, (steps, cin)).astype(np.int16)
        y = np.zeros((layer.out_steps(steps), cout), np.int16)
        getattr(lib, f"w_conv1d_x4_w{bits}_acc{acc}")(
            _buf(ffi, "int16_t", x), _buf(ffi, "int16_t", y), steps,
            _buf(ffi, f"int{bits}_t", blocked.astype(f"int{bits}")),
            _buf(ffi, f"int{acc}_t", part.bias.astype(f"int{acc}")) if bias else ffi.NULL,
            _buf(ffi, "int16_t", part.mult.astype(np.int16)),
            _buf(ffi, "uint8_t", part.shift.astype(np.uint8)),
            cin, cout, kernel, stride, pad_left, pad_right)
        want = conv1d_int(q, x[None].astype(np.int64))[0]
        assert np.array_equal(y, want), (steps, np.argwhere(y != want)[:3])


def test_float_helpers_in_c(clib):
    """The float32 exports' helpers (dot, sigmoid, relu, softmax, log_softmax) against numpy."""
    ffi, lib = clib
    rng = np.random.default_rng(3)
    rows, n = 50, 9
    x = (rng.standard_normal((rows, n)) * 4).astype(np.float32)
    x[0] = 80.0  # exp(in - max) keeps large equal logits finite
    y = np.zeros_like(x)
    lib.w_softmax_f(_buf(ffi, "float", x), _buf(ffi, "float", y), rows, n)
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    lib.w_log_softmax_f(_buf(ffi, "float", x), _buf(ffi, "float", y), rows, n)
    shifted = x.astype(np.float64) - x.max(axis=1, keepdims=True)
    np.testing.assert_allclose(y, shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)),
                               rtol=1e-5, atol=1e-5)
    w, v = x, x[1].copy()
    out = np.zeros(rows, np.float32)
    lib.w_float_cell(_buf(ffi, "float", w), _buf(ffi, "float", v), _buf(ffi, "float", out),
                     rows, n)
    dot = w.astype(np.float64) @ v.astype(np.float64)
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-dot)) + np.maximum(dot, 0), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("frac", [2, 8, 11, 13, 15, 20])
def test_softmax_and_log_softmax_in_c(clib, frac):
    ffi, lib = clib
    rng = np.random.default_rng(frac)
    rows, n = 2000, 7
    x = rng.integers(-32768, 32768, (rows, n))
    x[:200] = rng.integers(-40, 40, (200, n))  # close logits
    x[200:210] = 32767
    x[210:220, 1:] = -32768
    x = x.astype(np.int16)
    in_fmt = QFormat(16, frac)
    sm = fp.softmax_params(False, in_fmt, QFormat(16, 15))
    y = np.zeros_like(x)
    lib.w_softmax(_buf(ffi, "int16_t", x), _buf(ffi, "int16_t", y), rows, n, sm.dclamp,
                  sm.exp_mult, sm.exp_shift)
    want = fp.softmax_q(x, sm)
    assert np.array_equal(y, want)
    v = in_fmt.dequantize(x)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    assert np.abs(want / 2**15 - e / e.sum(axis=1, keepdims=True)).max() < 2e-4
    shifted = v - v.max(axis=1, keepdims=True)
    exact = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    out_fmt = QFormat.choose(float(np.abs(exact).max()), 16)
    ls = fp.softmax_params(True, in_fmt, out_fmt)
    y = np.zeros_like(x)
    lib.w_log_softmax(_buf(ffi, "int16_t", x), _buf(ffi, "int16_t", y), rows, n, ls.dclamp,
                      ls.exp_mult, ls.exp_shift, ls.ln2_mult, ls.ln2_shift, ls.up, ls.down)
    want = fp.log_softmax_q(x, ls)
    assert np.array_equal(y, want)
    assert np.abs(out_fmt.dequantize(want) - exact).max() <= out_fmt.step + 1e-4


_UBSAN_MAIN = """
#include <stdio.h>
/* Every helper at the corners of its documented domain; UBSan aborts on overflow or bad shifts. */
int main(void)
{
    static const int64_t accs[] = {-(((int64_t)1 << 47) - 1), -2147483648LL, -1, 0, 1, 2147483647LL,
                                   ((int64_t)1 << 47) - 1};
    static const int16_t e16[] = {-32768, -32767, -1, 0, 1, 32767};
    static const int32_t e32[] = {INT32_MIN, -1, 0, 1, INT32_MAX};
    int64_t sum = 0;
    size_t i, j;
    int s;
    for (i = 0; i < sizeof accs / sizeof accs[0]; ++i)
        for (s = 0; s <= 62; ++s)
            sum += t_requant(accs[i], 16384, s) + t_requant(accs[i], 32767, s);
    for (i = 0; i < sizeof e16 / sizeof e16[0]; ++i) {
        for (j = 0; j < sizeof e16 / sizeof e16[0]; ++j) {
            for (s = 0; s <= 45; ++s) sum += t_mul_q30(e16[i], (int32_t)e16[j] * 32768, s);
            for (s = 0; s <= 16; ++s) sum += t_mul_q30_hi(e16[i], (int32_t)e16[j] * 32768, s);
            sum += t_dot2_q(e16[i], e16[j], (int64_t)1 << 31, e16[j], (int32_t)e16[i] * 32768,
                            (int64_t)1 << 16, 46);
            sum += t_dot2_q32(e16[i], (int32_t)e16[j] * 65536, (int64_t)1 << 14, e16[j],
                              (int32_t)e16[i] * 32768, (int64_t)1 << 16, 0);
            sum += t_dot2_q32(e16[i], INT32_MIN + e16[j] + 32768, (int64_t)1 << 14, e16[j],
                              (int32_t)e16[i] * 32768, (int64_t)1 << 16, 45);
        }
        sum += t_relu_q(e16[i]);
    }
    for (i = 0; i < sizeof e32 / sizeof e32[0]; ++i) {
        for (s = -31; s <= 31; ++s) sum += t_sat_shift(e32[i], s);
        sum += t_sat16(e32[i]) + t_sat24_32(e32[i]) + t_mmulr(e32[i], e32[i]);
    }
    for (i = 0; i < (1u << 24); i += 7)
        sum += t_sigmoid_wide((int32_t)i - (1 << 23)) + t_tanh_wide((int32_t)i - (1 << 23));
    printf("%lld\\n", (long long)sum);
    return 0;
}
"""


def test_c_has_no_undefined_behaviour_on_domain_corners(tmp_path: Path) -> None:
    (tmp_path / "ub.c").write_text(_source() + _wrappers() + _UBSAN_MAIN)
    _gcc([*CFLAGS, "-O1", "-fsanitize=undefined", "-fno-sanitize-recover=all", "ub.c", "-o",
          "ub", "-lm"], tmp_path)
    proc = subprocess.run([str(tmp_path / "ub")], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr


def test_c_compiles_for_cortex_m4(tmp_path: Path) -> None:
    (tmp_path / "m4.c").write_text(
        _source() + _wrappers() + "\nint16_t use(int32_t x);\nint16_t use(int32_t x)\n{\n"
        "    return t_sat16(t_sigmoid_wide(x) + t_sat_shift(t_tanh_wide(x), 15));\n}\n"
    )
    _gcc(
        [*CFLAGS, "-mcpu=cortex-m4", "-mthumb", "-Wconversion", "-c", "m4.c", "-o", "m4.o"],
        tmp_path,
        compiler="arm-none-eabi-gcc",
    )




def test_embedding_helpers_in_c(clib):
    """embedding_f/embedding_q copy row x[0] of the table, as numpy's embedding_rows, for the
    first, a middle and the last id."""
    ffi, lib = clib
    rng = np.random.default_rng(3)
    V, d = 5, 3
    table = rng.normal(size=(V, d)).astype(np.float32)
    table_q = rng.integers(-32768, 32768, size=(V, d)).astype(np.int16)
    for token in (0, 2, V - 1):
        y = np.zeros(d, np.float32)
        lib.w_embedding_f(_buf(ffi, "float", np.array([token], np.float32)),
                          _buf(ffi, "float", table), _buf(ffi, "float", y), d)
        assert np.array_equal(y, fp.embedding_rows(table, [token])[0])
        yq = np.zeros(d, np.int16)
        lib.w_embedding_q(_buf(ffi, "int16_t", np.array([token], np.int16)),
                          _buf(ffi, "int16_t", table_q), _buf(ffi, "int16_t", yq), d)
        assert np.array_equal(yq, fp.embedding_rows(table_q, [token])[0])


POOL_WINDOWS = [(3, 2, 1, True), (3, 1, 1, False), (4, 2, 2, False), (2, 2, 0, True),
                (5, 3, 2, True)]


@pytest.mark.parametrize(("kernel", "stride", "pad", "include"), POOL_WINDOWS)
def test_pooling_window_helpers_in_c(clib, kernel, stride, pad, include):
    """MaxPool1d/AvgPool1d over time in C: the integer forms bit-exact against the numpy
    reference on full-range int16s (the average's rounding at both signs), the float forms
    against torch's own pooling."""
    ffi, lib = clib
    rng = np.random.default_rng(kernel * 100 + stride * 10 + pad)
    T, n = 9, 3
    xq = rng.integers(-32768, 32768, size=(T, n)).astype(np.int16)
    xq[:, 0] = -32768
    steps = fp.max_pool_q(xq[None], kernel, stride, pad).shape[1]
    y = np.zeros((steps, n), np.int16)
    lib.w_max_pool_q(_buf(ffi, "int16_t", xq), _buf(ffi, "int16_t", y), T, n, kernel, stride,
                     pad)
    assert np.array_equal(y, fp.max_pool_q(xq[None], kernel, stride, pad)[0])
    lib.w_avg_pool_q(_buf(ffi, "int16_t", xq), _buf(ffi, "int16_t", y), T, n, kernel, stride,
                     pad, int(include))
    assert np.array_equal(y, fp.avg_pool_q(xq[None], kernel, stride, pad, include)[0])
    xf = rng.normal(size=(T, n)).astype(np.float32)
    yf = np.zeros((steps, n), np.float32)
    xt = torch.from_numpy(xf.T.copy())[None]
    lib.w_max_pool_f(_buf(ffi, "float", xf), _buf(ffi, "float", yf), T, n, kernel, stride, pad)
    expected = torch.nn.functional.max_pool1d(xt, kernel, stride, pad)[0].numpy().T
    np.testing.assert_array_equal(yf, expected)
    lib.w_avg_pool_f(_buf(ffi, "float", xf), _buf(ffi, "float", yf), T, n, kernel, stride, pad,
                     int(include))
    expected = torch.nn.functional.avg_pool1d(xt, kernel, stride, pad,
                                              count_include_pad=include)[0].numpy().T
    np.testing.assert_allclose(yf, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("mode", "code"), [("constant", 0), ("reflect", 1), ("replicate", 2)])
def test_pad_time_helper_in_c(clib, mode, code):
    """pad_time_q against the numpy reference: each step shifted into the output format
    (rounded), the constant as given, reflect and replicate at both ends."""
    ffi, lib = clib
    rng = np.random.default_rng(code)
    T, n = 6, 2
    xq = rng.integers(-32768, 32768, size=(T, n)).astype(np.int16)
    for shift in (0, 3):
        y = np.zeros((T + 2 + 3, n), np.int16)
        lib.w_pad_time_q(_buf(ffi, "int16_t", xq), _buf(ffi, "int16_t", y), T, n, 2, 3, code,
                         -11, shift)
        assert np.array_equal(y, fp.pad_time_q(xq[None], 2, 3, mode, -11, shift)[0]), shift


def test_pooling_over_time_helpers_in_c(clib):
    """mean/sum/max over time in C: the integer forms bit-exact against the numpy reference
    (extremes included: the int64 sum, the mean's rounding, saturation of the shifted sum), the
    float forms against numpy."""
    ffi, lib = clib
    rng = np.random.default_rng(5)
    T, n = 7, 5
    xq = rng.integers(-32768, 32768, size=(T, n)).astype(np.int16)
    xq[:, 0] = 32767
    xq[:, 1] = -32768
    y = np.zeros(n, np.int16)
    lib.w_mean_time_q(_buf(ffi, "int16_t", xq), _buf(ffi, "int16_t", y), T, n)
    assert np.array_equal(y, fp.mean_time_q(xq[None])[0])
    lib.w_max_time_q(_buf(ffi, "int16_t", xq), _buf(ffi, "int16_t", y), T, n)
    assert np.array_equal(y, fp.max_time_q(xq[None])[0])
    for shift in (0, 2, 5):
        lib.w_sum_time_q(_buf(ffi, "int16_t", xq), _buf(ffi, "int16_t", y), T, n, shift)
        assert np.array_equal(y, fp.sum_time_q(xq[None], shift)[0]), shift
    xf = rng.normal(size=(T, n)).astype(np.float32)
    yf = np.zeros(n, np.float32)
    for name, ref in (("mean", np.mean), ("sum", np.sum), ("max", np.max)):
        getattr(lib, f"w_{name}_time_f")(_buf(ffi, "float", xf), _buf(ffi, "float", yf), T, n)
        np.testing.assert_allclose(yf, ref(xf.astype(np.float64), axis=0), rtol=1e-6,
                                   atol=1e-6, err_msg=name)
