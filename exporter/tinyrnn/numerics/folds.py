"""Requantization folded at export time: ``rshift_round(acc * M, n)`` of one accumulator part
as one rounded high-word multiply, where the exporter can prove it exact and in range.

The quantizer gives every part of a gate row a multiplier ``M`` (15 bits) and a shift ``n``;
the reference computes ``rescale(acc, M, n) = rshift_round(acc * M, n)`` in int64. On a
Cortex-M that is a 64-bit product and a 64-bit rounding shift per gate row. The lowering
folds the shift into the multiplier instead:

- :class:`Fold32` (32-bit sums, ``0 <= n <= 32``): ``k + c * 2**32 = M * 2**(32 - n)`` with
  ``-2**31 <= k < 2**31``, then ``rshift_round(acc * M, n) = c * acc + mmulr(acc, k)``
  (``mmulr(a, k) = (a * k + 2**31) >> 32``, one SMMULR, or SMMLAR with an addend). Exact:
  ``acc * M * 2**(32 - n) = c * acc * 2**32 + acc * k`` and the first term is a multiple of
  2**32. It is used when ``|c| * bound < 2**31`` for every row (``c * acc`` fits int32).
- :class:`Fold64` (64-bit sums, ``M * 2**(32 - n) < 2**32``): ``mmulr64(acc, k)`` with
  ``k = M * 2**(32 - n)``, computed modulo 2**32 from the two words of ``acc``: exact when the
  result fits int32, which the bound proves.
- otherwise :class:`Rescale`: the int64 ``rescale`` with ``M`` and ``n``.

A fold covers one side (the x parts or the h parts) of all G gate rows of a layer, because
the kernels deliver one side's G sums at a time: if one row cannot be folded, the side keeps
the int64 form. ``bound`` is the largest ``|rescale(acc, M, n)|`` over all accumulators the
quantizer's bound allows, plus one for the rounding; the lowering adds two sides' bounds to
prove that their sum fits int32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INT32_LIMIT = 1 << 31


@dataclass(frozen=True, eq=False)
class Fold32:
    """``c * acc + mmulr(acc, k)`` per row and gate (32-bit sums)."""

    k: np.ndarray  # int64 (rows, G), in [-2**31, 2**31)
    c: np.ndarray  # int64 (rows, G)
    bound: np.ndarray  # int64 (rows, G): the largest |result|

    @property
    def has_c(self) -> bool:
        return bool(self.c.any())


@dataclass(frozen=True, eq=False)
class Fold64:
    """``mmulr64(acc, k)`` per row and gate (64-bit sums)."""

    k: np.ndarray  # int64 (rows, G), in [0, 2**32)
    bound: np.ndarray


@dataclass(frozen=True, eq=False)
class Rescale:
    """``rescale(acc, mult, shift)`` in int64 (nothing folded)."""

    mult: np.ndarray  # int64 (rows, G)
    shift: np.ndarray
    bound: np.ndarray | None = None


Fold = Fold32 | Fold64 | Rescale


def fold_side(acc_bounds: Sequence[np.ndarray], mults: Sequence[np.ndarray],
              shifts: Sequence[np.ndarray], acc_bits: int) -> Fold:
    """The requantization of one side of every gate: ``acc_bounds[g]``, ``mults[g]`` and
    ``shifts[g]`` are gate g's per-row accumulator bound, ``M`` and ``n``; ``acc_bits`` the
    width its sums are accumulated in (32 or 64)."""
    mult = np.stack([np.asarray(m, dtype=np.int64) for m in mults], axis=1)
    shift = np.stack([np.asarray(s, dtype=np.int64) for s in shifts], axis=1)
    bound = np.stack([np.asarray(b, dtype=np.int64) for b in acc_bounds], axis=1)
    rescaled = [[(int(a) * int(m) >> int(n)) + 1 for a, m, n in zip(ra, rm, rn)]
                for ra, rm, rn in zip(bound, mult, shift)]
    if (shift > 32).any() or (shift < 0).any() or (mult <= 0).any() \
            or max((max(r) for r in rescaled), default=0) >= INT32_LIMIT:
        return Rescale(mult, shift)
    out_bound = np.array(rescaled, dtype=np.int64).reshape(mult.shape)
    full = [[int(m) << (32 - int(n)) for m, n in zip(rm, rn)] for rm, rn in zip(mult, shift)]
    if acc_bits == 32:
        c = [[(f + (1 << 31)) >> 32 for f in row] for row in full]
        if any(abs(ci) * int(a) >= INT32_LIMIT
               for rc, ra in zip(c, bound) for ci, a in zip(rc, ra)):
            return Rescale(mult, shift)
        k = [[f - ci * (1 << 32) for f, ci in zip(rf, rc)] for rf, rc in zip(full, c)]
        return Fold32(np.array(k, dtype=np.int64).reshape(mult.shape),
                      np.array(c, dtype=np.int64).reshape(mult.shape), out_bound)
    if max((max(r) for r in full), default=0) < 1 << 32:
        return Fold64(np.array(full, dtype=np.int64).reshape(mult.shape), out_bound)
    return Rescale(mult, shift)


def sum_fits_int32(x: Fold, h: Fold, gate: int) -> bool:
    """Whether the two folded sides of ``gate`` and their sum fit int32 for every input."""
    if isinstance(x, Rescale) or isinstance(h, Rescale):
        return False
    return int((x.bound[:, gate] + h.bound[:, gate]).max()) < INT32_LIMIT
