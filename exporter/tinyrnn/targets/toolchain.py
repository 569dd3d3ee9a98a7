"""The Cortex-M tools, in one place: compiling (arm-none-eabi-gcc or clang), linking, running
an image under QEMU, reading an object's section sizes, and the firmware templates.

Everything that runs a tool goes through :func:`run_tool`, so a missing tool or a failing
command becomes a :class:`TinyRNNError` with the tool's own message. ``tinyrnn build/run/flash``
(:mod:`tinyrnn.targets.cross`), ``tinyrnn profile`` and its QEMU cross-check use this module.

clang builds for the same cores with ``--target=arm-none-eabi`` and the newlib headers of
Debian's ``libnewlib-arm-none-eabi`` (:func:`newlib_sysroot`); every image is linked by
arm-none-eabi-gcc, which picks newlib's and libgcc's multilib for the core.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from ..errors import TinyRNNError
from ..resources import resource_dir

GCC = "arm-none-eabi-gcc"
CLANG = "clang"
QEMU = "qemu-system-arm"
COMPILERS = ("gcc", "clang")
CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-O2",
          "-ffunction-sections", "-fdata-sections")
_INSTALL = {
    GCC: "the ARM GNU toolchain (Debian: apt-get install gcc-arm-none-eabi "
         "libnewlib-arm-none-eabi)",
    CLANG: "clang and lld (Debian: apt-get install clang lld libnewlib-arm-none-eabi)",
    QEMU: "QEMU (Debian: apt-get install qemu-system-arm)",
}


def require_tool(program: str, what: str | None = None) -> None:
    """Raise naming the package to install when ``program`` is not on PATH."""
    if shutil.which(program) is None:
        raise TinyRNNError(f"{program} was not found on PATH; install "
                           f"{what or _INSTALL.get(program, program)}")


def run_tool(command: Sequence[str], doing: str, cwd: str | Path | None = None) -> str:
    """Run a build tool and return its stdout; on failure raise with its message."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, cwd=cwd)
    except FileNotFoundError:
        require_tool(command[0])
        raise
    if done.returncode != 0:
        raise TinyRNNError(f"{doing} failed:\n$ {' '.join(command)}\n"
                           f"{(done.stdout + done.stderr).strip()}")
    return done.stdout


@functools.lru_cache(maxsize=1)
def newlib_sysroot() -> str:
    """The folder whose ``include/`` holds newlib's headers (arm-none-eabi-gcc's search list)."""
    require_tool(GCC)
    listing = subprocess.run([GCC, "-E", "-Wp,-v", "-xc", os.devnull], capture_output=True,
                             text=True, check=False).stderr
    for line in listing.splitlines():
        folder = Path(os.path.normpath(line.strip()))  # not resolve(): include may be a link
        if line.startswith(" ") and (folder / "newlib.h").is_file():
            return str(folder.parent)
    raise TinyRNNError("newlib's headers were not found; install libnewlib-arm-none-eabi")


def compiler_command(compiler: str, cpu_flags: Sequence[str]) -> list[str]:
    """The compiler driver and target flags for one core (``cpu_flags`` of a board)."""
    if compiler == "gcc":
        return [GCC, *cpu_flags]
    if compiler == "clang":
        require_tool(CLANG)
        return [CLANG, "--target=arm-none-eabi", f"--sysroot={newlib_sysroot()}", *cpu_flags]
    raise TinyRNNError(f"unknown compiler {compiler!r}; choose one of {', '.join(COMPILERS)}")


@dataclass(frozen=True)
class CompileJob:
    """One source file to compile into one object, with its own extra flags."""

    source: Path
    output: Path
    flags: tuple[str, ...] = ()


def compile_all(jobs: Sequence[CompileJob], cpu_flags: Sequence[str], doing: str,
                compiler: str = "gcc", flags: Sequence[str] = CFLAGS) -> None:
    """Compile every job (in parallel) for the core of ``cpu_flags``."""
    base = compiler_command(compiler, cpu_flags)
    commands = [[*base, *flags, *job.flags, "-c", str(job.source), "-o", str(job.output)]
                for job in jobs]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda cmd: run_tool(cmd, doing), commands))


def link(objects: Sequence[Path], output: Path, cpu_flags: Sequence[str], doing: str,
         flags: Sequence[str] = ()) -> None:
    """Link objects into an ELF with arm-none-eabi-gcc (newlib and libgcc for the core)."""
    require_tool(GCC)
    run_tool([GCC, *cpu_flags, *map(str, objects), *flags, "-o", str(output)], doing)


# ---------------------------------------------------------------------------------------------
# QEMU


def qemu_command(machine: str, elf: Path, icount: bool = False) -> list[str]:
    """A semihosted run of ``elf`` on QEMU's ``machine``: console on stdout, exit status =
    main's; ``icount``: one virtual nanosecond per instruction (SysTick counts instructions)."""
    command = [QEMU, "-M", machine, "-nographic", "-monitor", "none", "-serial", "none"]
    if icount:
        command += ["-icount", "shift=0,sleep=off"]
    return command + ["-semihosting-config", "enable=on,target=native",
                      "-kernel", str(Path(elf).resolve())]


def run_qemu(machine: str, elf: Path, timeout: float, icount: bool = False,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run ``elf`` under QEMU; raises :class:`subprocess.TimeoutExpired` past ``timeout``."""
    require_tool(QEMU)
    return subprocess.run(qemu_command(machine, elf, icount), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


# ---------------------------------------------------------------------------------------------
# Images and objects


def hex_words(values: np.ndarray) -> list[str]:
    """The IEEE-754 bits of each float32, as C hex literals: exact, NaN and -0 included."""
    bits = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32)
    return [f"0x{int(b):08x}u" for b in bits]


@dataclass(frozen=True)
class ObjectSizes:
    """Bytes in an object's allocated sections, by kind."""

    code: int
    const: int
    data: int
    bss: int

    def __add__(self, other: ObjectSizes) -> ObjectSizes:
        return ObjectSizes(self.code + other.code, self.const + other.const,
                           self.data + other.data, self.bss + other.bss)


def object_sizes(path: Path) -> ObjectSizes:
    """Bytes in an object file's allocated sections, by kind (before --gc-sections)."""
    from elftools.elf.constants import SH_FLAGS
    from elftools.elf.elffile import ELFFile

    code = const = data = bss = 0
    with Path(path).open("rb") as handle:
        for section in ELFFile(handle).iter_sections():
            flags = section["sh_flags"]
            if not flags & SH_FLAGS.SHF_ALLOC:
                continue
            size = section["sh_size"]
            if section["sh_type"] == "SHT_NOBITS":
                bss += size
            elif flags & SH_FLAGS.SHF_EXECINSTR:
                code += size
            elif flags & SH_FLAGS.SHF_WRITE:
                data += size
            else:
                const += size
    return ObjectSizes(code, const, data, bss)


def text_bytes(objects: Sequence[Path]) -> int:
    """Machine code in the objects' .text sections (arm-none-eabi-size -A)."""
    total = 0
    for obj in objects:
        listing = run_tool([GCC.replace("gcc", "size"), "-A", str(obj)], f"sizing {obj.name}")
        total += sum(int(line.split()[1]) for line in listing.splitlines()
                     if re.match(r"\.text(\.|\s)", line))
    return total


@functools.lru_cache(maxsize=1)
def _firmware_environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_dir("firmware"))),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False)


def render_firmware(template: str, output: Path, **context: Any) -> Path:
    """Render ``firmware/<template>`` (a .j2 file) into ``output``."""
    output.write_text(_firmware_environment().get_template(template).render(**context),
                      encoding="utf-8")
    return output
