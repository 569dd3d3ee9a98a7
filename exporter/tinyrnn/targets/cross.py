"""From exported C to a Cortex-M board: build an image, size it, run it under QEMU, flash it.

One image holds a harness (``firmware/harness.c.j2``) and ONE OR MORE exported models, each
with the input sequences it is to run on compiled in as const arrays. Under QEMU the harness
prints every output as the hex of its float bits on the semihosting console; :func:`run_qemu`
reads them back bit for bit. The same image can be flashed to a real board with pyOCD.

    firmware = build([ModelInputs(model, samples)], board, work_dir)
    print(firmware.sizes.format())
    result = run_qemu(firmware)          # result.outputs[model][sample][output]: flat float32
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from ..backend.interface import CInterface, from_manifest
from ..checks import check_number
from ..errors import TinyRNNError
from ..io import assemble_outputs, load_inputs, split_inputs
from ..outputs import check_file, install_file
from ..resources import resource_dir
from . import toolchain
from .boards import Board, list_boards, load_board
from .host import read_manifest

GCC = toolchain.GCC
# pyOCD is a dependency: prefer the one installed beside this Python (a venv need not be on PATH)
_BESIDE = Path(sys.executable).parent / "pyocd"
PYOCD = str(_BESIDE) if _BESIDE.exists() else "pyocd"
CFLAGS = toolchain.CFLAGS
# newlib-nano: 2 KiB less RAM and 4 KiB less flash than full newlib for the same harness;
# rdimon.specs then links librdimon_nano (semihosting system calls).
LDFLAGS = ("-Wl,--gc-sections", "--specs=nano.specs", "--specs=rdimon.specs")
HEAP_MIN = 2048          # newlib's stdout buffer (BUFSIZ = 1024) and malloc's bookkeeping
FAULT_STATUS = 240       # firmware/tinyrnn_board.h: a fault exits with this + exception number
DEFAULT_TIMEOUT = 120.0  # seconds for one QEMU run
_FAULTS = {FAULT_STATUS + number: name for number, name in enumerate(
    ("", "unexpected exception", "NMI", "HardFault", "MemManage fault", "BusFault",
     "UsageFault", "SecureFault")) if name}


# ---------------------------------------------------------------------------------------------
# What goes into an image


@dataclass(frozen=True)
class ExportedModel:
    """An exported model folder: ``NAME.h``, ``NAME.c`` and the manifest ``NAME.json``."""

    directory: Path
    name: str
    manifest: Mapping[str, Any]

    @classmethod
    def load(cls, directory: str | Path) -> ExportedModel:
        """Read the manifest of the one exported model in ``directory``."""
        manifest = read_manifest(directory)
        return cls(directory=Path(directory), name=manifest["name"], manifest=manifest)

    @property
    def interface(self) -> Mapping[str, Any]:
        """The manifest's ``interface`` (docs/c-api.md)."""
        return self.manifest["interface"]

    @property
    def sources(self) -> list[Path]:
        """The files to compile (the C file, and the assembly kernels where there are any)."""
        return [self.directory / name for name in self.api.sources]

    @property
    def takes_state(self) -> bool:
        """Whether the forward takes an initial state, passed on to NAME_set_state."""
        return any(spec["role"] == "h0" for spec in self.interface["forward_inputs"])

    @property
    def api(self) -> CInterface:
        """The typed C interface the export recorded (``c_interface`` in NAME.json)."""
        return from_manifest(self.manifest)

    @property
    def state_args(self) -> list[str]:
        """The initial states NAME_set_state takes (h0, and c0 for LSTMs)."""
        return [a.role for a in self.api.function("set_state").args if a.role in ("h0", "c0")]

    def output_lengths(self, steps: int) -> list[int]:
        """Floats in each output buffer of one sample of ``steps`` time steps."""
        return self.api.output_lengths(steps)

    def zero_sample(self) -> dict[str, np.ndarray]:
        """One time step of zeros, from a zero state: what an image runs when given no input."""
        sample = {"x": np.zeros((1, self.interface["input_size"]), np.float32)}
        for spec in self.interface["forward_inputs"]:
            if spec["role"] in ("h0", "c0"):
                sample[spec["role"]] = np.zeros(spec["size"], np.float32)
        return sample


@dataclass(frozen=True)
class ModelInputs:
    """A model and the samples the harness runs it on: ``{"x": (T, I), "h0": ..., "c0": ...}``."""

    model: ExportedModel
    samples: tuple[Mapping[str, np.ndarray], ...]


@dataclass(frozen=True)
class SizeReport:
    """Where an image's bytes go (after --gc-sections), and what the board has."""

    board: Board
    model_code: int    # machine code of the models
    weights: int       # the models' const data
    test_data: int     # input sequences compiled into the image
    runtime_code: int  # harness, startup, C and math library: code, constants, .data image
    state: int         # the models' NAME_state_t (their state and scratch)
    buffers: int       # the harness's output buffer
    runtime_ram: int   # the C library's .data and .bss
    heap: int          # what is left between .bss and the stack
    stack: int         # reserved for the main stack

    @property
    def flash_used(self) -> int:
        """Bytes of flash the image occupies."""
        return self.model_code + self.weights + self.test_data + self.runtime_code

    @property
    def ram_static(self) -> int:
        """Bytes of RAM taken before the heap: .data, .bss and the stack."""
        return self.state + self.buffers + self.runtime_ram + self.stack

    def format(self) -> str:
        """A small table for people."""
        rows = [
            ("flash", self.flash_used, self.board.flash.length),
            ("  model code", self.model_code, None),
            ("  weights", self.weights, None),
            ("  test inputs", self.test_data, None),
            ("  harness + C library", self.runtime_code, None),
            ("RAM (without heap)", self.ram_static, self.board.ram.length),
            ("  model state + scratch", self.state, None),
            ("  output buffer", self.buffers, None),
            ("  C library data", self.runtime_ram, None),
            ("  stack (reserved)", self.stack, None),
            ("  heap (rest)", self.heap, None),
        ]
        lines = [f"{'board ' + self.board.name:<26}{'bytes':>10}{'of':>10}"]
        for label, used, total in rows:
            share = f"{total:>10}  {100.0 * used / total:5.1f}%" if total else ""
            lines.append(f"{label:<26}{used:>10}{share}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Firmware:
    """A linked image and what is in it."""

    elf: Path
    board: Board
    jobs: tuple[ModelInputs, ...]
    sizes: SizeReport


@dataclass(frozen=True)
class QemuRun:
    """What one run of an image printed, decoded."""

    outputs: list[list[list[np.ndarray]]]  # [model][sample][output] -> flat float32 buffer
    stack_peak: int                        # bytes of stack used
    seconds: float                         # wall time of the QEMU process
    console: str                           # everything the image printed


# ---------------------------------------------------------------------------------------------
# Build


def build(jobs: Sequence[ModelInputs], board: Board, work_dir: str | Path,
          output: str | Path | None = None, compiler: str = "gcc") -> Firmware:
    """Compile the harness, startup code and every model for ``board`` and link one ELF.

    ``compiler``: ``gcc`` (arm-none-eabi-gcc) or ``clang`` for every source; the image is
    linked by arm-none-eabi-gcc either way. Checks that the models fit the board before
    linking, from the compiled objects' section sizes, and raises :class:`TinyRNNError` giving
    what they need and what the board has.
    """
    jobs = tuple(jobs)
    _check_jobs(jobs)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    toolchain.require_tool(toolchain.GCC)
    firmware_dir = resource_dir("firmware")
    harness = toolchain.render_firmware("harness.c.j2", work / "harness.c", board=board,
                                        **_harness_context(jobs))
    linker_script = toolchain.render_firmware("linker.ld.j2", work / "linker.ld", board=board,
                                              heap_min=HEAP_MIN)
    model_dirs = tuple(f"-I{job.model.directory}" for job in jobs)
    compiles = [toolchain.CompileJob(firmware_dir / "startup.c", work / "00-startup.o",
                                     (f"-I{firmware_dir}",)),
                toolchain.CompileJob(harness, work / "01-harness.o",
                                     (f"-I{firmware_dir}", *model_dirs))]
    model_objects: dict[Path, ExportedModel] = {}
    for job in jobs:
        for source in job.model.sources:
            obj = work / f"{len(compiles):02d}-{source.name.replace('.', '_')}.o"
            compiles.append(toolchain.CompileJob(source, obj, (f"-I{job.model.directory}",)))
            model_objects[obj] = job.model
    toolchain.compile_all(compiles, board.cpu_flags, f"compiling for {board.name}", compiler)
    objects = [c.output for c in compiles]
    _check_fits(board, model_objects, objects[:2])

    elf = work / "app.elf"
    map_file = work / "app.map"
    try:
        toolchain.link(objects, elf, board.cpu_flags, f"linking for {board.name}",
                       ["-T", str(linker_script), *LDFLAGS, f"-Wl,-Map={map_file}", "-lm"])
    except TinyRNNError as exc:
        overflow = re.search(r"region `(\w+)' overflowed by (\d+) bytes|RAM overflow", str(exc))
        if overflow:
            raise TinyRNNError(
                f"the image does not fit board {board.name} once the C library is linked in "
                f"({overflow.group(0)}; the board has {_kib(board.flash.length)} flash and "
                f"{_kib(board.ram.length)} RAM); export a smaller model, use fewer or shorter "
                "test inputs, or choose a bigger board") from None
        raise
    sizes = _size_report(board, elf, map_file, model_objects, harness=objects[1])
    if output is not None:  # the image appears there only complete (tinyrnn.outputs)
        elf = install_file(elf, output, "-o")
    return Firmware(elf=elf, board=board, jobs=jobs, sizes=sizes)


def _check_jobs(jobs: Sequence[ModelInputs]) -> None:
    if not jobs:
        raise TinyRNNError("no model to build")
    names = [job.model.name for job in jobs]
    upper = [n.upper() for n in names]  # the headers' macros and include guards
    duplicates = sorted({n for n in names if upper.count(n.upper()) > 1})
    if duplicates:
        raise TinyRNNError(f"models in one image need names that differ in more than letter "
                           f"case; {', '.join(duplicates)} clash (export with name=...)")
    for job in jobs:
        if not job.samples:
            raise TinyRNNError(f"model {job.model.name!r} has no input sample to run")
        interface = job.model.interface
        for i, sample in enumerate(job.samples):
            x = np.asarray(sample["x"])
            if x.ndim != 2 or x.shape[1] != interface["input_size"] or x.shape[0] < 1:
                raise TinyRNNError(f"model {job.model.name!r} sample {i}: x has shape {x.shape}; "
                                   f"expected (T >= 1, {interface['input_size']})")
            max_len = interface.get("max_seq_len", 0)
            if max_len and x.shape[0] > max_len:
                raise TinyRNNError(f"model {job.model.name!r} sample {i} has {x.shape[0]} time "
                                   f"steps; the model was exported for at most {max_len}")
            needed = job.model.state_args if job.model.takes_state else []
            missing = [role for role in needed if sample.get(role) is None]
            if missing:
                raise TinyRNNError(f"model {job.model.name!r} sample {i} lacks the initial "
                                   f"state {', '.join(missing)}")


def _harness_context(jobs: Sequence[ModelInputs]) -> dict[str, Any]:
    """Everything harness.c.j2 needs, computed here so that the template only lays it out."""
    models = []
    capacity = 1
    for job in jobs:
        state_args = job.model.state_args if job.model.takes_state else []
        samples = []
        for index, sample in enumerate(job.samples):
            steps = np.asarray(sample["x"]).shape[0]
            lengths = job.model.output_lengths(steps)
            capacity = max(capacity, sum(lengths))
            arrays = [{"role": role, "words": toolchain.hex_words(sample[role])}
                      for role in ["x", *state_args]]
            samples.append({"index": index, "steps": steps, "arrays": arrays,
                            "has_h0": "h0" in state_args, "has_c0": "c0" in state_args,
                            "out_len": lengths})
        api = job.model.api
        models.append({"name": job.model.name, "samples": samples,
                       "set_state_args": state_args, "state_type": api.state_type,
                       "reset": api.function("reset").name,
                       "set_state": api.function("set_state").name,
                       "run": api.function("run").name,
                       "num_outputs": len(job.model.interface["outputs"])})
    return {"models": models, "out_capacity": capacity,
            "max_outputs": max(m["num_outputs"] for m in models)}


# ---------------------------------------------------------------------------------------------
# Sizes


def _check_fits(board: Board, model_objects: Mapping[Path, ExportedModel],
                other_objects: Sequence[Path]) -> None:
    """Fail before linking when the compiled objects alone exceed the board's flash or RAM."""
    models: dict[str, toolchain.ObjectSizes] = {}
    for obj, model in model_objects.items():
        sizes = toolchain.object_sizes(obj)
        models[model.name] = models[model.name] + sizes if model.name in models else sizes
    others = [toolchain.object_sizes(obj) for obj in other_objects]
    flash = sum(s.code + s.const + s.data for s in [*models.values(), *others])
    ram = sum(s.data + s.bss for s in [*models.values(), *others]) + board.stack_size + HEAP_MIN
    problems = []
    if flash > board.flash.length:
        parts = "; ".join(f"model {name!r}: code {_kib(s.code)} + weights {_kib(s.const)}"
                          for name, s in models.items())
        rest = sum(s.code + s.const + s.data for s in others)
        problems.append(f"{_kib(flash)} of flash ({parts}; harness and test inputs "
                        f"{_kib(rest)}) but the board has {_kib(board.flash.length)}")
    if ram > board.ram.length:
        statics = sum(s.data + s.bss for s in [*models.values(), *others])
        problems.append(f"{_kib(ram)} of RAM (model state, buffers and data {_kib(statics)}, "
                        f"stack {_kib(board.stack_size)}, minimum heap {_kib(HEAP_MIN)}) but "
                        f"the board has {_kib(board.ram.length)}")
    if problems:
        names = ", ".join(repr(name) for name in models)
        raise TinyRNNError(f"model {names} does not fit board {board.name}: it needs "
                           + " and ".join(problems) + "; export a smaller model or a narrower "
                           "format, or choose a board with more memory (see `tinyrnn boards`)")


_MAP_ENTRY = re.compile(r"^ (\S+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$")
_MAP_OUTPUT = re.compile(r"^(\.\S+|/DISCARD/)\s")


def _map_entries(map_file: Path) -> list[tuple[str, str, int, str]]:
    """(output section, input section, size, file) for every input section ld placed."""
    text = map_file.read_text(encoding="utf-8", errors="replace")
    text = text[text.find("Linker script and memory map"):]
    # ld breaks a long input-section name onto its own line; join it with the next.
    text = re.sub(r"\n (\S+)\n\s+(0x)", r"\n \1 \2", text)
    entries = []
    output = ""
    for line in text.splitlines():
        heading = _MAP_OUTPUT.match(line)
        if heading:
            output = heading.group(1)
            continue
        entry = _MAP_ENTRY.match(line)
        if entry and entry.group(1) != "*fill*":
            entries.append((output, entry.group(1), int(entry.group(3), 16), entry.group(4)))
    return entries


def _size_report(board: Board, elf: Path, map_file: Path,
                 model_objects: Mapping[Path, ExportedModel], harness: Path) -> SizeReport:
    """Split the linked image's flash and RAM into the categories of :class:`SizeReport`."""
    with elf.open("rb") as handle:
        reader = ELFFile(handle)
        flash_used = ram_static = 0
        for section in reader.iter_sections():
            if not section["sh_flags"] & SH_FLAGS.SHF_ALLOC or section.name == ".heap":
                continue
            size = section["sh_size"]
            if section["sh_type"] != "SHT_NOBITS":
                flash_used += size          # .data's initial values live in flash too
            if board.ram.origin <= section["sh_addr"] < board.ram.end:
                ram_static += size
        symtab = reader.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection), "the linker always writes .symtab"
        heap_start, heap_end = (symtab.get_symbol_by_name(name)[0]["st_value"]
                                for name in ("__heap_start", "__heap_end"))
    models = {str(path) for path in model_objects}
    model_code = weights = test_data = state = buffers = 0
    for output, name, size, source in _map_entries(map_file):
        if source in models and output == ".text":
            model_code += size
        elif source in models and output == ".rodata":
            weights += size
        elif source == str(harness) and name.startswith(".rodata.tinyrnn_in_"):
            test_data += size
        elif source == str(harness) and name.startswith(".bss.tinyrnn_state_"):
            state += size
        elif source == str(harness) and name.startswith(".bss.tinyrnn_out"):
            buffers += size
    stack = board.stack_size
    heap = heap_end - heap_start
    return SizeReport(
        board=board, model_code=model_code, weights=weights, test_data=test_data,
        runtime_code=flash_used - model_code - weights - test_data,
        state=state, buffers=buffers, runtime_ram=ram_static - stack - state - buffers,
        heap=heap, stack=stack)


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1 << 20 else f"{size / (1 << 20):.2f} MiB"


# ---------------------------------------------------------------------------------------------
# Run under QEMU


def run_qemu(firmware: Firmware, timeout: float = DEFAULT_TIMEOUT) -> QemuRun:
    """Run an image under qemu-system-arm and decode what the harness printed."""
    board = firmware.board
    check_number("--timeout", timeout, above=0.0)
    _require_emulated(board)
    assert board.qemu_machine is not None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tinyrnn-qemu-") as cwd:  # semihosting file I/O
        try:
            done = toolchain.run_qemu(board.qemu_machine, firmware.elf, timeout, cwd=cwd)
        except subprocess.TimeoutExpired as exc:
            raise TinyRNNError(f"{firmware.elf.name} did not finish within {timeout:g} s on "
                               f"{board.name} (QEMU); the model may loop forever, or the inputs "
                               "are long: raise --timeout") from exc
    seconds = time.monotonic() - started
    console = done.stdout
    if done.returncode != 0:
        raise TinyRNNError(_explain_exit(firmware, done.returncode, console, done.stderr))
    outputs, stack_peak = _parse_console(firmware, console)
    if stack_peak >= board.stack_size:
        raise TinyRNNError(f"the image used all {board.stack_size} bytes of stack on "
                           f"{board.name}, so it may have overwritten its data; raise "
                           f"stack_size in boards/{board.name}.toml")
    return QemuRun(outputs=outputs, stack_peak=stack_peak, seconds=seconds, console=console)


def _require_emulated(board: Board) -> None:
    if board.qemu_machine is None:
        emulated = ", ".join(b.name for b in list_boards() if b.qemu_machine)
        raise TinyRNNError(f"board {board.name} is not emulated; run on one of {emulated}, "
                           "or flash it with `tinyrnn flash`")


def _explain_exit(firmware: Firmware, status: int, console: str, stderr: str) -> str:
    where = f"{firmware.elf.name} on {firmware.board.name} (QEMU)"
    error = re.search(r"^@error (\d+) (\d+) (\d+) (-?\d+)$", console, re.MULTILINE)
    if status == 1 and error:
        model = firmware.jobs[int(error.group(1))].model.name
        function = ("set_state", "run")[int(error.group(3))]
        code = int(error.group(4))
        known = firmware.jobs[int(error.group(1))].model.api.error(code)
        return (f"{model}_{function} returned {code} ({known.name if known else 'not NAME_OK'}) "
                f"for sample {error.group(2)} in {where}")
    # SYS_WRITE0 (the fault handler's line) reaches QEMU's stderr, not its stdout.
    fault = re.search(r"^@fault (\S+) pc=0x([0-9a-f]+)$", stderr, re.MULTILINE)
    if status in _FAULTS:
        pc = int(fault.group(2), 16) if fault else None
        if pc is None:
            place = ""
        elif pc == 0xFFFFFFFF:  # startup.c could not trust the stack pointer
            place = " with the stack pointer outside the stack"
        else:
            place = f" at pc 0x{pc:08x}{_symbolize(firmware.elf, pc)}"
        return (f"{where} stopped with a {_FAULTS[status]}{place} (exit status {status}); "
                "a stack overflow or an out-of-bounds access in the model are the usual causes")
    tail = "\n".join((console + stderr).strip().splitlines()[-10:])
    return f"{where} exited with status {status}:\n{tail}"


def _symbolize(elf: Path, address: int) -> str:
    """" in FUNCTION+0xOFFSET" for an address inside a known function, else ""."""
    with elf.open("rb") as handle:
        symtab = ELFFile(handle).get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            return ""
        for sym in symtab.iter_symbols():
            start = sym["st_value"] & ~1
            if sym["st_info"]["type"] == "STT_FUNC" and start <= address < start + sym["st_size"]:
                return f" in {sym.name}+0x{address - start:x}"
    return ""


def _parse_console(firmware: Firmware,
                   console: str) -> tuple[list[list[list[np.ndarray]]], int]:
    """Decode the harness's @out blocks; check that every expected output came, in order."""
    lines = iter(console.splitlines())
    outputs: list[list[list[np.ndarray]]] = [[[] for _ in job.samples] for job in firmware.jobs]
    stack_peak = -1
    begun = ended = False
    for line in lines:
        if line == "@tinyrnn begin":
            begun = True
        elif line == "@tinyrnn end":
            ended = True
        elif line.startswith("@out "):
            m, s, k, count = (int(v) for v in line.split()[1:])
            words: list[str] = []
            while len(words) < count and (more := next(lines, None)) is not None:
                words += more.split()
            if (len(words) != count or len(outputs[m][s]) != k
                    or not all(re.fullmatch(r"[0-9a-f]{8}", w) for w in words)):
                raise TinyRNNError(f"{firmware.elf.name} printed a garbled or truncated "
                                   f"output after {line!r}")
            outputs[m][s].append(np.array([int(w, 16) for w in words],
                                          dtype=np.uint32).view(np.float32))
        elif line.startswith("@stack "):
            stack_peak = int(line.split()[1])
    if not (begun and ended and stack_peak >= 0):
        raise TinyRNNError(f"{firmware.elf.name} did not print a complete result:\n"
                           + "\n".join(console.splitlines()[-10:]))
    for job, per_model in zip(firmware.jobs, outputs):
        for s, (sample, got) in enumerate(zip(job.samples, per_model)):
            expected = job.model.output_lengths(np.asarray(sample["x"]).shape[0])
            if [out.size for out in got] != expected:
                raise TinyRNNError(f"model {job.model.name!r} sample {s}: expected outputs of "
                                   f"{expected} floats, got {[out.size for out in got]}")
    return outputs, stack_peak


def run(model_dir: str | Path, board: Board, inputs: Sequence[np.ndarray],
        timeout: float = DEFAULT_TIMEOUT) -> tuple[list[np.ndarray], Firmware, QemuRun]:
    """Run one exported model on torch-layout inputs under QEMU; outputs in torch layout."""
    _require_emulated(board)
    model = ExportedModel.load(model_dir)
    samples = tuple(split_inputs(model.interface, inputs))
    with tempfile.TemporaryDirectory(prefix="tinyrnn-build-") as work:
        firmware = build([ModelInputs(model, samples)], board, work)
        result = run_qemu(firmware, timeout=timeout)
    outputs = assemble_outputs(model.interface, result.outputs[0], samples[0]["x"].shape[0])
    return outputs, firmware, result


# ---------------------------------------------------------------------------------------------
# Flash with pyOCD


def flash_command(firmware: Firmware) -> list[str]:
    """The pyOCD command that programs ``firmware`` into its board."""
    _require_flashable(firmware.board)
    # --no-wait: without a probe, pyOCD would otherwise wait for one forever.
    return [PYOCD, "flash", "--no-wait", "--target", firmware.board.pyocd_target,
            str(firmware.elf)]


def flash(firmware: Firmware, dry_run: bool = False) -> list[str]:
    """Program the board through pyOCD (or, with ``dry_run``, only return the command)."""
    command = flash_command(firmware)
    if dry_run:
        return command
    toolchain.require_tool(PYOCD, "pyOCD with `pip install pyocd` (or pass --dry-run to see the "
                                  "command)")
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip()
        if re.search(r"no (available|connected) debug probes", said, re.IGNORECASE):
            raise TinyRNNError(f"no debug probe found: connect {firmware.board.name}'s debug USB "
                               f"port (pyocd list shows what is attached)")
        if re.search(r"target type .* not recognized", said, re.IGNORECASE):
            raise TinyRNNError(f"pyOCD does not know target {firmware.board.pyocd_target}; "
                               f"install its CMSIS pack: pyocd pack install "
                               f"{firmware.board.pyocd_target}")
        raise TinyRNNError(f"{' '.join(command)} failed:\n{said}")
    return command


# ---------------------------------------------------------------------------------------------
# Tools


def _require_flashable(board: Board) -> None:
    if board.pyocd_target is None:
        real = ", ".join(b.name for b in list_boards() if b.pyocd_target)
        raise TinyRNNError(f"board {board.name} has no pyocd_target, so it cannot be flashed; "
                           f"boards that can: {real}")
    if board.flash_blocker:
        raise TinyRNNError(f"cannot flash {board.name} yet: {board.flash_blocker}")


# ---------------------------------------------------------------------------------------------
# Command line


def register_cli(subparsers: Any) -> None:
    """Add ``boards``, ``build``, ``run`` and ``flash`` to the tinyrnn command line.

    Each sub-parser sets ``func``: a handler taking the parsed arguments and returning the exit
    status. Handlers raise :class:`TinyRNNError` for the user's mistakes.
    """
    parser = subparsers.add_parser("boards", help="list the boards tinyrnn builds for")
    parser.set_defaults(func=_cli_boards)

    parser = subparsers.add_parser("build", help="cross-compile an exported model for a board "
                                   "and print its flash and RAM use")
    _add_common(parser)
    parser.add_argument("-o", "--output", type=Path, help="where to write the ELF image "
                        "(default NAME-BOARD.elf)")
    parser.add_argument("--input", type=Path, help="inputs to compile into the image, as for "
                        "`run` (default: one time step of zeros)")
    parser.add_argument("--json", action="store_true", help="print the sizes as JSON")
    parser.set_defaults(func=_cli_build)

    parser = subparsers.add_parser("run", help="run an exported model on an emulated board "
                                   "(QEMU), like run-host")
    _add_common(parser)
    parser.add_argument("--input", type=Path, required=True, help=".npy (the one forward "
                        "argument) or .npz with in0, in1, ... in torch layout")
    parser.add_argument("--output", type=Path, required=True, help=".npz to write out0, "
                        "out1, ... to, in torch layout")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds before QEMU is stopped (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--json", action="store_true", help="print the result (outputs "
                        "included) as JSON")
    parser.set_defaults(func=_cli_run)

    parser = subparsers.add_parser("flash", help="build an exported model for a real board "
                                   "and program it with pyOCD")
    _add_common(parser)
    parser.add_argument("-o", "--output", type=Path, help="where to keep the ELF image "
                        "(default NAME-BOARD.elf)")
    parser.add_argument("--input", type=Path, help="inputs to compile into the image")
    parser.add_argument("--dry-run", action="store_true", help="build, then print the pyOCD "
                        "command instead of running it")
    parser.set_defaults(func=_cli_flash)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="folder written by `tinyrnn export`")
    parser.add_argument("--board", required=True, help="board name (see `tinyrnn boards`)")


def _cli_boards(args: argparse.Namespace) -> int:
    del args
    print(f"{'board':<15}{'core':<15}{'fpu':<13}{'flash':>10}{'RAM':>10}  runs on")
    for board in list_boards():
        where = ([f"qemu -M {board.qemu_machine}"] if board.qemu_machine else []) + (
            [f"pyocd --target {board.pyocd_target}"] if board.pyocd_target else [])
        print(f"{board.name:<15}{board.core:<15}{board.fpu:<13}{_kib(board.flash.length):>10}"
              f"{_kib(board.ram.length):>10}  {', '.join(where)}")
    return 0


def _build_from_args(args: argparse.Namespace, work: str) -> Firmware:
    board = load_board(args.board)
    model = ExportedModel.load(args.dir)
    if args.input is not None:
        samples = tuple(split_inputs(model.interface, load_inputs(args.input)))
    else:
        samples = (model.zero_sample(),)
    output = args.output or Path(f"{model.name}-{board.name}.elf")
    check_file(output, "-o")
    return build([ModelInputs(model, samples)], board, work, output=output)


def _cli_build(args: argparse.Namespace) -> int:
    from ..commands import build as build_command

    result = build_command(args.dir, board=args.board, output=args.output, inputs=args.input)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    return 0


def _cli_run(args: argparse.Namespace) -> int:
    from ..commands import run as run_command

    result = run_command(args.dir, args.input, board=args.board, output=args.output,
                         timeout=args.timeout)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    return 0


def _cli_flash(args: argparse.Namespace) -> int:
    board = load_board(args.board)
    _require_flashable(board)
    if not args.dry_run:
        toolchain.require_tool(PYOCD, "pyOCD with `pip install pyocd` (or pass --dry-run to "
                               "see the command)")
    with tempfile.TemporaryDirectory(prefix="tinyrnn-build-") as work:
        firmware = _build_from_args(args, work)
    command = flash(firmware, dry_run=args.dry_run)
    print(" ".join(command) if args.dry_run else f"flashed {firmware.elf} to {board.name}")
    return 0
