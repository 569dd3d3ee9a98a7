"""Target boards: one TOML file per board in ``boards/``, loaded into a frozen :class:`Board`.

A board file says which core and FPU the board has, the gcc flags that build for it, where
its flash and RAM are, and how to reach it: a QEMU machine for emulated boards, a pyOCD
target for real ones. Everything is checked when the file is loaded, so a typo in a board
file fails with the file and field named, not later as a confusing compiler or QEMU error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TinyRNNError
from ..resources import resource_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The FPUs each core may have, the first being what gcc calls it in -mfpu (or "none").
# "mve" is the M55's Helium unit with its FPU; gcc enables both from -mcpu=cortex-m55 alone.
_FPUS_BY_CORE: dict[str, tuple[str, ...]] = {
    "cortex-m0": ("none",),
    "cortex-m0plus": ("none",),
    "cortex-m3": ("none",),
    "cortex-m4": ("none", "fpv4-sp-d16"),
    "cortex-m7": ("none", "fpv5-sp-d16", "fpv5-d16"),
    "cortex-m33": ("none", "fpv5-sp-d16"),
    "cortex-m55": ("none", "mve"),
}
_FLOAT_ABIS = ("soft", "softfp", "hard")
_REQUIRED = ("name", "description", "core", "fpu", "float_abi", "cpu_flags", "clock_hz",
             "stack_size", "flash", "ram")
_OPTIONAL = ("qemu_machine", "pyocd_target", "flash_blocker")


@dataclass(frozen=True)
class MemoryRegion:
    """A contiguous range of the address space."""

    origin: int
    length: int

    @property
    def end(self) -> int:
        """The first address past the region."""
        return self.origin + self.length


@dataclass(frozen=True)
class Board:
    """One target board, as described by ``boards/<name>.toml``."""

    name: str
    description: str
    core: str                      # gcc's -mcpu name, e.g. "cortex-m4"
    fpu: str                       # "none", a gcc -mfpu name, or "mve"
    float_abi: str                 # "soft", "softfp" or "hard"
    cpu_flags: tuple[str, ...]     # gcc flags that select the core, FPU and ABI
    clock_hz: int                  # core clock the board normally runs at
    stack_size: int                # bytes reserved for the main stack
    flash: MemoryRegion            # where code and const data go
    ram: MemoryRegion              # where .data, .bss, heap and stack go
    qemu_machine: str | None = None   # qemu-system-arm -M value, for emulated boards
    pyocd_target: str | None = None   # pyocd --target value, for boards one can flash
    flash_blocker: str | None = None  # why images cannot be flashed yet, if they cannot
    path: Path | None = None          # the file it was loaded from

    @property
    def has_fpu(self) -> bool:
        """Whether the core has a floating-point unit the build uses."""
        return self.fpu != "none" and self.float_abi != "soft"


def board_dir() -> Path:
    """The folder that holds the board files."""
    return resource_dir("boards")


def board_names() -> list[str]:
    """Names of all known boards, sorted."""
    return sorted(p.stem for p in board_dir().glob("*.toml"))


def list_boards() -> list[Board]:
    """All known boards, sorted by name."""
    return [load_board(name) for name in board_names()]


def load_board(name: str) -> Board:
    """Load the board called ``name``; raise :class:`TinyRNNError` listing the known ones."""
    path = board_dir() / f"{name}.toml"
    if "/" in name or "\\" in name or not path.is_file():
        known = ", ".join(board_names())
        raise TinyRNNError(f"unknown board {name!r}; known boards: {known}")
    return load_board_file(path)


def load_board_file(path: Path) -> Board:
    """Load and check one board file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TinyRNNError(f"cannot read board file {path}: {exc}") from exc
    problems = _check(data, path.stem)
    if problems:
        raise TinyRNNError(f"board file {path} is invalid:\n  " + "\n  ".join(problems))
    return Board(
        name=data["name"],
        description=data["description"],
        core=data["core"],
        fpu=data["fpu"],
        float_abi=data["float_abi"],
        cpu_flags=tuple(data["cpu_flags"]),
        clock_hz=data["clock_hz"],
        stack_size=data["stack_size"],
        flash=MemoryRegion(data["flash"]["origin"], data["flash"]["length"]),
        ram=MemoryRegion(data["ram"]["origin"], data["ram"]["length"]),
        qemu_machine=data.get("qemu_machine"),
        pyocd_target=data.get("pyocd_target"),
        flash_blocker=data.get("flash_blocker"),
        path=path,
    )


def _check(data: dict[str, Any], stem: str) -> list[str]:
    """Every problem with a board file's contents, as readable sentences (empty if none)."""
    problems = [f"missing field {key!r}" for key in _REQUIRED if key not in data]
    problems += [f"unknown field {key!r} (known: {', '.join(_REQUIRED + _OPTIONAL)})"
                 for key in data if key not in _REQUIRED + _OPTIONAL]
    if problems:
        return problems
    for key in ("name", "description", "core", "fpu", "float_abi") + _OPTIONAL:
        if key in data and not (isinstance(data[key], str) and data[key]):
            problems.append(f"{key!r} must be a non-empty string")
    if problems:
        return problems
    if data["name"] != stem:
        problems.append(f"name {data['name']!r} differs from the file name {stem!r}")
    core, fpu, abi = data["core"], data["fpu"], data["float_abi"]
    if core not in _FPUS_BY_CORE:
        problems.append(f"core {core!r} is not one of {', '.join(_FPUS_BY_CORE)}")
    elif fpu not in _FPUS_BY_CORE[core]:
        problems.append(f"fpu {fpu!r} does not exist on {core} "
                        f"(choose from {', '.join(_FPUS_BY_CORE[core])})")
    if abi not in _FLOAT_ABIS:
        problems.append(f"float_abi {abi!r} is not one of {', '.join(_FLOAT_ABIS)}")
    elif fpu == "none" and abi != "soft":
        problems.append(f"float_abi {abi!r} needs an FPU; use \"soft\" when fpu is \"none\"")
    problems += _check_flags(data["cpu_flags"], core, fpu, abi)
    for key in ("clock_hz", "stack_size"):
        if not (_int(data[key]) and data[key] > 0):
            problems.append(f"{key!r} must be a positive integer")
    for key in ("flash", "ram"):
        region = data[key]
        if not (isinstance(region, dict) and set(region) == {"origin", "length"}
                and _int(region["origin"]) and region["origin"] >= 0
                and _int(region["length"]) and region["length"] > 0
                and region["origin"] + region["length"] <= 1 << 32):
            problems.append(f"[{key}] must hold exactly 'origin' >= 0 and 'length' > 0, "
                            "inside the 32-bit address space")
    if not problems and data["stack_size"] >= data["ram"]["length"]:
        problems.append("stack_size does not leave any RAM for data")
    return problems


def _check_flags(flags: Any, core: str, fpu: str, abi: str) -> list[str]:
    """Problems with ``cpu_flags``: they must agree with core, fpu and float_abi."""
    if not (isinstance(flags, list) and all(isinstance(f, str) for f in flags)):
        return ["'cpu_flags' must be a list of strings"]
    wanted = [f"-mcpu={core}", "-mthumb", f"-mfloat-abi={abi}"]
    if fpu not in ("none", "mve"):
        wanted.append(f"-mfpu={fpu}")
    problems = [f"cpu_flags lack {flag!r}" for flag in wanted if flag not in flags]
    problems += [f"cpu_flags has {flag!r}, which core/fpu/float_abi do not say"
                 for flag in flags
                 if flag.startswith(("-mcpu=", "-mfpu=", "-mfloat-abi=")) and flag not in wanted]
    return problems


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
