"""A second measurement of one time step: ``NAME_step`` timed with SysTick while
``qemu-system-arm -icount shift=0`` runs one virtual nanosecond per instruction, against the
count of the same step under unicorn (``tinyrnn profile --qemu-check``).

The model's objects are compiled once and linked into both images, so both run the same
machine code on the same input after the same warm-up steps.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import TinyRNNError
from . import cross, toolchain
from .boards import Board, load_board
from .costs import resolve_core
from .profile import WARMUP_STEPS, deterministic_input, measure
from .profile_image import RUN_STEPS, build_image

SPIN_LOOPS = 200_000  # 400,000 instructions to calibrate instructions per SysTick tick


@dataclass(frozen=True)
class QemuCheck:
    """One NAME_step timed with SysTick under ``qemu-system-arm -icount shift=0``."""

    board: str
    ticks: int                  # SysTick ticks across the counted step
    empty_ticks: int            # ticks across two back-to-back SysTick reads
    instructions_per_tick: float  # calibrated on a loop of known length
    unicorn_instructions: int

    @property
    def qemu_instructions(self) -> float:
        """The step's instruction count as QEMU's SysTick saw it."""
        return self.ticks * self.instructions_per_tick

    @property
    def resolution(self) -> float:
        """How far apart two correct measurements may be: one tick either side of each read."""
        return 2 * self.instructions_per_tick

    @property
    def agrees(self) -> bool:
        """Whether the two methods agree within the SysTick method's resolution."""
        return abs(self.qemu_instructions - self.unicorn_instructions) <= self.resolution


def qemu_cross_check(model_dir: str | Path, board: str | Board = "mps2-an386",
                     warmup: int | None = None, timeout: float = 120.0) -> QemuCheck:
    """Count one NAME_step under unicorn and time the same step with SysTick under QEMU.

    The model's objects are compiled once and linked into both images, so both run the same
    machine code on the same input after the same warm-up steps.
    """
    warmup = WARMUP_STEPS if warmup is None else warmup
    chosen = board if isinstance(board, Board) else load_board(board)
    if chosen.qemu_machine is None:
        raise TinyRNNError(f"board {chosen.name} is not emulated; choose one with a QEMU "
                           "machine (see `tinyrnn boards`)")
    model = cross.ExportedModel.load(model_dir)
    if not model.interface.get("has_step", True):
        raise TinyRNNError("the QEMU cross-check times NAME_step, which bidirectional models "
                           "do not have; export a unidirectional model")
    core = resolve_core(chosen.core)
    api = model.api
    with tempfile.TemporaryDirectory(prefix="tinyrnn-xcheck-") as tmp:
        work = Path(tmp)
        image = build_image(model, chosen, work / "bare")
        result = measure(image, core, warmup=warmup, measure_run=False)
        features = api.macro("INPUT_SIZE")
        x = deterministic_input(max(RUN_STEPS, warmup + 1), features)[:RUN_STEPS]
        main = toolchain.render_firmware(
            "xcheck_main.c.j2", work / "xcheck_main.c", name=model.name, header=api.header,
            state_type=api.state_type, reset=api.function("reset").name,
            step=api.function("step").name, words=toolchain.hex_words(x), features=features,
            warmup=warmup, counted=warmup % RUN_STEPS, spin=SPIN_LOOPS,
            out_floats=api.function("step").output_lengths(1)[0])
        elf = _link_semihosted(chosen, work, main, image.model_objects, model.directory)
        assert chosen.qemu_machine is not None
        try:
            done = toolchain.run_qemu(chosen.qemu_machine, elf, timeout, icount=True)
        except subprocess.TimeoutExpired:
            raise TinyRNNError(f"the QEMU cross-check did not finish within {timeout:g} s"
                               ) from None
    if done.returncode != 0:
        raise TinyRNNError(f"the QEMU cross-check image exited with status {done.returncode}:\n"
                           f"{(done.stdout + done.stderr)[-500:]}")
    console = done.stdout
    match = re.search(r"^@ticks (\d+) (\d+) (\d+)$", console, re.MULTILINE)
    if not match:
        raise TinyRNNError(f"the QEMU cross-check printed no @ticks line:\n{console[-500:]}")
    ticks, empty, spin_ticks = (int(g) for g in match.groups())
    if spin_ticks == 0:
        raise TinyRNNError("SysTick did not move under QEMU; is -icount supported here?")
    return QemuCheck(board=chosen.name, ticks=ticks, empty_ticks=empty,
                     instructions_per_tick=2 * SPIN_LOOPS / spin_ticks,
                     unicorn_instructions=result.instructions_per_step)


def _link_semihosted(board: Board, work: Path, main: Path, model_objects: tuple[Path, ...],
                     include: Path) -> Path:
    """The cross-check image: firmware/startup.c, the board's linker script, our main."""
    firmware = toolchain.resource_dir("firmware")
    script = toolchain.render_firmware("linker.ld.j2", work / "linker.ld", board=board,
                                       heap_min=cross.HEAP_MIN)
    jobs = [toolchain.CompileJob(source, work / f"{source.stem}.o",
                                 (f"-I{firmware}", f"-I{include}"))
            for source in (firmware / "startup.c", main)]
    toolchain.compile_all(jobs, board.cpu_flags, f"compiling the cross-check for {board.name}")
    elf = work / "xcheck.elf"
    toolchain.link([*(job.output for job in jobs), *model_objects], elf, board.cpu_flags,
                   f"linking for {board.name}", ["-T", str(script), *cross.LDFLAGS, "-lm"])
    return elf
