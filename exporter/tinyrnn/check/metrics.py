"""Error measures shared by verify, report and the benchmark."""

from __future__ import annotations

import math

import numpy as np


def sqnr_db(reference: np.ndarray, value: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (value - ref)^2) in dB; inf when equal, -inf for a zero signal."""
    ref = np.asarray(reference, dtype=np.float64)
    err = np.asarray(value, dtype=np.float64) - ref
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref * ref))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
