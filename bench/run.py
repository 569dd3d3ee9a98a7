"""The tinyrnn benchmark: cost and accuracy of exported RNNs on Cortex-M, in one command.

    python bench/run.py --out bench/results

writes ``README.md`` (the report), PNG plots and ``results.json`` into the folder:

- cost: LSTM, GRU and RNN cells x (input, hidden) in (6, 32), (12, 32), (64, 64), (32, 128)
  x every number format the exporter offers (float32, w8a16, w16a16), profiled with
  ``tinyrnn.targets.profile``: instructions and estimated cycles of one step on a Cortex-M4,
  instructions on a Cortex-M0 and a Cortex-M7, flash and RAM. Each M4 figure is compared with
  the matrix-vector bound gates*H*(I+H)/0.8 cycles (int8 weights, 0.8 MAC/cycle);
- accuracy: small LSTM and GRU classifiers trained on JapaneseVowels and BasicMotions (the
  copies aeon ships, no download), torch float accuracy against each format's C accuracy,
  prediction agreement with torch and the SQNR of the logits.

Formats the exporter does not offer yet are listed as missing and picked up automatically
once it does. Every number is deterministic: same machine code, same emulated counts.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))

import tinyrnn  # noqa: E402
from tinyrnn import api  # noqa: E402
from tinyrnn.backend.dspasm import UNROLL_SPEED, UnitKernel, steady_cycles  # noqa: E402
from tinyrnn.backend.fpuasm import kernel_units  # noqa: E402
from tinyrnn.backend.fpuasm import steady_cycles as float_steady_cycles  # noqa: E402
from tinyrnn.backend.mveasm import MveKernel  # noqa: E402
from tinyrnn.backend.v6masm import steady_instructions_per_mac  # noqa: E402
from tinyrnn.cells import cell_spec, recurrent_macs  # noqa: E402
from tinyrnn.check.report import progress_bar, save_figure, sqnr_db  # noqa: E402
from tinyrnn.passes.layout import padded  # noqa: E402
from tinyrnn.targets.profile import lower_bound_cycles, profile  # noqa: E402

ALL_FORMATS = ("float32", "w8a16", "w16a16")
CELLS = ("lstm", "gru", "rnn")
SHAPES = ((6, 32), (12, 32), (64, 64), (32, 128))
CORES = ("cortex-m4", "cortex-m0", "cortex-m7")
BOUND_MACS_PER_CYCLE = 0.8
DATASETS = ("JapaneseVowels", "BasicMotions")
ACCURACY_HIDDEN = 32
SEED = 20240501


# ---------------------------------------------------------------------------------------------
# Models


class Cell(nn.Module):
    """One recurrent layer returning its output sequence: the unit the cost suite measures."""

    def __init__(self, cell: str, input_size: int, hidden: int) -> None:
        super().__init__()
        kinds: dict[str, type[nn.Module]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
        self.rnn = kinds[cell](input_size, hidden, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return y


class Classifier(nn.Module):
    """A recurrent layer and a linear head on the last step: the accuracy suite's model."""

    def __init__(self, cell: str, input_size: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.rnn = Cell(cell, input_size, hidden).rnn
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def available_formats() -> list[str]:
    """The formats of ALL_FORMATS this tinyrnn exports."""
    return [f for f in ALL_FORMATS if f in api.FORMATS]


def export(model: nn.Module, example: torch.Tensor, out: Path, fmt: str, name: str,
           calibration: torch.Tensor | None) -> dict:
    """tinyrnn.export, passing calibration data when the format and the API take it."""
    kwargs: dict[str, Any] = {"format": fmt, "name": name}
    if fmt != "float32" and calibration is not None:
        parameters = inspect.signature(tinyrnn.export).parameters
        for key in ("calibration", "calibration_data", "calibration_inputs"):
            if key in parameters:
                kwargs[key] = calibration
                break
    return tinyrnn.export(model.eval(), example, out, **kwargs)


# ---------------------------------------------------------------------------------------------
# Cost suite


@dataclass(frozen=True)
class CostCase:
    cell: str
    input_size: int
    hidden: int
    fmt: str

    @property
    def id(self) -> str:
        return f"{self.cell}_i{self.input_size}_h{self.hidden}_{self.fmt}"

    @property
    def macs(self) -> int:
        return recurrent_macs(self.cell, self.input_size, self.hidden)

    @property
    def bound_cycles(self) -> float:
        return lower_bound_cycles(self.cell, self.input_size, self.hidden, BOUND_MACS_PER_CYCLE)


def _profile_job(job: tuple[str, str]) -> dict[str, Any]:
    directory, cpu = job
    return profile(directory, cpu=cpu, measure_run=False).to_json()


def run_cost_suite(formats: Sequence[str], shapes: Sequence[tuple[int, int]],
                   cores: Sequence[str], work: Path, jobs: int) -> list[dict[str, Any]]:
    """Export every case, profile it on every core (in parallel); one row per case."""
    cases = [CostCase(cell, i, h, fmt) for cell in CELLS for (i, h) in shapes for fmt in formats]
    with progress_bar(len(cases), "export") as bar:
        for case in cases:
            torch.manual_seed(SEED)
            model = Cell(case.cell, case.input_size, case.hidden).eval()
            calibration = torch.randn(8, 24, case.input_size, generator=torch.Generator()
                                      .manual_seed(SEED))
            export(model, torch.zeros(1, 4, case.input_size), work / case.id, case.fmt,
                   "bench", calibration)
            bar.update()
    todo = [(str(work / case.id), cpu) for case in cases for cpu in cores]
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with progress_bar(len(todo), "profile") as bar, ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for job, result in zip(todo, pool.map(_profile_job, todo)):
            results[job] = result
            bar.update()
    rows = []
    for case in cases:
        per_core = {cpu: results[(str(work / case.id), cpu)] for cpu in cores}
        m4 = per_core.get("cortex-m4")
        row: dict[str, Any] = {
            "cell": case.cell, "input": case.input_size, "hidden": case.hidden,
            "format": case.fmt, "macs": case.macs, "bound_cycles": case.bound_cycles,
            "instructions": {cpu: p["instructions_per_step"] for cpu, p in per_core.items()},
            "functions": {cpu: {name: f["cycles"] if f["cycles"] is not None else
                                f["instructions"] for name, f in
                                (p.get("functions") or {}).items()}
                          for cpu, p in per_core.items()},
        }
        if m4 is not None:
            row.update({
                "m4_cycles": m4["cycles_per_step"], "m4_macs_per_cycle": m4["macs_per_cycle"],
                "m4_cycles_q": m4.get("cycles_per_step_q"),
                "ratio_to_bound": m4["cycles_per_step"] / case.bound_cycles,
                "flash_code": m4["flash_code_bytes"], "flash_model_code":
                m4["flash_model_code_bytes"], "flash_weights": m4["flash_weights_bytes"],
                "ram_state": m4["ram_state_bytes"], "ram_scratch": m4["ram_scratch_bytes"],
                "stack": m4["stack_bytes"], "ram_library": m4["ram_library_bytes"],
                "m4_mix": m4["instruction_mix"],
                "m4_functions": {name: f["cycles"] for name, f in
                                 (m4.get("functions") or {}).items()},
            })
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Targets of issue 6 (DSP kernels), beside their bounds and the anchors measured elsewhere

# (what, cell, I, H, format, core, target, bound, unit); unit "cycles" (M4 estimate per step) or
# "instructions/MAC" (M0).
TARGETS = (
    ("LSTM I=H=64", "lstm", 64, 64, "w8a16", "cortex-m4", 51_200, 40_960, "cycles"),
    ("GRU I=H=64", "gru", 64, 64, "w8a16", "cortex-m4", 38_400, 30_720, "cycles"),
    ("LSTM I=12, H=32", "lstm", 12, 32, "w8a16", "cortex-m4", 12_000, 7_040, "cycles"),
    ("LSTM I=32, H=128", "lstm", 32, 128, "w8a16", "cortex-m4", 128_000, 102_400, "cycles"),
    ("w16a16 LSTM I=H=64", "lstm", 64, 64, "w16a16", "cortex-m4", 41_000, 32_768, "cycles"),
    ("Cortex-M0 LSTM I=H=64", "lstm", 64, 64, "w8a16", "cortex-m0", 3.0, None,
     "instructions/MAC"),
)
# float32 on the M4F (issue 14): the bound is 3 cycles per MAC, the cheapest float MAC on the M4
# table (VLDM 1 per weight, VMUL 1, VADD 1; a VFMA alone is 3).
FLOAT_CYCLES_PER_MAC = 3
FLOAT_TARGETS = (
    ("LSTM I=H=64", "lstm", 64, 64, "float32", "cortex-m4", 110_000,
     FLOAT_CYCLES_PER_MAC * 4 * 64 * 128, "cycles"),
    ("GRU I=H=64", "gru", 64, 64, "float32", "cortex-m4", 85_000,
     FLOAT_CYCLES_PER_MAC * 3 * 64 * 128, "cycles"),
)
# Measured elsewhere with the same method (issue 6): unicorn block counts + the static M4 table.
ANCHORS = {
    ("lstm", 64, 64, "w8a16"): "CMSIS-NN arm_lstm_unidirectional_s8 131,598; keras2c float32 "
                               "523,423",
    ("lstm", 64, 64, "w16a16"): "CMSIS-NN arm_lstm_unidirectional_s16 148,765",
    ("gru", 64, 64, "w8a16"): "NNoM GRU q7/q15 plain C 188,296",
    ("lstm", 12, 32, "w8a16"): "CMSIS-NN s8 40,096",
}
CODE_SIZE_TARGET = 2048


# ---------------------------------------------------------------------------------------------
# Cortex-M55 (Helium): instructions per step counted under QEMU, the MVE kernels against the
# scalar DSP path the same core ran before them

M55_CASES = (("lstm", 64, 64), ("gru", 64, 64), ("lstm", 12, 32), ("lstm", 32, 128))
M55_LANES = 8  # int16 MACs per MVE instruction (VMLADAVA.S16: 8 lanes)
M55_TARGET = ("lstm", 64, 64, "w8a16", 0.5)  # issue 14: <= 0.5 instructions per MAC


def run_m55_suite(formats: Sequence[str], work: Path) -> list[dict[str, Any]]:
    """Each M55 case in each integer format built twice for mps3-an547: ``-mcpu=cortex-m55``
    (the MVE kernels) and ``-mcpu=cortex-m55+nomve`` (no Helium: the DSP assembly path, what
    the M55 ran before), each counted under QEMU -icount (tinyrnn.targets.qemucount)."""
    from dataclasses import replace

    from tinyrnn.targets import cross
    from tinyrnn.targets.boards import load_board
    from tinyrnn.targets.profile import measure_qemu
    from tinyrnn.targets.profile_image import build_image

    board = load_board("mps3-an547")
    scalar = replace(board, cpu_flags=tuple(
        f"{f}+nomve" if f == "-mcpu=cortex-m55" else f for f in board.cpu_flags))
    cases = [CostCase(cell, i, h, fmt) for cell, i, h in M55_CASES for fmt in formats
             if fmt in ("w8a16", "w16a16")]
    rows = []
    with progress_bar(len(cases), "cortex-m55") as bar:
        for case in cases:
            folder = work / case.id
            if not folder.exists():
                torch.manual_seed(SEED)
                calibration = torch.randn(8, 24, case.input_size,
                                          generator=torch.Generator().manual_seed(SEED))
                export(Cell(case.cell, case.input_size, case.hidden).eval(),
                       torch.zeros(1, 4, case.input_size), folder, case.fmt, "bench",
                       calibration)
            model = cross.ExportedModel.load(folder)
            counts = {label: measure_qemu(build_image(model, b, work / f"m55_{label}_{case.id}"))
                      for label, b in (("before", scalar), ("after", board))}
            bound = case.macs / M55_LANES
            kernel = MveKernel(cell_spec(case.cell).G, 8 if case.fmt == "w8a16" else 16,
                               32 if case.fmt == "w8a16" else 64)
            floor = case.hidden * kernel.steady_instructions(case.input_size, case.hidden)
            after = counts["after"].instructions_per_step
            rows.append({"cell": case.cell, "input": case.input_size, "hidden": case.hidden,
                         "format": case.fmt, "macs": case.macs,
                         "before": counts["before"].instructions_per_step,
                         "after": after, "after_q": counts["after"].details.get(
                             "instructions_per_step_q"), "bound": bound, "floor": floor,
                         "instructions_per_mac": after / case.macs,
                         "ratio_to_bound": after / bound,
                         "method": counts["after"].details["method"]})
            bar.update()
    return rows


def _head_model(input_size: int, hidden: int) -> nn.Module:
    return Classifier("lstm", input_size, hidden, 4)


def code_size_os(work: Path) -> dict[str, Any]:
    """Machine code of an LSTM(12, 32) + Linear(32, 4) w8a16 export at -Os for the M4 (text of
    the model's objects, the C file and the assembly kernels: weights and tables are .rodata
    and not counted)."""
    from tinyrnn.targets import cross, toolchain
    from tinyrnn.targets.boards import load_board

    torch.manual_seed(SEED)
    model = _head_model(12, 32).eval()
    out = work / "size_lstm_linear"
    export(model, torch.zeros(1, 4, 12), out, "w8a16", "sized",
           torch.randn(8, 24, 12, generator=torch.Generator().manual_seed(SEED)))
    board = load_board("mps2-an386")
    exported = cross.ExportedModel.load(out)
    jobs = [toolchain.CompileJob(source, out / f"{source.name}.o")
            for source in exported.sources]
    flags = [f for f in toolchain.CFLAGS if f != "-O2"] + ["-Os"]
    toolchain.compile_all(jobs, board.cpu_flags, "compiling at -Os", flags=flags)
    return {"what": "code size, LSTM(12, 32) + Linear(32, 4) w8a16, -Os, Cortex-M4",
            "measured": toolchain.text_bytes([job.output for job in jobs]),
            "target": CODE_SIZE_TARGET, "unit": "bytes"}


def kernel_floor(cell: str, input_size: int, hidden: int, fmt: str, cpu: str) -> float:
    """What the matrix-vector kernels alone cost at their steady rate, before loop, call and
    per-unit work: M4 cycles per step (tinyrnn.backend.dspasm.steady_cycles), or for the Cortex-M0
    the instructions per MAC of the ARMv6-M unit kernel (tinyrnn.backend.v6masm)."""
    G = cell_spec(cell).G
    if cpu == "cortex-m0":
        return steady_instructions_per_mac(G)
    if fmt == "float32":  # tinyrnn.backend.fpuasm.steady_cycles (columns in groups of 4)
        units = kernel_units(G, hidden)
        return round(hidden * (float_steady_cycles(G, input_size, units)
                               + float_steady_cycles(G, hidden, units)))
    bits = 8 if fmt == "w8a16" else 16
    xg, hg = padded(input_size) // 4, padded(hidden) // 4
    kernel = UnitKernel(G, xg, hg, True, True, bits)
    return hidden * steady_cycles(G, bits, xg + hg, kernel.pass_units(UNROLL_SPEED))


def targets(cost: list[dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    """Each target of issue 6 with its measured figure (profiling what the cost suite lacks)."""
    rows = []
    for what, cell, i, h, fmt, cpu, target, bound, unit in (*TARGETS, *FLOAT_TARGETS):
        match = [r for r in cost if (r["cell"], r["input"], r["hidden"], r["format"])
                 == (cell, i, h, fmt)]
        value_q = None
        if match and cpu == "cortex-m4":
            value = match[0]["m4_cycles"]
            value_q = match[0].get("m4_cycles_q")
            split = match[0].get("m4_functions", {})
        elif match:
            value = match[0]["instructions"][cpu] / match[0]["macs"]
            split = {name: round(n / match[0]["macs"], 2)
                     for name, n in match[0]["functions"][cpu].items()}
        else:
            torch.manual_seed(SEED)
            case = CostCase(cell, i, h, fmt)
            calibration = torch.randn(8, 24, i, generator=torch.Generator().manual_seed(SEED))
            export(Cell(cell, i, h).eval(), torch.zeros(1, 4, i), work / f"t_{case.id}", fmt,
                   "bench", calibration)
            prof = profile(work / f"t_{case.id}", cpu=cpu, measure_run=False).to_json()
            value = (prof["cycles_per_step"] if unit == "cycles"
                     else prof["instructions_per_step"] / case.macs)
            value_q = prof.get("cycles_per_step_q") if unit == "cycles" else None
            split = {n: f["cycles"] if f["cycles"] is not None else
                     round(f["instructions"] / case.macs, 2)
                     for n, f in (prof.get("functions") or {}).items()}
        rows.append({"what": f"{what} {fmt} on {cpu}", "measured": value, "measured_q": value_q,
                     "target": target,
                     "bound": bound, "floor": kernel_floor(cell, i, h, fmt, cpu),
                     "unit": unit, "met": value <= target,
                     "anchor": ANCHORS.get((cell, i, h, fmt), "") if cpu == "cortex-m4" else "",
                     "functions": split})
    size = code_size_os(work)
    size["met"] = size["measured"] <= size["target"]
    size["bound"] = None
    size["floor"] = None
    size["measured_q"] = None
    size["anchor"] = ""
    size["functions"] = {}
    rows.append(size)
    return rows


# ---------------------------------------------------------------------------------------------
# Accuracy suite


@dataclass
class Dataset:
    name: str
    train: list[np.ndarray]   # (T, I) float32 each, normalized
    train_y: np.ndarray
    test: list[np.ndarray]
    test_y: np.ndarray
    classes: list[str]


def load_dataset(name: str) -> Dataset:
    """A UEA dataset from aeon's bundled copy, per-channel normalized on the training split."""
    from aeon.datasets import load_classification

    def split(which: str) -> tuple[list[np.ndarray], np.ndarray]:
        x, y = load_classification(name, split=which)
        return [np.asarray(s, np.float32).T.copy() for s in x], np.asarray(y)

    train, train_labels = split("train")
    test, test_labels = split("test")
    stacked = np.concatenate(train, axis=0)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0) + 1e-6
    classes = sorted(set(train_labels.tolist()))
    index = {c: k for k, c in enumerate(classes)}

    def norm(items: list[np.ndarray]) -> list[np.ndarray]:
        return [((s - mean) / std).astype(np.float32) for s in items]

    return Dataset(name, norm(train), np.array([index[c] for c in train_labels]),
                   norm(test), np.array([index[c] for c in test_labels]), classes)


def _batches(data: Dataset, rng: np.random.Generator, size: int = 32
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of equal-length sequences (no padding, so the last step is the real one)."""
    by_length: dict[int, list[int]] = {}
    for k, seq in enumerate(data.train):
        by_length.setdefault(seq.shape[0], []).append(k)
    batches = []
    for members in by_length.values():
        members = list(rng.permutation(members))
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            batches.append((torch.from_numpy(np.stack([data.train[k] for k in chunk])),
                            torch.from_numpy(data.train_y[chunk])))
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def train_classifier(cell: str, data: Dataset, epochs: int) -> Classifier:
    """Adam, cross-entropy, fixed seeds: the same weights on every run of one machine."""
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = Classifier(cell, data.train[0].shape[1], ACCURACY_HIDDEN, len(data.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for x, y in _batches(data, rng):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    return model.eval()


def torch_logits(model: nn.Module, sequences: Sequence[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return np.stack([model(torch.from_numpy(s)[None]).numpy()[0] for s in sequences])


def c_logits(directory: Path, sequences: Sequence[np.ndarray]) -> np.ndarray:
    from tinyrnn.targets.host import load

    compiled = load(directory)
    return np.stack([compiled.run_sample({"x": s})[0] for s in sequences])


def run_accuracy_suite(formats: Sequence[str], work: Path, epochs: dict[str, int]
                       ) -> list[dict[str, Any]]:
    """Train, export in every format, run the C on the test split: one row per (data, cell)."""
    rows = []
    for name in DATASETS:
        data = load_dataset(name)
        longest = max(s.shape[0] for s in data.train)
        calibration = torch.from_numpy(np.stack([
            np.pad(s, ((0, longest - s.shape[0]), (0, 0))) for s in data.train]))
        for cell in ("lstm", "gru"):
            started = time.monotonic()
            model = train_classifier(cell, data, epochs[name])
            reference = torch_logits(model, data.test)
            predicted = reference.argmax(axis=1)
            row: dict[str, Any] = {
                "dataset": name, "cell": cell, "hidden": ACCURACY_HIDDEN,
                "train": len(data.train), "test": len(data.test),
                "classes": len(data.classes), "torch_accuracy":
                float(np.mean(predicted == data.test_y)), "formats": {}}
            with progress_bar(len(formats), f"{name} {cell}") as bar:
                for fmt in formats:
                    out = work / f"acc_{name}_{cell}_{fmt}"
                    example = torch.from_numpy(data.test[0])[None]
                    export(model, example, out, fmt, f"acc_{cell}", calibration)
                    logits = c_logits(out, data.test)
                    row["formats"][fmt] = {
                        "accuracy": float(np.mean(logits.argmax(axis=1) == data.test_y)),
                        "agreement": float(np.mean(logits.argmax(axis=1) == predicted)),
                        "sqnr_db": sqnr_db(reference, logits),
                        "max_abs_error": float(np.max(np.abs(logits - reference))),
                    }
                    bar.update()
            row["seconds"] = round(time.monotonic() - started, 1)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 8, "axes.grid": True,
                         "grid.alpha": 0.3})
    return plt


def _config_label(row: dict[str, Any]) -> str:
    return f"{row['cell'].upper()} {row['input']}x{row['hidden']}"


def _grouped_bars(ax: Any, rows: list[dict[str, Any]], formats: Sequence[str],
                  value: Callable[[dict[str, Any]], float | None]) -> list[str]:
    labels = list(dict.fromkeys(_config_label(r) for r in rows))
    width = 0.8 / max(1, len(formats))
    for k, fmt in enumerate(formats):
        ys = []
        for label in labels:
            match = [r for r in rows if _config_label(r) == label and r["format"] == fmt]
            v = value(match[0]) if match else None
            ys.append(math.nan if v is None else v)
        ax.bar(np.arange(len(labels)) + (k - (len(formats) - 1) / 2) * width, ys, width,
               label=fmt)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=35, ha="right")
    return labels


def plot_cost(rows: list[dict[str, Any]], formats: Sequence[str], out: Path) -> list[Path]:
    plt = _plt()
    paths = []

    fig, ax = plt.subplots(figsize=(9, 3.6))
    labels = _grouped_bars(ax, rows, formats, lambda r: r.get("m4_cycles"))
    bounds = [next(r["bound_cycles"] for r in rows if _config_label(r) == label)
              for label in labels]
    ax.plot(np.arange(len(labels)), bounds, "k_", ms=18, mew=2,
            label="bound gates*H*(I+H)/0.8")
    ax.set_yscale("log")
    ax.set_ylabel("cycles per step (estimate)")
    ax.set_title("Cortex-M4: estimated cycles of one time step")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "m4_cycles.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    _grouped_bars(axes[0], rows, formats, lambda r: r.get("m4_macs_per_cycle"))
    axes[0].axhline(BOUND_MACS_PER_CYCLE, color="black", lw=1, ls="--",
                    label="0.8 (int8 x int16 peak)")
    axes[0].set_ylabel("MACs per cycle")
    axes[0].set_title("Cortex-M4: MACs per cycle")
    axes[0].legend(fontsize=7)
    _grouped_bars(axes[1], rows, formats, lambda r: r.get("ratio_to_bound"))
    axes[1].axhline(1.0, color="black", lw=1, ls="--")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("cycles / bound")
    axes[1].set_title("Cortex-M4: ratio to the 0.8 MAC/cycle bound (1 = at the bound)")
    paths.append(save_figure(fig, out / "m4_efficiency.png"))

    cores = list(rows[0]["instructions"])
    fig, axes = plt.subplots(1, len(formats), figsize=(4.2 * len(formats), 3.6), squeeze=False)
    for ax, fmt in zip(axes[0], formats):
        subset = [r for r in rows if r["format"] == fmt]
        labels = [_config_label(r) for r in subset]
        width = 0.8 / len(cores)
        for k, cpu in enumerate(cores):
            ax.bar(np.arange(len(subset)) + (k - (len(cores) - 1) / 2) * width,
                   [r["instructions"][cpu] for r in subset], width, label=cpu)
        ax.set_xticks(np.arange(len(subset)), labels, rotation=35, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"instructions per step, {fmt}")
        ax.legend(fontsize=7)
    paths.append(save_figure(fig, out / "instructions_by_core.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    _grouped_bars(axes[0], rows, formats,
                  lambda r: (r["flash_model_code"] + r["flash_weights"]) / 1024)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("KiB")
    axes[0].set_title("flash: model code + weights (Cortex-M4 build)")
    axes[0].legend(fontsize=7)
    _grouped_bars(axes[1], rows, formats,
                  lambda r: (r["ram_state"] + r["ram_scratch"] + r["stack"]) / 1024)
    axes[1].set_ylabel("KiB")
    axes[1].set_title("RAM: state + scratch + stack")
    paths.append(save_figure(fig, out / "memory.png"))
    return paths


def plot_accuracy(rows: list[dict[str, Any]], formats: Sequence[str], out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    labels = [f"{r['dataset']}\n{r['cell'].upper()}" for r in rows]
    series = [("torch float", [r["torch_accuracy"] for r in rows])]
    series += [(f"C {fmt}", [r["formats"][fmt]["accuracy"] for r in rows]) for fmt in formats]
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series):
        ax.bar(np.arange(len(rows)) + (k - (len(series) - 1) / 2) * width,
               [100 * v for v in values], width, label=name)
    ax.set_xticks(np.arange(len(rows)), labels)
    ax.set_ylabel("test accuracy (%)")
    low = min(100 * v for _, values in series for v in values)
    ax.set_ylim(max(0, low - 10), 100.5)
    ax.set_title("classification accuracy: torch float vs exported C")
    ax.legend(fontsize=7, ncol=len(series))
    return save_figure(fig, out / "accuracy.png")


# ---------------------------------------------------------------------------------------------
# Report


def _first_line(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "not installed"
    return (done.stdout or done.stderr).strip().splitlines()[0]


def environment(argv: Sequence[str]) -> dict[str, str]:
    """The machine, tool versions and exact command of this run."""
    import capstone
    import matplotlib
    import unicorn

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import aeon

        aeon_version = aeon.__version__
    except ImportError:
        aeon_version = "not installed"
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {
        "command": "python bench/run.py " + shlex.join(argv),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "tinyrnn": f"{tinyrnn.__version__} (git {commit}"
                   + (", with uncommitted changes)" if dirty else ")"),
        "torch": torch.__version__, "numpy": np.__version__,
        "unicorn": unicorn.__version__, "capstone": capstone.__version__,
        "matplotlib": matplotlib.__version__, "aeon": aeon_version,
        "arm-none-eabi-gcc": _first_line(["arm-none-eabi-gcc", "--version"]),
        "qemu-system-arm": _first_line(["qemu-system-arm", "--version"]),
    }


def _num(value: float | None, spec: str = ",") -> str:
    return "-" if value is None else format(value, spec)


def _floor(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{round(value):,}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _db(value: float) -> str:
    return "exact" if value == math.inf else f"{value:.1f} dB"


def write_report(out: Path, env: dict[str, str], formats: Sequence[str],
                 missing: Sequence[str], cost: list[dict[str, Any]],
                 accuracy: list[dict[str, Any]], images: Sequence[Path],
                 seconds: float, goals: Sequence[dict[str, Any]] = (),
                 m55: Sequence[dict[str, Any]] = ()) -> Path:
    lines = ["# tinyrnn benchmark", "",
             "Cost and accuracy of exported recurrent layers on Cortex-M cores, measured "
             "without hardware (`tinyrnn profile`, method and cost table in "
             "[docs/profiling.md](../../docs/profiling.md)). Regenerate with the command below; "
             "every count repeats exactly.", "",
             "| | |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" if key == "command" else f"| {key} | {value} |"
              for key, value in env.items()]
    lines += [f"| formats | {', '.join(formats)}"
              + (f" (not yet offered by the exporter: {', '.join(missing)}; the bench picks "
                 "them up when it does)" if missing else "") + " |",
              f"| run time | {seconds:.0f} s |", ""]
    if goals:
        lines += [
            "## Targets (issue 6: DSP kernels; issue 14: float32)", "",
            "Each figure beside its target and its bound (gates x H x (I + H) / 0.8 cycles for "
            "w8a16, / 1.0 for w16a16, x 3 for float32: VLDM + VMUL + VADD per MAC), and "
            "beside implementations **measured elsewhere with the "
            "same method** (unicorn block counts + the static Cortex-M4 table, gcc 12.2 -O2; the "
            "figures quoted in issue 6, not re-measured here). *Kernel floor*: what the "
            "matrix-vector kernels alone cost at their steady rate, before loop, call and "
            "per-unit work (`tinyrnn.backend.dspasm.steady_cycles`: per group of 4 columns "
            "for int8 weights 23 cycles per LSTM unit, 17 per GRU unit and 5.75 per RNN unit "
            "where passes of 2 and 4 units share the activation loads, 11 per 2-row pass for "
            "int16; for float32 `tinyrnn.backend.fpuasm.steady_cycles`, "
            "3 + (1 + 4b) / (4bUG) + 1 / (4G) per MAC for U units per call; the ARMv6-M "
            "kernel's 3 + 2/G instructions "
            "per MAC, 4.5 for one row): the 14 registers of the M4 limit a pass to 4 to 6 rows, "
            "so 2 activation loads and a load-use cycle per burst come on top of the bound's "
            "LDR + 2 SXTB16 + 2 SMLAD. *Where the cycles go*: the M4 estimate per function of the "
            "counted step (`NAME_unit*` the generated assembly kernels; `NAME_lK_fwd` the "
            "per-unit work: requantization, sigmoid/tanh, cell update; `NAME_load` the float "
            "API's input conversion; for the Cortex-M0 instructions per MAC). *int16 API*: the "
            "same step through `NAME_step_q`, which takes and returns int16 like the kernels "
            "measured elsewhere (no float conversion).", "",
            "| target | measured | int16 API | target | bound | kernel floor | met "
            "| measured elsewhere (same method) | where the cycles go |",
            "|---|---|---|---|---|---|---|---|---|"]
        for g in goals:
            fmt = ".2f" if isinstance(g["measured"], float) and g["measured"] < 100 else ","
            split = ", ".join(f"{n} {v:,}" for n, v in list(g["functions"].items())[:4]
                              if v is not None)
            lines.append(
                f"| {g['what']} | {format(g['measured'], fmt)} {g['unit']} | "
                f"{_num(g.get('measured_q'))} | "
                f"{format(g['target'], ',') if g['target'] >= 100 else g['target']} | "
                f"{_num(g['bound'])} | {_floor(g.get('floor'))} | "
                f"{'yes' if g['met'] else 'no'} | {g['anchor']} | "
                f"{split} |")
        lines.append("")
    if cost:
        lines += [
            "## Cost of one time step", "",
            "One recurrent layer, no head, built with each core's production flags "
            "(`-O2 -mcpu=... -mfloat-abi=...`, newlib-nano) and counted under unicorn after "
            "3 steps from reset. **M4 cycles are an estimate** from the Cortex-M4 TRM cycle "
            "table (zero wait states, +2 per taken branch), not a cycle-accurate simulation. "
            "M0 and M7 show instructions only: the M7 dual-issues, and the M0's multiplier "
            "takes 1 or 32 cycles depending on the chip.", "",
            "The **bound** is the matrix-vector work at the M4's int8 x int16 peak: "
            "gates x H x (I + H) / 0.8 cycles (LSTM 4 gates, GRU 3, RNN 1); "
            "*ratio* = M4 cycles / bound (1.0 would be at the bound).", "",
            "| cell | I | H | format | MACs | M4 instructions | M4 cycles | MAC/cycle | bound "
            "| ratio | M0 instructions | M7 instructions |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in cost:
            ins = r["instructions"]
            lines.append(
                f"| {r['cell'].upper()} | {r['input']} | {r['hidden']} | {r['format']} | "
                f"{r['macs']:,} | {_num(ins.get('cortex-m4'))} | {_num(r.get('m4_cycles'))} | "
                f"{_num(r.get('m4_macs_per_cycle'), '.3f')} | {r['bound_cycles']:,.0f} | "
                f"{_num(r.get('ratio_to_bound'), '.2f')} | "
                f"{_num(ins.get('cortex-m0'))} | {_num(ins.get('cortex-m7'))} |")
        lines += ["", "![M4 cycles](m4_cycles.png)", "", "![M4 efficiency](m4_efficiency.png)",
                  "", "![instructions by core](instructions_by_core.png)", "",
                  "### Flash and RAM (Cortex-M4 build)", "",
                  "Flash: the model's code and its const data (weights, biases, tables); the C "
                  "library functions it calls (expf, tanhf, memcpy, ...) are listed apart. "
                  "RAM: `NAME_state_t` split as the manifest splits it, and the stack: the "
                  "larger of the deepest write under unicorn (library calls included) and gcc's "
                  "-fstack-usage sum through the model's call graph.", "",
                  "| cell | I | H | format | model code | weights | C library code | state | "
                  "scratch | stack |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in cost:
            lines.append(
                f"| {r['cell'].upper()} | {r['input']} | {r['hidden']} | {r['format']} | "
                f"{r['flash_model_code']:,} | {r['flash_weights']:,} | "
                f"{r['flash_code'] - r['flash_model_code']:,} | {r['ram_state']:,} | "
                f"{r['ram_scratch']:,} | {r['stack']:,} |")
        lines += ["", "![memory](memory.png)", ""]
    if m55:
        cell, i, h, fmt, target = M55_TARGET
        lines += [
            "## Cortex-M55 (Helium)", "",
            "Instructions per step on `mps3-an547`, counted by QEMU 7.2 with `-icount shift=0` "
            "(one virtual nanosecond per instruction; SysTick across 32 `NAME_step` calls, "
            "calibrated on a loop of known length: `tinyrnn profile --cpu cortex-m55`, "
            "docs/profiling.md). *Before*: the same export built with `-mcpu=cortex-m55+nomve`, "
            "which runs the scalar DSP assembly kernels, as every M55 build did before the MVE "
            "kernels. *After*: `-mcpu=cortex-m55`, the MVE kernels (VLDRB.S16 / VLDRH.S16 and "
            "VMLADAVA / VMLALDAVA). *Bound*: MACs / 8, one instruction per 8 int16 lanes, the "
            "multiply-accumulates alone (no loads, no per-unit work). *Kernel floor*: the MVE "
            "chunk loops alone, 2 + 2G instructions per chunk of 8 columns and unit "
            "(`tinyrnn.backend.mveasm.MveKernel.steady_instructions`); the rest of *after* is "
            "the per-unit scalar work (requantization, sigmoid/tanh tables, cell update), the "
            "sums' set-up and the float API's conversions. Instruction counts, not cycles: a "
            "vector instruction counts once whatever its beats.", "",
            f"Target (issue 14): {cell.upper()} I={i} H={h} {fmt} <= {target} instructions / "
            "MAC. *int16 API*: the same step through `NAME_step_q` (int16 in and out, no float "
            "conversion), as the M4 targets show it.", "",
            "| cell | I | H | format | MACs | before (DSP) | after (MVE) | instructions / MAC "
            "| int16 API | its instructions / MAC | bound | kernel floor | after / bound "
            "| before / after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in m55:
            lines.append(
                f"| {r['cell'].upper()} | {r['input']} | {r['hidden']} | {r['format']} | "
                f"{r['macs']:,} | {r['before']:,} | {r['after']:,} | "
                f"{r['instructions_per_mac']:.3f} | {_num(r['after_q'])} | "
                f"{_num(r['after_q'] and r['after_q'] / r['macs'], '.3f')} | {r['bound']:,.0f} | "
                f"{r['floor']:,} | "
                f"{r['ratio_to_bound']:.2f} | {r['before'] / r['after']:.2f} |")
        lines.append("")
    if accuracy:
        lines += [
            "## Accuracy", "",
            f"A {ACCURACY_HIDDEN}-unit LSTM or GRU and a linear head on the last step, trained "
            "with fixed seeds on the training split (per-channel normalization), evaluated on "
            "the test split one sequence at a time at its own length. *C* is the exported C "
            "compiled for the host (the same source as on the board). *Agreement*: the C "
            "predicts the class torch predicts. *SQNR*: of the C logits against torch's.", "",
            "| dataset | cell | train/test | torch float | "
            + " | ".join(f"C {f} acc. / agreement / SQNR" for f in formats) + " |",
            "|---|---|---|---|" + "---|" * len(formats)]
        for r in accuracy:
            cells = [f"{_pct(r['formats'][f]['accuracy'])} / {_pct(r['formats'][f]['agreement'])}"
                     f" / {_db(r['formats'][f]['sqnr_db'])}" for f in formats]
            lines.append(f"| {r['dataset']} | {r['cell'].upper()} | {r['train']}/{r['test']} | "
                         f"{_pct(r['torch_accuracy'])} | " + " | ".join(cells) + " |")
        lines += ["", "![accuracy](accuracy.png)", ""]
    lines += ["Raw numbers: [results.json](results.json).", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="folder for README.md, the PNG plots and results.json")
    parser.add_argument("--formats", default=",".join(ALL_FORMATS),
                        help="comma-separated formats (those the exporter lacks are skipped)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: two shapes, M4 only, few training epochs")
    parser.add_argument("--no-cost", action="store_true", help="skip the cost suite")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy suite")
    parser.add_argument("--no-m55", action="store_true",
                        help="skip the Cortex-M55 (Helium) rows counted under QEMU")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="profiles run in parallel (default: all cores)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    wanted = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in ALL_FORMATS]
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; known: {', '.join(ALL_FORMATS)}")
    formats = [f for f in wanted if f in available_formats()]
    missing = [f for f in wanted if f not in formats]
    shapes = SHAPES[:2] if args.quick else SHAPES
    cores = ("cortex-m4",) if args.quick else CORES
    epochs = {"JapaneseVowels": 3, "BasicMotions": 5} if args.quick else \
        {"JapaneseVowels": 40, "BasicMotions": 120}
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during")
    warnings.filterwarnings("ignore", message="RNN module weights are not part of single")

    with tempfile.TemporaryDirectory(prefix="tinyrnn-bench-") as tmp:
        work = Path(tmp)
        cost = [] if args.no_cost else run_cost_suite(formats, shapes, cores, work, args.jobs)
        goals = targets(cost, work) if cost else []
        m55 = [] if args.no_m55 or args.quick else run_m55_suite(formats, work)
        accuracy = [] if args.no_accuracy else run_accuracy_suite(formats, work, epochs)
    images: list[Path] = []
    if cost:
        images += plot_cost(cost, formats, out)
    if accuracy:
        images.append(plot_accuracy(accuracy, formats, out))
    seconds = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(_finite(
        {"environment": env, "formats": formats, "missing_formats": missing, "targets": goals,
         "cost": cost, "cortex_m55": m55,
         "accuracy": accuracy}), indent=1, default=_json_default) + "\n", encoding="utf-8")
    report = write_report(out, env, formats, missing, cost, accuracy, images, seconds, goals,
                          m55)
    print(f"wrote {report} and {len(images)} plot(s) in {seconds:.0f} s"
          + (f"; formats not offered yet: {', '.join(missing)}" if missing else ""))
    return 0


def _finite(value: Any) -> Any:
    """``value`` with infinite floats as None: strict JSON has no Infinity (an exact SQNR)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


if __name__ == "__main__":
    sys.exit(main())
