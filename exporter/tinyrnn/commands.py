"""The Python API of the commands: ``tinyrnn.verify``, ``run_host``, ``build``, ``run``,
``profile``, ``report`` and ``package`` (``tinyrnn.export`` is in :mod:`tinyrnn.api`).

Each function takes the command's options as keyword arguments, with the command's defaults
and checks, and returns a frozen dataclass that holds the figures the command prints;
``to_dict()`` gives them as JSON data and ``text()`` as the command prints them. Bad input
raises :class:`~tinyrnn.errors.TinyRNNError` with a message that names the problem. The
command line (:mod:`tinyrnn.cli`) parses its arguments, calls these and prints the result.

Inputs (``inputs=``) are the forward's arguments in torch's layout, as a ``.npy``/``.npz``
path (as on the command line) or as arrays: one array or tensor, or a list/tuple of them in
the forward's order (:func:`tinyrnn.io.read_inputs`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .backend.manifest import read_manifest
from .check.report import DEFAULT_BOARD, OutputError, make_report
from .check.report import _fmt_db as _report_db
from .check.verify import verify as _verify
from .checks import check_number
from .errors import TinyRNNError
from .io import read_inputs, save_outputs, split_inputs
from .outputs import check_file, npz_path
from .results import TEXT_ONLY, JsonResult
from .targets import cross
from .targets.boards import load_board
from .targets.costs import reference_board, resolve_core
from .targets.host import load
from .targets.package import DEFAULT_VERSION, PackageOptions, PackageResult
from .targets.package import package as _package
from .targets.profile import Profile, qemu_counted_board
from .targets.profile import profile as _profile
from .targets.qemucheck import QemuCheck, qemu_cross_check

if TYPE_CHECKING:
    import torch

Inputs = Union[str, os.PathLike, np.ndarray, "torch.Tensor", Sequence[Any]]
"""A .npy/.npz path, an array or tensor, or a list/tuple of them (the forward's arguments)."""

__all__ = [
    "BuildResult", "LayerCheck", "OutputCheck", "PackageResult", "ProfileResult", "QemuCheckResult",
    "ReportResult", "RunResult", "StateCheck", "VerifyResult", "build", "package", "profile",
    "report", "run", "run_host", "verify",
]


# ---------------------------------------------------------------------------------------------
# verify


@dataclass(frozen=True)
class OutputCheck(JsonResult):
    """One output of the C against torch (and, for the integer formats, the reference)."""

    index: int
    role: str                   # "sequence", "vector", "h_n" or "c_n" (docs/c-api.md)
    shape: tuple[int, ...]
    max_abs_error: float        # against torch
    sqnr_db: float              # against torch; inf when equal
    bit_exact: bool | None      # equals the bit-exact reference (None for float32)
    ok: bool                    # within the tolerance (float32) or bit-exact (integer)
    first_mismatch: Mapping[str, Any] | None = None  # where the C first differs, if it does


@dataclass(frozen=True)
class StateCheck(JsonResult):
    """One state of a recurrent layer (h, or an LSTM's c): its format and observed range."""

    state: str                  # "h" or "c"
    format: str
    bits: int                   # 16, or 32 for an LSTM's c when its units' ranges are uneven
    observed_max_abs: float     # the float model's largest |value| on the verify input
    calibration_max_abs: float | None = None    # recorded at export
    calibration_median_unit_max_abs: float | None = None  # c held in 32 bits: median unit


@dataclass(frozen=True)
class LayerCheck(JsonResult):
    """One layer of the bit-exact reference against the float model (integer formats)."""

    index: int
    layer: str
    format: str
    sqnr_db: float
    max_abs_error: float
    states: tuple[StateCheck, ...] = ()  # recurrent layers: h, and an LSTM's c
    weight_bits: int | None = None  # 8 or 16 (per-layer formats); None: no weights


@dataclass(frozen=True)
class VerifyResult(JsonResult):
    """What ``tinyrnn verify`` found: per output, and per layer for the integer formats."""

    model: str
    format: str
    tolerance: float | None     # float32's max abs error allowed; None for integer formats
    outputs: tuple[OutputCheck, ...]
    layers: tuple[LayerCheck, ...]  # empty for float32
    ok: bool
    lines: tuple[str, ...] = field(default=(), repr=False, metadata=TEXT_ONLY)

    def text(self) -> str:
        """The report as ``tinyrnn verify`` prints it."""
        return "\n".join(self.lines)


def verify(model: str | Path, export_dir: str | Path, inputs: Inputs, *,
           tolerance: float | None = None) -> VerifyResult:
    """Run the exported C and torch on ``inputs`` and compare them, output by output.

    ``model``: the ``.pt2`` archive (``torch.export.save``) that ``export_dir`` was exported
    from. float32 exports pass when every output is within ``tolerance`` of torch (default
    1e-5); the integer formats pass when the C equals the bit-exact reference on every
    element (``tolerance`` does not apply), and also report SQNR against torch per output
    and per layer.

    Returns a :class:`VerifyResult` (``ok`` says whether it passed). Raises TinyRNNError for
    a bad archive, export folder, input or tolerance, or an export of another model.
    """
    found = _verify(model, export_dir, inputs, tolerance=tolerance)
    roles = [spec["role"] for spec in read_manifest(export_dir)["interface"]["outputs"]]
    outputs = tuple(OutputCheck(
        index=o["index"], role=o.get("role", roles[o["index"]]), shape=tuple(o["shape"]),
        max_abs_error=o["max_abs_error"], sqnr_db=o["sqnr_db"], bit_exact=o.get("bit_exact"),
        ok=bool(o["ok"] if "ok" in o else o["bit_exact"]),
        first_mismatch=o.get("first_mismatch")) for o in found["outputs"])
    layers = tuple(LayerCheck(**{**layer, "states": tuple(
        StateCheck(**st) for st in layer.get("states", ()))}) for layer in found.get("layers", ()))
    return VerifyResult(model=found["model"], format=found["format"],
                        tolerance=found.get("tolerance"), outputs=outputs, layers=layers,
                        ok=bool(found["ok"]), lines=tuple(found["lines"]))


# ---------------------------------------------------------------------------------------------
# run-host and run


@dataclass(frozen=True, eq=False)
class RunResult(JsonResult):
    """The outputs of one run of the exported C, on the host or on an emulated board."""

    outputs: tuple[np.ndarray, ...]  # the forward's return values, flattened, torch layout
    output: Path | None         # the .npz written (out0, out1, ...), if one was asked for
    samples: int                # sequences in the batch
    board: str | None = None    # None: compiled for and run on the host
    seconds: float | None = None     # wall time of the QEMU run (boards only)
    stack_bytes: int | None = None   # stack the image used (boards only)
    stack_size: int | None = None    # the board's stack

    def text(self) -> str:
        """The line ``tinyrnn run-host`` or ``tinyrnn run`` prints."""
        head = f"wrote {self.output}: " if self.output is not None else ""
        if self.board is None:
            return head + ", ".join(f"out{i} {tuple(o.shape)}"
                                    for i, o in enumerate(self.outputs))
        return (f"{head}{len(self.outputs)} output(s) of {self.samples} sample(s) from "
                f"{self.board} in {self.seconds:.2f} s; stack used {self.stack_bytes} of "
                f"{self.stack_size} bytes")


def run_host(export_dir: str | Path, inputs: Inputs, *,
             output: str | Path | None = None) -> RunResult:
    """Compile the exported C in ``export_dir`` with the host's gcc and run it on ``inputs``.

    ``output``: also write the outputs to this ``.npz`` (``out0, out1, ...``; ``.npz`` is
    appended when missing). Returns a :class:`RunResult` with the outputs as numpy arrays in
    torch's layout. Raises TinyRNNError for a bad export folder, input or output path.
    """
    if output is not None:
        check_file(npz_path(output), "--output")
    manifest = read_manifest(export_dir)
    arrays = read_inputs(inputs)
    samples = split_inputs(manifest["interface"], arrays)  # bad input fails before the compile
    outputs = load(export_dir).run(*arrays)
    written = save_outputs(output, outputs) if output is not None else None
    return RunResult(outputs=tuple(outputs), output=written, samples=len(samples))


def run(export_dir: str | Path, inputs: Inputs, *, board: str,
        output: str | Path | None = None, timeout: float = cross.DEFAULT_TIMEOUT) -> RunResult:
    """Build ``export_dir`` for an emulated ``board`` with ``inputs`` compiled in, run it
    under QEMU and read its outputs back bit for bit (the contract of :func:`run_host`).

    ``timeout``: seconds before QEMU is stopped. ``output``: also write a ``.npz``. Returns a
    :class:`RunResult` with the board, the QEMU run's seconds and the stack used. Raises
    TinyRNNError for an unknown or not emulated board, bad input, a model that does not fit,
    or an image that faults or does not finish in time.
    """
    check_number("--timeout", timeout, above=0.0)
    if output is not None:
        check_file(npz_path(output), "--output")
    chosen = load_board(board)
    cross._require_emulated(chosen)  # before the inputs are read, as the command does
    arrays = read_inputs(inputs)
    outputs, firmware, done = cross.run(export_dir, chosen, arrays, timeout=timeout)
    written = save_outputs(output, outputs) if output is not None else None
    return RunResult(outputs=tuple(outputs), output=written,
                     samples=len(firmware.jobs[0].samples), board=chosen.name,
                     seconds=done.seconds, stack_bytes=done.stack_peak,
                     stack_size=chosen.stack_size)


# ---------------------------------------------------------------------------------------------
# build


@dataclass(frozen=True)
class BuildResult(JsonResult):
    """The ELF image ``tinyrnn build`` wrote and where its bytes go."""

    image: Path
    board: str
    flash_bytes: int            # flash the image occupies
    flash_size: int             # the board's flash
    ram_bytes: int              # RAM before the heap: .data, .bss and the stack
    ram_size: int               # the board's RAM
    sections: Mapping[str, int]  # model_code, weights, test_data, runtime_code, state, ...
    table: str = field(default="", repr=False, metadata=TEXT_ONLY)

    def text(self) -> str:
        """What ``tinyrnn build`` prints: the image and its size table."""
        return f"wrote {self.image}\n{self.table}"


def build(export_dir: str | Path, *, board: str, output: str | Path | None = None,
          inputs: Inputs | None = None) -> BuildResult:
    """Cross-compile ``export_dir`` with the board harness for ``board`` and link an ELF.

    ``output``: the image's path (default ``NAME-BOARD.elf`` in the current folder).
    ``inputs``: sequences to compile into the image, as for :func:`run` (default: one time
    step of zeros). Returns a :class:`BuildResult` with flash and RAM use against the board.
    Raises TinyRNNError for an unknown board, bad input, an output path in the way, or a
    model that does not fit the board.
    """
    chosen = load_board(board)
    model = cross.ExportedModel.load(export_dir)
    if inputs is not None:
        samples = tuple(split_inputs(model.interface, read_inputs(inputs)))
    else:
        samples = (model.zero_sample(),)
    image = Path(output) if output is not None else Path(f"{model.name}-{chosen.name}.elf")
    check_file(image, "-o")
    with tempfile.TemporaryDirectory(prefix="tinyrnn-build-") as work:
        firmware = cross.build([cross.ModelInputs(model, samples)], chosen, work, output=image)
    sizes = firmware.sizes
    sections = {name: getattr(sizes, name) for name in (
        "model_code", "weights", "test_data", "runtime_code", "state", "buffers",
        "runtime_ram", "heap", "stack")}
    return BuildResult(image=firmware.elf, board=chosen.name, flash_bytes=sizes.flash_used,
                       flash_size=chosen.flash.length, ram_bytes=sizes.ram_static,
                       ram_size=chosen.ram.length, sections=sections, table=sizes.format())


# ---------------------------------------------------------------------------------------------
# profile


@dataclass(frozen=True)
class QemuCheckResult(JsonResult):
    """The same step timed with SysTick under QEMU -icount (``--qemu-check``)."""

    board: str
    ticks: int
    instructions_per_tick: float
    instructions: int           # the step's instructions as QEMU's SysTick saw them
    resolution: float           # how far two correct measurements may be apart
    agrees: bool                # with the unicorn count, within the resolution


@dataclass(frozen=True)
class ProfileResult(JsonResult):
    """What one time step costs on one core (docs/profiling.md): the keys of ``--json``."""

    cpu: str                    # the core, e.g. "cortex-m4"
    board: str                  # whose flags built it
    model: str
    format: str
    measured: str               # the method: "NAME_step" or "NAME_run over 8 steps"
    instructions_per_step: int
    cycles_per_step: int | None  # estimate (M4 cost table), None where there is none
    cycles_note: str
    macs_per_step: float
    macs_per_cycle: float | None
    flash_code_bytes: int
    flash_weights_bytes: int
    ram_state_bytes: int
    ram_scratch_bytes: int
    stack_bytes: int
    details: Mapping[str, Any]  # instruction mix, per function, int16 API, ...
    qemu_check: QemuCheckResult | None = None
    lines: tuple[str, ...] = field(default=(), repr=False, metadata=TEXT_ONLY)

    @property
    def ok(self) -> bool:
        """False only when the QEMU check ran and disagrees (``tinyrnn profile`` exits 1)."""
        return self.qemu_check is None or self.qemu_check.agrees

    def to_dict(self) -> dict[str, Any]:
        """The ``tinyrnn profile --json`` object: the stable keys, then the details (at the
        top level, as docs/profiling.md lists them), then ``qemu_check`` if it ran."""
        data = super().to_dict()
        details, check = data.pop("details"), data.pop("qemu_check")
        data.update(details)
        if check is not None:
            data["qemu_check"] = check
        return data

    def text(self) -> str:
        """The report as ``tinyrnn profile`` prints it."""
        return "\n".join(self.lines)

    @classmethod
    def _of(cls, found: Profile, check: QemuCheck | None) -> ProfileResult:
        data = found.to_json()
        stable = {name: data.pop(name) for name in (
            "cpu", "board", "model", "format", "measured", "instructions_per_step",
            "cycles_per_step", "cycles_note", "macs_per_step", "macs_per_cycle",
            "flash_code_bytes", "flash_weights_bytes", "ram_state_bytes", "ram_scratch_bytes",
            "stack_bytes")}
        lines = [found.format_text()]
        qemu = None
        if check is not None:
            qemu = QemuCheckResult(
                board=check.board, ticks=check.ticks,
                instructions_per_tick=check.instructions_per_tick,
                instructions=round(check.qemu_instructions), resolution=check.resolution,
                agrees=check.agrees)
            lines.append(f"  QEMU -icount check    {check.qemu_instructions:,.0f} instructions "
                         f"({check.ticks} SysTick ticks x {check.instructions_per_tick:.2f}) on "
                         f"{check.board}: {'agrees' if check.agrees else 'DIFFERS'} within "
                         f"{check.resolution:.0f}")
        return cls(**stable, details=data, qemu_check=qemu, lines=tuple(lines))


def profile(export_dir: str | Path, *, cpu: str | None = None, board: str | None = None,
            qemu_check: bool = False) -> ProfileResult:
    """Build ``export_dir`` for a Cortex-M core and count the instructions (and, for the M4
    and M33, estimate the cycles) of one time step under unicorn; flash and RAM.

    Give ``cpu`` (cortex-m0, m0plus, m3, m4, m7, m33, or m55: counted under QEMU -icount,
    since unicorn has no MVE; the flags of a reference board with that core) or ``board``
    (its own flags and core). ``qemu_check``: also time the same step with SysTick under
    QEMU -icount and compare (not for the M55, whose count comes from QEMU). Returns a
    :class:`ProfileResult`. Raises TinyRNNError for no core, an unknown or unsupported core or
    board, or a bad export.
    """
    if qemu_check and qemu_counted_board(cpu, board) is not None:
        raise TinyRNNError(f"--qemu-check compares unicorn with QEMU; on {cpu or board} the "
                           "count already comes from QEMU: leave --qemu-check out")
    found = _profile(export_dir, cpu=cpu, board=board)
    check = None
    if qemu_check:
        chosen = load_board(board) if board else reference_board(resolve_core(found.cpu))
        check = qemu_cross_check(export_dir, chosen)
    return ProfileResult._of(found, check)


# ---------------------------------------------------------------------------------------------
# report


@dataclass(frozen=True)
class ReportResult(JsonResult):
    """The page ``tinyrnn report`` wrote, its figures and the numbers in it."""

    html: Path                  # self-contained page (figures inlined)
    markdown: Path              # report.md, the figures beside it
    figures: Mapping[str, Path]  # traces, error_histogram, layer_sqnr, memory -> PNG
    model: str
    format: str
    board: str
    core: str
    samples: int
    outputs: tuple[OutputError, ...]  # the accuracy table: C against torch, per output
    layers: tuple[Mapping[str, Any], ...]  # per-layer SQNR (integer formats; else empty)
    verify: str                 # the verdict line of `tinyrnn verify`
    profile: Mapping[str, Any] | None  # the `tinyrnn profile --json` object, if profiled
    flash_bytes: int | None
    ram_bytes: int | None
    table: str = field(default="", repr=False)  # the accuracy table, as Markdown

    def text(self) -> str:
        """What ``tinyrnn report`` prints."""
        lines = [f"wrote {self.html} (self-contained) and {self.markdown} with "
                 f"{len(self.figures)} plot(s)"]
        lines += [f"  out{o.index}: max abs error {o.max_abs_error:.3g}, SQNR "
                  f"{_report_db(o.sqnr_db)}" for o in self.outputs]
        if self.profile:
            cycles = self.profile["cycles_per_step"]
            lines.append(f"  {self.profile['cpu']}: {self.profile['instructions_per_step']:,} "
                         "instructions/step"
                         + (f", ~{cycles:,} cycles/step" if cycles is not None else ""))
        return "\n".join(lines)


def report(model: str | Path, export_dir: str | Path, inputs: Inputs, *,
           output: str | Path = "report", board: str = DEFAULT_BOARD,
           progress: bool | None = None) -> ReportResult:
    """Compare torch and the exported C on ``inputs``, profile for ``board``'s core and write
    ``report.md`` (PNG figures beside it) and a self-contained ``report.html`` into
    ``output``; the folder gets the files only when the page is complete.

    ``progress``: progress bars on stderr (default: when stderr is a terminal). Returns a
    :class:`ReportResult` with the paths of the pages and figures and the numbers shown.
    Raises TinyRNNError for a bad archive, export, input, board or output folder.
    """
    made = make_report(model, export_dir, inputs, output, board=board, progress=progress)
    numbers = made.numbers
    page = made.markdown.read_text(encoding="utf-8").splitlines()
    start = page.index("## Accuracy: C against torch") + 2
    end = next(k for k in range(start, len(page)) if not page[k].startswith("|"))
    return ReportResult(
        html=made.html, markdown=made.markdown,
        figures={path.stem: path for path in made.images},
        model=numbers["model"], format=numbers["format"], board=numbers["board"],
        core=numbers["core"], samples=numbers["samples"],
        outputs=tuple(OutputError(**(o | {"shape": tuple(o["shape"])}))
                      for o in numbers["outputs"]),
        layers=tuple(numbers["layer_sqnr"] or ()), verify=numbers["verify"],
        profile=numbers.get("profile"), flash_bytes=numbers.get("flash_bytes"),
        ram_bytes=numbers.get("ram_bytes"), table="\n".join(page[start:end]))


# ---------------------------------------------------------------------------------------------
# package


def package(export_dir: str | Path, *, form: str, out: str | Path, force: bool = False,
            inputs: Inputs | None = None, lib_version: str = DEFAULT_VERSION,
            url: str | None = None) -> PackageResult:
    """Write the export in ``export_dir`` as a library for a build system, with an example
    application and a README, into the folder ``out`` (docs/integration.md).

    ``form``: cmake, zephyr, arduino, platformio or cmsis-pack. ``out`` must not exist or be
    empty unless ``force`` (then it is replaced). ``inputs``: the example's input (first
    sequence used; default: a deterministic input of the export's shape). ``lib_version``:
    MAJOR.MINOR.PATCH; ``url``: the project's page, for the metadata. Returns the
    :class:`~tinyrnn.targets.package.PackageResult` (form, folder, files, notes). Raises
    TinyRNNError
    naming the rule for an unknown form, a name the build system refuses, a folder that is
    not an export, or an ``out`` in the way.
    """
    arrays = read_inputs(inputs) if inputs is not None else None
    return _package(export_dir, form, out, force=force, inputs=arrays,
                    options=PackageOptions(version=lib_version, url=url))
