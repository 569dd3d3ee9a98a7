"""The bare profile image of one exported model: the model's sources compiled with a core's
production flags (``-O2`` and a board's ``cpu_flags``), the C library functions it calls
(newlib-nano, libm, libgcc) and the buffers the emulator passes to the C API
(``firmware/profile_entry.c.j2``), linked by ``firmware/profile.ld.j2`` so that the model's
code and const data are sections of their own. No start-up code: :mod:`tinyrnn.targets.emulator`
loads the sections and calls the API functions itself.

:func:`static_stack` reads the worst stack depth through the model's call graph from gcc's
``-fstack-usage`` / ``-fcallgraph-info`` files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import cross, toolchain
from .boards import Board

RUN_STEPS = 8          # length of the sequence NAME_run is counted over
KEPT = ("reset", "set_state", "step", "run", "step_q", "run_q")
"""The API functions an image keeps (the float API and the int16 functions the profile runs);
the linker drops the rest, as a firmware's --gc-sections drops what it does not call."""

# The bare image's memory map. Addresses only matter to the emulator: counts do not depend
# on them. Both regions are large so that a profile never fails for size; whether a model
# fits a board is the report's and `tinyrnn build`'s question.
FLASH_ORIGIN = 0x00000000
RAM_ORIGIN = 0x20000000
REGION_SIZE = 16 << 20


@dataclass(frozen=True)
class ProfileImage:
    """A bare ELF image of one exported model, built for one board's core."""

    elf: Path
    callgraph: Path           # gcc's -fcallgraph-info file for the model's C object
    model: cross.ExportedModel
    board: Board
    has_q: bool               # the model offers NAME_step_q / NAME_run_q (fixed point)
    model_objects: tuple[Path, ...] = ()  # the model's objects, one per source


def build_image(model: cross.ExportedModel, board: Board, work_dir: str | Path,
                compiler: str = "gcc") -> ProfileImage:
    """Compile the model with ``board``'s production flags and link the bare profile image."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    api = model.api
    has_q = api.has("step_q")
    out_floats = max(api.function("step").output_lengths(1)[0],
                     sum(model.output_lengths(RUN_STEPS)))
    entry = toolchain.render_firmware(
        "profile_entry.c.j2", work / "tinyrnn_profile.c", name=model.name, header=api.header,
        state_type=api.state_type, x_floats=RUN_STEPS * api.macro("INPUT_SIZE"),
        out_floats=out_floats, has_q=has_q)
    script = toolchain.render_firmware("profile.ld.j2", work / "profile.ld", flash=FLASH_ORIGIN,
                                       ram=RAM_ORIGIN, size=REGION_SIZE)
    include = (f"-I{model.directory}",)
    jobs = [toolchain.CompileJob(source, work / f"tinyrnn_model_{k}.o",
                                 include + (("-fstack-usage", "-fcallgraph-info=su")
                                            if source.suffix == ".c" else ()))
            for k, source in enumerate(model.sources)]
    entry_obj = work / "tinyrnn_profile.o"
    toolchain.compile_all([*jobs, toolchain.CompileJob(entry, entry_obj, include)],
                          board.cpu_flags, f"compiling {model.name} for {board.core}", compiler)
    keep = [fn.name for fn in api.functions if fn.name.removeprefix(f"{api.prefix}_") in KEPT]
    keep += ["tinyrnn_profile_state", "tinyrnn_profile_x", "tinyrnn_profile_out"]
    keep += ["tinyrnn_profile_xq", "tinyrnn_profile_outq"] if has_q else []
    elf = work / "profile.elf"
    objects = [job.output for job in jobs]
    toolchain.link([*objects, entry_obj], elf, board.cpu_flags,
                   f"linking the profile image for {board.core}",
                   ["-nostartfiles", "--specs=nano.specs", "-T", str(script), "-Wl,--gc-sections",
                    *[f"-Wl,--undefined={symbol}" for symbol in keep], "-lm", "-lc", "-lgcc"])
    callgraph = next(job.output.with_suffix(".ci") for job in jobs if job.source.suffix == ".c")
    return ProfileImage(elf=elf, callgraph=callgraph, model=model, board=board, has_q=has_q,
                        model_objects=tuple(objects))


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
