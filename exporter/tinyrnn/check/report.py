"""``tinyrnn report``: one page that shows how an exported model behaves and what it costs.

For one user model and its inputs the page holds: torch and C output traces for a few
sequences, the histogram of the C - torch differences, the output SQNR (and per layer, when
:mod:`tinyrnn.check.verify` offers it), flash and RAM against the chosen board's capacity, and the
instructions (and estimated cycles) of one time step on the board's core (:mod:`.profile`).

It writes ``report.md`` (PNG files beside it) and ``report.html`` (the same page with the
PNGs embedded: one self-contained file to mail or attach to a ticket).

    result = make_report("model.pt2", "out/", "x.npy", "report/", board="nucleo-f446re")
    result.html  # Path of the self-contained page
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TinyRNNError
from .metrics import sqnr_db

DEFAULT_BOARD = "mps2-an386"
TRACE_SAMPLES = 3     # sequences drawn in the traces plot
TRACE_FEATURES = 4    # features of each drawn
FIGURE_DPI = 100


# ---------------------------------------------------------------------------------------------
# Progress (stderr, only when it is a terminal)


def progress_bar(total: int, label: str, enabled: bool | None = None) -> Any:
    """A tqdm progress bar on stderr that clears itself when done. ``enabled=None``: only
    when stderr is a terminal (never in logs or pipes).

        with progress_bar(len(samples), "C on host") as bar:
            for s in samples:
                ...
                bar.update()
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=None if enabled is None else not enabled)


# ---------------------------------------------------------------------------------------------
# Numbers


@dataclass(frozen=True)
class OutputError:
    """How one output of the C differs from torch."""

    index: int
    role: str
    shape: tuple[int, ...]
    max_abs_error: float
    rms_error: float
    sqnr_db: float
    agreement: float | None  # argmax agreement over the last axis, for vector outputs


def compare_outputs(interface: Mapping[str, Any], torch_out: Sequence[np.ndarray],
                    c_out: Sequence[np.ndarray]) -> list[OutputError]:
    """Per-output error statistics of the C outputs against torch's."""
    errors = []
    for k, (spec, t, c) in enumerate(zip(interface["outputs"], torch_out, c_out)):
        diff = np.asarray(c, np.float64) - np.asarray(t, np.float64)
        agreement = None
        if spec["role"] == "vector" and t.ndim == 2 and t.shape[1] > 1:
            agreement = float(np.mean(np.argmax(t, axis=1) == np.argmax(c, axis=1)))
        errors.append(OutputError(
            index=k, role=spec["role"], shape=tuple(t.shape),
            max_abs_error=float(np.max(np.abs(diff))) if diff.size else 0.0,
            rms_error=float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0,
            sqnr_db=sqnr_db(t, c), agreement=agreement))
    return errors


def _per_sample(spec: Mapping[str, Any], array: np.ndarray) -> np.ndarray:
    """(batch, T, F) for sequences, (batch, F) for vectors, (batch, rows*W) for h_n/c_n."""
    moved = np.moveaxis(np.asarray(array), spec["batch_axis"], 0)
    if spec["role"] == "sequence":
        time_axis = spec["time_axis"] + (1 if spec["time_axis"] < spec["batch_axis"] else 0)
        return np.moveaxis(moved, time_axis, 1)
    return moved.reshape(moved.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise TinyRNNError("the report draws its plots with matplotlib, which is not "
                           "installed: pip install 'tinyrnn[bench]' (or pip install "
                           "matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": FIGURE_DPI, "font.size": 9, "axes.grid": True,
                         "grid.alpha": 0.3, "svg.hashsalt": "tinyrnn"})
    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write a figure as PNG without a timestamp, so equal plots give equal files."""
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_traces(path: Path, interface: Mapping[str, Any], torch_out: Sequence[np.ndarray],
                c_out: Sequence[np.ndarray], title: str) -> Path | None:
    """torch (lines) and C (markers) for the first sequences; None if nothing to draw."""
    plt = _pyplot()
    chosen = next((k for k, s in enumerate(interface["outputs"])
                   if s["role"] in ("sequence", "vector")), None)
    if chosen is None:
        return None
    spec = interface["outputs"][chosen]
    t = _per_sample(spec, torch_out[chosen])
    c = _per_sample(spec, c_out[chosen])
    samples = min(TRACE_SAMPLES, t.shape[0])
    fig, axes = plt.subplots(1, samples, figsize=(3.4 * samples, 2.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for s in range(samples):
        ax = axes[0][s]
        if spec["role"] == "sequence":
            steps = np.arange(t.shape[1])
            for f in range(min(TRACE_FEATURES, t.shape[2])):
                color = colors[f % len(colors)]
                ax.plot(steps, t[s, :, f], color=color, lw=1.2,
                        label=f"torch f{f}" if s == 0 else None)
                ax.plot(steps, c[s, :, f], "o", color=color, ms=2.5, mfc="none",
                        label=f"C f{f}" if s == 0 else None)
            ax.set_xlabel("time step")
        else:
            index = np.arange(t.shape[1])
            ax.bar(index - 0.2, t[s], width=0.4, label="torch" if s == 0 else None)
            ax.bar(index + 0.2, c[s], width=0.4, label="C" if s == 0 else None)
            ax.set_xlabel("output feature")
        ax.set_title(f"sample {s}", fontsize=9)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{title}: out{chosen} ({spec['role']}), torch vs C", fontsize=10)
    return save_figure(fig, path)


def plot_error_histogram(path: Path, torch_out: Sequence[np.ndarray],
                         c_out: Sequence[np.ndarray], title: str) -> Path:
    """Histogram of C - torch over every output value."""
    plt = _pyplot()
    diff = np.concatenate([(np.asarray(c, np.float64) - np.asarray(t, np.float64)).ravel()
                           for t, c in zip(torch_out, c_out)])
    fig, ax = plt.subplots(figsize=(6, 2.8))
    if diff.size and np.any(diff != 0):
        ax.hist(diff, bins=60, color="#4477aa")
    else:
        ax.text(0.5, 0.5, "C equals torch exactly", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("C - torch")
    ax.set_ylabel("values")
    ax.set_yscale("log" if diff.size and np.any(diff != 0) else "linear")
    ax.set_title(f"{title}: error of {diff.size:,} output values", fontsize=10)
    return save_figure(fig, path)


def plot_memory(path: Path, rows: Sequence[tuple[str, Mapping[str, int], int]],
                title: str) -> Path:
    """Stacked bars of what flash and RAM hold, against the board's capacity.

    When the model uses under 5% of a memory the axis ends just past the bar (the capacity is
    then written, not drawn), so that small models stay visible.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(6.4, 1.7 * len(rows) + 0.5),
                             squeeze=False)
    for ax, (label, parts, capacity) in zip(axes[:, 0], rows):
        left = 0
        for name, size in parts.items():
            ax.barh([0], [size / 1024], left=left / 1024, label=f"{name} {size:,} B")
            left += size
        share = 100.0 * left / capacity
        if share >= 5.0:
            ax.set_xlim(0, max(capacity, left) * 1.02 / 1024)
            ax.axvline(capacity / 1024, color="black", lw=1.2)
            where = "line: the board's capacity"
        else:
            ax.set_xlim(0, left * 1.3 / 1024)
            where = f"the board has {capacity / 1024:,.0f} KiB, off this scale"
        ax.set_yticks([])
        ax.set_xlabel("KiB", loc="right", labelpad=0)
        ax.set_title(f"{label}: {left:,} B of {capacity:,} B ({share:.2f}%); {where}",
                     fontsize=8.5)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.62), ncol=4,
                  frameon=False)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_layer_sqnr(path: Path, layers: Sequence[Mapping[str, Any]], title: str) -> Path:
    """Bars of per-layer SQNR in dB."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.8))
    names = [str(layer["name"]) for layer in layers]
    values = [float(layer["sqnr_db"]) for layer in layers]
    ax.bar(range(len(values)), [v if math.isfinite(v) else 0.0 for v in values])
    ax.set_xticks(range(len(values)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class Report:
    """What :func:`make_report` wrote and the numbers it put in the page."""

    markdown: Path
    html: Path
    images: list[Path]
    numbers: dict[str, Any] = field(default_factory=dict)


def _verification(model_path: Path, model_dir: Path, inputs: Sequence[np.ndarray]
                  ) -> tuple[list[dict] | None, str]:
    """Per-layer SQNR and the verdict from :func:`tinyrnn.check.verify.verify`, when it offers them.

    Integer formats report every layer of the bit-exact reference against the float model
    (``layers``); float32 reports none, and the page says so.
    """
    from .verify import verify

    result = verify(model_path, model_dir, inputs)
    verdict = str(result.get("lines", [""])[-1])
    layers = result.get("layers")
    if not layers:
        return None, verdict
    return [{"name": str(layer.get("layer", layer.get("index"))),
             "format": layer.get("format", "") + (f", {layer['weight_bits']}-bit weights"
                                                  if layer.get("weight_bits") else ""),
             "sqnr_db": float(layer["sqnr_db"]),
             "max_abs_error": float(layer.get("max_abs_error", math.nan))}
            for layer in layers], verdict


def make_report(model_path: str | Path, model_dir: str | Path, inputs: Any,
                out_dir: str | Path = "report", board: str = DEFAULT_BOARD,
                progress: bool | None = None) -> Report:
    """Compare torch and the exported C on ``inputs`` (a .npy/.npz path or the arrays,
    :func:`tinyrnn.io.read_inputs`), profile for ``board``, write a page.

    ``progress``: draw progress bars on stderr (default: when stderr is a terminal). The
    files appear in ``out_dir`` only when the page is complete (:mod:`tinyrnn.outputs`).
    """
    from ..outputs import output_folder

    out = Path(out_dir)
    with output_folder(out, "-o") as stage:
        made = _make_report(model_path, model_dir, inputs, stage, board, progress)
    return Report(markdown=out / made.markdown.name, html=out / made.html.name,
                  images=[out / p.name for p in made.images], numbers=made.numbers)


def _make_report(model_path: str | Path, model_dir: str | Path, given: Any,
                 out_dir: Path, board: str, progress: bool | None) -> Report:
    from ..frontend.reader import load_program
    from ..io import assemble_outputs, read_inputs, split_inputs
    from ..targets.boards import load_board
    from ..targets.costs import resolve_core
    from ..targets.host import load, read_manifest
    from ..targets.profile import profile
    from .verify import torch_outputs

    model_path, model_dir, out = Path(model_path), Path(model_dir), Path(out_dir)
    chosen = load_board(board)
    manifest = read_manifest(model_dir)
    interface = manifest["interface"]
    program = load_program(model_path)  # before anything is written: a bad archive stops here
    inputs = read_inputs(given)
    source = (f"input `{Path(given).name}`" if isinstance(given, (str, os.PathLike))
              else "inputs given in Python")
    samples = split_inputs(interface, inputs)
    title = f"{manifest['name']} ({manifest['format']})"

    with progress_bar(1, "torch", enabled=progress) as bar:
        torch_out = torch_outputs(program, inputs, interface)
        bar.update()
    compiled = load(model_dir)
    per_sample = []
    with progress_bar(len(samples), "C on the host", enabled=progress) as bar:
        for sample in samples:
            per_sample.append(compiled.run_sample(sample))
            bar.update()
    c_out = assemble_outputs(interface, per_sample, samples[0]["x"].shape[0])
    if len(c_out) != len(torch_out):
        raise TinyRNNError(f"the C returns {len(c_out)} outputs but the model returns "
                           f"{len(torch_out)}; was {model_dir} exported from {model_path}?")
    errors = compare_outputs(interface, torch_out, c_out)
    with progress_bar(1, "tinyrnn verify", enabled=progress) as bar:
        layers, verdict = _verification(model_path, model_dir, inputs)
        bar.update()

    with progress_bar(1, f"profile {chosen.core}", enabled=progress) as bar:
        try:
            resolve_core(chosen.core)
            cost = profile(model_dir, board=chosen)
        except TinyRNNError as exc:
            cost, cost_error = None, str(exc)
        else:
            cost_error = ""
        bar.update()

    images: list[Path] = []
    trace = plot_traces(out / "traces.png", interface, torch_out, c_out, title)
    images += [trace] if trace else []
    images.append(plot_error_histogram(out / "error_histogram.png", torch_out, c_out, title))
    if layers:
        images.append(plot_layer_sqnr(out / "layer_sqnr.png", layers,
                                      f"{title}: SQNR per layer"))
    numbers: dict[str, Any] = {
        "model": manifest["name"], "format": manifest["format"], "board": chosen.name,
        "core": chosen.core, "samples": len(samples),
        "outputs": [vars(e) | {"shape": list(e.shape)} for e in errors],
        "layer_sqnr": layers, "verify": verdict,
    }
    if cost is not None:
        flash = {"code": cost.flash_code_bytes, "weights": cost.flash_weights_bytes}
        ram = {"state": cost.ram_state_bytes, "scratch": cost.ram_scratch_bytes,
               "stack": cost.stack_bytes,
               "C library": int(cost.details.get("ram_library_bytes", 0))}
        images.append(plot_memory(out / "memory.png", [
            ("flash", flash, chosen.flash.length), ("RAM", ram, chosen.ram.length)],
            f"{title} on {chosen.name}"))
        numbers["profile"] = cost.to_json()
        numbers["flash_bytes"] = sum(flash.values())
        numbers["ram_bytes"] = sum(ram.values())
    page = _markdown(manifest, chosen, errors, layers, cost, cost_error, numbers,
                     [p.name for p in images], model_path, source)
    markdown = out / "report.md"
    markdown.write_text(page, encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(_html(page, out, title), encoding="utf-8")
    return Report(markdown=markdown, html=html_path, images=images, numbers=numbers)


def _fmt_db(value: float) -> str:
    return "exact" if value == math.inf else f"{value:.1f} dB"


def _markdown(manifest: Mapping[str, Any], board: Any, errors: Sequence[OutputError],
              layers: list[dict] | None, cost: Any, cost_error: str,
              numbers: Mapping[str, Any], images: Sequence[str], model_path: Path,
              source: str) -> str:
    name = f"{manifest['name']} ({manifest['format']})"
    lines = [f"# tinyrnn report: {name}", "",
             f"Model `{model_path.name}`, {source} "
             f"({numbers['samples']} sequence(s)), board **{board.name}** ({board.core}, "
             f"{board.clock_hz / 1e6:g} MHz). The C ran on the host (the same source as on the "
             "board).", "", "## Accuracy: C against torch", "",
             "| output | role | shape | max abs error | RMS error | SQNR | prediction agreement |",
             "|---|---|---|---|---|---|---|"]
    for e in errors:
        agree = f"{100 * e.agreement:.1f}%" if e.agreement is not None else "-"
        lines.append(f"| out{e.index} | {e.role} | {tuple(e.shape)} | {e.max_abs_error:.3g} | "
                     f"{e.rms_error:.3g} | {_fmt_db(e.sqnr_db)} | {agree} |")
    lines += [""]
    for image in images:
        if image in ("traces.png", "error_histogram.png"):
            lines += [f"![{image[:-4]}]({image})", ""]
    lines += [f"`tinyrnn verify`: {numbers['verify']}", "", "## Per-layer SQNR", ""]
    if layers:
        lines += ["Each layer of the bit-exact integer reference against the float model, on "
                  "the same input.", "", "| layer | format | SQNR | max abs error |",
                  "|---|---|---|---|"]
        lines += [f"| {layer['name']} | {layer['format']} | {_fmt_db(layer['sqnr_db'])} | "
                  f"{layer['max_abs_error']:.3g} |" for layer in layers]
        lines += ["", "![layer_sqnr](layer_sqnr.png)", ""]
    else:
        lines += [f"Not available for {manifest['format']}: `tinyrnn verify` reports per-layer "
                  "SQNR for the integer formats only. The output SQNR above covers the whole "
                  "model.", ""]
    lines += [f"## Cost on {board.name} ({board.core})", ""]
    if cost is None:
        lines += [f"Not profiled: {cost_error}", ""]
    else:
        step_us = ""
        if cost.cycles_per_step is not None:
            step_us = (f"; at {board.clock_hz / 1e6:g} MHz one step takes about "
                       f"{1e6 * cost.cycles_per_step / board.clock_hz:,.1f} µs with "
                       "zero-wait-state memory (flash wait states add to it)")
        cycles = (f"{cost.cycles_per_step:,} ({cost.cycles_note})"
                  if cost.cycles_per_step is not None else f"- ({cost.cycles_note})")
        mpc = f"{cost.macs_per_cycle:.3f}" if cost.macs_per_cycle is not None else "-"
        flash_total = numbers["flash_bytes"]
        ram_total = numbers["ram_bytes"]
        lines += [
            f"Built with `{' '.join(cost.cpu_flags)} -O2`, counted under unicorn "
            f"({cost.measured}){step_us}.", "",
            "| | value |", "|---|---|",
            f"| instructions / step | {cost.instructions_per_step:,} |",
            f"| cycles / step | {cycles} |",
            f"| MACs / step | {cost.macs_per_step:,.0f} |",
            f"| MACs / cycle | {mpc} |",
            f"| flash: code (model + C library) | {cost.flash_code_bytes:,} B |",
            f"| flash: weights | {cost.flash_weights_bytes:,} B |",
            f"| flash total / board | {flash_total:,} B of {board.flash.length:,} B "
            f"({100 * flash_total / board.flash.length:.2f}%) |",
            f"| RAM: state / scratch | {cost.ram_state_bytes:,} B / "
            f"{cost.ram_scratch_bytes:,} B |",
            f"| RAM: stack (worst of measured and -fstack-usage) | {cost.stack_bytes:,} B |",
            f"| RAM total / board | {ram_total:,} B of {board.ram.length:,} B "
            f"({100 * ram_total / board.ram.length:.2f}%) |",
            "", "![memory](memory.png)", "",
            "Flash and RAM count the model and the C library functions it calls; a firmware's "
            "own start-up code, vector table and stdio come on top.", ""]
    lines += ["---", "Generated by `tinyrnn report`; method: docs/profiling.md.", ""]
    return "\n".join(lines)


def _html(markdown: str, folder: Path, title: str) -> str:
    """The Markdown page as self-contained HTML (images inlined). A small converter: the page
    uses only headings, paragraphs, tables, images and a rule."""
    body: list[str] = []
    table: list[list[str]] = []

    def inline(text: str) -> str:
        out = html.escape(text)
        out = _sub_pairs(out, "**", "<b>", "</b>")
        return _sub_pairs(out, "`", "<code>", "</code>")

    def flush_table() -> None:
        if not table:
            return
        head, rows = table[0], table[2:]
        body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>")
        body.extend("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>"
                    for row in rows)
        body.append("</table>")
        table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
            continue
        flush_table()
        if line.startswith("!["):
            src = line[line.index("(") + 1:line.rindex(")")]
            data = base64.b64encode((folder / src).read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{html.escape(src)}" src="data:image/png;base64,{data}">'
                        "</p>")
        elif line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line == "---":
            body.append("<hr>")
        elif line:
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:62em;margin:2em auto;padding:0 1em;"
             "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid "
             "#ccc;padding:.25em .6em;text-align:left}img{max-width:100%}code{background:#f4f4f4}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _sub_pairs(text: str, marker: str, start: str, end: str) -> str:
    parts = text.split(marker)
    if len(parts) % 2 == 0:  # unbalanced: leave it alone
        return text
    return "".join(p if i % 2 == 0 else f"{start}{p}{end}" for i, p in enumerate(parts))


# ---------------------------------------------------------------------------------------------
# Command line


def register_cli(subparsers: Any) -> None:
    """Add ``report`` to the tinyrnn command line (its handler sets ``func``)."""
    parser = subparsers.add_parser(
        "report", help="write a page with torch-vs-C plots, errors, flash/RAM and cycles")
    parser.add_argument("model", type=Path, help="the .pt2 archive that was exported")
    parser.add_argument("dir", type=Path, help="folder written by `tinyrnn export`")
    parser.add_argument("--input", type=Path, required=True,
                        help=".npy (one argument) or .npz (in0, in1, ...) in torch layout")
    parser.add_argument("-o", "--output", type=Path, default=Path("report"),
                        help="folder to write report.md, report.html and the plots into "
                             "(default ./report)")
    parser.add_argument("--board", default=DEFAULT_BOARD,
                        help=f"board whose capacity and core to show (default {DEFAULT_BOARD}; "
                             "see `tinyrnn boards`)")
    parser.add_argument("--json", action="store_true", help="print the paths and numbers as "
                        "JSON")
    parser.set_defaults(func=_cli_report)


def _cli_report(args: argparse.Namespace) -> int:
    from ..commands import report as report_command

    result = report_command(args.model, args.dir, args.input, output=args.output,
                            board=args.board)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    return 0
