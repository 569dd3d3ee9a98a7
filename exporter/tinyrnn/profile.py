"""``tinyrnn profile``: what one time step costs on a Cortex-M core, measured without a board.

The exported model is cross-compiled with the core's production flags (``-O2`` and the
``cpu_flags`` of a board with that core, ``boards/*.toml``) into a bare image: the model, the C
library functions it calls (newlib-nano, libm, libgcc) and a few buffers, no start-up code.
The unicorn engine loads the image's sections and calls the C API directly: ``NAME_reset``,
a few ``NAME_step`` calls on a deterministic input, then one counted ``NAME_step`` (for
bidirectional models, one counted ``NAME_run`` over :data:`RUN_STEPS` steps).

Counting uses a block hook: every instruction of every executed translation block counts,
including the instructions an IT block skips (they still take an issue slot). capstone
classifies each instruction and :data:`M4_COSTS`, the Cortex-M4 Technical Reference Manual's
cycle table, turns the mix into a cycle estimate for the M4 and M33. The M7 dual-issues, so
no static table is honest there: it gets instruction counts only, as does the M0 (whose
multiplier takes 1 or 32 cycles, as the chip maker chose) and the M3.

Every number repeats exactly from run to run. ``docs/profiling.md`` explains the method and
its limits; :func:`qemu_cross_check` measures the same step a second way (SysTick under
``qemu-system-arm -icount``).

    result = profile("out/", cpu="cortex-m4")
    print(result.format())
    result.to_json()["cycles_per_step"]
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from . import cross
from .boards import Board, list_boards, load_board
from .cells import CELLS, cell_spec, recurrent_macs
from .errors import TinyRNNError
from .resources import resource_dir

RUN_STEPS = 8          # length of the sequence NAME_run is counted over
WARMUP_STEPS = 3       # NAME_step calls before the counted one, so the state is not zero
EMULATION_TIMEOUT = 300.0  # seconds for one emulated call
STACK_PAINT = 0xA5A5A5A5
STACK_RESERVE = 256 * 1024  # bytes below the stack top that are painted and checked

# The bare image's memory map. Addresses only matter to the emulator: counts do not depend
# on them. Both regions are large so that a profile never fails for size; whether a model
# fits a board is the report's and `tinyrnn build`'s question.
FLASH_ORIGIN = 0x00000000
RAM_ORIGIN = 0x20000000
REGION_SIZE = 16 << 20
STOP_ADDRESS = 0x0F000000  # the emulated call returns here (LR), where emulation stops


# ---------------------------------------------------------------------------------------------
# The Cortex-M4 cost table (Cortex-M4 TRM r0p1, table 3-1 "Processor instruction set summary"
# and table 7-1 "FPU instruction set"), zero wait-state memory. docs/profiling.md prints it.


@dataclass(frozen=True)
class Cost:
    """Cycles of one instruction class: ``base + per_register * N`` (N: registers moved)."""

    base: int
    per_register: int = 0
    examples: str = ""
    note: str = ""

    def describe(self) -> str:
        """``"1"``, ``"1+N"``: the TRM's notation."""
        if not self.per_register:
            return str(self.base)
        per = "N" if self.per_register == 1 else f"{self.per_register}N"
        return f"{self.base}+{per}"


M4_COSTS: dict[str, Cost] = {
    "alu": Cost(1, examples="MOV ADD SUB CMP AND LSL UXTH UBFX CLZ ADR",
                note="data processing, shifts, extends, bit fields"),
    "mul": Cost(1, examples="MUL MLA MLS SMULL UMULL SMLAL UMLAL",
                note="single-cycle 32x32 multiplier, 64-bit results included"),
    "dsp": Cost(1, examples="SMLAD SMLALD SMULBB SXTB16 SSAT USAT QADD PKHBT",
                note="DSP extension: dual 16-bit MACs, SIMD, saturation"),
    "div": Cost(12, examples="SDIV UDIV",
                note="2-12 cycles, ending early on small quotients: the worst case"),
    "load": Cost(2, examples="LDR LDRB LDRH LDRSB LDRSH LDREX",
                 note="1 when it follows another single load or store (pipelined)"),
    "store": Cost(1, examples="STR STRB STRH", note="the write completes in the background"),
    "load_double": Cost(3, examples="LDRD"),
    "store_double": Cost(3, examples="STRD"),
    "load_multiple": Cost(1, 1, examples="LDM POP"),
    "store_multiple": Cost(1, 1, examples="STM PUSH"),
    "branch": Cost(1, examples="B BL BX BLX CBZ CBNZ",
                   note="plus the pipeline refill when taken"),
    "table_branch": Cost(2, examples="TBB TBH", note="plus the pipeline refill"),
    "it": Cost(1, examples="IT", note="counted although it can fold into the previous one"),
    "fp_alu": Cost(1, examples="VADD VSUB VMUL VNMUL VABS VNEG VCMP VCVT VMOV VMRS",
                   note="VMOV between two core registers and a D register: 2"),
    "fp_mac": Cost(3, examples="VFMA VFMS VFNMA VFNMS VMLA VMLS VNMLA VNMLS"),
    "fp_div": Cost(14, examples="VDIV VSQRT"),
    "fp_load": Cost(2, examples="VLDR", note="3 for a D register"),
    "fp_store": Cost(2, examples="VSTR", note="3 for a D register"),
    "fp_load_multiple": Cost(1, 1, examples="VLDM VPOP", note="N counts 32-bit words"),
    "fp_store_multiple": Cost(1, 1, examples="VSTM VPUSH", note="N counts 32-bit words"),
    "other": Cost(1, examples="NOP barriers MRS MSR",
                  note="anything not listed above is charged one cycle"),
}
TAKEN_BRANCH_CYCLES = 2   # pipeline refill P (1-3 in the TRM) of every taken branch or PC write
PIPELINED_LOAD_CYCLES = 1  # an LDR right after another single load or store

_NAMES: dict[str, frozenset[str]] = {
    "mul": frozenset("mul muls mla mls smull umull smlal umlal umaal".split()),
    "dsp": frozenset("""
        smlad smladx smlald smlaldx smlsd smlsdx smlsld smlsldx smuad smuadx smusd smusdx
        smlabb smlabt smlatb smlatt smlawb smlawt smulbb smulbt smultb smultt smulwb smulwt
        smlalbb smlalbt smlaltb smlaltt smmul smmulr smmla smmlar smmls smmlsr
        sxtb16 sxtab16 uxtb16 uxtab16 ssat usat ssat16 usat16 qadd qsub qdadd qdsub
        qadd16 qadd8 qsub16 qsub8 qasx qsax uqadd16 uqadd8 uqsub16 uqsub8 uqasx uqsax
        sadd16 sadd8 ssub16 ssub8 sasx ssax uadd16 uadd8 usub16 usub8 uasx usax
        shadd16 shadd8 shsub16 shsub8 shasx shsax uhadd16 uhadd8 uhsub16 uhsub8 uhasx uhsax
        pkhbt pkhtb sel usad8 usada8""".split()),
    "div": frozenset({"sdiv", "udiv"}),
    "load": frozenset("""ldr ldrb ldrh ldrsb ldrsh ldrt ldrbt ldrht ldrsbt ldrsht
        ldrex ldrexb ldrexh""".split()),
    "store": frozenset("str strb strh strt strbt strht strex strexb strexh".split()),
    "load_double": frozenset({"ldrd"}),
    "store_double": frozenset({"strd"}),
    "load_multiple": frozenset({"ldm", "ldmia", "ldmdb", "ldmda", "ldmib", "pop"}),
    "store_multiple": frozenset({"stm", "stmia", "stmdb", "stmda", "stmib", "push"}),
    "branch": frozenset({"b", "bl", "blx", "bx", "cbz", "cbnz"}),
    "table_branch": frozenset({"tbb", "tbh"}),
    "it": frozenset({"it"}),
    "fp_mac": frozenset("vfma vfms vfnma vfnms vmla vmls vnmla vnmls".split()),
    "fp_div": frozenset({"vdiv", "vsqrt"}),
    "fp_load": frozenset({"vldr"}),
    "fp_store": frozenset({"vstr"}),
    "fp_load_multiple": frozenset({"vldmia", "vldmdb", "vpop"}),
    "fp_store_multiple": frozenset({"vstmia", "vstmdb", "vpush"}),
    "other": frozenset("""nop dmb dsb isb mrs msr cpsid cpsie bkpt svc wfi wfe sev yield
        pld pli udf""".split()),
}
_ALU = frozenset("""add adds addw adc sub subs subw sbc rsb rsc and orr orn eor bic mvn
    mov movs movw movt lsl lsls lsr lsrs asr asrs ror rors rrx cmp cmn tst teq adr
    sxtb sxth uxtb uxth sxtab sxtah uxtab uxtah bfi bfc ubfx sbfx clz rev rev16 revsh
    rbit neg""".split())
_CLASS_OF = {name: cls for cls, names in _NAMES.items() for name in names}
_SINGLE_LOAD_STORE = frozenset({"load", "store", "fp_load", "fp_store"})
_PIPELINE_SAVING = M4_COSTS["load"].base - PIPELINED_LOAD_CYCLES


# ---------------------------------------------------------------------------------------------
# Cores


@dataclass(frozen=True)
class Core:
    """A Cortex-M core the profiler can emulate, and what it can say about its cycles."""

    name: str                # gcc's -mcpu name
    uc_cpu: str              # unicorn's CPU model constant, in unicorn.arm_const
    cycle_model: bool        # whether M4_COSTS gives its cycles
    note: str                # what the cycle figure means, or why there is none


CORES: dict[str, Core] = {core.name: core for core in (
    Core("cortex-m0", "UC_CPU_ARM_CORTEX_M0", False,
         "instruction count only: the M0's multiplier takes 1 or 32 cycles, as the chip maker "
         "chose, and loads, stores and branches cost differently from the M4 table"),
    Core("cortex-m0plus", "UC_CPU_ARM_CORTEX_M0", False,
         "instruction count only (emulated as a Cortex-M0, the same ARMv6-M instruction set): "
         "the multiplier takes 1 or 32 cycles, as the chip maker chose"),
    Core("cortex-m3", "UC_CPU_ARM_CORTEX_M3", False,
         "instruction count only: the M3's multiplies (MLA 2 cycles, long multiplies 3-7, "
         "data dependent) differ from the M4 table"),
    Core("cortex-m4", "UC_CPU_ARM_CORTEX_M4", True,
         "estimate from the Cortex-M4 TRM cycle table, zero wait states, taken branches +2; "
         "not cycle-accurate"),
    Core("cortex-m7", "UC_CPU_ARM_CORTEX_M7", False,
         "instruction count only: the M7 issues two instructions per cycle when it can, so no "
         "static per-instruction table is honest (expect roughly 0.5-1 cycle per instruction)"),
    Core("cortex-m33", "UC_CPU_ARM_CORTEX_M33", True,
         "estimate from the Cortex-M4 TRM cycle table (the M33 has a similar 3-stage pipeline "
         "but is not documented to match it), zero wait states; not cycle-accurate"),
)}
_NO_EMULATION = {
    "cortex-m55": "unicorn has no Cortex-M55 (no MVE/Helium); profile --cpu cortex-m7 for a "
                  "dual-issue instruction count, or run on the board",
}


def resolve_core(cpu: str) -> Core:
    """The :class:`Core` for ``cortex-m4``, ``m4`` or ``M4``; raise naming the known ones."""
    name = cpu.strip().lower()
    if not name.startswith("cortex-"):
        name = "cortex-" + name
    name = name.replace("m0+", "m0plus")
    if name in _NO_EMULATION:
        raise TinyRNNError(f"cannot profile {name}: {_NO_EMULATION[name]}")
    if name not in CORES:
        raise TinyRNNError(f"unknown core {cpu!r}; choose one of "
                           + ", ".join(c.removeprefix("cortex-") for c in CORES))
    return CORES[name]


def reference_board(core: Core) -> Board:
    """The board whose ``cpu_flags`` build for ``core``: an emulated one when there is one."""
    boards = sorted((b for b in list_boards() if b.core == core.name),
                    key=lambda b: (b.qemu_machine is None, b.name))
    if not boards:
        raise TinyRNNError(f"no board in boards/ has a {core.name}; add one (see `tinyrnn "
                           "boards`) or choose another --cpu")
    return boards[0]


# ---------------------------------------------------------------------------------------------
# Instruction classes and costs


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction and its static cost."""

    address: int
    size: int
    name: str           # capstone's base name, e.g. "ldr", "vfma"
    cls: str            # a key of M4_COSTS
    cycles: int         # from M4_COSTS, before the dynamic corrections
    writes_pc: bool     # a branch, or a load/pop/mov into PC
    conditional: bool   # may fall through (Bcc, CBZ, CBNZ, or inside an IT block)


def classify(insn: Any) -> Instruction:
    """Class and M4 cycles of one capstone instruction (decoded with ``detail`` on)."""
    from capstone import arm

    name = insn.insn_name()
    cls = _CLASS_OF.get(name)
    if cls is None:
        if name.startswith(("vldm",)):
            cls = "fp_load_multiple"
        elif name.startswith(("vstm",)):
            cls = "fp_store_multiple"
        elif name.startswith(("v", "fconst", "fmstat")):  # fmstat: VMRS APSR_nzcv, FPSCR
            cls = "fp_alu"
        elif name in _ALU:
            cls = "alu"
        else:
            cls = "other"
    regs = [op.reg for op in insn.operands if op.type == arm.ARM_OP_REG]
    writes_pc = cls in ("branch", "table_branch") or (
        cls in ("load", "load_multiple", "alu") and arm.ARM_REG_PC in regs
        and (cls == "load_multiple" or regs[0] == arm.ARM_REG_PC))
    conditional = name in ("cbz", "cbnz") or insn.cc not in (arm.ARM_CC_AL, arm.ARM_CC_INVALID)
    cost = M4_COSTS[cls]
    count = 0
    if cost.per_register:
        listed = regs[1:] if name.startswith(("ldm", "stm", "vldm", "vstm")) else regs
        count = sum(2 if insn.reg_name(r).startswith("d") else 1 for r in listed)
    cycles = cost.base + cost.per_register * count
    if cls in ("fp_load", "fp_store") and regs and insn.reg_name(regs[0]).startswith("d"):
        cycles += 1
    if name == "vmov" and len(regs) >= 3:
        cycles += 1
    return Instruction(address=insn.address, size=insn.size, name=name, cls=cls,
                       cycles=cycles, writes_pc=writes_pc, conditional=conditional)


@dataclass(frozen=True)
class _Block:
    """A translation block as unicorn executed it, with what the cost model needs."""

    instructions: tuple[Instruction, ...]
    cycles: int              # static costs, with the corrections known inside the block
    fallthrough: int         # the address after the block
    ends_conditional: bool   # last instruction may branch or fall through
    first_is_load: bool      # first instruction is an LDR (pipelines after a load/store)
    last_is_load_store: bool  # last instruction is a single load or store
    always_taken: int        # unconditional PC writes (a taken branch each time)
    pipelined_loads: int     # LDRs right after a single load or store, inside the block


def _make_block(instructions: Sequence[Instruction]) -> _Block:
    always_taken = sum(1 for i in instructions if i.writes_pc and not i.conditional)
    pipelined = sum(1 for before, insn in zip(instructions, instructions[1:])
                    if insn.cls == "load" and before.cls in _SINGLE_LOAD_STORE)
    cycles = (sum(i.cycles for i in instructions) + TAKEN_BRANCH_CYCLES * always_taken
              - _PIPELINE_SAVING * pipelined)
    last = instructions[-1]
    return _Block(instructions=tuple(instructions), cycles=cycles,
                  fallthrough=last.address + last.size,
                  ends_conditional=last.writes_pc and last.conditional,
                  first_is_load=instructions[0].cls == "load",
                  last_is_load_store=last.cls in _SINGLE_LOAD_STORE,
                  always_taken=always_taken, pipelined_loads=pipelined)


@dataclass(frozen=True)
class Count:
    """The instructions (and estimated M4 cycles) of one emulated call."""

    instructions: int
    cycles: int
    taken_branches: int
    mix: dict[str, int]  # instructions per class of M4_COSTS
    mix_cycles: dict[str, int]  # estimated cycles per class, corrections included
    functions: dict[str, tuple[int, int]] = field(default_factory=dict)
    """(instructions, estimated cycles) per function of the image, corrections included: a
    taken conditional branch's refill goes to the function of the branch, inlined code to the
    function it was inlined into."""


# ---------------------------------------------------------------------------------------------
# The bare image


_ENTRY = """\
/* tinyrnn profile image for {{ name }}: the buffers the emulator passes to the C API.
 * No start-up code: the emulator loads the sections and calls the API functions itself. */
#include <stdint.h>
#include "{{ name }}.h"

{{ name }}_state_t tinyrnn_profile_state;
float tinyrnn_profile_x[{{ x_floats }}];
float tinyrnn_profile_out[{{ out_floats }}];
{% if has_q %}
int16_t tinyrnn_profile_xq[{{ x_floats }}];
int16_t tinyrnn_profile_outq[{{ out_floats }}];
{% endif %}
"""

_LINKER = """\
/* tinyrnn profile image: model code and const data apart from the C library's, so that the
 * section sizes say what the model needs. */
MEMORY
{
  FLASH (rx)  : ORIGIN = {{ "0x%08X" % flash }}, LENGTH = {{ "0x%08X" % size }}
  RAM   (rwx) : ORIGIN = {{ "0x%08X" % ram }}, LENGTH = {{ "0x%08X" % size }}
}
SECTIONS
{
  .model_text : { *tinyrnn_model.o(.text .text.*) } > FLASH
  .model_rodata : { *tinyrnn_model.o(.rodata .rodata.*) } > FLASH
  .text : { *(.text .text.*) } > FLASH
  .rodata : { *(.rodata .rodata.*) . = ALIGN(4); } > FLASH
  .model_data : { *tinyrnn_model.o(.data .data.*) } > RAM AT > FLASH
  .data : { *(.data .data.*) . = ALIGN(4); } > RAM AT > FLASH
  .model_bss (NOLOAD) : { *tinyrnn_model.o(.bss .bss.* COMMON) } > RAM
  .profile_bss (NOLOAD) : { *tinyrnn_profile.o(.bss .bss.* COMMON) } > RAM
  .bss (NOLOAD) : { *(.bss .bss.* COMMON) . = ALIGN(8); } > RAM
  __ram_end = ORIGIN(RAM) + LENGTH(RAM);
  /DISCARD/ : { *(.ARM.exidx* .ARM.extab* .init .fini .init_array* .fini_array*) }
}
"""


@dataclass(frozen=True)
class ProfileImage:
    """A bare ELF image of one exported model, built for one board's core."""

    elf: Path
    callgraph: Path           # gcc's -fcallgraph-info file for the model's object
    model: cross.ExportedModel
    board: Board
    has_q: bool               # the model offers NAME_step_q / NAME_run_q (fixed point)


def _jinja(text: str, **context: Any) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    return env.from_string(text).render(**context)


def _run_tool(command: Sequence[str], doing: str) -> str:
    """Run a build tool; on failure raise with its message, as cross.py does."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise TinyRNNError(f"{command[0]} was not found on PATH; install the ARM GNU toolchain "
                           "(Debian: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)"
                           ) from None
    if done.returncode != 0:
        raise TinyRNNError(f"{doing} failed:\n$ {' '.join(command)}\n"
                           f"{(done.stdout + done.stderr).strip()}")
    return done.stdout


def build_image(model: cross.ExportedModel, board: Board, work_dir: str | Path) -> ProfileImage:
    """Compile the model with ``board``'s production flags and link the bare profile image."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    api = model.api
    functions = [fn.name for fn in api.functions]
    has_q = api.has("step_q")
    interface = model.interface
    out_floats = max(api.function("step").output_lengths(1)[0],
                     sum(model.output_lengths(RUN_STEPS)))
    (work / "tinyrnn_profile.c").write_text(_jinja(
        _ENTRY, name=model.name, x_floats=RUN_STEPS * int(interface["input_size"]),
        out_floats=out_floats, has_q=has_q), encoding="utf-8")
    (work / "profile.ld").write_text(_jinja(
        _LINKER, flash=FLASH_ORIGIN, ram=RAM_ORIGIN, size=REGION_SIZE), encoding="utf-8")
    flags = [*board.cpu_flags, *cross.CFLAGS, f"-I{model.directory}"]
    model_obj = work / "tinyrnn_model.o"
    entry_obj = work / "tinyrnn_profile.o"
    _run_tool([cross.GCC, *flags, "-fstack-usage", "-fcallgraph-info=su", "-c",
               str(model.source), "-o", str(model_obj)], f"compiling {model.source.name} for "
              f"{board.core}")
    _run_tool([cross.GCC, *flags, "-c", str(work / "tinyrnn_profile.c"), "-o", str(entry_obj)],
              "compiling the profile buffers")
    keep = functions + ["tinyrnn_profile_state", "tinyrnn_profile_x", "tinyrnn_profile_out"]
    keep += ["tinyrnn_profile_xq", "tinyrnn_profile_outq"] if has_q else []
    elf = work / "profile.elf"
    _run_tool([cross.GCC, *board.cpu_flags, "-nostartfiles", "--specs=nano.specs",
               "-T", str(work / "profile.ld"), "-Wl,--gc-sections",
               *[f"-Wl,--undefined={symbol}" for symbol in keep],
               str(model_obj), str(entry_obj), "-lm", "-lc", "-lgcc", "-o", str(elf)],
              f"linking the profile image for {board.core}")
    return ProfileImage(elf=elf, callgraph=work / "tinyrnn_model.ci", model=model, board=board,
                        has_q=has_q)


# ---------------------------------------------------------------------------------------------
# Emulation


@dataclass(frozen=True)
class _Symbol:
    address: int
    size: int


class Emulator:
    """One profile image loaded into unicorn; calls C functions and counts what they run."""

    def __init__(self, image: ProfileImage, core: Core) -> None:
        import capstone
        import unicorn
        from elftools.elf.elffile import ELFFile
        from elftools.elf.sections import SymbolTableSection
        from unicorn import arm_const

        self.core = core
        self._uc_error = unicorn.UcError
        self._arm = arm_const
        uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB)
        # Not UC_MODE_MCLASS: that silently selects a Cortex-M33 whatever model is set.
        uc.ctl_set_cpu_model(getattr(arm_const, core.uc_cpu))
        uc.mem_map(FLASH_ORIGIN, REGION_SIZE)
        uc.mem_map(RAM_ORIGIN, REGION_SIZE)
        uc.mem_map(STOP_ADDRESS, 0x1000)
        self.sections: dict[str, int] = {}
        self.symbols: dict[str, _Symbol] = {}
        with image.elf.open("rb") as handle:
            elf = ELFFile(handle)
            for section in elf.iter_sections():
                if not section["sh_flags"] & 0x2:  # SHF_ALLOC
                    continue
                self.sections[section.name] = section["sh_size"]
                if section["sh_type"] != "SHT_NOBITS" and section["sh_size"]:
                    # .data goes straight to its run address: there is no start-up copy.
                    uc.mem_write(section["sh_addr"], section.data())
            symtab = elf.get_section_by_name(".symtab")
            assert isinstance(symtab, SymbolTableSection), "the linker always writes .symtab"
            self._objects: set[str] = set()
            for sym in symtab.iter_symbols():
                if sym.name and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT"):
                    self.symbols[sym.name] = _Symbol(sym["st_value"], sym["st_size"])
                    if sym["st_info"]["type"] == "STT_OBJECT":
                        self._objects.add(sym.name)
        self._functions: list[tuple[int, int, str]] | None = None
        # unicorn's M-profile cores reset with CPACR granting CP10/CP11 full access (QEMU's
        # user-mode reset), which is what a start-up file's CPACR |= 0xF << 20 does.
        self.uc = uc
        self.stack_top = RAM_ORIGIN + REGION_SIZE - 64
        self._disasm = capstone.Cs(capstone.CS_ARCH_ARM,
                                   capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
        self._disasm.detail = True
        self._blocks: dict[tuple[int, int], _Block] = {}

    def address(self, symbol: str) -> int:
        """Where a function (Thumb bit cleared) or object is."""
        if symbol not in self.symbols:
            raise TinyRNNError(f"the profile image has no symbol {symbol!r}")
        return self.symbols[symbol].address & ~1

    def write(self, symbol: str, values: np.ndarray, offset: int = 0) -> None:
        """Copy an array into a buffer of the image."""
        data = np.ascontiguousarray(values).tobytes()
        sym = self.symbols[symbol]
        if offset + len(data) > sym.size:
            raise TinyRNNError(f"{len(data)} bytes do not fit {symbol} ({sym.size} bytes)")
        self.uc.mem_write(sym.address + offset, data)

    def read(self, symbol: str, dtype: Any, count: int, offset: int = 0) -> np.ndarray:
        """Read ``count`` items of ``dtype`` from a buffer of the image."""
        size = np.dtype(dtype).itemsize * count
        raw = self.uc.mem_read(self.symbols[symbol].address + offset, size)
        return np.frombuffer(bytes(raw), dtype=dtype).copy()

    def paint_stack(self) -> None:
        """Fill the stack area with a pattern; :meth:`stack_used` finds the deepest write."""
        words = np.full(STACK_RESERVE // 4, STACK_PAINT, dtype="<u4")
        self.uc.mem_write(self.stack_top - STACK_RESERVE, words.tobytes())

    def stack_used(self) -> int:
        """Bytes of stack written since :meth:`paint_stack` (the high-water mark)."""
        raw = self.uc.mem_read(self.stack_top - STACK_RESERVE, STACK_RESERVE)
        words = np.frombuffer(bytes(raw), dtype="<u4")
        touched = np.nonzero(words != STACK_PAINT)[0]
        return 0 if touched.size == 0 else int(STACK_RESERVE - 4 * touched[0])

    def call(self, function: str, *args: int, count: bool = False) -> tuple[int, Count | None]:
        """Call ``function(*args)`` (AAPCS: r0-r3, then the stack); returns r0 and the count."""
        from unicorn import UC_HOOK_BLOCK

        arm = self._arm
        sp = self.stack_top
        extra = list(args[4:])
        if extra:
            sp = (sp - 4 * len(extra)) & ~7
            self.uc.mem_write(sp, np.asarray(extra, dtype="<u4").tobytes())
        for reg, value in zip((arm.UC_ARM_REG_R0, arm.UC_ARM_REG_R1, arm.UC_ARM_REG_R2,
                               arm.UC_ARM_REG_R3), args):
            self.uc.reg_write(reg, value & 0xFFFFFFFF)
        self.uc.reg_write(arm.UC_ARM_REG_SP, sp)
        self.uc.reg_write(arm.UC_ARM_REG_LR, STOP_ADDRESS | 1)
        pairs: Counter[tuple[tuple[int, int] | None, tuple[int, int]]] = Counter()
        last: list[tuple[int, int] | None] = [None]
        hook = None
        if count:
            def on_block(uc: Any, address: int, size: int, user: Any) -> None:
                key = (address, size)
                pairs[(last[0], key)] += 1
                last[0] = key
            hook = self.uc.hook_add(UC_HOOK_BLOCK, on_block)
            self.uc.ctl_flush_tb()  # translated blocks keep the hooks they were made with
        start = self.address(function) | 1
        try:
            self.uc.emu_start(start, STOP_ADDRESS, timeout=int(EMULATION_TIMEOUT * 1e6))
        except self._uc_error as exc:
            pc = self.uc.reg_read(arm.UC_ARM_REG_PC)
            raise TinyRNNError(f"{function} stopped with '{exc}' at pc 0x{pc:08x}"
                               f"{self._where(pc)} on the emulated {self.core.name}; an "
                               "out-of-bounds access in the model, or an instruction the core "
                               "lacks (check the -mcpu flags of the board)") from None
        finally:
            if hook is not None:
                self.uc.hook_del(hook)
                self.uc.ctl_flush_tb()
        pc = self.uc.reg_read(arm.UC_ARM_REG_PC)
        if pc != STOP_ADDRESS:
            raise TinyRNNError(f"{function} did not return within {EMULATION_TIMEOUT:g} s on the "
                               f"emulated {self.core.name} (pc 0x{pc:08x}{self._where(pc)})")
        result = self.uc.reg_read(arm.UC_ARM_REG_R0)
        result = result - (1 << 32) if result & 0x80000000 else result
        return result, (self._tally(pairs, last[0]) if count else None)

    def _where(self, pc: int) -> str:
        for name, sym in self.symbols.items():
            start = sym.address & ~1
            if start <= pc < start + sym.size:
                return f" in {name}+0x{pc - start:x}"
        return ""

    def _block(self, key: tuple[int, int]) -> _Block:
        block = self._blocks.get(key)
        if block is None:
            address, size = key
            code = bytes(self.uc.mem_read(address, size))
            decoded = [classify(insn) for insn in self._disasm.disasm(code, address)]
            if not decoded or sum(i.size for i in decoded) != size:
                raise TinyRNNError(f"capstone could not decode the block at 0x{address:08x} "
                                   f"({size} bytes); is the image built for a Cortex-M core?")
            block = self._blocks[key] = _make_block(decoded)
        return block

    def _tally(self, pairs: Mapping[tuple[tuple[int, int] | None, tuple[int, int]], int],
               last: tuple[int, int] | None) -> Count:
        """Instructions and cycles from how often each block followed each other block.

        Two costs depend on the block before: an LDR that starts a block pipelines after a
        load or store that ended the previous one, and a conditional branch that ended the
        previous block was taken when this block does not start where it would fall through.
        """
        instructions = cycles = taken = pipelined = 0
        mix: Counter[str] = Counter()
        mix_cycles: Counter[str] = Counter()
        fn_ins: Counter[str] = Counter()
        fn_cycles: Counter[str] = Counter()
        flow = list(pairs.items())
        if last is not None:  # the call returned to STOP_ADDRESS after the last block
            flow.append(((last, (STOP_ADDRESS, 0)), 1))
        for (before, key), times in flow:
            previous = self._block(before) if before is not None else None
            if previous is not None and previous.ends_conditional \
                    and key[0] != previous.fallthrough:
                taken += times
                fn_cycles[self.function_at(before[0])] += TAKEN_BRANCH_CYCLES * times
            if key[0] == STOP_ADDRESS:
                continue
            block = self._block(key)
            where = self.function_at(key[0])
            instructions += times * len(block.instructions)
            cycles += times * block.cycles
            fn_ins[where] += times * len(block.instructions)
            fn_cycles[where] += times * block.cycles
            taken += times * block.always_taken
            pipelined += times * block.pipelined_loads
            for insn in block.instructions:
                mix[insn.cls] += times
                mix_cycles[insn.cls] += times * insn.cycles
            if previous is not None and previous.last_is_load_store and block.first_is_load:
                cycles -= times * _PIPELINE_SAVING
                fn_cycles[where] -= times * _PIPELINE_SAVING
                pipelined += times
        always = sum(times * self._block(key).always_taken for (_, key), times in pairs.items())
        cycles += TAKEN_BRANCH_CYCLES * (taken - always)  # the conditional ones
        mix_cycles["load"] -= _PIPELINE_SAVING * pipelined
        mix_cycles["taken branch refill"] = TAKEN_BRANCH_CYCLES * taken
        assert sum(mix_cycles.values()) == cycles, "cycle bookkeeping is inconsistent"
        assert sum(fn_cycles.values()) == cycles, "per-function bookkeeping is inconsistent"
        functions = {name: (fn_ins[name], fn_cycles[name])
                     for name in sorted(fn_ins, key=lambda n: -fn_cycles[n])}
        return Count(instructions=instructions, cycles=cycles, taken_branches=taken,
                     mix=dict(sorted(mix.items())),
                     mix_cycles={k: v for k, v in sorted(mix_cycles.items()) if v},
                     functions=functions)

    def function_at(self, address: int) -> str:
        """The name of the function whose code holds ``address`` ("?" outside any)."""
        if self._functions is None:
            self._functions = sorted((sym.address & ~1, sym.size, name)
                                     for name, sym in self.symbols.items()
                                     if name not in self._objects and sym.size)
        k = bisect.bisect_right(self._functions, (address, float("inf"), "")) - 1
        if k >= 0:
            start, size, name = self._functions[k]
            if start <= address < start + size:
                return name
        return "?"


# ---------------------------------------------------------------------------------------------
# Model arithmetic


def layer_macs(layer: Mapping[str, Any]) -> int:
    """Multiply-accumulates of one manifest layer at one time step, all directions."""
    kind = layer["kind"]
    if kind == "dense":
        return int(layer["in_features"]) * int(layer["out_features"])
    if kind not in CELLS:
        return 0
    macs = recurrent_macs(kind, int(layer["input_size"]), int(layer["hidden_size"]),
                          int(layer["state_size"]))
    return macs * int(layer.get("directions", 1))


def macs_per_step(manifest: Mapping[str, Any], steps: int | None = None) -> float:
    """MACs of one time step: recurrent layers, and dense layers applied at that step.

    With ``steps`` (a whole ``NAME_run`` of that length), a dense layer after the step
    selection runs once per sequence and counts ``1/steps`` per step; without it (the
    ``NAME_step`` API), the head runs at every step.
    """
    total = 0.0
    selected = False
    for layer in manifest.get("layers", []):
        if layer["kind"] == "select_step":
            selected = True
            continue
        macs = layer_macs(layer)
        total += macs / steps if (selected and steps and layer["kind"] == "dense") else macs
    return total


def lower_bound_cycles(cell: str, input_size: int, hidden: int,
                       macs_per_cycle: float = 0.8) -> float:
    """The matrix-vector bound of one step on an M4 with int8 weights: gates*H*(I+H)/0.8."""
    return cell_spec(cell).G * hidden * (input_size + hidden) / macs_per_cycle


# ---------------------------------------------------------------------------------------------
# Static stack depth of the model's own code (gcc -fstack-usage through -fcallgraph-info)


_CI_NODE = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
_CI_EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
_CI_BYTES = re.compile(r"\\n(\d+) bytes \(([^)]*)\)")


def static_stack(callgraph: Path, roots: Iterable[str]) -> tuple[int | None, list[str]]:
    """Worst stack depth from ``roots`` through the model's call graph, and what it leaves out.

    Library functions (expf, memcpy, ...) have no -fstack-usage data: they count as 0 and are
    named in the second value. Returns None when a frame is dynamic or the graph recurses.
    """
    text = callgraph.read_text(encoding="utf-8", errors="replace")
    frames: dict[str, int | None] = {}
    names: dict[str, str] = {}
    for title, label in _CI_NODE.findall(text):
        match = _CI_BYTES.search(label)
        names[title] = label.split("\\n")[0]
        if match:
            frames[title] = int(match.group(1)) if match.group(2) == "static" else None
    calls: dict[str, list[str]] = {}
    for source, target in _CI_EDGE.findall(text):
        calls.setdefault(source, []).append(target)
    external: set[str] = set()
    unknown = False
    memo: dict[str, int] = {}

    def depth(node: str, path: tuple[str, ...]) -> int:
        nonlocal unknown
        if node in path:
            unknown = True
            return 0
        if node not in frames:
            external.add(names.get(node, node).replace("__builtin_", ""))
            return 0
        if node not in memo:
            frame = frames[node]
            if frame is None:
                unknown = True
                frame = 0
            memo[node] = frame + max((depth(t, path + (node,)) for t in calls.get(node, [])),
                                     default=0)
        return memo[node]

    titles = {names.get(t, t): t for t in frames}
    worst = max((depth(titles[r], ()) for r in roots if r in titles), default=0)
    return (None if unknown else worst), sorted(external)


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
            f"  flash: code           {self.flash_code_bytes:,} B (model "
            f"{d['flash_model_code_bytes']:,} B, C library {d['flash_library_bytes']:,} B)",
            f"  flash: weights        {self.flash_weights_bytes:,} B",
            f"  RAM: state            {self.ram_state_bytes:,} B",
            f"  RAM: scratch          {self.ram_scratch_bytes:,} B",
            f"  RAM: stack            {self.stack_bytes:,} B (measured "
            f"{d['stack_measured_bytes']:,} B; model code alone, from -fstack-usage: "
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
        return _measure(image, core, warmup=warmup, measure_run=measure_run)


def _measure(image: ProfileImage, core: Core, warmup: int, measure_run: bool) -> Profile:
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
            details.update(_measure_q(emu, image, core, x, warmup))
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


def _measure_q(emu: Emulator, image: ProfileImage, core: Core, x: np.ndarray,
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


# ---------------------------------------------------------------------------------------------
# Second opinion: SysTick under QEMU -icount


_QEMU_MAIN = """\
/* tinyrnn profile cross-check for {{ name }}: the same counted step as under unicorn, timed
 * with SysTick while QEMU runs with -icount shift=0 (one virtual nanosecond per instruction). */
#include <stdint.h>
#include <stdio.h>
#include "{{ name }}.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

static {{ name }}_state_t state;
static float out[{{ out_floats }}];
static const union {
    uint32_t bits[{{ words | length }}];
    float values[{{ words | length }}];
} x = {{ "{{" }}{{ words | join(", ") }}{{ "}}" }};

/* 2 * n instructions: SUBS and BNE, n times. */
static void spin(uint32_t n)
{
    __asm__ volatile("1: subs %0, %0, #1\\n\\tbne 1b" : "+l"(n) : : "cc");
}

int main(void)
{
    uint32_t t0, t1, c0, c1, e0, e1;
    int t;

    SYST_RVR = 0x00FFFFFFu;
    SYST_CVR = 0u;
    SYST_CSR = 5u; /* enabled, processor clock, no interrupt */
    {{ name }}_reset(&state);
    for (t = 0; t < {{ warmup }}; ++t) {
        {{ name }}_step(&state, &x.values[t * {{ features }}], out);
    }
    t0 = SYST_CVR;
    {{ name }}_step(&state, &x.values[{{ counted }} * {{ features }}], out);
    t1 = SYST_CVR;
    e0 = SYST_CVR;
    e1 = SYST_CVR;
    c0 = SYST_CVR;
    spin({{ spin }}u);
    c1 = SYST_CVR;
    printf("@ticks %lu %lu %lu\\n", (unsigned long)((t0 - t1) & 0xFFFFFFu),
           (unsigned long)((e0 - e1) & 0xFFFFFFu), (unsigned long)((c0 - c1) & 0xFFFFFFu));
    return 0;
}
"""

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
                     warmup: int = WARMUP_STEPS, timeout: float = 120.0) -> QemuCheck:
    """Count one NAME_step under unicorn and time the same step with SysTick under QEMU.

    The model object is compiled once and linked into both images, so both run the same
    machine code on the same input after the same warm-up steps.
    """
    chosen = board if isinstance(board, Board) else load_board(board)
    if chosen.qemu_machine is None:
        raise TinyRNNError(f"board {chosen.name} is not emulated; choose one with a QEMU "
                           "machine (see `tinyrnn boards`)")
    model = cross.ExportedModel.load(model_dir)
    if not model.interface.get("has_step", True):
        raise TinyRNNError("the QEMU cross-check times NAME_step, which bidirectional models "
                           "do not have; export a unidirectional model")
    core = resolve_core(chosen.core)
    with tempfile.TemporaryDirectory(prefix="tinyrnn-xcheck-") as tmp:
        work = Path(tmp)
        image = build_image(model, chosen, work / "bare")
        result = _measure(image, core, warmup=warmup, measure_run=False)
        features = int(model.interface["input_size"])
        x = deterministic_input(max(RUN_STEPS, warmup + 1), features)[:RUN_STEPS]
        main = work / "xcheck_main.c"
        main.write_text(_jinja(
            _QEMU_MAIN, name=model.name, words=_hex_words(x), features=features,
            warmup=warmup, counted=warmup % RUN_STEPS, spin=SPIN_LOOPS,
            out_floats=int(model.interface["step_output_size"])), encoding="utf-8")
        elf = _link_semihosted(chosen, work, main, work / "bare" / "tinyrnn_model.o",
                               model.directory)
        console = _run_semihosted(chosen, elf, timeout)
    match = re.search(r"^@ticks (\d+) (\d+) (\d+)$", console, re.MULTILINE)
    if not match:
        raise TinyRNNError(f"the QEMU cross-check printed no @ticks line:\n{console[-500:]}")
    ticks, empty, spin_ticks = (int(g) for g in match.groups())
    if spin_ticks == 0:
        raise TinyRNNError("SysTick did not move under QEMU; is -icount supported here?")
    return QemuCheck(board=chosen.name, ticks=ticks, empty_ticks=empty,
                     instructions_per_tick=2 * SPIN_LOOPS / spin_ticks,
                     unicorn_instructions=result.instructions_per_step)


def _hex_words(values: np.ndarray) -> list[str]:
    """The IEEE-754 bits of each float32 as C hex literals: the image gets the exact input."""
    bits = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32)
    return [f"0x{int(b):08x}u" for b in bits]


def _link_semihosted(board: Board, work: Path, main: Path, model_obj: Path,
                     include: Path) -> Path:
    """The cross-check image: firmware/startup.c, the board's linker script, our main."""
    firmware = resource_dir("firmware")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(firmware)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    script = work / "linker.ld"
    script.write_text(env.get_template("linker.ld.j2").render(board=board,
                                                              heap_min=cross.HEAP_MIN))
    objects = []
    for source in (firmware / "startup.c", main):
        obj = work / f"{source.stem}.o"
        _run_tool([cross.GCC, *board.cpu_flags, *cross.CFLAGS, f"-I{firmware}",
                   f"-I{include}", "-c", str(source), "-o", str(obj)],
                  f"compiling {source.name} for {board.name}")
        objects.append(str(obj))
    elf = work / "xcheck.elf"
    _run_tool([cross.GCC, *board.cpu_flags, "-T", str(script), *objects, str(model_obj),
               *cross.LDFLAGS, "-lm", "-o", str(elf)], f"linking for {board.name}")
    return elf


def _run_semihosted(board: Board, elf: Path, timeout: float) -> str:
    assert board.qemu_machine is not None
    command = [cross.QEMU, "-M", board.qemu_machine, "-nographic", "-monitor", "none",
               "-serial", "none", "-icount", "shift=0,sleep=off",
               "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise TinyRNNError("qemu-system-arm was not found on PATH; install QEMU (Debian: "
                           "apt-get install qemu-system-arm)") from None
    except subprocess.TimeoutExpired:
        raise TinyRNNError(f"the QEMU cross-check did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise TinyRNNError(f"the QEMU cross-check image exited with status {done.returncode}:\n"
                           f"{(done.stdout + done.stderr)[-500:]}")
    return done.stdout


# ---------------------------------------------------------------------------------------------
# Documentation helper and command line


def cost_table_markdown() -> str:
    """:data:`M4_COSTS` as the Markdown table docs/profiling.md shows."""
    lines = ["| class | cycles | instructions | note |", "|---|---|---|---|"]
    for cls, cost in M4_COSTS.items():
        lines.append(f"| {cls} | {cost.describe()} | {cost.examples} | {cost.note} |")
    lines.append(f"| taken branch | +{TAKEN_BRANCH_CYCLES} | any branch or PC write that is "
                 "taken | pipeline refill P |")
    return "\n".join(lines)


def register_cli(subparsers: Any) -> None:
    """Add ``profile`` to the tinyrnn command line (its handler sets ``func``)."""
    parser = subparsers.add_parser(
        "profile", help="count the instructions (and estimate the M4/M33 cycles) of one time "
        "step under an emulated Cortex-M core; flash and RAM")
    parser.add_argument("dir", type=Path, help="folder written by `tinyrnn export`")
    parser.add_argument("--cpu", help="core: cortex-m0, m0plus, m3, m4, m7 or m33 (production "
                        "flags of a board with that core)")
    parser.add_argument("--board", help="build with this board's flags instead (see `tinyrnn "
                        "boards`)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--qemu-check", action="store_true", help="also time the same step "
                        "with SysTick under QEMU -icount and compare")
    parser.set_defaults(func=_cli_profile)


def _cli_profile(args: argparse.Namespace) -> int:
    result = profile(args.dir, cpu=args.cpu, board=args.board)
    check = None
    if args.qemu_check:
        board = load_board(args.board) if args.board else reference_board(
            resolve_core(result.cpu))
        check = qemu_cross_check(args.dir, board)
    if args.json:
        data = result.to_json()
        if check is not None:
            data["qemu_check"] = {"board": check.board, "ticks": check.ticks,
                                  "instructions_per_tick": check.instructions_per_tick,
                                  "instructions": round(check.qemu_instructions),
                                  "resolution": check.resolution, "agrees": check.agrees}
        print(json.dumps(data, indent=2))
    else:
        print(result.format_text())
        if check is not None:
            print(f"  QEMU -icount check    {check.qemu_instructions:,.0f} instructions "
                  f"({check.ticks} SysTick ticks x {check.instructions_per_tick:.2f}) on "
                  f"{check.board}: {'agrees' if check.agrees else 'DIFFERS'} within "
                  f"{check.resolution:.0f}")
    return 0 if check is None or check.agrees else 1

