"""The property test of host_tests/test_fuzz.py, for longer and with fresh random examples.

    python bench/fuzz.py [--batches 40] [--models 8] [--seed N] [--sanitizer-steps 20000]

Hypothesis draws ``--batches`` batches of ``--models`` random models (cell, sizes, layers,
direction, projection, head, format; see host_tests/fuzz_models.py) and random inputs with
special values, and checks each C entry point against the bit-exact reference (integer formats)
or torch (float32), then runs every model under ASan + UBSan. Without --seed the examples are
new on every run; a failure is shrunk and printed with the seed that reproduces it. Prints the
totals: batches, models by cell and format, sanitizer steps, findings.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))
sys.path.insert(0, str(ROOT / "host_tests"))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_models import check_batch, specs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None, help="reproduce a run")
    parser.add_argument("--sanitizer-steps", type=int, default=20_000,
                        help="time steps per model under the sanitizers")
    args = parser.parse_args()
    counts: collections.Counter = collections.Counter()
    totals = {"batches": 0, "models": 0, "steps": 0}
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="tinyrnn-fuzz-") as tmp:
        @settings(max_examples=args.batches, deadline=None, database=None,
                  derandomize=False, suppress_health_check=list(HealthCheck))
        @given(batch=st.lists(specs(), min_size=args.models, max_size=args.models,
                              unique=True), data=st.data())
        def prop(batch, data):
            n = totals["batches"]
            root = Path(tmp) / f"b{n}"
            totals["batches"] += 1
            steps = check_batch(batch, data, root, sanitizer_steps=args.sanitizer_steps)
            totals["models"] += len(batch)
            totals["steps"] += steps
            counts.update((s.cell, s.fmt) for s in batch)
            print(f"batch {n + 1}: {len(batch)} models passed, {steps:,} sanitizer steps "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)

        if args.seed is not None:
            prop = seed(args.seed)(prop)
        prop()

    print(f"\n{totals['batches']} batches, {totals['models']} models, "
          f"{totals['steps']:,} time steps under ASan + UBSan, 0 findings, 0 mismatches "
          f"({time.perf_counter() - started:.0f} s)")
    cells = sorted({c for c, _ in counts})
    formats = sorted({f for _, f in counts})
    print("models by cell x format: " + "; ".join(
        f"{c} " + ", ".join(f"{f} {counts[(c, f)]}" for f in formats) for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
