"""The worst-case error of the float32 C's rational tanh and sigmoid (tinyrnn.numerics.helpers
``tanh_f``, ``sigmoid_f``, the spec of the C helpers ``tanh`` and ``sigmoid``), over every
float32 input in [0, 10] (tanh_f is odd: the negative inputs give the same errors) against
numpy's float64 tanh. Beyond 10 both are +-1 to float32. Also the worst *relative* error of
sigmoid_f over every float32 in [-88.7, 0] (its negative tail, where a gate multiplies a
possibly large state), against float64 1 / (1 + exp(-v)).

    python bench/fast_tanh.py             # every float32 in [0, 10]: about 1.1e9 inputs
    python bench/fast_tanh.py --stride 97  # every 97th one (a quick look)
"""

from __future__ import annotations

import argparse

import numpy as np

from tinyrnn.numerics.helpers import (
    SIGMOID_LOW,
    SIGMOID_MAX_RELATIVE_ERROR,
    TANH_MAX_ERROR,
    sigmoid_f,
    tanh_f,
)


def worst(stride: int, chunk: int = 1 << 24) -> dict[str, tuple[float, float]]:
    top = int(np.array(10.0, np.float32).view(np.uint32))
    out = {"tanh": (0.0, 0.0), "sigmoid": (0.0, 0.0)}
    for start in range(0, top + 1, chunk * stride):
        bits = np.arange(start, min(start + chunk * stride, top + 1), stride, dtype=np.uint32)
        v = bits.view(np.float32)
        exact = np.tanh(v.astype(np.float64))
        for name, got, ref in (("tanh", tanh_f(v), exact),
                               ("sigmoid", sigmoid_f(v), 0.5 + 0.5 * np.tanh(v / 2.0))):
            err = np.abs(got.astype(np.float64) - ref)
            k = int(err.argmax())
            if err[k] > out[name][0]:
                out[name] = (float(err[k]), float(v[k]))
        del exact
    return out


def worst_relative_sigmoid(stride: int, chunk: int = 1 << 24) -> tuple[float, float]:
    """The worst |sigmoid_f(v) / sigmoid(v) - 1| over every ``stride``-th float32 in
    [SIGMOID_LOW, 0], and where."""
    top = int(np.array(-SIGMOID_LOW, np.float32).view(np.uint32))
    out = (0.0, 0.0)
    for start in range(0, top + 1, chunk * stride):
        bits = np.arange(start, min(start + chunk * stride, top + 1), stride, dtype=np.uint32)
        v = -bits.view(np.float32)
        exact = 1.0 / (1.0 + np.exp(-v.astype(np.float64)))
        err = np.abs(sigmoid_f(v).astype(np.float64) / exact - 1.0)
        k = int(err.argmax())
        if err[k] > out[0]:
            out = (float(err[k]), float(v[k]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=1, help="take every n-th float32")
    args = parser.parse_args()
    for name, (err, at) in worst(args.stride).items():
        print(f"{name}: worst |error| {err:.3e} at {at!r} (stated bound {TANH_MAX_ERROR:.0e})")
    err, at = worst_relative_sigmoid(args.stride)
    print(f"sigmoid: worst relative error {err:.3e} at {at!r} over [{SIGMOID_LOW}, 0] "
          f"(stated bound {SIGMOID_MAX_RELATIVE_ERROR:.0e})")


if __name__ == "__main__":
    main()
