"""Mutate real .pt2 archives at random and export each: every outcome must be a clean one.

    python bench/fuzz_archives.py [--archives 1000] [--rate 0.003] [--seed 0]

Saves three models of the host test table (a bidirectional 2-layer LSTM with initial state,
a GRU, a projected LSTM), then, for each fuzzed archive, flips numbers, booleans, strings and
list lengths in the JSON entries (model.json, the weights and constants configs) with
probability ``rate`` per value and runs ``tinyrnn export`` in-process (float32 or w8a16). A
clean outcome is exit code 0, or exit code 2 with an ``error:`` line; anything else (an
exception escaping tinyrnn.cli.main, a traceback) is a crash and is printed. Prints the
counts and the most common first lines of the errors.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import random
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host_tests"))

from models import Case, build  # noqa: E402
from tinyrnn.cli import main as cli_main  # noqa: E402
from tinyrnn.frontend.reader import archive_bytes, trace  # noqa: E402


def _mutate(value, rng: random.Random, rate: float):
    if isinstance(value, dict):
        return {k: _mutate(v, rng, rate) for k, v in value.items()}
    if isinstance(value, list):
        out = [_mutate(v, rng, rate) for v in value]
        if out and rng.random() < rate:
            out.pop(rng.randrange(len(out)))
        if out and rng.random() < rate:
            out.append(copy.deepcopy(rng.choice(out)))
        return out
    if isinstance(value, bool):
        return (not value) if rng.random() < rate else value
    if isinstance(value, int) and rng.random() < rate:
        return rng.choice([0, 1, -1, value + 1, value - 1, 2**31, 2 * value, 3])
    if isinstance(value, str) and rng.random() < rate / 2:
        return rng.choice(["x", "", "getitem", "p_lstm_weight_ih_l0", value + "_1"])
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archives", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.003)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    bases = []
    for case in (Case("lstm", True, 2, True, True, True), Case("gru", False, 1, False, True,
                                                               False),
                 Case("lstm_proj", False, 2, True, False, True)):
        data = archive_bytes(trace(*build(case)))
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            bases.append({n: z.read(n) for n in z.namelist()})
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    crashes = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.archives):
            entries = dict(rng.choice(bases))
            for name in entries:
                if name.endswith(".json"):
                    doc = _mutate(json.loads(entries[name]), rng, args.rate)
                    entries[name] = json.dumps(doc).encode()
            path = Path(tmp) / f"m{k}.pt2"
            with zipfile.ZipFile(path, "w") as z:
                for name, data in entries.items():
                    z.writestr(name, data)
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = cli_main(["export", str(path), "--out", str(Path(tmp) / f"c{k}"),
                                     "--format", rng.choice(["float32", "w8a16"])])
            except BaseException:  # noqa: BLE001 - a crash is what this looks for
                crashes += 1
                print(f"crash on archive {k}:\n{traceback.format_exc()}")
                continue
            text = err.getvalue()
            lines = [line for line in text.splitlines() if line.startswith("error: ")]
            if "Traceback" in text or code not in (0, 2) or (code == 2 and not lines):
                crashes += 1
                print(f"unclean outcome on archive {k} (exit {code}):\n{text}")
                continue
            outcomes[f"exit {code}"] += 1
            if lines:
                errors[lines[0].split(": ", 2)[-1][:70]] += 1
    print(f"{args.archives} fuzzed archives (rate {args.rate}, seed {args.seed}): "
          f"{dict(outcomes)}, crashes {crashes}, {time.perf_counter() - start:.0f} s")
    for message, count in errors.most_common(12):
        print(f"  {count:4d}  {message}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
