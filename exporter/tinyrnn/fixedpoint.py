"""Integer numerics of the fixed-point exports (w8a16, w16a16): the bit-exact specification.

The integer operations here (:func:`rshift_round`, :func:`sat16`, :func:`requant`,
:func:`mul_q`, :func:`add_sat16`, :func:`sat_shift`, :func:`relu_q`, :func:`sigmoid_q`,
:func:`tanh_q`) are the reference for the C helpers of the same names in
``templates/qmath.h.j2``; the C must equal them element for element
(``host_tests/test_fixedpoint.py`` checks that). The rest (:class:`QFormat`,
:func:`quantize_rows`, :func:`quantize_multiplier`, :func:`acc_bound`, the tables) runs at
export time and hands the C integers only. Integer results are ``np.int64`` arrays whose values
lie in the stated range; integer inputs given as floats are refused, never truncated.
``docs/fixed-point.md`` describes the scheme for readers of the generated C.

One rounding rule everywhere: round half up
-------------------------------------------
A real ``x`` becomes the integer ``floor(x + 1/2)``: ties go up, so 0.5 -> 1, -0.5 -> 0,
-1.5 -> -1. The same rule, applied to a division by ``2**n``, is the one right shift
(:func:`rshift_round`)::

    rshift_round(v, n) = (v + (1 << (n - 1))) >> n     n >= 1  (arithmetic shift)
                       = v                             n == 0
                       = v * 2**-n                     n < 0   (exact; the caller keeps it in range)

and a result that does not fit its type is saturated (:func:`sat16`), never wrapped.

Number formats
--------------
``QFormat(bits, frac)`` is a signed ``bits``-bit integer ``q`` read as ``q * 2**-frac``.
Activations and states are int16 in a ``QFormat``; weights are symmetric per row with a real
scale (:func:`quantize_rows`); a matrix-vector product is accumulated exactly in int32 or int64
(:func:`acc_bound` says which) and brought back to int16 by a per-row real multiplier
``m ~= M * 2**-n`` (:func:`quantize_multiplier`, :func:`requant`).

Activations
-----------
:func:`sigmoid_q` and :func:`tanh_q` take int16 in Q3.12 (``[-8, 8)``) and return int16 in
Q0.15, by linear interpolation in a table of ``f`` on ``[0, 8]`` (513 points, one per 64 input
steps) and the symmetries ``sigmoid(-x) = 1 - sigmoid(x)``, ``tanh(-x) = -tanh(x)``. Over all
65,536 inputs the error against the float function of the dequantized input is at most
3.00e-5 (sigmoid) and 4.65e-5 (tanh); the requirement is 1.5e-4.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ACC32_LIMIT",
    "ACT_IN",
    "ACT_ONE",
    "ACT_OUT",
    "ACT_SEGMENT_SHIFT",
    "ACT_TABLE_LEN",
    "INT16_MAX",
    "INT16_MIN",
    "MULTIPLIER_BITS",
    "MULTIPLIER_REL_ERROR",
    "MUL_Q_MAX_SHIFT",
    "REQUANT_ACC_LIMIT",
    "REQUANT_MAX_SHIFT",
    "SAT_SHIFT_MAX",
    "SIGMOID_TABLE",
    "TANH_TABLE",
    "QFormat",
    "acc_bits_needed",
    "acc_bound",
    "add_sat16",
    "mul_q",
    "needs_int64",
    "qmath_context",
    "quantize_multiplier",
    "quantize_multipliers",
    "quantize_rows",
    "relu_q",
    "requant",
    "round_half_up",
    "rshift_round",
    "sat16",
    "sat_shift",
    "saturate",
    "sigmoid_q",
    "tanh_q",
]

ArrayLike = npt.ArrayLike
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

INT16_MIN = -(2**15)
INT16_MAX = 2**15 - 1
_INT64_MAX = 2**63 - 1

# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 2 <= bits <= 32:
        raise ValueError(f"bits must be an int in [2, 32], got {bits!r}")


def _as_int64(x: ArrayLike, name: str) -> IntArray:
    """An integer array as int64; floats, bools and objects are refused (no silent truncation)."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > _INT64_MAX:
        raise OverflowError(f"{name} does not fit in int64")
    return arr.astype(np.int64)


def _as_int16(x: ArrayLike, name: str) -> IntArray:
    """An integer array whose values are int16, as int64."""
    arr = _as_int64(x, name)
    if ((arr < INT16_MIN) | (arr > INT16_MAX)).any():
        raise ValueError(f"{name} must hold int16 values")
    return arr


# ----------------------------------------------------------------------------------------------
# The rounding rule and saturation
# ----------------------------------------------------------------------------------------------


def round_half_up(x: ArrayLike) -> FloatArray:
    """Round to the nearest integer, ties up: ``floor(x + 1/2)``, exactly.

    ``np.floor(x + 0.5)`` is not exact: ``0.49999999999999994 + 0.5`` rounds to ``1.0`` in
    float64. Splitting ``x`` into ``floor(x)`` and its (exactly computed) fraction is.
    The result is float64 holding integers (or +-inf); callers saturate, then convert.
    """
    xf = np.asarray(x, dtype=np.float64)
    if np.isnan(xf).any():
        raise ValueError("cannot quantize NaN")
    with np.errstate(invalid="ignore"):  # inf - inf for +-inf; the isfinite mask drops it
        whole = np.floor(xf)
        up = np.isfinite(xf) & (xf - whole >= 0.5)
    return whole + up


def saturate(q: ArrayLike, bits: int) -> IntArray:
    """Clamp integers (or integral floats, +-inf included) to the signed ``bits``-bit range."""
    _check_bits(bits)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    arr = np.asarray(q)
    if arr.dtype.kind == "f":
        return np.clip(arr, lo, hi).astype(np.int64)
    return np.clip(_as_int64(arr, "q"), lo, hi)


def sat16(x: ArrayLike) -> IntArray:
    """Saturate to int16: ``min(max(x, -32768), 32767)``. C: ``sat16`` / ``sat16_i64``."""
    return np.clip(_as_int64(x, "x"), INT16_MIN, INT16_MAX)


def rshift_round(v: ArrayLike, n: ArrayLike) -> IntArray:
    """Divide by ``2**n`` with round half up (the module's one shift rule), in int64.

    ``(v + (1 << (n - 1))) >> n`` for ``n >= 1``, ``v`` for ``n == 0``, ``v * 2**-n`` for
    ``n < 0``. ``n`` may be an array broadcast against ``v`` (per-row shifts). Defined for
    ``-62 <= n <= 62`` when neither the rounding addition nor the left shift leaves int64;
    raises ``OverflowError`` otherwise (the C helper would be undefined there).
    C: ``rshift_round32`` (int32, ``|n| <= 30``) and ``rshift_round64`` give the same values.
    """
    va = _as_int64(v, "v")
    na = _as_int64(n, "n")
    if ((na < -62) | (na > 62)).any():
        raise ValueError("shift n must be in [-62, 62]")
    va, na = np.broadcast_arrays(va, na)
    right = np.maximum(na, 1)
    addend = np.left_shift(np.int64(1), right - 1)
    left = np.maximum(-na, 0)
    # Preconditions, so that int64 arithmetic below is exact (numpy would wrap silently).
    # v * 2**left fits in int64 iff -2**(63-left) <= v <= 2**(63-left) - 1.
    left_limit = np.left_shift(np.int64(1), 63 - np.maximum(left, 1))
    bad_right = (na > 0) & (va > _INT64_MAX - addend)
    bad_left = (na < 0) & ((va >= left_limit) | (va < -left_limit))
    if (bad_right | bad_left).any():
        raise OverflowError("rshift_round: the rounding addend or the left shift leaves int64")
    shifted_right = np.right_shift(va + np.where(na > 0, addend, 0), right)
    shifted_left = va * np.left_shift(np.int64(1), left)
    return np.where(na > 0, shifted_right, np.where(na == 0, va, shifted_left))


# ----------------------------------------------------------------------------------------------
# Number formats
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QFormat:
    """A signed fixed-point format: integer ``q`` of ``bits`` bits means ``q * 2**-frac``.

    ``frac`` may exceed ``bits - 1`` (small values) or be negative (large values). Written
    ``Qi.f`` with ``i = bits - 1 - frac`` integer bits: ``QFormat(16, 12)`` is Q3.12.
    :meth:`quantize` rounds half up and saturates; nothing ever wraps.
    """

    bits: int
    frac: int

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if not isinstance(self.frac, (int, np.integer)) or isinstance(self.frac, bool):
            raise TypeError(f"frac must be an int, not {type(self.frac).__name__}")

    @property
    def qmin(self) -> int:
        """Smallest integer: ``-(2**(bits-1))``."""
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        """Largest integer: ``2**(bits-1) - 1``."""
        return 2 ** (self.bits - 1) - 1

    @property
    def step(self) -> float:
        """Value of one integer step: ``2**-frac``."""
        return math.ldexp(1.0, -self.frac)

    @property
    def min(self) -> float:
        """Smallest representable value, ``qmin * 2**-frac``."""
        return math.ldexp(float(self.qmin), -self.frac)

    @property
    def max(self) -> float:
        """Largest representable value, ``qmax * 2**-frac``."""
        return math.ldexp(float(self.qmax), -self.frac)

    def quantize(self, x: ArrayLike) -> IntArray:
        """Real values to integers: ``saturate(floor(x * 2**frac + 1/2))``; NaN raises."""
        scaled = np.ldexp(np.asarray(x, dtype=np.float64), self.frac)
        return saturate(round_half_up(scaled), self.bits)

    def dequantize(self, q: ArrayLike) -> FloatArray:
        """Integers to real values: ``q * 2**-frac`` (exact in float64 for ``bits <= 53``)."""
        return np.ldexp(_as_int64(q, "q").astype(np.float64), -self.frac)

    def saturate(self, q: ArrayLike) -> IntArray:
        """Clamp integers to ``[qmin, qmax]``."""
        return saturate(q, self.bits)

    @classmethod
    def choose(cls, max_abs: float, bits: int, headroom: float = 1.0) -> QFormat:
        """The format of ``bits`` bits with the largest ``frac`` whose ``max`` covers
        ``max_abs * headroom``, i.e. ``max_abs * headroom * 2**frac <= 2**(bits-1) - 1``
        (so neither ``+v`` nor ``-v`` saturates). ``max_abs == 0`` gives ``frac = bits - 1``.

        Example: ``choose(1.0, 16)`` is Q1.14, because 1.0 is just outside Q0.15.
        """
        _check_bits(bits)
        v = float(max_abs) * float(headroom)
        if not (math.isfinite(v) and max_abs >= 0 and headroom > 0):
            raise ValueError(
                f"need finite max_abs >= 0 and headroom > 0, got {max_abs!r}, {headroom!r}"
            )
        if v == 0.0:
            return cls(bits, bits - 1)
        qmax = 2 ** (bits - 1) - 1
        frac = math.floor(math.log2(qmax / v))
        while math.ldexp(v, frac) > qmax:  # log2 may be off by one either way
            frac -= 1
        while math.ldexp(v, frac + 1) <= qmax:
            frac += 1
        return cls(bits, frac)

    def __str__(self) -> str:
        return f"Q{self.bits - 1 - self.frac}.{self.frac}"


# ----------------------------------------------------------------------------------------------
# Weights, accumulators, requantization
# ----------------------------------------------------------------------------------------------


def quantize_rows(w: ArrayLike, bits: int) -> tuple[IntArray, FloatArray]:
    """Symmetric per-row quantization of a ``(rows, cols)`` matrix.

    ``scale[r] = max|w[r]| / (2**(bits-1) - 1)`` and
    ``w_q[r] = saturate(round_half_up(w[r] / scale[r]))`` (the float64 quotient, rounded exactly),
    so ``w[r] ~= w_q[r] * scale[r]`` and the largest magnitude maps to ``+-(2**(bits-1) - 1)``.
    A row of zeros gets scale 1 and zeros. Non-finite weights raise ``ValueError``.
    """
    _check_bits(bits)
    wf = np.asarray(w, dtype=np.float64)
    if wf.ndim != 2:
        raise ValueError(f"quantize_rows needs a (rows, cols) matrix, got shape {wf.shape}")
    if not np.isfinite(wf).all():
        raise ValueError("weights contain NaN or inf")
    qmax = 2 ** (bits - 1) - 1
    peak = np.abs(wf).max(axis=1) if wf.shape[1] else np.zeros(wf.shape[0])
    scale = np.where(peak > 0, peak / qmax, 1.0)
    if (scale == 0).any():
        raise ValueError("a weight row is too small (subnormal) to have a per-row scale")
    w_q = saturate(round_half_up(wf / scale[:, None]), bits)
    return w_q, scale


ACC32_LIMIT = 2**31 - 1
"""An accumulator whose bound (:func:`acc_bound`) is at most this fits in int32."""

REQUANT_ACC_LIMIT = 2**47
""":func:`requant` needs ``|acc| < 2**47`` (so ``acc * M`` stays inside int64)."""


def acc_bound(
    w_q: ArrayLike, max_abs_input: ArrayLike, bias_q: ArrayLike | None = None
) -> IntArray:
    """Per row, the largest ``|acc|`` of ``acc = bias_q + w_q @ x`` over ``|x| <= max_abs_input``.

    ``bound[r] = sum_j |w_q[r, j]| * max_abs_input[j] + |bias_q[r]|``; ``max_abs_input`` is one
    integer or one per column. Every partial sum, in any summation order, is bounded by the same
    number (it is a sum of a subset of the same absolute terms), so if the bound fits a type,
    the whole accumulation does. Computed exactly (Python integers); raises ``OverflowError``
    if a bound does not fit in int64.
    """
    wq = _as_int64(w_q, "w_q")
    if wq.ndim != 2:
        raise ValueError(f"w_q must be (rows, cols), got shape {wq.shape}")
    rows, cols = wq.shape
    xmax = np.broadcast_to(_as_int64(max_abs_input, "max_abs_input"), (cols,))
    if (xmax < 0).any():
        raise ValueError("max_abs_input must be >= 0")
    bias = np.zeros(rows, dtype=np.int64) if bias_q is None else _as_int64(bias_q, "bias_q")
    if bias.shape != (rows,):
        raise ValueError(f"bias_q must have shape ({rows},), got {bias.shape}")
    xs = [int(v) for v in xmax]
    bounds = [
        sum(abs(int(a)) * b for a, b in zip(row, xs)) + abs(int(bias[r]))
        for r, row in enumerate(wq.tolist())
    ]
    if any(b > _INT64_MAX for b in bounds):
        raise OverflowError("accumulator bound exceeds int64")
    return np.array(bounds, dtype=np.int64).reshape(rows)


def acc_bits_needed(
    w_q: ArrayLike, max_abs_input: ArrayLike, bias_q: ArrayLike | None = None
) -> IntArray:
    """Per row, the width of the smallest signed integer that holds :func:`acc_bound`:
    the least ``B`` with ``bound <= 2**(B-1) - 1`` (a bound of 0 needs 1 bit)."""
    return np.array(
        [int(b).bit_length() + 1 for b in acc_bound(w_q, max_abs_input, bias_q)], dtype=np.int64
    )


def needs_int64(w_q: ArrayLike, max_abs_input: ArrayLike, bias_q: ArrayLike | None = None) -> bool:
    """True if some row's accumulator may leave int32 (then the kernel accumulates in int64).

    Raises ``OverflowError`` if a bound reaches ``REQUANT_ACC_LIMIT`` (2**47): such a layer
    cannot be requantized exactly and must be exported with fewer bits or smaller inputs.
    """
    bound = acc_bound(w_q, max_abs_input, bias_q)
    if (bound >= REQUANT_ACC_LIMIT).any():
        raise OverflowError(
            f"accumulator bound {int(bound.max())} reaches 2**47, the limit of requant"
        )
    return bool((bound > ACC32_LIMIT).any())


MULTIPLIER_BITS = 15
"""``M`` of :func:`quantize_multiplier` lies in ``[2**14, 2**15)``."""

MULTIPLIER_REL_ERROR = 2.0**-15
"""Bound on ``|M * 2**-n - m| / m`` for every ``(M, n) = quantize_multiplier(m)``."""

REQUANT_MAX_SHIFT = 62
"""Shifts of :func:`requant` lie in ``[0, 62]``."""


def quantize_multiplier(m: float) -> tuple[int, int]:
    """Write a real multiplier ``m > 0`` as ``M * 2**-n`` with ``2**14 <= M < 2**15``.

    With ``m = f * 2**e``, ``f`` in ``[1/2, 1)``: ``M = round_half_up(f * 2**15)`` and
    ``n = 15 - e``; if rounding gives ``M = 2**15``, it becomes ``2**14`` and ``n`` drops by one.

    Error bound: ``m * 2**n`` lies in ``[2**14, 2**15)`` and ``|M - m * 2**n| <= 1/2``, so
    ``|M * 2**-n - m| <= 2**-(n+1)`` and the relative error is at most
    ``(1/2) / 2**14 = 2**-15`` (``MULTIPLIER_REL_ERROR``).

    :func:`requant` accepts ``0 <= n <= 62``, i.e. roughly ``2**-48 <= m < 2**15``; a multiplier
    outside that range raises ``ValueError`` (it would zero or saturate every output).
    """
    mf = float(m)
    if not (math.isfinite(mf) and mf > 0):
        raise ValueError(f"multiplier must be finite and > 0, got {m!r}")
    f, e = math.frexp(mf)
    big_m = int(round_half_up(f * 2**MULTIPLIER_BITS))
    if big_m == 2**MULTIPLIER_BITS:
        big_m, e = 2 ** (MULTIPLIER_BITS - 1), e + 1
    n = MULTIPLIER_BITS - e
    if not 0 <= n <= REQUANT_MAX_SHIFT:
        raise ValueError(f"multiplier {mf!r} needs shift {n}, outside [0, {REQUANT_MAX_SHIFT}]")
    return big_m, n


def quantize_multipliers(m: ArrayLike) -> tuple[IntArray, IntArray]:
    """:func:`quantize_multiplier` of each element: per-row ``(M, n)`` as int64 arrays."""
    pairs = [quantize_multiplier(v) for v in np.asarray(m, dtype=np.float64).ravel()]
    shape = np.shape(m)
    big_m = np.array([p[0] for p in pairs], dtype=np.int64).reshape(shape)
    n = np.array([p[1] for p in pairs], dtype=np.int64).reshape(shape)
    return big_m, n


def requant(acc: ArrayLike, M: ArrayLike, n: ArrayLike) -> IntArray:
    """Scale an accumulator by ``M * 2**-n`` into int16: ``sat16(rshift_round(acc * M, n))``.

    ``M`` and ``n`` are scalars or per-row arrays broadcast against ``acc``. Domain, checked:
    ``|acc| < 2**47``, ``2**14 <= M < 2**15``, ``0 <= n <= 62``. Then the int64 arithmetic is
    exact: ``|acc * M| <= (2**47 - 1) * (2**15 - 1) < 2**62`` and the rounding addend
    ``2**(n-1) <= 2**61``, so ``|acc * M + 2**(n-1)| < 2**62 + 2**61 < 2**63``.
    (int32 accumulators qualify trivially.) The result is within
    ``|acc| * m * MULTIPLIER_REL_ERROR + 1/2`` of ``acc * m`` before saturation.
    C: ``requant(int64_t acc, int32_t mult, int shift)``.
    """
    a = _as_int64(acc, "acc")
    mm = _as_int64(M, "M")
    nn = _as_int64(n, "n")
    if (np.abs(a) >= REQUANT_ACC_LIMIT).any():
        raise OverflowError("requant needs |acc| < 2**47")
    if ((mm < 2 ** (MULTIPLIER_BITS - 1)) | (mm >= 2**MULTIPLIER_BITS)).any():
        raise ValueError("requant needs 2**14 <= M < 2**15")
    if ((nn < 0) | (nn > REQUANT_MAX_SHIFT)).any():
        raise ValueError(f"requant needs 0 <= n <= {REQUANT_MAX_SHIFT}")
    return sat16(rshift_round(a * mm, nn))


# ----------------------------------------------------------------------------------------------
# Element-wise helpers of the cells (int16 in, int16 out)
# ----------------------------------------------------------------------------------------------

MUL_Q_MAX_SHIFT = 30
"""Shifts of :func:`mul_q` lie in ``[0, 30]`` (the C rounds in int32)."""

SAT_SHIFT_MAX = 31
"""Shifts of :func:`sat_shift` lie in ``[-31, 31]``."""


def mul_q(a: ArrayLike, b: ArrayLike, shift: int) -> IntArray:
    """Product of int16s in a chosen format: ``sat16(rshift_round(a * b, shift))``.

    ``a * b`` fits in int32 (``|a * b| <= 2**30``) and so does the rounding addend for
    ``0 <= shift <= 30``: ``2**30 + 2**29 < 2**31``. Example: Q0.15 times Q0.15 back to Q0.15
    is ``shift = 15``; ``mul_q(-32768, -32768, 15)`` saturates to 32767.
    C: ``mul_q(int16_t a, int16_t b, int shift)``.
    """
    if not 0 <= int(shift) <= MUL_Q_MAX_SHIFT:
        raise ValueError(f"mul_q shift must be in [0, {MUL_Q_MAX_SHIFT}], got {shift}")
    return sat16(rshift_round(_as_int16(a, "a") * _as_int16(b, "b"), int(shift)))


def add_sat16(a: ArrayLike, b: ArrayLike) -> IntArray:
    """Saturating sum of int16s in the same format: ``sat16(a + b)``. C: ``add_sat16``."""
    return sat16(_as_int16(a, "a") + _as_int16(b, "b"))


def sat_shift(x: ArrayLike, n: int) -> IntArray:
    """Change format by ``n`` fraction bits: ``sat16(rshift_round(x, n))`` for int32 ``x``.

    ``n > 0`` drops fraction bits (rounding half up), ``n < 0`` adds them (exact), then the
    result saturates to int16. ``-31 <= n <= 31``; the C computes in int64, where neither step
    can overflow for int32 ``x``. C: ``sat_shift(int32_t x, int n)``.
    """
    if not -SAT_SHIFT_MAX <= int(n) <= SAT_SHIFT_MAX:
        raise ValueError(f"sat_shift n must be in [-{SAT_SHIFT_MAX}, {SAT_SHIFT_MAX}], got {n}")
    xa = _as_int64(x, "x")
    if ((xa < -(2**31)) | (xa > 2**31 - 1)).any():
        raise ValueError("sat_shift takes int32 values")
    return sat16(rshift_round(xa, int(n)))


def relu_q(x: ArrayLike) -> IntArray:
    """``max(x, 0)`` of int16s (any format). C: ``relu_q`` (``_q`` as in ``sigmoid_q``: the
    float path already has a ``relu``)."""
    return np.maximum(_as_int16(x, "x"), 0)


# ----------------------------------------------------------------------------------------------
# sigmoid and tanh: Q3.12 -> Q0.15 by table and linear interpolation
# ----------------------------------------------------------------------------------------------

ACT_IN = QFormat(16, 12)
"""Input format of :func:`sigmoid_q` and :func:`tanh_q`: Q3.12, ``[-8, 8)``."""

ACT_OUT = QFormat(16, 15)
"""Output format of :func:`sigmoid_q` and :func:`tanh_q`: Q0.15, ``[-1, 1)``."""

ACT_SEGMENT_SHIFT = 6
"""The table has one point per ``2**6 = 64`` input steps (1/64 in value)."""

ACT_TABLE_LEN = 2 ** (ACT_IN.bits - 1 - ACT_SEGMENT_SHIFT) + 1
"""513 points: ``f(k / 64)`` for ``k = 0..512``, covering ``[0, 8]``."""

ACT_ONE = 2**ACT_OUT.frac
"""1.0 in Q0.15 (32768, not an int16): ``sigmoid(-x) = ACT_ONE - sigmoid(x)`` in integers."""


def _act_table(f: Callable[[FloatArray], FloatArray]) -> IntArray:
    """``ACT_OUT.quantize(f(k * 2**6 * 2**-12))`` for ``k = 0..512``, read-only."""
    u = np.arange(ACT_TABLE_LEN, dtype=np.int64) << ACT_SEGMENT_SHIFT
    table = ACT_OUT.quantize(f(ACT_IN.dequantize(u)))
    table.setflags(write=False)
    return table


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


SIGMOID_TABLE = _act_table(_sigmoid)
"""sigmoid at ``0, 1/64, ..., 8`` in Q0.15 (16384 .. 32757)."""

TANH_TABLE = _act_table(np.tanh)
"""tanh at ``0, 1/64, ..., 8`` in Q0.15, saturated at 32767 (0 .. 32767)."""


def _interp_abs(table: IntArray, x: IntArray) -> tuple[IntArray, IntArray]:
    """``p = T[i] + rshift_round((T[i+1] - T[i]) * f, 6)`` at ``u = min(|x|, 32767)``,
    ``i = u >> 6``, ``f = u & 63``. Returns ``(p, x < 0)``.

    ``p`` lies between ``T[i]`` and ``T[i+1]`` (``|round((T[i+1]-T[i]) * f / 64)| <= |T[i+1]-T[i]|``
    for ``0 <= f < 64``), so a monotone table gives a monotone function and nothing overflows.
    """
    u = np.minimum(np.abs(x), INT16_MAX)  # -32768 is read as -32767: keeps i + 1 inside the table
    i = u >> ACT_SEGMENT_SHIFT
    f = u & ((1 << ACT_SEGMENT_SHIFT) - 1)
    lo = table[i]
    p = lo + rshift_round((table[i + 1] - lo) * f, ACT_SEGMENT_SHIFT)
    return p, x < 0


def sigmoid_q(x_q: ArrayLike) -> IntArray:
    """sigmoid of int16 Q3.12 inputs, in Q0.15.

    ``p`` = interpolation of ``SIGMOID_TABLE`` at ``min(|x|, 32767)`` (see ``_interp_abs``);
    the result is ``p`` for ``x >= 0`` and ``32768 - p`` for ``x < 0``. It lies in
    ``[11, 32757]``, so no saturation is needed. C: ``sigmoid_q(int16_t x)``.
    """
    x = _as_int16(x_q, "x_q")
    p, neg = _interp_abs(SIGMOID_TABLE, x)
    return np.where(neg, ACT_ONE - p, p)


def tanh_q(x_q: ArrayLike) -> IntArray:
    """tanh of int16 Q3.12 inputs, in Q0.15.

    ``p`` = interpolation of ``TANH_TABLE`` at ``min(|x|, 32767)``; the result is ``p`` for
    ``x >= 0`` and ``-p`` for ``x < 0``, in ``[-32767, 32767]``. C: ``tanh_q(int16_t x)``.
    """
    x = _as_int16(x_q, "x_q")
    p, neg = _interp_abs(TANH_TABLE, x)
    return np.where(neg, -p, p)


# ----------------------------------------------------------------------------------------------
# Template context
# ----------------------------------------------------------------------------------------------


def qmath_context(prefix: str) -> dict[str, object]:
    """Everything ``templates/qmath.h.j2`` needs, as plain Python ints and lists.

    ``prefix`` starts every C name (e.g. ``"model_"`` gives ``model_sat16``) so that the
    helpers of two models link into one program. The template computes nothing from these.
    """
    if not prefix.isidentifier():
        raise ValueError(f"prefix {prefix!r} is not a C identifier")
    return {
        "prefix": prefix,
        "guard": f"{prefix.upper()}QMATH_H",
        "sigmoid_table": [int(v) for v in SIGMOID_TABLE],
        "tanh_table": [int(v) for v in TANH_TABLE],
        "act_table_len": ACT_TABLE_LEN,
        "act_table_points": (
            f"x_k = k * 2^-{ACT_IN.frac - ACT_SEGMENT_SHIFT}, k = 0..{ACT_TABLE_LEN - 1}"
        ),
        "act_segment_shift": ACT_SEGMENT_SHIFT,
        "act_segment_mask": (1 << ACT_SEGMENT_SHIFT) - 1,
        "act_abs_max": INT16_MAX,
        "act_one": ACT_ONE,
        "act_in_format": str(ACT_IN),
        "act_out_format": str(ACT_OUT),
    }
