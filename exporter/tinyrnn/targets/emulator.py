"""One bare profile image loaded into the unicorn engine: call a C function of the model with
its arguments and count what it runs, block by block (:class:`Emulator`, :class:`Count`).

Counting uses a block hook: every instruction of every executed translation block counts,
including the instructions an IT block skips (they still take an issue slot). The cost of
each block comes from :mod:`tinyrnn.targets.costs`; two corrections depend on the block before (a
load that pipelines after a load or store, a conditional branch that was taken).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import TinyRNNError
from .costs import PIPELINE_SAVING, TAKEN_BRANCH_CYCLES, Block, Core, classify, make_block
from .profile_image import FLASH_ORIGIN, RAM_ORIGIN, REGION_SIZE, ProfileImage

EMULATION_TIMEOUT = 300.0  # seconds for one emulated call
STACK_PAINT = 0xA5A5A5A5
STACK_RESERVE = 256 * 1024  # bytes below the stack top that are painted and checked
STOP_ADDRESS = 0x0F000000  # the emulated call returns here (LR), where emulation stops


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
        self._blocks: dict[tuple[int, int], Block] = {}

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

    def _block(self, key: tuple[int, int]) -> Block:
        block = self._blocks.get(key)
        if block is None:
            address, size = key
            code = bytes(self.uc.mem_read(address, size))
            decoded = [classify(insn) for insn in self._disasm.disasm(code, address)]
            if not decoded or sum(i.size for i in decoded) != size:
                raise TinyRNNError(f"capstone could not decode the block at 0x{address:08x} "
                                   f"({size} bytes); is the image built for a Cortex-M core?")
            block = self._blocks[key] = make_block(decoded)
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
                cycles -= times * PIPELINE_SAVING
                fn_cycles[where] -= times * PIPELINE_SAVING
                pipelined += times
        always = sum(times * self._block(key).always_taken for (_, key), times in pairs.items())
        cycles += TAKEN_BRANCH_CYCLES * (taken - always)  # the conditional ones
        mix_cycles["load"] -= PIPELINE_SAVING * pipelined
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
