"""Instructions per time step counted by QEMU, for the cores unicorn does not emulate (the
Cortex-M55 with MVE/Helium): ``tinyrnn profile --cpu cortex-m55``.

Debian's QEMU 7.2 ships no TCG plugins (``-plugin`` finds no ``libinsn.so``), so the count
comes from ``-icount shift=0,sleep=off``: virtual time advances one nanosecond per executed
guest instruction, and SysTick, clocked from virtual time, counts instructions. The image
times :data:`COUNTED_STEPS` back-to-back ``NAME_step`` calls after :data:`WARMUP_STEPS`
warm-up steps, then a loop of known length (``SUBS``/``BNE``, 2 instructions per turn)
that calibrates instructions per tick. Resolution: one tick either side of each read,
spread over the counted steps. A vector instruction counts once, however many lanes or beats
it has: the count says nothing about cycles.

The model is compiled with the production flags of a board with the core (``-O2`` and the
board's ``cpu_flags``), the same objects ``tinyrnn profile`` builds for the other cores.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TinyRNNError
from . import toolchain
from .profile_image import ProfileImage
from .qemucheck import SPIN_LOOPS, _link_semihosted

COUNTED_STEPS = 32     # NAME_step calls timed together
WARMUP_STEPS = 3       # as tinyrnn.targets.profile: calls before the counted ones
INPUTS = 8             # distinct deterministic inputs the counted steps cycle through


@dataclass(frozen=True)
class QemuCount:
    """``steps`` NAME_step calls timed with SysTick under ``qemu-system-arm -icount``."""

    board: str
    steps: int
    ticks: int                    # SysTick ticks across the counted steps
    instructions_per_tick: float  # calibrated on a loop of known length
    ticks_q: int | None = None    # ... across as many NAME_step_q calls (fixed-point models)

    @property
    def instructions_per_step(self) -> float:
        return self.ticks * self.instructions_per_tick / self.steps

    @property
    def instructions_per_step_q(self) -> float | None:
        """The same for the int16 API (NAME_step_q), None without one."""
        if self.ticks_q is None:
            return None
        return self.ticks_q * self.instructions_per_tick / self.steps

    @property
    def resolution(self) -> float:
        """Instructions per step either way: two ticks over the counted steps."""
        return 2 * self.instructions_per_tick / self.steps

    @property
    def method(self) -> str:
        return (f"QEMU {self.board} -icount shift=0 (one virtual ns per instruction): SysTick "
                f"across {self.steps} NAME_step calls after {WARMUP_STEPS} warm-up steps, "
                f"calibrated on a {2 * SPIN_LOOPS:,}-instruction loop at "
                f"{self.instructions_per_tick:.2f} instructions per tick; +-"
                f"{self.resolution:.1f} instructions per step, the step-calling loop included")


def count_steps(image: ProfileImage, steps: int = COUNTED_STEPS,
                timeout: float = 120.0) -> QemuCount:
    """Time ``steps`` NAME_step calls of the model of ``image`` (its objects, built for an
    emulated board) under QEMU."""
    from .profile import deterministic_input

    model, board = image.model, image.board
    if board.qemu_machine is None:
        raise TinyRNNError(f"board {board.name} is not emulated; choose one with a QEMU "
                           "machine (see `tinyrnn boards`)")
    if not model.interface.get("has_step", True):
        raise TinyRNNError(f"profiling on {board.core} times NAME_step, which bidirectional "
                           "models do not have; export a unidirectional model")
    api = model.api
    features = api.macro("INPUT_SIZE")
    with tempfile.TemporaryDirectory(prefix="tinyrnn-qcount-") as tmp:
        work = Path(tmp)
        x = deterministic_input(max(INPUTS, WARMUP_STEPS), features)
        has_q = api.has("step_q")
        xq: list[int] = []
        if has_q:  # as tinyrnn.targets.profile quantizes the input for NAME_step_q
            frac = api.macro("INPUT_FRAC")
            xq = [int(v) for v in np.clip(np.floor(x.astype(np.float64) * 2.0 ** frac + 0.5),
                                          -32768, 32767).reshape(-1)]
        main = toolchain.render_firmware(
            "count_main.c.j2", work / "count_main.c", name=model.name, header=api.header,
            state_type=api.state_type, reset=api.function("reset").name,
            step=api.function("step").name, words=toolchain.hex_words(x), features=features,
            warmup=WARMUP_STEPS, steps=steps, inputs=len(x), spin=SPIN_LOOPS, xq=xq,
            step_q=api.function("step_q").name if has_q else "",
            out_floats=api.function("step").output_lengths(1)[0])
        elf = _link_semihosted(board, work, main, image.model_objects, model.directory)
        assert board.qemu_machine is not None
        try:
            done = toolchain.run_qemu(board.qemu_machine, elf, timeout, icount=True)
        except subprocess.TimeoutExpired:
            raise TinyRNNError(f"the QEMU count did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise TinyRNNError(f"the QEMU count image exited with status {done.returncode}:\n"
                           f"{(done.stdout + done.stderr)[-500:]}")
    match = re.search(r"^@ticks (\d+) (\d+) (\d+)$", done.stdout, re.MULTILINE)
    if not match:
        raise TinyRNNError(f"the QEMU count printed no @ticks line:\n{done.stdout[-500:]}")
    ticks, spin_ticks, ticks_q = (int(g) for g in match.groups())
    if spin_ticks == 0:
        raise TinyRNNError("SysTick did not move under QEMU; is -icount supported here?")
    return QemuCount(board=board.name, steps=steps, ticks=ticks,
                     instructions_per_tick=2 * SPIN_LOOPS / spin_ticks,
                     ticks_q=ticks_q if has_q else None)
