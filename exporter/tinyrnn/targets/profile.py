"""``tinyrnn profile``: what one time step costs on a Cortex-M core, measured without a board.

The exported model is cross-compiled with the core's production flags (``-O2`` and the
``cpu_flags`` of a board with that core, ``boards/*.toml``) into a bare image: the model, the C
library functions it calls (newlib-nano, libm, libgcc) and a few buffers, no start-up code.
The unicorn engine loads the image's sections and calls the C API directly: ``NAME_reset``,
a few ``NAME_step`` calls on a deterministic input, then one counted ``NAME_step`` (for
bidirectional models, one counted ``NAME_run`` over :data:`RUN_STEPS` steps).

The concerns live in their own modules: the cores and the Cortex-M4 cost table
(:mod:`tinyrnn.targets.costs`: capstone classifies each instruction,
:data:`~tinyrnn.targets.costs.M4_COSTS`
turns the mix into a cycle estimate for the M4 and M33; the M7 dual-issues, so it gets
instruction counts only, as do the M0 and the M3), the bare image and the static stack depth
(:mod:`tinyrnn.targets.profile_image`), the emulated calls and their block counts
(:mod:`tinyrnn.targets.emulator`), and the second opinion of SysTick under ``qemu-system-arm
-icount``
(:mod:`tinyrnn.targets.qemucheck`). This module measures one model and prints the result.

Every number repeats exactly from run to run. ``docs/profiling.md`` explains the method and
its limits.

    result = profile("out/", cpu="cortex-m4")
    print(result.format())
    result.to_json()["cycles_per_step"]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cells import CELLS, cell_spec, recurrent_macs
from ..errors import TinyRNNError
from . import cross
from .boards import Board, load_board
from .costs import Core, reference_board, resolve_core
from .emulator import Count, Emulator
from .profile_image import RUN_STEPS, ProfileImage, build_image, static_stack

WARMUP_STEPS = 3       # NAME_step calls before the counted one, so the state is not zero
QEMU_COUNTED = ("cortex-m55",)
"""Cores unicorn does not emulate (MVE/Helium): their instructions are counted under QEMU
(:mod:`tinyrnn.targets.qemucount`)."""


# ---------------------------------------------------------------------------------------------
# Model arithmetic


def layer_macs(layer: Mapping[str, Any]) -> float:
    """Multiply-accumulates of one manifest layer at one time step of its input, all
    directions. A conv1d with stride s makes one output position per s input steps: its
    kernel x in / groups x out MACs per position, over s."""
    kind = layer["kind"]
    if kind == "dense":  # a diagonal one (a BatchNorm alone) multiplies once per feature
        return int(layer["out_features"]) * (1 if layer.get("diagonal") else
                                             int(layer["in_features"]))
    if kind == "conv1d":  # every tap, including the ones over the padding (the C skips those)
        return _conv_position_macs(layer) / int(layer["stride"])
    if kind == "frame_conv1d":  # over the positions of one step's frame, every output
        return (int(layer["out_length"]) * int(layer["out_channels"])
                * int(layer["in_channels"]) // int(layer["groups"]) * int(layer["kernel"]))
    if kind not in CELLS:
        return 0
    macs = recurrent_macs(kind, int(layer["input_size"]), int(layer["hidden_size"]),
                          int(layer["state_size"]))
    return macs * int(layer.get("directions", 1))


def _conv_position_macs(layer: Mapping[str, Any]) -> int:
    """MACs of one output position of a manifest conv1d, the taps over the padding included."""
    return (int(layer["out_channels"]) * int(layer["in_channels"]) // int(layer["groups"])
            * int(layer["kernel"]))


def conv_out_steps(layer: Mapping[str, Any], steps: int) -> int:
    """torch's output length of a manifest conv1d over ``steps`` input steps."""
    left, right = (int(p) for p in layer["padding"])
    span = int(layer["dilation"]) * (int(layer["kernel"]) - 1) + 1
    return max(0, (steps + left + right - span) // int(layer["stride"]) + 1)


def macs_per_step(manifest: Mapping[str, Any], steps: int | None = None) -> float:
    """MACs of one time step: recurrent layers, and dense layers applied at that step.

    With ``steps`` (a whole ``NAME_run`` of that length), a dense layer after the step
    selection runs once per sequence and counts ``1/steps`` per step; without it (the
    ``NAME_step`` API), the head runs at every step. A conv1d runs at its output positions
    only, and the layers after a length-changing conv run over its output's length: with
    ``steps`` exactly (torch's output length), without it at 1 / stride of the rate before.
    """
    total = 0.0
    selected = False
    length = steps  # the length of the stage's sequence, when known
    rate = 1.0  # steps of the stage per input step
    for layer in manifest.get("layers", []):
        if layer["kind"] == "select_step":
            selected = True
            continue
        if selected and steps and layer["kind"] == "dense":
            total += layer_macs(layer) / steps
            continue
        if layer["kind"] == "conv1d":
            if steps and length is not None:
                length = conv_out_steps(layer, length)
                rate = length / steps
            else:
                rate /= int(layer["stride"])
            total += rate * _conv_position_macs(layer)
            continue
        total += rate * layer_macs(layer)
    return total


def lower_bound_cycles(cell: str, input_size: int, hidden: int,
                       macs_per_cycle: float = 0.8) -> float:
    """The matrix-vector bound of one step on an M4 with int8 weights: gates*H*(I+H)/0.8."""
    return cell_spec(cell).G * hidden * (input_size + hidden) / macs_per_cycle



# ---------------------------------------------------------------------------------------------
# The profile


@dataclass(frozen=True)
class Profile:
    """What one time step of one exported model costs on one core."""

    model: str
    format: str
    cpu: str
    board: str
    cpu_flags: tuple[str, ...]
    bidirectional: bool
    measured: str                 # "NAME_step" or "NAME_run over 8 steps"
    instructions_per_step: int
    cycles_per_step: int | None
    cycles_note: str
    macs_per_step: float
    flash_code_bytes: int
    flash_weights_bytes: int
    ram_state_bytes: int
    ram_scratch_bytes: int
    stack_bytes: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def macs_per_cycle(self) -> float | None:
        """MACs per estimated cycle (None without a cycle estimate)."""
        if not self.cycles_per_step:
            return None
        return self.macs_per_step / self.cycles_per_step

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object: the stable keys of docs/profiling.md, then the details."""
        macs = self.macs_per_step
        return {
            "cpu": self.cpu,
            "board": self.board,
            "model": self.model,
            "format": self.format,
            "measured": self.measured,
            "instructions_per_step": self.instructions_per_step,
            "cycles_per_step": self.cycles_per_step,
            "cycles_note": self.cycles_note,
            "macs_per_step": int(macs) if float(macs).is_integer() else round(macs, 3),
            "macs_per_cycle": (None if self.macs_per_cycle is None
                               else round(self.macs_per_cycle, 4)),
            "flash_code_bytes": self.flash_code_bytes,
            "flash_weights_bytes": self.flash_weights_bytes,
            "ram_state_bytes": self.ram_state_bytes,
            "ram_scratch_bytes": self.ram_scratch_bytes,
            "stack_bytes": self.stack_bytes,
            **self.details,
        }

    def format_text(self) -> str:
        """A short report for people."""
        d = self.details
        cyc = (f"{self.cycles_per_step:,} (estimate; {self.cycles_note})"
               if self.cycles_per_step is not None else f"- ({self.cycles_note})")
        mpc = f"{self.macs_per_cycle:.3f}" if self.macs_per_cycle is not None else "-"
        lines = [
            f"{self.model} ({self.format}) on {self.cpu}, flags {' '.join(self.cpu_flags)}",
            f"  measured              {self.measured}",
            f"  instructions / step   {self.instructions_per_step:,}",
            f"  cycles / step         {cyc}",
            f"  MACs / step           {self.macs_per_step:,.0f}",
            f"  MACs / cycle          {mpc}",
            f"  MACs / instruction    {d['macs_per_instruction']:.3f} (instructions / MAC "
            f"{d['instructions_per_mac']:.3f})" if d.get("macs_per_instruction") else "",
            f"  method                {d['method']}" if d.get("method") else "",
            f"  flash: code           {self.flash_code_bytes:,} B (model "
            f"{d['flash_model_code_bytes']:,} B, C library {d['flash_library_bytes']:,} B)",
            f"  flash: weights        {self.flash_weights_bytes:,} B",
            f"  RAM: state            {self.ram_state_bytes:,} B",
            f"  RAM: scratch          {self.ram_scratch_bytes:,} B",
            f"  RAM: stack            {self.stack_bytes:,} B (measured "
            f"{_num(d['stack_measured_bytes'])} B; model code alone, from -fstack-usage: "
            f"{_num(d.get('stack_static_model_bytes'))} B)",
            f"  RAM: C library        {d['ram_library_bytes']:,} B (newlib's errno and "
            "reentrancy data, when the model calls libm)" if d["ram_library_bytes"] else "",
        ]
        if d.get("instructions_per_step_q") is not None:
            lines.append(f"  int16 API (step_q)    {d['instructions_per_step_q']:,} instructions"
                         + (f", {d['cycles_per_step_q']:,} cycles"
                            if d.get("cycles_per_step_q") is not None else ""))
        functions = d.get("functions") or {}
        if functions:
            total = sum(f["instructions"] for f in functions.values()) or 1
            key = "cycles" if self.cycles_per_step is not None else "instructions"
            lines.append(f"  {key} by function  " + ", ".join(
                f"{name} {f[key]:,}" for name, f in list(functions.items())[:5])
                + (f" (of the counted {'step' if not self.bidirectional else 'run'}; inlined "
                   "helpers count in their caller)" if total else ""))
        mix = d.get("instruction_mix", {})
        if mix:
            total = sum(mix.values())
            top = sorted(mix.items(), key=lambda kv: -kv[1])[:6]
            lines.append("  instruction mix       " + ", ".join(
                f"{cls} {100 * n / total:.0f}%" for cls, n in top))
        return "\n".join(line for line in lines if line)


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def deterministic_input(steps: int, features: int) -> np.ndarray:
    """The input every profile feeds: smooth, in [-0.8, 0.8], the same on every machine."""
    t = np.arange(steps, dtype=np.float64)[:, None]
    k = np.arange(features, dtype=np.float64)[None, :]
    return (0.8 * np.sin(0.9 * k + 0.37 * t + 0.1)).astype(np.float32)


def deterministic_ids(steps: int, vocab: int) -> np.ndarray:
    """The input of a model whose x is token ids: ids spread over the vocabulary, (steps, 1)."""
    return ((np.arange(steps) * 7919 + 3) % vocab).astype(np.float32)[:, None]


def _state_split(model: cross.ExportedModel, state_size: int) -> tuple[int, int]:
    """(state, scratch) bytes of NAME_state_t, split as the manifest does."""
    sizes = model.manifest.get("sizes", {})
    state = int(sizes.get("state_bytes", state_size))
    return state, max(0, state_size - state)


def profile(model_dir: str | Path, cpu: str | None = None, board: str | Board | None = None,
            warmup: int = WARMUP_STEPS, measure_run: bool = True) -> Profile:
    """Build ``model_dir`` for a core and count one time step; see the module docstring.

    Give ``cpu`` (a core: flags from the reference board with that core) or ``board`` (its own
    flags and core). ``measure_run`` also runs NAME_run over RUN_STEPS steps for unidirectional
    models (its instruction count and stack), which costs time on slow cores.
    """
    model = cross.ExportedModel.load(model_dir)
    qemu_board = qemu_counted_board(cpu, board)
    if qemu_board is not None:
        with tempfile.TemporaryDirectory(prefix="tinyrnn-profile-") as work:
            return measure_qemu(build_image(model, qemu_board, work))
    if board is not None:
        chosen = board if isinstance(board, Board) else load_board(board)
        core = resolve_core(chosen.core)
        if cpu is not None and resolve_core(cpu) != core:
            raise TinyRNNError(f"--cpu {cpu} differs from board {chosen.name}'s core "
                               f"{chosen.core}; give one of them")
    elif cpu is not None:
        core = resolve_core(cpu)
        chosen = reference_board(core)
    else:
        raise TinyRNNError("say which core to profile for: --cpu cortex-m4 (or m0, m3, m7, m33)"
                           " or --board NAME")
    with tempfile.TemporaryDirectory(prefix="tinyrnn-profile-") as work:
        image = build_image(model, chosen, work)
        return measure(image, core, warmup=warmup, measure_run=measure_run)


def _core_name(cpu: str) -> str:
    name = cpu.strip().lower()
    return name if name.startswith("cortex-") else "cortex-" + name


def qemu_counted_board(cpu: str | None, board: str | Board | None) -> Board | None:
    """The board to count under QEMU when the core is one of :data:`QEMU_COUNTED`, else None."""
    if board is not None:
        chosen = board if isinstance(board, Board) else load_board(board)
        if chosen.core not in QEMU_COUNTED:
            return None
        if cpu is not None and _core_name(cpu) != chosen.core:
            raise TinyRNNError(f"--cpu {cpu} differs from board {chosen.name}'s core "
                               f"{chosen.core}; give one of them")
        return chosen
    if cpu is None or _core_name(cpu) not in QEMU_COUNTED:
        return None
    from .boards import list_boards

    boards = sorted(b.name for b in list_boards()
                    if b.core == _core_name(cpu) and b.qemu_machine is not None)
    if not boards:
        raise TinyRNNError(f"no emulated board in boards/ has a {_core_name(cpu)}")
    return load_board(boards[0])


def _elf_sizes(elf: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Section sizes and symbol sizes of ``elf``."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    with open(elf, "rb") as handle:
        parsed = ELFFile(handle)
        sections = {s.name: int(s["sh_size"]) for s in parsed.iter_sections()}
        symbols = {sym.name: int(sym["st_size"]) for s in parsed.iter_sections()
                   if isinstance(s, SymbolTableSection) for sym in s.iter_symbols()}
    return sections, symbols


def measure_qemu(image: ProfileImage) -> Profile:
    """One time step of ``image``'s model counted under QEMU -icount (a core unicorn lacks):
    instructions per step, MACs per instruction, flash and RAM from the image; the stack from
    gcc's -fstack-usage through the model's call graph (no emulator paints it)."""
    from .qemucount import count_steps

    model = image.model
    name = model.name
    max_len = model.interface.get("max_seq_len") or 0
    if max_len and max_len < RUN_STEPS:
        raise TinyRNNError(f"{name} was exported for sequences of at most {max_len} steps; the "
                           f"profile runs {RUN_STEPS}: export with --max-seq-len {RUN_STEPS}")
    counted = count_steps(image)
    sections, symbols = _elf_sizes(image.elf)
    macs = macs_per_step(model.manifest)
    instructions = round(counted.instructions_per_step)
    state_size = symbols.get("tinyrnn_profile_state", 0)
    ram_state, ram_scratch = _state_split(model, state_size)
    static, external = static_stack(image.callgraph, [f"{name}_step", f"{name}_run"])
    details: dict[str, Any] = {
        "method": counted.method,
        "macs_per_instruction": round(macs / instructions, 4) if instructions else None,
        "instructions_per_mac": round(instructions / macs, 4) if macs else None,
        "instructions_per_step_q": (None if counted.instructions_per_step_q is None
                                    else round(counted.instructions_per_step_q)),
        "cycles_per_step_q": None,
        "qemu_ticks": counted.ticks,
        "qemu_counted_steps": counted.steps,
        "qemu_instructions_per_tick": round(counted.instructions_per_tick, 4),
        "qemu_resolution_instructions": round(counted.resolution, 2),
        "stack_method": "gcc's -fstack-usage worst case through the model's call graph "
                        "(QEMU does not measure the stack)",
        "stack_measured_bytes": None,
        "flash_model_code_bytes": sections.get(".model_text", 0),
        "flash_library_bytes": sum(sections.get(s, 0) for s in (".text", ".rodata", ".data")),
        "ram_library_bytes": sections.get(".data", 0) + sections.get(".bss", 0),
        "ram_hidden_static_bytes": sections.get(".model_data", 0)
        + sections.get(".model_bss", 0),
        "state_struct_bytes": state_size,
        "stack_static_model_bytes": static,
        "stack_static_excludes": external,
        "c_library": "newlib-nano, libm, libgcc (arm-none-eabi)",
    }
    return Profile(
        model=name, format=str(model.manifest.get("format", "?")), cpu=image.board.core,
        board=image.board.name, cpu_flags=tuple(image.board.cpu_flags), bidirectional=False,
        measured=f"{name}_step x {counted.steps} after {WARMUP_STEPS} steps from reset, "
                 "under QEMU",
        instructions_per_step=instructions, cycles_per_step=None,
        cycles_note="instruction count only, from QEMU -icount: a vector instruction counts "
                    "once, and the core overlaps its beats with other instructions; no "
                    "cycle model",
        macs_per_step=macs,
        flash_code_bytes=details["flash_model_code_bytes"] + details["flash_library_bytes"],
        flash_weights_bytes=sections.get(".model_rodata", 0) + sections.get(".model_data", 0),
        ram_state_bytes=ram_state, ram_scratch_bytes=ram_scratch, stack_bytes=static or 0,
        details=details)


def measure(image: ProfileImage, core: Core, warmup: int, measure_run: bool) -> Profile:
    model = image.model
    name = model.name
    interface = model.interface
    emu = Emulator(image, core)
    state = emu.address("tinyrnn_profile_state")
    x_addr = emu.address("tinyrnn_profile_x")
    out_addr = emu.address("tinyrnn_profile_out")
    features = int(interface["input_size"])
    steps = max(RUN_STEPS, warmup + 1)
    x = deterministic_input(steps, features)
    vocab = next((int(spec.get("vocab", 0)) for spec in interface["forward_inputs"]
                  if spec["role"] == "x"), 0)
    if vocab:  # token ids: the C refuses anything else (NAME_ERR_INPUT)
        x = deterministic_ids(steps, vocab)
    bidirectional = not interface.get("has_step", True)
    max_len = interface.get("max_seq_len") or 0
    if max_len and max_len < RUN_STEPS:
        raise TinyRNNError(f"{name} was exported for sequences of at most {max_len} steps; the "
                           f"profile runs {RUN_STEPS}: export with --max-seq-len {RUN_STEPS}")
    emu.write("tinyrnn_profile_x", x[:RUN_STEPS])
    emu.paint_stack()

    def check(function: str, status: int) -> None:
        if status != 0:
            raise TinyRNNError(f"{function} returned {status} on the emulated {core.name}")

    def run_call(fn: str, x_buffer: int, out_buffer: int, item: int, count: bool) -> Count:
        lengths = model.output_lengths(RUN_STEPS)
        outs = [out_buffer + item * sum(lengths[:k]) for k in range(len(lengths))]
        emu.call(f"{name}_reset", state)
        status, counted = emu.call(fn, state, x_buffer, RUN_STEPS, *outs, count=count)
        check(fn, status)
        return counted  # type: ignore[return-value]

    emu.call(f"{name}_reset", state)
    details: dict[str, Any] = {}
    if bidirectional:
        run = run_call(f"{name}_run", x_addr, out_addr, 4, count=True)
        counted = run
        per_step_instructions = round(run.instructions / RUN_STEPS)
        per_step_cycles = round(run.cycles / RUN_STEPS)
        measured = f"{name}_run over {RUN_STEPS} steps, divided by {RUN_STEPS}"
        macs = macs_per_step(model.manifest, RUN_STEPS)
        details["instructions_per_run"] = run.instructions
        stack_calls = f"{name}_reset and {name}_run"
    else:
        for t in range(warmup):
            status, _ = emu.call(f"{name}_step", state, x_addr + 4 * features * t, out_addr)
            check(f"{name}_step", status)
        t = warmup % RUN_STEPS
        status, step = emu.call(f"{name}_step", state, x_addr + 4 * features * t, out_addr,
                                count=True)
        check(f"{name}_step", status)
        assert step is not None
        counted = step
        per_step_instructions, per_step_cycles = step.instructions, step.cycles
        measured = f"{name}_step after {warmup} steps from reset"
        macs = macs_per_step(model.manifest)
        stack_calls = f"{name}_reset and {name}_step"
        if measure_run:
            stack_calls += f" and {name}_run"
            run = run_call(f"{name}_run", x_addr, out_addr, 4, count=True)
            details["instructions_per_run"] = run.instructions
        if image.has_q:
            details.update(__measure_q(emu, image, core, x, warmup))
    details["run_steps"] = RUN_STEPS
    measured_stack = emu.stack_used()

    sections = emu.sections
    model_code = sections.get(".model_text", 0)
    weights = sections.get(".model_rodata", 0) + sections.get(".model_data", 0)
    library = sum(sections.get(s, 0) for s in (".text", ".rodata", ".data"))
    state_size = emu.symbols["tinyrnn_profile_state"].size
    ram_state, ram_scratch = _state_split(model, state_size)
    static, external = static_stack(image.callgraph, [f"{name}_step", f"{name}_run"])
    # Frames gcc reserves but does not fully write are missed by the measurement, library
    # calls by the static sum: take the larger.
    stack = max(measured_stack, static or 0)
    details["stack_method"] = (
        f"the larger of the deepest stack write under unicorn over {stack_calls} (C library "
        "calls included) and gcc's -fstack-usage worst case through the model's call graph")
    details["stack_measured_bytes"] = measured_stack
    cycles = per_step_cycles if core.cycle_model else None
    details.update({
        "taken_branches_per_step": (counted.taken_branches if not bidirectional
                                    else round(counted.taken_branches / RUN_STEPS)),
        "instruction_mix": counted.mix,
        "cycle_mix": counted.mix_cycles if core.cycle_model else None,
        "functions": {name: {"instructions": ins, "cycles": cyc if core.cycle_model else None}
                      for name, (ins, cyc) in counted.functions.items()},
        "flash_model_code_bytes": model_code,
        "flash_library_bytes": library,
        "ram_library_bytes": sections.get(".data", 0) + sections.get(".bss", 0),
        "ram_hidden_static_bytes": sections.get(".model_data", 0)
        + sections.get(".model_bss", 0),
        "state_struct_bytes": state_size,
        "stack_static_model_bytes": static,
        "stack_static_excludes": external,
        "c_library": "newlib-nano, libm, libgcc (arm-none-eabi)",
        "cost_table": "Cortex-M4 TRM r0p1 tables 3-1 and 7-1 (docs/profiling.md)"
        if core.cycle_model else None,
    })
    return Profile(
        model=name, format=str(model.manifest.get("format", "?")), cpu=core.name,
        board=image.board.name, cpu_flags=tuple(image.board.cpu_flags),
        bidirectional=bidirectional, measured=measured,
        instructions_per_step=per_step_instructions, cycles_per_step=cycles,
        cycles_note=core.note, macs_per_step=macs,
        flash_code_bytes=model_code + library, flash_weights_bytes=weights,
        ram_state_bytes=ram_state, ram_scratch_bytes=ram_scratch, stack_bytes=stack,
        details=details)


def __measure_q(emu: Emulator, image: ProfileImage, core: Core, x: np.ndarray,
               warmup: int) -> dict[str, Any]:
    """Count NAME_step_q, the int16 API of fixed-point models, on the same (quantized) input."""
    name = image.model.name
    state = emu.address("tinyrnn_profile_state")
    frac = image.model.api.macro("INPUT_FRAC")
    xq = np.clip(np.floor(x.astype(np.float64) * 2.0 ** frac + 0.5), -32768, 32767)
    emu.write("tinyrnn_profile_xq", xq[:RUN_STEPS].astype("<i2"))
    x_addr = emu.address("tinyrnn_profile_xq")
    out_addr = emu.address("tinyrnn_profile_outq")
    features = x.shape[1]
    emu.call(f"{name}_reset", state)
    for t in range(warmup):
        emu.call(f"{name}_step_q", state, x_addr + 2 * features * t, out_addr)
    status, counted = emu.call(f"{name}_step_q", state,
                               x_addr + 2 * features * (warmup % RUN_STEPS), out_addr,
                               count=True)
    if status != 0:
        raise TinyRNNError(f"{name}_step_q returned {status} on the emulated {core.name}")
    assert counted is not None
    return {"instructions_per_step_q": counted.instructions,
            "cycles_per_step_q": counted.cycles if core.cycle_model else None}



def register_cli(subparsers: Any) -> None:
    """Add ``profile`` to the tinyrnn command line (its handler sets ``func``)."""
    parser = subparsers.add_parser(
        "profile", help="count the instructions (and estimate the M4/M33 cycles) of one time "
        "step under an emulated Cortex-M core; flash and RAM")
    parser.add_argument("dir", type=Path, help="folder written by `tinyrnn export`")
    parser.add_argument("--cpu", help="core: cortex-m0, m0plus, m3, m4, m7, m33 or m55 (production "
                        "flags of a board with that core; m55: instructions counted under QEMU "
                        "-icount)")
    parser.add_argument("--board", help="build with this board's flags instead (see `tinyrnn "
                        "boards`)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--qemu-check", action="store_true", help="also time the same step "
                        "with SysTick under QEMU -icount and compare")
    parser.set_defaults(func=_cli_profile)


def _cli_profile(args: argparse.Namespace) -> int:
    from ..commands import profile as profile_command

    result = profile_command(args.dir, cpu=args.cpu, board=args.board,
                             qemu_check=args.qemu_check)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    return 0 if result.ok else 1


