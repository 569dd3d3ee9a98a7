"""Tests of tinyrnn.qfunctions (the integer functions the fixed-point cells add to
tinyrnn.fixedpoint) and of their C in templates/numeric_fixed.c.j2.

The C is rendered with StrictUndefined, compiled with the project's warning flags in a pytest
temporary directory and compared with numpy element for element: exhaustively over all 2**24
inputs of the wide activations, on large random sets with the extremes elsewhere.
"""

from __future__ import annotations

import math
import subprocess

import cffi
import numpy as np
import pytest

from tinyrnn import fixedpoint as fp
from tinyrnn import qfunctions as qf
from tinyrnn.fixedpoint import QFormat
from tinyrnn.render import _environment

CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
ALL_WIDE = np.arange(qf.ACT_WIDE.qmin, qf.ACT_WIDE.qmax + 1, dtype=np.int64)

_DECLS = """
void w_sigmoid(const int32_t *x, int16_t *y, int n);
void w_tanh(const int32_t *x, int32_t *y, int n);
void w_dot2(const int16_t *a, const int16_t *b, int64_t ka, const int16_t *c, const int32_t *d,
            int64_t kc, int shift, int16_t *y, int n);
void w_mul_q30(const int16_t *a, const int32_t *t, int shift, int16_t *y, int n);
void w_from_float(const float *v, int frac, int16_t *y, int n);
void w_mmulr(const int32_t *a, const int32_t *m, int32_t *y, int n);
void w_softmax(const int16_t *x, int16_t *y, int rows, int n, int32_t dclamp, int32_t mult,
               int shift);
void w_log_softmax(const int16_t *x, int16_t *y, int rows, int n, int32_t dclamp, int32_t mult,
                   int shift, int32_t ln2_mult, int ln2_shift, int up, int down);
"""

_BODIES = {
    "w_sigmoid": "for (k = 0; k < n; ++k) y[k] = t_sigmoid_wide(x[k]);",
    "w_tanh": "for (k = 0; k < n; ++k) y[k] = t_tanh_wide(x[k]);",
    "w_dot2": "for (k = 0; k < n; ++k) y[k] = t_dot2_q(a[k], b[k], ka, c[k], d[k], kc, shift);",
    "w_mul_q30": "for (k = 0; k < n; ++k) y[k] = t_mul_q30(a[k], t[k], shift);",
    "w_from_float": "for (k = 0; k < n; ++k) y[k] = t_from_float(v[k], frac);",
    "w_mmulr": "for (k = 0; k < n; ++k) y[k] = t_mmulr(a[k], m[k]);",
    "w_softmax": "for (k = 0; k < rows; ++k)\n"
                 "    t_softmax_q(x + k * n, y + k * n, n, dclamp, mult, shift);",
    "w_log_softmax": "for (k = 0; k < rows; ++k)\n"
                     "    t_log_softmax_q(x + k * n, y + k * n, n, dclamp, mult, shift,\n"
                     "                    ln2_mult, ln2_shift, up, down);",
}


def _wrappers() -> str:
    """Each declaration of _DECLS with a loop body calling the helper."""
    out = []
    for decl in _DECLS.strip().split(";"):
        decl = decl.strip()
        if decl:
            name = decl.split("(")[0].split()[-1]
            out.append(f"{decl}\n{{\n    int k;\n    {_BODIES[name]}\n}}\n")
    return "\n".join(out)


@pytest.fixture(scope="module", params=["host", "armv6m"])
def clib(request, tmp_path_factory):
    """The helpers compiled for the host, and once more with ``__ARM_ARCH_6M__`` defined, which
    selects the ARMv6-M branches (mmulr without a 64-bit product) in the same host build."""
    from tinyrnn.fixedpoint import qmath_context

    build = tmp_path_factory.mktemp("qfunctions")
    env = _environment()
    numeric = dict(qf.numeric_context(), softmax=True,
                   softmax_kinds={"softmax": True, "log_softmax": True})
    text = env.get_template("numeric_fixed.c.j2").render(
        # the matrix-vector kernels are tested in the tables and on the boards
        p="t", P="T", q=numeric, kernels=[], units=[], v6m_units=[], v6m_arrays=[],
        qmath_text=env.get_template("qmath.h.j2").render(**qmath_context("t_")))
    (build / "h.c").write_text("#include <stdint.h>\n#include <string.h>\n" + text + _wrappers())
    defines = ["-D__ARM_ARCH_6M__=1"] if request.param == "armv6m" else []
    cmd = ["gcc", *CFLAGS, *defines, "-fPIC", "-shared", "h.c", "-o", "libh.so"]
    result = subprocess.run(cmd, cwd=build, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ffi = cffi.FFI()
    ffi.cdef(_DECLS)
    return ffi, ffi.dlopen(str(build / "libh.so"))


def _buf(ffi, ctype: str, a: np.ndarray):
    return ffi.from_buffer(f"{ctype}[]", a)


def test_sigmoid_wide_extends_sigmoid_q_exactly():
    x = np.arange(-(2**15), 2**15, dtype=np.int64)
    assert np.array_equal(qf.sigmoid_wide(x << qf.WIDE_EXTRA), fp.sigmoid_q(x))


def test_wide_activation_error_exhaustive():
    v = qf.ACT_WIDE.dequantize(ALL_WIDE)
    sig = np.abs(qf.sigmoid_wide(ALL_WIDE) / 2**15 - 1 / (1 + np.exp(-v))).max()
    tanh = np.abs(qf.tanh_wide(ALL_WIDE) / 2**30 - np.tanh(v)).max()
    assert sig <= 3.1e-5
    assert tanh <= 2.4e-5  # interpolation, h**2/8 * max|tanh''| = 2.35e-5
    small = np.abs(v) < 2**-6  # near 0 tanh_wide keeps relative precision
    rel = np.abs(qf.tanh_wide(ALL_WIDE[small]) / 2**30 - np.tanh(v[small]))
    assert rel.max() <= 2e-8 + 1e-4 * np.abs(v[small]).max()


def test_wide_activations_in_c_exhaustive(clib):
    ffi, lib = clib
    x = ALL_WIDE.astype(np.int32)
    ys = np.zeros(x.size, np.int16)
    yt = np.zeros(x.size, np.int32)
    lib.w_sigmoid(_buf(ffi, "int32_t", x), _buf(ffi, "int16_t", ys), x.size)
    lib.w_tanh(_buf(ffi, "int32_t", x), _buf(ffi, "int32_t", yt), x.size)
    assert np.array_equal(ys, qf.sigmoid_wide(ALL_WIDE))
    assert np.array_equal(yt, qf.tanh_wide(ALL_WIDE))


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
        assert np.array_equal(y, qf.dot2_q(a, b, ka, c, d, kc, shift)), (ka, kc, shift)
    for shift in (15, 16, 17, 24, 30, 31, 32, 33, 45):
        y = np.zeros(a.size, np.int16)
        lib.w_mul_q30(_buf(ffi, "int16_t", a), _buf(ffi, "int32_t", d), shift,
                      _buf(ffi, "int16_t", y), a.size)
        assert np.array_equal(y, qf.mul_q30(a, d, shift)), shift


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
    expected = [(int(x) * int(k) + 2**31) >> 32 for x, k in zip(a, m)]
    assert y.tolist() == expected


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
    sm = qf.softmax_params(False, in_fmt, QFormat(16, 15))
    y = np.zeros_like(x)
    lib.w_softmax(_buf(ffi, "int16_t", x), _buf(ffi, "int16_t", y), rows, n, sm.dclamp,
                  sm.exp_mult, sm.exp_shift)
    want = qf.softmax_q(x, sm)
    assert np.array_equal(y, want)
    v = in_fmt.dequantize(x)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    assert np.abs(want / 2**15 - e / e.sum(axis=1, keepdims=True)).max() < 2e-4
    shifted = v - v.max(axis=1, keepdims=True)
    exact = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    out_fmt = QFormat.choose(float(np.abs(exact).max()), 16)
    ls = qf.softmax_params(True, in_fmt, out_fmt)
    y = np.zeros_like(x)
    lib.w_log_softmax(_buf(ffi, "int16_t", x), _buf(ffi, "int16_t", y), rows, n, ls.dclamp,
                      ls.exp_mult, ls.exp_shift, ls.ln2_mult, ls.ln2_shift, ls.up, ls.down)
    want = qf.log_softmax_q(x, ls)
    assert np.array_equal(y, want)
    assert np.abs(out_fmt.dequantize(want) - exact).max() <= out_fmt.step + 1e-4


def test_log2_q30_against_math():
    s = np.array([2**30, 2**30 + 1, 3 * 2**29, 7 * 2**30 + 12345, 2**52 - 1], dtype=np.int64)
    got = qf.log2_q30(s) / 2**30
    want = np.array([math.log2(int(v) / 2**30) for v in s])
    assert np.abs(got - want).max() < 2e-5
