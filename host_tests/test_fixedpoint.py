"""Tests of tinyrnn.fixedpoint (the integer specification) and templates/qmath.h.j2 (its C).

Expected values come from the rules themselves, evaluated exactly with Python integers and
fractions (``_ref_*`` below), never from earlier runs. The C is rendered with StrictUndefined,
compiled with the project's warning flags in a pytest temporary directory, loaded with cffi
and compared with numpy element for element.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import cffi
import jinja2
import numpy as np
import pytest

from tinyrnn import fixedpoint as fp
from tinyrnn.resources import resource_dir

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


@pytest.mark.parametrize("bits", [8, 16])
def test_quantize_rows(bits: int) -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 11)) * rng.uniform(0.01, 10, size=(6, 1))
    w[4] = 0.0
    w_q, scale = fp.quantize_rows(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert w_q.dtype == np.int64 and scale.shape == (6,)
    assert scale[4] == 1.0 and not w_q[4].any()
    live = [0, 1, 2, 3, 5]
    assert np.array_equal(np.abs(w_q[live]).max(axis=1), np.full(5, qmax))
    assert np.array_equal(scale[live], np.abs(w[live]).max(axis=1) / qmax)
    # The rule: the float64 quotient w / scale, rounded half up (exactly), saturated.
    expected = [
        [_ref_sat(_ref_round(Fraction(float(v) / float(s))), bits) for v in row]
        for row, s in zip(w, scale)
    ]
    assert w_q.tolist() == expected


def test_quantize_rows_ties() -> None:
    w_q, scale = fp.quantize_rows([[127.0, 0.5, -0.5, -1.5, 2.5, -127.0]], 8)
    assert scale.tolist() == [1.0] and w_q.tolist() == [[127, 1, 0, -1, 3, -127]]


def test_acc_bound() -> None:
    w_q = np.array([[1, -2, 3], [0, 0, 0], [-128, 127, -128]])
    bias = np.array([5, -7, 0])
    assert fp.acc_bound(w_q, 10, bias).tolist() == [65, 7, 3830]
    assert fp.acc_bound(w_q, [10, 0, 1], bias).tolist() == [18, 7, 1408]
    assert fp.acc_bits_needed(w_q, 10, bias).tolist() == [
        8,
        4,
        13,
    ]  # 65 <= 127, 7 <= 7, 3830 <= 4095
    assert fp.acc_bits_needed(np.zeros((1, 2), dtype=np.int64), 5).tolist() == [1]
    assert not fp.needs_int64(w_q, 32768, bias)


def test_acc_bound_is_attained() -> None:
    rng = np.random.default_rng(4)
    w_q = rng.integers(-128, 128, size=(5, 40))
    bias = rng.integers(0, 1000, size=5)
    xmax = 32768
    for r in range(5):  # x = xmax * sign(w) reaches the bound (a bound must be tight to be useful)
        x = xmax * np.sign(w_q[r])
        assert int(w_q[r] @ x + bias[r]) == int(fp.acc_bound(w_q, xmax, bias)[r])


def test_needs_int64() -> None:
    w = np.full((2, 4), 32767, dtype=np.int64)
    assert not fp.needs_int64(w, 16383)  # 4 * 32767 * 16383 < 2**31
    assert fp.needs_int64(w, 16385)  # > 2**31 - 1
    assert fp.needs_int64(w[:, :1], 1, [2**31, 0])
    with pytest.raises(OverflowError, match="2\\*\\*47"):
        fp.needs_int64(w, 2**33)


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


def test_mul_q() -> None:
    a, b = _int16_pairs()
    for shift in (0, 1, 12, 15, 16, 30):
        expected = _ref_array(lambda x, y, s=shift: _ref_sat(_ref_rshift(x * y, s)), a, b)
        assert np.array_equal(fp.mul_q(a, b, shift), expected), shift
    assert fp.mul_q(-32768, -32768, 15) == 32767  # 1.0 saturates in Q0.15
    assert fp.mul_q(16384, -1, 15) == 0 and fp.mul_q(16384, -3, 15) == -1  # -0.5 -> 0, -1.5 -> -1
    with pytest.raises(ValueError):
        fp.mul_q(1, 1, 31)
    with pytest.raises(ValueError):
        fp.mul_q(32768, 1, 15)


def test_add_sat16_sat_shift_relu() -> None:
    a, b = _int16_pairs()
    assert np.array_equal(fp.add_sat16(a, b), _ref_array(lambda x, y: _ref_sat(x + y), a, b))
    x = _extremes_and_random(np.random.default_rng(10), INT32_MIN, INT32_MAX, 2000)
    for n in (-31, -3, 0, 1, 3, 16, 31):
        assert np.array_equal(
            fp.sat_shift(x, n), _ref_array(lambda v, s=n: _ref_sat(_ref_rshift(v, s)), x)
        ), n
    assert np.array_equal(fp.relu_q(a), np.where(a > 0, a, 0))


# ----------------------------------------------------------------------------------------------
# sigmoid and tanh
# ----------------------------------------------------------------------------------------------


def _act_error(
    fn: Callable[[np.ndarray], np.ndarray], ref: Callable[[np.ndarray], np.ndarray]
) -> float:
    y = fp.ACT_OUT.dequantize(fn(ALL_INT16))
    return float(np.abs(y - ref(fp.ACT_IN.dequantize(ALL_INT16))).max())


def test_sigmoid_error_exhaustive() -> None:
    err = _act_error(fp.sigmoid_q, lambda x: 1.0 / (1.0 + np.exp(-x)))
    assert err <= 1.5e-4, err


def test_tanh_error_exhaustive() -> None:
    err = _act_error(fp.tanh_q, np.tanh)
    assert err <= 1.5e-4, err


def test_activation_shape() -> None:
    s, t = fp.sigmoid_q(ALL_INT16), fp.tanh_q(ALL_INT16)
    inner = ALL_INT16[1:]  # -32768 has no int16 negation
    assert np.array_equal(
        fp.sigmoid_q(inner) + fp.sigmoid_q(-inner), np.full(inner.size, fp.ACT_ONE)
    )
    assert np.array_equal(fp.tanh_q(-inner), -fp.tanh_q(inner))
    assert (np.diff(s) >= 0).all() and (np.diff(t) >= 0).all()  # monotone
    assert s.min() >= 0 and s.max() <= 32767 and t.min() >= -32767 and t.max() <= 32767
    assert fp.sigmoid_q(0) == 16384 and fp.tanh_q(0) == 0


def test_tables() -> None:
    assert fp.SIGMOID_TABLE.shape == fp.TANH_TABLE.shape == (fp.ACT_TABLE_LEN,) == (513,)
    x = [k / 64 for k in range(fp.ACT_TABLE_LEN)]  # exact in float64
    assert fp.TANH_TABLE.tolist() == [
        _ref_sat(_ref_round(Fraction(math.tanh(v)) * 2**15)) for v in x
    ]
    sig = [1.0 / (1.0 + math.exp(-v)) for v in x]
    assert fp.SIGMOID_TABLE.tolist() == [_ref_sat(_ref_round(Fraction(v) * 2**15)) for v in sig]
    with pytest.raises(ValueError):
        fp.SIGMOID_TABLE[0] = 0  # read-only


# ----------------------------------------------------------------------------------------------
# The C helpers
# ----------------------------------------------------------------------------------------------

_HARNESS_DECLS = """
void h_sigmoid(const int16_t *x, int16_t *y, size_t n);
void h_tanh(const int16_t *x, int16_t *y, size_t n);
void h_sigmoid_b(const int16_t *x, int16_t *y, size_t n);
void h_requant(const int64_t *acc, const int32_t *mult, const int32_t *shift, int16_t *y, size_t n);
void h_mul_q(const int16_t *a, const int16_t *b, int shift, int16_t *y, size_t n);
void h_add_sat16(const int16_t *a, const int16_t *b, int16_t *y, size_t n);
void h_sat16(const int32_t *x, int16_t *y, size_t n);
void h_sat16_i64(const int64_t *x, int16_t *y, size_t n);
void h_sat_shift(const int32_t *x, int shift, int16_t *y, size_t n);
void h_relu(const int16_t *x, int16_t *y, size_t n);
void h_rshift_round32(const int32_t *v, const int32_t *s, int32_t *y, size_t n);
void h_rshift_round64(const int64_t *v, const int32_t *s, int64_t *y, size_t n);
"""

_HARNESS_BODY = """
#define LOOP(stmt) size_t k; for (k = 0; k < n; ++k) { stmt; }
void h_sigmoid(const int16_t *x, int16_t *y, size_t n) { LOOP(y[k] = ta_sigmoid_q(x[k])) }
void h_tanh(const int16_t *x, int16_t *y, size_t n) { LOOP(y[k] = ta_tanh_q(x[k])) }
void h_sigmoid_b(const int16_t *x, int16_t *y, size_t n) { LOOP(y[k] = tb_sigmoid_q(x[k])) }
void h_requant(const int64_t *acc, const int32_t *mult, const int32_t *shift, int16_t *y, size_t n)
{ LOOP(y[k] = ta_requant(acc[k], mult[k], shift[k])) }
void h_mul_q(const int16_t *a, const int16_t *b, int shift, int16_t *y, size_t n)
{ LOOP(y[k] = ta_mul_q(a[k], b[k], shift)) }
void h_add_sat16(const int16_t *a, const int16_t *b, int16_t *y, size_t n)
{ LOOP(y[k] = ta_add_sat16(a[k], b[k])) }
void h_sat16(const int32_t *x, int16_t *y, size_t n) { LOOP(y[k] = ta_sat16(x[k])) }
void h_sat16_i64(const int64_t *x, int16_t *y, size_t n) { LOOP(y[k] = ta_sat16_i64(x[k])) }
void h_sat_shift(const int32_t *x, int shift, int16_t *y, size_t n)
{ LOOP(y[k] = ta_sat_shift(x[k], shift)) }
void h_relu(const int16_t *x, int16_t *y, size_t n) { LOOP(y[k] = ta_relu_q(x[k])) }
void h_rshift_round32(const int32_t *v, const int32_t *s, int32_t *y, size_t n)
{ LOOP(y[k] = ta_rshift_round32(v[k], s[k])) }
void h_rshift_round64(const int64_t *v, const int32_t *s, int64_t *y, size_t n)
{ LOOP(y[k] = ta_rshift_round64(v[k], s[k])) }
"""


def _render(prefix: str, trim: bool = True) -> str:
    """Render with the exporter's Jinja settings (``trim=True``) or Jinja's defaults."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_dir("templates")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=trim,
        lstrip_blocks=trim,
        keep_trailing_newline=True,
    )
    return env.get_template("qmath.h.j2").render(**fp.qmath_context(prefix))


def _harness_source() -> str:
    # Two prefixes in one translation unit (two models linked together), and the first one
    # included twice (the guard must make that harmless).
    return "\n".join(
        [
            "#include <stddef.h>",
            _render("ta_"),
            _render("tb_"),
            _render("ta_"),
            _HARNESS_DECLS,
            _HARNESS_BODY,
        ]
    )


def _gcc(args: list[str], cwd: Path, compiler: str = "gcc") -> None:
    proc = subprocess.run([compiler, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{compiler} {' '.join(args)} failed:\n{proc.stderr}")


@pytest.fixture(scope="module")
def clib(tmp_path_factory: pytest.TempPathFactory) -> tuple[cffi.FFI, object]:
    """The rendered helpers and array wrappers, built as a shared library and opened by cffi."""
    build = tmp_path_factory.mktemp("qmath")
    (build / "harness.c").write_text(_harness_source())
    _gcc([*CFLAGS, "-fPIC", "-shared", "harness.c", "-o", "libharness.so"], build)
    ffi = cffi.FFI()
    ffi.cdef(_HARNESS_DECLS)
    return ffi, ffi.dlopen(str(build / "libharness.so"))


def _call(clib: tuple[cffi.FFI, object], name: str, out_dtype: type, *args: object) -> np.ndarray:
    """Call ``h_<name>`` with numpy arrays (given as (array, C type) pairs) or ints; return y."""
    ffi, lib = clib
    c_args: list[object] = []
    keep: list[np.ndarray] = []  # the buffers must outlive the call
    size = None
    for arg in args:
        if isinstance(arg, tuple):
            values, dtype, ctype = arg
            arr = np.ascontiguousarray(values, dtype=dtype)
            assert np.array_equal(arr, values), f"input does not fit {ctype}"
            keep.append(arr)
            size = arr.size
            c_args.append(ffi.from_buffer(f"{ctype}[]", arr))
        else:
            c_args.append(arg)
    assert size is not None
    out = np.zeros(size, dtype=out_dtype)
    out_ctype = {np.int16: "int16_t", np.int32: "int32_t", np.int64: "int64_t"}[out_dtype]
    getattr(lib, f"h_{name}")(*c_args, ffi.from_buffer(f"{out_ctype}[]", out), size)
    return out.astype(np.int64)


def _i16(a: np.ndarray) -> tuple[np.ndarray, type, str]:
    return a, np.int16, "int16_t"


def _i32(a: np.ndarray) -> tuple[np.ndarray, type, str]:
    return a, np.int32, "int32_t"


def _i64(a: np.ndarray) -> tuple[np.ndarray, type, str]:
    return a, np.int64, "int64_t"


def test_c_activations_equal_numpy_exhaustive(clib: tuple[cffi.FFI, object]) -> None:
    assert np.array_equal(
        _call(clib, "sigmoid", np.int16, _i16(ALL_INT16)), fp.sigmoid_q(ALL_INT16)
    )
    assert np.array_equal(_call(clib, "tanh", np.int16, _i16(ALL_INT16)), fp.tanh_q(ALL_INT16))
    assert np.array_equal(
        _call(clib, "sigmoid_b", np.int16, _i16(ALL_INT16)), fp.sigmoid_q(ALL_INT16)
    )


def test_c_requant_equals_numpy(clib: tuple[cffi.FFI, object]) -> None:
    acc, big_m, n = _requant_cases(200_000)
    got = _call(clib, "requant", np.int16, _i64(acc), _i32(big_m), _i32(n))
    assert np.array_equal(got, fp.requant(acc, big_m, n))


def test_c_elementwise_equal_numpy(clib: tuple[cffi.FFI, object]) -> None:
    a, b = _int16_pairs(200_000)
    for shift in range(fp.MUL_Q_MAX_SHIFT + 1):
        assert np.array_equal(
            _call(clib, "mul_q", np.int16, _i16(a), _i16(b), shift), fp.mul_q(a, b, shift)
        ), shift
    assert np.array_equal(_call(clib, "add_sat16", np.int16, _i16(a), _i16(b)), fp.add_sat16(a, b))
    assert np.array_equal(_call(clib, "relu", np.int16, _i16(a)), fp.relu_q(a))

    rng = np.random.default_rng(11)
    x32 = _extremes_and_random(rng, INT32_MIN, INT32_MAX, 100_000)
    assert np.array_equal(_call(clib, "sat16", np.int16, _i32(x32)), fp.sat16(x32))
    for n in range(-fp.SAT_SHIFT_MAX, fp.SAT_SHIFT_MAX + 1):
        assert np.array_equal(
            _call(clib, "sat_shift", np.int16, _i32(x32), n), fp.sat_shift(x32, n)
        ), n
    x64 = np.concatenate([_extremes_and_random(rng, -(2**63), 2**63 - 1, 50_000), x32])
    assert np.array_equal(_call(clib, "sat16_i64", np.int16, _i64(x64)), fp.sat16(x64))


def test_c_rshift_round_equals_numpy(clib: tuple[cffi.FFI, object]) -> None:
    rng = np.random.default_rng(12)
    # Inside the documented domains: int32 with |v| <= 2**30 and n <= 30 (left shifts of
    # |v| < 2**15 by up to 15); int64 with |v| <= 2**62 and n <= 62 (|v| < 2**31 by up to 31).
    v32 = _extremes_and_random(rng, -(2**30), 2**30, 100_000)
    n32 = rng.integers(0, 31, v32.size)
    small = np.abs(v32) < 2**15
    n32[small] = rng.integers(-15, 31, int(small.sum()))
    assert np.array_equal(
        _call(clib, "rshift_round32", np.int32, _i32(v32), _i32(n32)), fp.rshift_round(v32, n32)
    )
    v64 = _extremes_and_random(rng, -(2**62), 2**62, 100_000)
    n64 = rng.integers(0, 63, v64.size)
    small = np.abs(v64) < 2**31
    n64[small] = rng.integers(-31, 63, int(small.sum()))
    assert np.array_equal(
        _call(clib, "rshift_round64", np.int64, _i64(v64), _i32(n64)), fp.rshift_round(v64, n64)
    )


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
            sum += ta_requant(accs[i], 16384, s) + ta_requant(accs[i], 32767, s);
    for (i = 0; i < sizeof e16 / sizeof e16[0]; ++i) {
        for (j = 0; j < sizeof e16 / sizeof e16[0]; ++j) {
            for (s = 0; s <= 30; ++s) sum += ta_mul_q(e16[i], e16[j], s);
            sum += ta_add_sat16(e16[i], e16[j]);
        }
        sum += ta_relu_q(e16[i]);
    }
    for (i = 0; i < sizeof e32 / sizeof e32[0]; ++i) {
        for (s = -31; s <= 31; ++s) sum += ta_sat_shift(e32[i], s);
        sum += ta_sat16(e32[i]);
    }
    for (i = 0; i < 65536; ++i)
        sum += ta_sigmoid_q((int16_t)((int32_t)i - 32768))
             + ta_tanh_q((int16_t)((int32_t)i - 32768));
    printf("%lld\\n", (long long)sum);
    return 0;
}
"""


def test_c_has_no_undefined_behaviour_on_domain_corners(tmp_path: Path) -> None:
    (tmp_path / "ub.c").write_text("\n".join([_render("ta_"), _UBSAN_MAIN]))
    _gcc(
        [*CFLAGS, "-O1", "-fsanitize=undefined", "-fno-sanitize-recover=all", "ub.c", "-o", "ub"],
        tmp_path,
    )
    proc = subprocess.run([str(tmp_path / "ub")], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr


def test_c_compiles_for_cortex_m4(tmp_path: Path) -> None:
    (tmp_path / "m4.c").write_text(
        _render("m_") + "\nint16_t use(int16_t x)\n{\n"
        "    return m_add_sat16(m_sigmoid_q(x), m_tanh_q(x));\n}\n"
    )
    _gcc(
        [*CFLAGS, "-mcpu=cortex-m4", "-mthumb", "-Wconversion", "-c", "m4.c", "-o", "m4.o"],
        tmp_path,
        compiler="arm-none-eabi-gcc",
    )


# ----------------------------------------------------------------------------------------------
# The template itself
# ----------------------------------------------------------------------------------------------


def test_template_needs_every_variable() -> None:
    context = fp.qmath_context("ta_")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(resource_dir("templates")), undefined=jinja2.StrictUndefined
    )
    template = env.get_template("qmath.h.j2")
    for key in context:
        partial = {k: v for k, v in context.items() if k != key}
        with pytest.raises(jinja2.UndefinedError):
            template.render(**partial)


def test_template_does_no_arithmetic() -> None:
    source = (resource_dir("templates") / "qmath.h.j2").read_text()
    expressions = re.findall(r"{{(.*?)}}|{%(.*?)%}", source)
    for expr in (a or b for a, b in expressions):
        assert not re.search(r"[-+*/%]", expr.strip().lstrip("-").rstrip("-")), expr


def test_template_renders_alike_with_and_without_block_trimming() -> None:
    assert _render("ta_", trim=True) == _render("ta_", trim=False)


def test_rendered_tables_are_the_python_tables() -> None:
    text = _render("ta_")
    tables = re.findall(r"table\[(\d+)\] = \{(.*?)\};", text, flags=re.S)
    assert [int(n) for n, _ in tables] == [fp.ACT_TABLE_LEN] * 2
    values = [[int(v) for v in body.replace("\n", " ").split(",")] for _, body in tables]
    assert values == [fp.SIGMOID_TABLE.tolist(), fp.TANH_TABLE.tolist()]
