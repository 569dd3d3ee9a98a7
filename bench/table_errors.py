"""Print the float32 error of the host test table against torch, per cell kind.

    python bench/table_errors.py

Exports all 240 cases of host_tests/models.py in float32, compiles them in one host build
and prints, per cell kind, the largest absolute error against torch over every output.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host_tests"))

from models import build, flat_numpy, table, torch_run  # noqa: E402
from tinyrnn.api import export_program  # noqa: E402
from tinyrnn.frontend.reader import capture  # noqa: E402
from tinyrnn.targets.host import load_many  # noqa: E402


def main() -> int:
    start = time.perf_counter()
    cases = table()
    worst: dict[str, float] = defaultdict(float)
    scale: dict[str, float] = defaultdict(float)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for case in cases:
            model, args = build(case)
            export_program(capture(model, args), Path(tmp) / case.name, name=case.name,
                           format="float32")
            dirs.append(Path(tmp) / case.name)
        for case, compiled in zip(cases, load_many(dirs)):
            model, args = build(case)
            for got, want in zip(compiled.run(*flat_numpy(args)), torch_run(model, args)):
                worst[case.cell] = max(worst[case.cell], float(np.max(np.abs(got - want))))
                scale[case.cell] = max(scale[case.cell], float(np.max(np.abs(want))))
    print(f"float32 C against torch over {len(cases)} cases "
          f"(48 per cell kind: direction x layers x batch_first x bias x initial state):")
    for cell, err in worst.items():
        print(f"  {cell:<10} max abs error {err:.2e}  (largest |output| {scale[cell]:.2f})")
    print(f"took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
