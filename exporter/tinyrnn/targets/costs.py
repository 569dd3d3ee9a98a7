"""The Cortex-M cores ``tinyrnn profile`` emulates, and the static Cortex-M4 cost model that
turns an instruction mix into a cycle estimate (docs/profiling.md prints the table).

:func:`classify` puts one capstone instruction into a class of :data:`M4_COSTS` (Cortex-M4
TRM r0p1, tables 3-1 and 7-1); :func:`make_block` adds up one translation block with the
corrections known inside it (taken unconditional branches, pipelined loads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import TinyRNNError
from .boards import Board, list_boards

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
PIPELINE_SAVING = M4_COSTS["load"].base - PIPELINED_LOAD_CYCLES



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
    "cortex-m55": "unicorn has no Cortex-M55 (no MVE/Helium); `tinyrnn profile --cpu "
                  "cortex-m55` counts its instructions under QEMU -icount instead",
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
class Block:
    """A translation block as unicorn executed it, with what the cost model needs."""

    instructions: tuple[Instruction, ...]
    cycles: int              # static costs, with the corrections known inside the block
    fallthrough: int         # the address after the block
    ends_conditional: bool   # last instruction may branch or fall through
    first_is_load: bool      # first instruction is an LDR (pipelines after a load/store)
    last_is_load_store: bool  # last instruction is a single load or store
    always_taken: int        # unconditional PC writes (a taken branch each time)
    pipelined_loads: int     # LDRs right after a single load or store, inside the block


def make_block(instructions: Sequence[Instruction]) -> Block:
    always_taken = sum(1 for i in instructions if i.writes_pc and not i.conditional)
    pipelined = sum(1 for before, insn in zip(instructions, instructions[1:])
                    if insn.cls == "load" and before.cls in _SINGLE_LOAD_STORE)
    cycles = (sum(i.cycles for i in instructions) + TAKEN_BRANCH_CYCLES * always_taken
              - PIPELINE_SAVING * pipelined)
    last = instructions[-1]
    return Block(instructions=tuple(instructions), cycles=cycles,
                  fallthrough=last.address + last.size,
                  ends_conditional=last.writes_pc and last.conditional,
                  first_is_load=instructions[0].cls == "load",
                  last_is_load_store=last.cls in _SINGLE_LOAD_STORE,
                  always_taken=always_taken, pipelined_loads=pipelined)



# ---------------------------------------------------------------------------------------------
# Documentation helper


def cost_table_markdown() -> str:
    """:data:`M4_COSTS` as the Markdown table docs/profiling.md shows."""
    lines = ["| class | cycles | instructions | note |", "|---|---|---|---|"]
    for cls, cost in M4_COSTS.items():
        lines.append(f"| {cls} | {cost.describe()} | {cost.examples} | {cost.note} |")
    lines.append(f"| taken branch | +{TAKEN_BRANCH_CYCLES} | any branch or PC write that is "
                 "taken | pipeline refill P |")
    return "\n".join(lines)
