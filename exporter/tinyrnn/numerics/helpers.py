"""Integer numerics of the fixed-point exports (w8a16, w16a16): the one bit-exact specification.

Every integer function here is the reference of the C helper of the same name in
``templates/numerics.c.j2``: the C must equal it element for element
(``host_tests/test_numerics.py`` checks that, exhaustively where the domain allows). The rest
(:class:`QFormat`, :func:`acc_bound`, :func:`quantize_multiplier`, the tables and the softmax
constants) runs at export time and hands the C integers only. Integer results are ``np.int64``
arrays whose values lie in the stated range; integer inputs given as floats are refused, never
truncated. :data:`HELPERS` says which C helper needs which, so that an export carries only
the helpers, tables and kernels its model calls. ``docs/fixed-point.md`` describes the scheme.

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
Activations and states are int16 in a ``QFormat``; a matrix-vector product is accumulated
exactly in int32 or int64 (:func:`acc_bound` says which) and brought back by a per-row real
multiplier ``m ~= M * 2**-n`` (:func:`quantize_multiplier`, :func:`requant`, :func:`rescale`).

Wide pre-activations and the activation functions
-------------------------------------------------
A gate's pre-activation is held in ``ACT_WIDE`` = Q3.20 (24-bit values in an int32).
:func:`sigmoid_wide` interpolates a 513-point table of sigmoid on ``[0, 8]`` in Q0.15 with 14
fraction bits per segment; :func:`tanh_wide` interpolates a table of tanh in Q0.30 at the same
points and returns Q0.30 (int32), so that small values keep their relative precision (tanh's
output is the cell's signal; sigmoid's is a factor near 1/2).

- :func:`sat24`: clamp to the 24-bit range of ``ACT_WIDE``;
- :func:`rescale`: ``rshift_round(acc * M, n)`` without saturation (one part of a gate's
  pre-activation, in the wide format); :func:`mmulr`, :func:`mmlar` and :func:`mmulr64` are
  the rounded high-word multiplies the lowering folds it into (:mod:`tinyrnn.passes.lower`);
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
    C: ``rshift_round64`` gives the same values.
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
# Accumulators and requantization
# ----------------------------------------------------------------------------------------------


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
# Element-wise helpers (int16 in, int16 out)
# ----------------------------------------------------------------------------------------------

SAT_SHIFT_MAX = 31
"""Shifts of :func:`sat_shift` lie in ``[-31, 31]``."""

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


def clamp_q(x: ArrayLike, lo: int, hi: int) -> IntArray:
    """``min(max(x, lo), hi)`` of int32s into int16, ``-2**15 <= lo <= hi < 2**15`` (relu6,
    hardtanh, hardsigmoid's final clamp). C: ``clamp_q(int32_t x, int32_t lo, int32_t hi)``."""
    if not -(2**15) <= int(lo) <= int(hi) < 2**15:
        raise ValueError(f"clamp_q needs -2**15 <= lo <= hi < 2**15, got {lo}, {hi}")
    return np.clip(_as_int64(x, "x"), int(lo), int(hi))


def leaky_q(x: ArrayLike, M: int, n: int) -> IntArray:
    """leaky_relu of int16s, in their format: ``x`` for ``x >= 0``, else ``requant(x, M, n)``
    (the slope ``M * 2**-n``). C: ``leaky_q(int16_t x, int32_t M, int n)``."""
    xa = _as_int16(x, "x")
    return np.where(xa >= 0, xa, requant(xa, M, n))


def sum_time_q(x: ArrayLike, shift: int) -> IntArray:
    """The sum over axis 1 (time) of int16s, exact in int64, into int16 with ``shift`` fewer
    fraction bits: ``sat16(rshift_round(sum, shift))``, ``0 <= shift <= 62``.
    C: ``sum_time_q(x, y, T, n, shift)``."""
    if not 0 <= int(shift) <= REQUANT_MAX_SHIFT:
        raise ValueError(f"sum_time_q needs 0 <= shift <= {REQUANT_MAX_SHIFT}, got {shift}")
    return sat16(rshift_round(_as_int16(x, "x").sum(axis=1), int(shift)))


def mean_time_q(x: ArrayLike) -> IntArray:
    """The mean over axis 1 (time, T steps) of int16s in their format, rounded half up:
    ``floor((2 sum + T) / (2 T))`` with the exact int64 sum (always within int16).
    C: ``mean_time_q(x, y, T, n)``."""
    xa = _as_int16(x, "x")
    steps = xa.shape[1]
    return np.floor_divide(2 * xa.sum(axis=1) + steps, 2 * steps)


def max_time_q(x: ArrayLike) -> IntArray:
    """The maximum over axis 1 (time) of int16s. C: ``max_time_q(x, y, T, n)``."""
    return _as_int16(x, "x").max(axis=1)


def pool_windows(steps: int, kernel: int, stride: int, pad: int) -> list[tuple[int, int]]:
    """The input steps ``[lo, hi)`` inside the sequence that each output step of a pooling
    window reads (torch's output length ``(T + 2 pad - kernel) // stride + 1``)."""
    out = (steps + 2 * pad - kernel) // stride + 1 if steps + 2 * pad >= kernel else 0
    return [(max(t * stride - pad, 0), min(t * stride - pad + kernel, steps))
            for t in range(out)]


def max_pool_q(x: ArrayLike, kernel: int, stride: int, pad: int) -> IntArray:
    """MaxPool1d over axis 1 (time) of int16s (B, T, n): the maximum of the steps of each
    window inside the sequence (torch pads with -inf). C: ``max_pool_q(x, y, T, n, kernel,
    stride, pad)``."""
    xa = _as_int16(x, "x")
    return np.stack([xa[:, lo:hi].max(axis=1)
                     for lo, hi in pool_windows(xa.shape[1], kernel, stride, pad)], axis=1)


def avg_pool_q(x: ArrayLike, kernel: int, stride: int, pad: int,
               count_include_pad: bool) -> IntArray:
    """AvgPool1d over axis 1 (time) of int16s (B, T, n), in their format: the exact sum of
    each window's steps inside the sequence divided by ``d`` (``kernel`` with
    ``count_include_pad``, else the steps summed), rounded half up as :func:`mean_time_q`:
    ``floor((2 sum + d) / (2 d))``; the sum, ``2 sum + d`` and the result fit int32 for
    ``kernel < 2**14``. C: ``avg_pool_q(x, y, T, n, kernel, stride, pad, count_include_pad)``."""
    xa = _as_int16(x, "x")
    outs = []
    for lo, hi in pool_windows(xa.shape[1], kernel, stride, pad):
        d = kernel if count_include_pad else hi - lo
        outs.append(np.floor_divide(2 * xa[:, lo:hi].sum(axis=1) + d, 2 * d))
    return np.stack(outs, axis=1)


def pad_time_q(x: ArrayLike, left: int, right: int, mode: str, value: int,
               shift: int) -> IntArray:
    """Padding of axis 1 (time) of int16s (B, T, n): ``constant`` steps of ``value`` (already
    in the output format), ``reflect`` or ``replicate``; every step of x moves into the output
    format, ``shift`` fraction bits fewer: ``rshift_round(x, shift)`` (never saturates).
    C: ``pad_time_q(x, y, T, n, left, right, mode, value, shift)``."""
    xa = rshift_round(_as_int16(x, "x"), int(shift))
    if mode == "constant":
        return np.pad(xa, ((0, 0), (left, right), (0, 0)), constant_values=int(value))
    return np.pad(xa, ((0, 0), (left, right), (0, 0)),
                  mode={"reflect": "reflect", "replicate": "edge"}[mode])


def abs_q(x: ArrayLike) -> IntArray:
    """``|x|`` of int16s, saturating (``|-32768|`` is 32767). C: ``abs_q(int16_t x)``."""
    return sat16(np.abs(_as_int16(x, "x")))



SQRT_Q_MAX_SHIFT = 15


def sqrt_q(x: ArrayLike, e: int) -> IntArray:
    """``round_half_up(sqrt(x * 2**e))`` of int16s (0 for ``x <= 0``; torch gives NaN below
    0), ``0 <= e <= 15``: x in a format of ``xf`` fraction bits gives the root in
    ``(xf + e) / 2``. Exact: the integer root ``r`` of ``v = x * 2**e`` (< 2**30), plus one
    when ``v - r**2 > r`` (the root is never exactly ``r + 1/2``), saturated to int16.
    C: ``sqrt_q(int16_t x, int e)``."""
    if not 0 <= int(e) <= SQRT_Q_MAX_SHIFT:
        raise ValueError(f"sqrt_q needs 0 <= e <= {SQRT_Q_MAX_SHIFT}, got {e}")
    v = np.maximum(_as_int16(x, "x"), 0) << int(e)
    r = _isqrt(v)
    return sat16(r + (v - r * r > r))


HYPOT_Q_MAX_SHIFT = 15


def _isqrt(v: IntArray) -> IntArray:
    """``floor(sqrt(v))`` of int64s below 2**53, exact (float64 is within one of it there)."""
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    r = np.where(r * r > v, r - 1, r)
    return np.where((r + 1) * (r + 1) <= v, r + 1, r)


def hypot_q(a: ArrayLike, b: ArrayLike, k: int) -> IntArray:
    """``round_half_up(sqrt(a**2 + b**2) * 2**-k)`` of int16s of one format, ``0 <= k <= 15``
    (the result has ``k`` fraction bits fewer). Exact: ``s = a**2 + b**2 <= 2**31`` fits a
    uint32, ``r`` its integer root; ``k = 0`` rounds up when ``s - r**2 > r``, else
    ``(r + 2**(k-1)) >> k`` (the root's fraction never matters beyond r there); saturated to
    int16. C: ``hypot_q(int16_t a, int16_t b, int k)``."""
    if not 0 <= int(k) <= HYPOT_Q_MAX_SHIFT:
        raise ValueError(f"hypot_q needs 0 <= k <= {HYPOT_Q_MAX_SHIFT}, got {k}")
    aa, bb = _as_int16(a, "a"), _as_int16(b, "b")
    total = aa * aa + bb * bb
    r = _isqrt(total)
    k = int(k)
    out = r + (total - r * r > r) if k == 0 else (r + (1 << (k - 1))) >> k
    return sat16(out)


# ----------------------------------------------------------------------------------------------
# Wide activations: Q3.20 -> sigmoid Q0.15, tanh Q0.30, by table and linear interpolation
# ----------------------------------------------------------------------------------------------

ACT_OUT = QFormat(16, 15)
"""Output format of :func:`sigmoid_wide` (and of softmax): Q0.15, ``[-1, 1)``."""

ACT_ONE = 2**ACT_OUT.frac
"""1.0 in Q0.15 (32768, not an int16): ``sigmoid(-x) = ACT_ONE - sigmoid(x)`` in integers."""

ACT_SEGMENT_SHIFT = 6
"""The tables have one point per 1/64 in value: ``f(k / 64)``, ``k = 0..512``, over ``[0, 8]``."""

ACT_TABLE_LEN = 8 * 2**ACT_SEGMENT_SHIFT + 1


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


SIGMOID_TABLE = ACT_OUT.quantize(_sigmoid(np.arange(ACT_TABLE_LEN) / 2.0**ACT_SEGMENT_SHIFT))
"""sigmoid at ``0, 1/64, ..., 8`` in Q0.15 (16384 .. 32757)."""
SIGMOID_TABLE.setflags(write=False)

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

    Same domain as :func:`requant`: ``|acc| < 2**47``, ``M < 2**15``,
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
    ``32768 - p``. ``T`` is :data:`SIGMOID_TABLE`.
    """
    p, neg = _interp_wide(SIGMOID_TABLE, x)
    return np.where(neg, 2**15 - p, p)


TANH30_TABLE = np.array(
    [int(round_half_up(math.tanh(k / 2**ACT_SEGMENT_SHIFT) * 2**30))
     for k in range(ACT_TABLE_LEN)], dtype=np.int64)
"""tanh at ``0, 1/64, ..., 8`` in Q0.30 (0 .. 1073741711)."""
TANH30_TABLE.setflags(write=False)


def tanh_wide(x: np.ndarray) -> np.ndarray:
    """tanh of Q3.20 (24-bit) inputs in Q0.30 (C: ``tanh_wide(int32_t)``): as
    :func:`sigmoid_wide` with :data:`TANH30_TABLE` (the interpolation product in int64) and
    ``-p`` for ``x < 0``. The result lies in ``[-2**30 + 1, 2**30 - 1]``."""
    p, neg = _interp_wide(TANH30_TABLE, x)
    return np.where(neg, -p, p)


def _sigmoid_packed() -> np.ndarray:
    t = SIGMOID_TABLE
    d = t[1:] - t[:-1]
    if not ((0 <= t[:-1]) & (t[:-1] < 2**15) & (-(2**15) <= d) & (d < 2**15)).all():
        raise AssertionError("the sigmoid table no longer packs into 16-bit halves")
    return d * 2**16 + t[:-1]


SIGMOID_PACKED = _sigmoid_packed()
""":data:`SIGMOID_TABLE` one word per segment for DSP cores, ``(T[i+1] - T[i]) * 2**16 + T[i]``
(C: ``sigmoid_wide``'s ``packed``): one load gives both halves, and one SMLAD of the word with
``f * 2**16 + 2**14`` plus ``2**13`` is ``T[i] 2**14 + (T[i+1] - T[i]) f + 2**13``, the same
interpolation as :func:`sigmoid_wide`."""
SIGMOID_PACKED.setflags(write=False)

TANH30_PAIRS = np.stack([TANH30_TABLE[:-1], 2 * (TANH30_TABLE[1:] - TANH30_TABLE[:-1])], axis=1)
""":data:`TANH30_TABLE` as ``(T[i], 2 (T[i+1] - T[i]))`` per segment for DSP cores (C:
``tanh_wide``'s ``pairs``, one LDRD), the operands of its ``mmlar``."""
TANH30_PAIRS.setflags(write=False)


def mul_q30(a: np.ndarray, t: np.ndarray, shift: int) -> np.ndarray:
    """``sat16(rshift_round(a * t, shift))`` for int16 ``a`` and a Q0.30 int32 ``t``
    (C: ``mul_q30``); ``|a * t| < 2**45``, exact in int64."""
    return sat16(rshift_round(np.asarray(a, np.int64) * np.asarray(t, np.int64), shift))


MUL_Q30_HI_SHIFTS = range(16, 33)
"""The shifts for which :func:`mul_q30_hi` computes :func:`mul_q30` in one high-word multiply."""


def mul_q30_hi(a: np.ndarray, t: np.ndarray, up: int) -> np.ndarray:
    """``sat16(mmulr(a * 2**up, t))`` (C: ``mul_q30_hi``) for int16 ``a``, a Q0.30 ``t`` and
    ``0 <= up <= 16``: ``a * 2**up`` fits int32 (the C shifts the bits as uint32),
    and ``(a 2**up t + 2**31) >> 32 = (a t + 2**(s-1)) >> s`` with ``s = 32 - up``, so it equals
    ``mul_q30(a, t, 32 - up)`` (the lowering uses it for shifts 16..32: one SMMULR)."""
    if not 0 <= up <= 16:
        raise ValueError(f"mul_q30_hi takes 0 <= up <= 16, got {up}")
    return sat16(mmulr(_as_int16(a, "a") * (1 << up), t))


def mmulr(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``(a * m + 2**31) >> 32`` for int32 ``a`` and ``m`` (C: ``mmulr``; SMMULR on the DSP
    cores): the rounded high word of the 64-bit product, always an int32."""
    a, m = _int32(a, "a"), _int32(m, "m")
    return (a * m + (1 << 31)) >> 32


def mmlar(a: np.ndarray, m: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``r + mmulr(a, m)`` (C: ``mmlar``; SMMLAR), which must fit int32 (the lowering proves
    it from the accumulator bounds; raises ``OverflowError`` otherwise)."""
    return _fits32(_int32(r, "r") + mmulr(a, m), "mmlar")


def mmulr64(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``(a * k + 2**31) >> 32`` for an int64 ``a`` and ``0 <= k < 2**32`` (C: ``mmulr64``, which
    computes it modulo 2**32 from the two words of ``a``: exact when the result fits int32,
    which the lowering proves; raises ``OverflowError`` otherwise)."""
    a = np.asarray(a, dtype=np.int64).astype(object)
    k = np.asarray(k, dtype=np.int64)
    if ((k < 0) | (k >= 1 << 32)).any():
        raise ValueError("mmulr64 takes 0 <= k < 2**32")
    result = np.asarray((a * k.astype(object) + (1 << 31)) >> 32)
    return _fits32(result.astype(np.int64), "mmulr64")


def sat24_32(x: np.ndarray) -> np.ndarray:
    """:func:`sat24` of an int32 (C: ``sat24_32``, one SSAT on ARMv7-M)."""
    return sat24(_int32(x, "x"))


def mul16x32(c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``c * d`` exactly, for int16 ``c`` and int32 ``d`` (C: ``mul16x32``: two 16 x 16-bit
    pieces on ARMv6-M, which has no 32 x 32 -> 64-bit multiply)."""
    return _as_int16(c, "c") * _int32(d, "d")


def from_float(v: np.ndarray, frac: int) -> np.ndarray:
    """float32 -> int16: ``sat16(floor(v * 2**frac + 1/2))``, NaN -> 0 (C: ``from_float``, from
    the IEEE-754 bits with integer operations only)."""
    v = np.asarray(v, dtype=np.float32).astype(np.float64)
    return QFormat(16, frac).quantize(np.where(np.isnan(v), 0.0, v))


def _int32(x: ArrayLike, name: str) -> IntArray:
    arr = _as_int64(x, name)
    if ((arr < -(2**31)) | (arr > 2**31 - 1)).any():
        raise ValueError(f"{name} must hold int32 values")
    return arr


def _fits32(x: IntArray, what: str) -> IntArray:
    if ((x < -(2**31)) | (x > 2**31 - 1)).any():
        raise OverflowError(f"{what}: the result leaves int32")
    return x


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


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
DOT2_Q32_KA_MAX = 2**14


def sat32_i64(x: ArrayLike) -> IntArray:
    """Saturate an int64 to int32 (C: ``sat32_i64``)."""
    return np.clip(_as_int64(x, "x"), INT32_MIN, INT32_MAX)


def dot2_q32(a, b, ka: int, c, d, kc: int, shift: int) -> np.ndarray:
    """``sat32(rshift_round(a*b*ka + c*d*kc, shift))`` (C: ``dot2_q32``): :func:`dot2_q` with
    an int32 ``b`` (a 32-bit LSTM cell state) and an int32 result, for ``ka <= 2**14``,
    ``kc <= 2**16``: ``|a*b*ka| <= 2**15 * 2**31 * 2**14 = 2**60``, ``|c*d*kc| < 2**61``, so
    the int64 sum is exact."""
    for k, top in ((ka, DOT2_Q32_KA_MAX), (kc, DOT2_KC_MAX)):
        if not (0 < k <= top and k & (k - 1) == 0):
            raise ValueError(f"dot2_q32 factors must be powers of two up to {top}, got {k}")
    total = (mul16x32(a, b) * ka + np.asarray(c, np.int64) * np.asarray(d, np.int64) * kc)
    return sat32_i64(rshift_round(total, shift))

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


# ----------------------------------------------------------------------------------------------
# The C helpers: which needs which, and the tables they print
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Helper:
    """One helper of ``templates/numerics.c.j2`` (a macro of the same name)."""

    name: str
    needs: tuple[str, ...] = ()
    table_bytes: int = 0  # flash of its lookup table
    portable: tuple[str, ...] = ()  # what it calls only on cores without the DSP extension


# ---------------------------------------------------------------------------------------------
# float32 activations: a rational tanh, no expf or tanhf per element

TANH_CLAMP = np.float32(9.0)
"""|v| beyond this gives tanh(v) = +-1 (tanh(9) = 1 - 3e-8 rounds to 1 in float32)."""
TANH_P = np.array([0.9999998807907104, 0.13373196125030518, 0.0034865806810557842,
                   2.0471808966249228e-05, 1.3184194180837494e-08], dtype=np.float32)
"""Numerator coefficients (of t^0..t^4, t = v^2) of :func:`tanh_f`: a minimax-like fit of
``tanh(v) = v P(v^2) / Q(v^2)`` on ``[0, 9]`` (weighted least squares, Lawson iterations;
``bench/fast_tanh.py`` refits it and measures the error over every float32 input)."""
TANH_Q = np.array([1.0, 0.4670649468898773, 0.02584197372198105, 0.0003271383175160736,
                   7.702651600993704e-07], dtype=np.float32)
"""Denominator coefficients (of t^0..t^4) of :func:`tanh_f`; ``Q(0) = 1``."""
TANH_MAX_ERROR = 4e-7
"""The worst |tanh_f(v) - tanh(v)| over every float32 ``v`` (``bench/fast_tanh.py``: 3.9e-7
near |v| = 8.95); also a bound of |sigmoid_f(v) - sigmoid(v)| (1.2e-7, see :func:`sigmoid_f`)."""

SIGMOID_LOW = np.float32(-88.7)
"""sigmoid_f(v) = 0 below this: e^-v would overflow float32 (expf's limit is 88.72)."""
SIGMOID_CLAMP = np.float32(89.0)
"""sigmoid_den_f clamps -v to at most this: e^89 overflows float32, so the denominator is +inf
below -89 (from about -88.72 on), and the exponent n = 128 stays in range."""
SIGMOID_HIGH = np.float32(17.0)
"""sigmoid_f(v) = 1 above this: e^-17 = 4.1e-8 is below half an ulp of 1."""
EXP_LOG2E = np.float32(1.4426950408889634)
EXP_ROUND = np.float32(12582912.0)
"""1.5 * 2^23: ``(t + EXP_ROUND) - EXP_ROUND`` is t rounded to the nearest integer (|t| < 2^22)."""
EXP_LN2_HI = np.float32(0.693145751953125)
"""ln 2 to 16 significant bits: n * EXP_LN2_HI is exact for |n| < 256."""
EXP_LN2_LO = np.float32(1.4286068203094173e-06)
"""ln 2 - EXP_LN2_HI."""
EXP_POLY = np.array([1.0 / math.factorial(k) for k in range(8)], dtype=np.float32)
"""e^r = sum r^k / k!, k = 0..7 (Horner): the truncation is 5e-9 relative for |r| <= ln 2 / 2."""
SIGMOID_MAX_RELATIVE_ERROR = 3e-7
"""The worst |sigmoid_f(v) / sigmoid(v) - 1| over float32 ``v`` >= -88.7 (``bench/fast_tanh.py``:
2.5e-7, at v = -88.57, where sigmoid is subnormal; about 1.5e-7 elsewhere)."""


def _c_float(v: float) -> str:
    """A float32 constant as a C literal that reads back to the same float."""
    text = f"{float(np.float32(v)):.9g}"
    return f"{text}f" if "." in text or "e" in text else f"{text}.0f"


def tanh_div_f(v: np.ndarray, d: np.ndarray) -> np.ndarray:
    """tanh(v) / d in float32 as the C helper ``tanh_div`` computes it, operation by operation
    (Horner, one rounding per multiply and add, C99 without contraction): ``x = clamp(v, +-9)``,
    ``x P(x^2) / (Q(x^2) d)``: one division for the tanh and the quotient. NaN stays NaN."""
    v = np.asarray(v, dtype=np.float32)
    d = np.asarray(d, dtype=np.float32)
    x = np.where(v > TANH_CLAMP, TANH_CLAMP, np.where(v < -TANH_CLAMP, -TANH_CLAMP, v))
    t = x * x
    p, q = TANH_P[4], TANH_Q[4]
    for k in range(3, -1, -1):
        p = p * t + TANH_P[k]
        q = q * t + TANH_Q[k]
    with np.errstate(all="ignore"):
        return ((x * p) / (q * d)).astype(np.float32)


def tanh_f(v: np.ndarray) -> np.ndarray:
    """tanh in float32 as the C helper ``tanh`` computes it: ``tanh_div_f(v, 1)``, that is
    ``x P(x^2) / Q(x^2)`` with ``x = clamp(v, +-9)``. NaN stays NaN."""
    return tanh_div_f(v, np.float32(1.0))


def _exp_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p, scale)`` with ``e^x = p * scale * 2`` as the C computes it (``n = round(x log2 e)``
    by :data:`EXP_ROUND`, ``r = (x - n ln2_hi) - n ln2_lo``, p = e^r by :data:`EXP_POLY`,
    scale = 2^(n-1) from the exponent bits), for x in [-SIGMOID_HIGH, SIGMOID_CLAMP]; a NaN x
    gives a NaN p."""
    with np.errstate(all="ignore"):
        n = (x * EXP_LOG2E + EXP_ROUND) - EXP_ROUND
        r = (x - n * EXP_LN2_HI) - n * EXP_LN2_LO
        p = EXP_POLY[7]
        for c in EXP_POLY[6::-1]:
            p = p * r + c
        whole = np.where(np.isnan(n), 0, n).astype(np.int32)
    return p, ((whole + 126) << 23).astype(np.uint32).view(np.float32)


def sigmoid_den_f(v: np.ndarray) -> np.ndarray:
    """``1 + e^-v`` in float32 as the C helper ``sigmoid_den`` computes it, operation by operation
    (C99 without contraction), e^-v as :func:`sigmoid_f` computes it (:func:`_exp_parts`) with
    -v clamped to at most :data:`SIGMOID_CLAMP`: 1 above :data:`SIGMOID_HIGH`, +inf below about
    -88.72 (e^-v overflows), NaN stays NaN. ``1 / sigmoid_den_f(v)`` is sigmoid with sigmoid_f's
    error bound from SIGMOID_LOW up; a product of gates divides by several denominators at once
    (:func:`tanh_div_f`)."""
    v = np.asarray(v, dtype=np.float32)
    with np.errstate(all="ignore"):
        p, scale = _exp_parts(np.clip(-v, -SIGMOID_HIGH, SIGMOID_CLAMP))
        den = np.float32(1.0) + p * scale * np.float32(2.0)
    den = np.where(v > SIGMOID_HIGH, np.float32(1.0), den)
    return np.where(np.isnan(v), v, den).astype(np.float32)


def sigmoid_f(v: np.ndarray) -> np.ndarray:
    """sigmoid in float32 as the C helper ``sigmoid`` computes it, operation by operation (C99
    without contraction): ``1 / (1 + e)``, ``e = e^-v = 2^n e^r`` with ``n = round(-v log2 e)``
    (:data:`EXP_ROUND`), ``r = (-v - n ln2_hi) - n ln2_lo`` and e^r by :data:`EXP_POLY`, 2^n
    from the exponent bits (as ``2^(n-1) * 2``, so n = 128 rounds to infinity as it should);
    0 below :data:`SIGMOID_LOW`, 1 above :data:`SIGMOID_HIGH`, NaN stays NaN. No libm call.

    Not the rational tanh: a gate's sigmoid multiplies the carried state (``f * c``, ``z * h``),
    so it needs a small *relative* error deep in its negative tail, where ``sigmoid(v)`` is tiny
    and the state may be huge; ``0.5 + 0.5 tanh(v / 2)`` has only an absolute bound there
    (about 3e-8 instead of, e.g., 1e-30 at v = -69). This form keeps the relative error within
    :data:`SIGMOID_MAX_RELATIVE_ERROR` down to v = -88.7."""
    v = np.asarray(v, dtype=np.float32)
    with np.errstate(all="ignore"):
        p, scale = _exp_parts(np.clip(-v, -SIGMOID_HIGH, -SIGMOID_LOW))  # replaced outside
        out = np.float32(1.0) / (np.float32(1.0) + p * scale * np.float32(2.0))
    out = np.where(v > SIGMOID_HIGH, np.float32(1.0), np.where(v >= SIGMOID_LOW, out,
                                                               np.float32(0.0)))
    return np.where(np.isnan(v), v, out).astype(np.float32)


def embedding_rows(table: np.ndarray, ids: ArrayLike) -> np.ndarray:
    """``embedding_f``/``embedding_q``: the rows ``table[ids]`` of a (V, d) table; ``ids`` are
    token ids, which the C's API checked (integers in ``0..V-1``; anything else raises)."""
    ids = np.asarray(ids)
    index = ids.astype(np.int64)
    if not (np.all(index == ids) and np.all((index >= 0) & (index < table.shape[0]))):
        raise ValueError(f"token ids outside 0..{table.shape[0] - 1} or not integers")
    return table[index]


HELPERS: tuple[Helper, ...] = (
    # float32
    Helper("dot"), Helper("tanh_div"), Helper("tanh", ("tanh_div",)), Helper("sigmoid_den"),
    Helper("sigmoid"), Helper("relu"),
    Helper("softmax_f"), Helper("log_softmax_f"), Helper("dot4_f"),
    Helper("conv_window_f", ("dot", "dot4_f")), Helper("conv1d_f", ("dot", "conv_window_f")),
    Helper("clamp_f"), Helper("leaky_relu_f"), Helper("hardsigmoid_f", ("clamp_f",)),
    Helper("hardswish_f", ("hardsigmoid_f",)), Helper("abs_f"), Helper("sqrt_f"),
    Helper("mean_time_f"), Helper("sum_time_f"), Helper("max_time_f"),
    Helper("frame_pad_f"), Helper("max_pool_f"), Helper("avg_pool_f"), Helper("embedding_f"),
    # integers
    Helper("dsp"),
    Helper("sat16"), Helper("sat16_i64", ("sat16",)),
    Helper("rshift_round64"),
    Helper("sat24"), Helper("sat24_32"),
    Helper("rescale", ("rshift_round64",)),
    Helper("requant", ("sat16_i64", "rshift_round64")),
    Helper("sat_shift", ("sat16_i64", "rshift_round64")),
    Helper("relu_q"),
    Helper("clamp_q"), Helper("leaky_q", ("requant",)), Helper("abs_q"), Helper("isqrt32"),
    Helper("sqrt_q", ("isqrt32",)), Helper("hypot_q", ("isqrt32",)), Helper("frame_pad_q"),
    Helper("embedding_q"),
    Helper("sum_time_q", ("sat16_i64", "rshift_round64")), Helper("mean_time_q"),
    Helper("max_time_q"), Helper("max_pool_q"), Helper("avg_pool_q"),
    Helper("pad_time_q", ("rshift_round64",)),
    Helper("mmulr", ("dsp",)), Helper("mmlar", ("dsp",), portable=("mmulr",)),
    Helper("mmulr64"),
    Helper("clamp_wide"),
    # the DSP cores' packed tables at -O2, the larger (portable and -Os builds: 2 and 4 bytes
    # per point)
    Helper("sigmoid_wide", ("clamp_wide", "dsp"), SIGMOID_PACKED.size * 4),
    Helper("tanh_wide", ("clamp_wide", "mmlar"), TANH30_PAIRS.size * 4),
    Helper("mul_q30", ("sat16_i64", "rshift_round64")),
    Helper("mul_q30_hi", ("sat16", "mmulr")),
    Helper("mul16x32"),
    Helper("dot2_q", ("sat16_i64", "rshift_round64", "mul16x32")),
    Helper("sat32_i64"),
    Helper("dot2_q32", ("sat32_i64", "rshift_round64", "mul16x32")),
    Helper("from_float"),
    Helper("dot_w8_acc32"), Helper("dot_w8_acc64"), Helper("dot_w16_acc32"),
    Helper("dot_w16_acc64"),
    *(Helper(f"conv1d_w{w}_acc{a}", (f"dot_w{w}_acc{a}", "requant"))
      for w in (8, 16) for a in (32, 64)),
    Helper("conv1d_x4_w8_acc32", ("dsp", "requant")),
    Helper("conv1d_x4_w16_acc64", ("dsp", "requant")),
    Helper("exp2_neg_q30", ("rshift_round64",), 4 * TABLE_LEN),
    Helper("exp_sum", ("exp2_neg_q30", "rshift_round64")),
    Helper("max_q"),
    Helper("softmax_q", ("max_q", "exp_sum", "exp2_neg_q30", "rshift_round64")),
    Helper("log2_q30", ("rshift_round64",), 4 * TABLE_LEN),
    Helper("log_softmax_q", ("max_q", "exp_sum", "log2_q30", "rescale", "sat16_i64",
                             "rshift_round64")),
)
_HELPER = {h.name: h for h in HELPERS}


def helper_closure(names: set[str] | list[str]) -> list[Helper]:
    """The helpers ``names`` call and everything they call, in print order."""
    return [h for h, _ in helper_guards(names)]


def helper_guards(names: set[str] | list[str]) -> list[tuple[Helper, bool]]:
    """:func:`helper_closure`, each helper with whether only the builds without the DSP
    extension need it (the C then compiles it under ``#if !NAME_DSP``)."""
    always: set[str] = set()
    portable: set[str] = set()
    todo = [(name, True) for name in names]
    while todo:
        name, needed = todo.pop()
        target = always if needed else portable
        if name in target or (not needed and name in always):
            continue
        target.add(name)
        helper = _HELPER[name]
        todo += [(n, needed) for n in helper.needs] + [(n, False) for n in helper.portable]
    portable -= always
    return [(h, h.name in portable) for h in HELPERS if h.name in always | portable]


def numeric_context() -> dict[str, object]:
    """The tables and constants ``templates/numerics.c.j2`` prints (computed here)."""
    return dict(
        tanh_clamp=_c_float(TANH_CLAMP),
        tanh_p=[_c_float(v) for v in TANH_P],
        tanh_q=[_c_float(v) for v in TANH_Q],
        tanh_max_error=f"{TANH_MAX_ERROR:.0e}",
        sigmoid_low=_c_float(SIGMOID_LOW),
        sigmoid_high=_c_float(SIGMOID_HIGH),
        sigmoid_clamp=_c_float(SIGMOID_CLAMP),
        exp_log2e=_c_float(EXP_LOG2E),
        exp_round=_c_float(EXP_ROUND),
        exp_ln2_hi=_c_float(EXP_LN2_HI),
        exp_ln2_lo=_c_float(EXP_LN2_LO),
        exp_poly=[_c_float(v) for v in EXP_POLY],
        sigmoid_max_relative_error=f"{SIGMOID_MAX_RELATIVE_ERROR:.0e}",
        sigmoid_table=[int(v) for v in SIGMOID_TABLE],
        tanh30_table=[int(v) for v in TANH30_TABLE],
        sigmoid_packed=[int(v) for v in SIGMOID_PACKED],
        tanh30_pairs=[[int(v) for v in pair] for pair in TANH30_PAIRS],
        act_table_len=ACT_TABLE_LEN,
        act_table_last=ACT_TABLE_LEN - 1,
        wide_max=WIDE_MAX,
        wide_min=-WIDE_MAX - 1,
        wide_format=str(ACT_WIDE),
        wide_segment_shift=WIDE_SEGMENT_SHIFT,
        wide_segment_mask=(1 << WIDE_SEGMENT_SHIFT) - 1,
        wide_segment_half=1 << (WIDE_SEGMENT_SHIFT - 1),
        wide_segment_one=1 << WIDE_SEGMENT_SHIFT,
        tanh_interp_shift=31 - WIDE_SEGMENT_SHIFT,
        usat_bits=ACT_WIDE.bits - 1,
        act_one=ACT_ONE,
        exp2_table=[int(v) for v in EXP2_TABLE],
        log2_table=[int(v) for v in LOG2_TABLE],
        table_len=TABLE_LEN,
        exp_frac=EXP_FRAC,
        exp_seg=EXP_SEG,
        exp_mask=(1 << EXP_FRAC) - 1,
        exp_seg_mask=(1 << EXP_SEG) - 1,
        log_seg_mask=(1 << LOG_SEG) - 1,
        exp_zero_at=EXP_ZERO_AT,
        log_seg=LOG_SEG,
        table_step=f"1/{2**TABLE_BITS}",
    )
