"""Checks of the generated files themselves, shared by the table tests: line width, braces,
constness, and what clang -Weverything and gcc -Wunused say about unused functions, macros and
tables on each family of builds (host C kernels, ARMv6-M assembly, DSP assembly)."""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tinyrnn.backend.cformat import WIDTH
from tinyrnn.targets.toolchain import newlib_sysroot

CLANG_TARGETS = {
    "host": [],
    "cortex-m0": ["--target=arm-none-eabi", "-mthumb", "-mcpu=cortex-m0", "-mfloat-abi=soft"],
    "cortex-m4": ["--target=arm-none-eabi", "-mthumb", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16",
                  "-mfloat-abi=hard"],
    "cortex-m55": ["--target=arm-none-eabi", "-mthumb", "-mcpu=cortex-m55", "-mfloat-abi=hard"],
}
GCC_TARGETS = {
    "host": ["gcc"],
    "cortex-m0": ["arm-none-eabi-gcc", "-mthumb", "-mcpu=cortex-m0", "-mfloat-abi=soft"],
    "cortex-m4": ["arm-none-eabi-gcc", "-mthumb", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16",
                  "-mfloat-abi=hard"],
    "cortex-m55": ["arm-none-eabi-gcc", "-mthumb", "-mcpu=cortex-m55", "-mfloat-abi=hard"],
}
WARNING = re.compile(r"warning: .*\[-W([\w-]+)[^\]]*\]$")
STYLE_ONLY = {
    # the generated C is C99, which allows a declaration after a statement (a unit's
    # constants are declared where the loop body needs them); this warns about C89 only
    "declaration-after-statement": "C89 compatibility; the generated C is C99",
}
"""clang -Weverything warnings that are about style or older standards, not about the code:
every other -Weverything warning (unused functions, macros and tables among them) counts."""
# -Dinline= turns every `static inline` helper into a plain static function, which compilers
# do report when it is not called: an unused helper cannot hide behind `inline`.
NO_INLINE = "-Dinline="


PCH_HEADERS = {"cortex-m55": "arm_mve.h"}
"""System headers that a target's builds include and that cost clang more to parse than the
model itself (arm_mve.h: about 3 MB preprocessed): parsed once into a precompiled header per
process. The source's own ``#include`` of it is then skipped by the header's include guard, so
every file is still checked as written."""


@functools.cache
def _pch(target: str, flags: tuple[str, ...]) -> list[str]:
    """``-include-pch`` of :data:`PCH_HEADERS`' header for ``target`` (built with the checks'
    own flags), or nothing."""
    header = PCH_HEADERS.get(target)
    if header is None:
        return []
    folder = Path(tempfile.mkdtemp(prefix="tinyrnn-pch-"))
    (folder / "pch.h").write_text(f"#include <{header}>\n")
    subprocess.run(["clang", *flags, "-std=c99", NO_INLINE, "-x", "c-header",
                    str(folder / "pch.h"), "-o", str(folder / "pch.h.pch")],
                   capture_output=True, text=True, check=True)
    return ["-include-pch", str(folder / "pch.h.pch")]


def compiler_warnings(sources: Sequence[Path]) -> list[str]:
    """Every warning clang -Weverything (but :data:`STYLE_ONLY`) or gcc -Wall -Wextra -Wunused
    reports in ``sources`` (an unused function, macro, variable or table among them), on the
    host, a Cortex-M0, a Cortex-M4 and a Cortex-M55 (the MVE kernels)."""
    found = []
    sysroot = f"--sysroot={newlib_sysroot()}"
    files = [str(s) for s in sources]
    for target, flags in CLANG_TARGETS.items():
        extra = [sysroot] if flags else []
        pch = _pch(target, (*flags, *extra))
        done = subprocess.run(["clang", *flags, *extra, *pch, "-fsyntax-only", "-std=c99",
                               "-Weverything", NO_INLINE, *files],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        for line in done.stderr.splitlines():
            match = WARNING.search(line)
            if match and match.group(1) not in STYLE_ONLY:
                found.append(f"clang {target}: {line}")
            elif "warning:" in line and not match:
                found.append(f"clang {target}: {line}")
    for target, command in GCC_TARGETS.items():
        done = subprocess.run([*command, "-fsyntax-only", "-std=c99", "-Wall", "-Wextra",
                               "-Wunused", "-Wunused-macros", "-Wunused-const-variable=2",
                               NO_INLINE, *files], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        found += [f"gcc {target}: {line}" for line in done.stderr.splitlines()
                  if "warning:" in line]
    return found


def layout_problems(path: Path) -> list[str]:
    """Lines over the width, braces at column 0 other than those opening and closing a
    function or an initializer, code at column 0 inside braces, non-const arrays."""
    problems = []
    lines = path.read_text().splitlines()
    depth = 0
    comment = False
    for k, line in enumerate(lines):
        where = f"{path.name}:{k + 1}"
        if len(line) > WIDTH:
            problems.append(f"{where} has {len(line)} characters")
        code = line
        if comment:  # inside a comment: only what follows its end counts
            comment = "*/" not in code
            code = code.split("*/", 1)[1] if not comment else ""
        code = re.sub(r"/\*.*?\*/", "", code)
        if "/*" in code:
            code, comment = code.split("/*", 1)[0], True
        code = re.sub(r'"(\\.|[^"\\])*"', '""', code)
        if code.strip() in ('extern "" {', "}") and "__cplusplus" in lines[k - 1]:
            continue  # C++ linkage around a header: not a block
        opened = depth
        depth += code.count("{") - code.count("}")
        if not code.strip() or code.startswith("#") or line.startswith((" ", "\t")):
            continue
        if code.startswith("{") and not (code == "{" and opened == 0
                                         and lines[k - 1].endswith(")")):
            problems.append(f"{where} opens a brace at column 0: {line!r}")
        elif code.startswith("}") and not (depth == 0 and (code in ("}", "};")
                                                           or code.startswith("} "))):
            problems.append(f"{where} closes a brace at column 0 inside a block: {line!r}")
        elif opened > 0 and not code.startswith("}"):
            problems.append(f"{where} is at column 0 inside a block: {line!r}")
        if line.startswith("static") and "[" in line and "(" not in line \
                and not line.startswith("static const"):
            problems.append(f"{where} is a mutable static array: {line!r}")
    if depth:
        problems.append(f"{path.name}: braces do not balance")
    return problems
