"""Exported C under AddressSanitizer and UndefinedBehaviorSanitizer, many models per executable.

:func:`sanitize` writes one C driver for a batch of exported models, compiles every model and
the driver with ``-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all``
(gcc, ``-O0``: the sanitizers instrument the source, and -O0 compiles several times faster)
and runs it. For each model the driver, in C loops:

- allocates the state and every buffer with ``malloc`` at its exact size for the call (so an
  access one element past a buffer is a heap-buffer-overflow), from a seeded xorshift;
- runs random calls until the model has done its share of time steps: ``run_q`` / ``step_q``
  (integer formats) on int16 inputs where one value in four is an extreme (-32768, 32767,
  -1, 0, 1), ``run`` / ``step`` on floats where one value in four is special (NaN, +-Inf,
  +-FLT_MAX, +-FLT_MIN, +-denormals, -0, +-1e30), ``set_state_q`` / ``set_state`` likewise
  for models that take an initial state; sequence lengths 1..max_seq_len (models with
  sequence buffers: bidirectional, Conv1d, pooling) or 1..64, calls from reset and continuing
  a stream;
- checks every return code, and the error paths: T = 0, T = max_seq_len + 1, NULL pointers,
  ``step`` on a model that does not stream;
- runs the probes given by the caller (inputs chosen in Python) and prints their outputs, so
  that the caller can compare the sanitized build with the host build bit for bit.

Findings end the program with a sanitizer report; :func:`sanitize` raises with it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

SANITIZE = ("-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer")
CFLAGS = ("-std=c99", "-O0", "-Wall", "-Wextra", "-Werror", "-pedantic", *SANITIZE)
DRIVER_FLAGS = ("-std=c99", "-O0", "-Wall", "-Wextra", *SANITIZE)
ENV = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=86",
       "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87"}
FINDING = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:")
STREAM_CAP = 64  # longest call on a unidirectional model (no sequence buffer)


@dataclass
class Probe:
    """One call whose outputs the driver prints: ``x`` (T, I) int16 for ``run_q`` or
    float32 for ``run``, from reset, after ``set_state(_q)`` with h0/c0 when given."""

    x: np.ndarray
    h0: np.ndarray | None = None
    c0: np.ndarray | None = None


@dataclass
class Target:
    """One exported model: its folder, manifest, time steps to run and probes."""

    directory: Path
    manifest: dict
    steps: int
    probes: list[Probe] = field(default_factory=list)
    seed: int = 1

    @property
    def name(self) -> str:
        return self.manifest["name"]


@dataclass
class Result:
    steps: dict[str, int]  # time steps run per model
    probes: dict[str, list[list[np.ndarray]]]  # per model, per probe, per output (flat)
    seconds_compile: float
    seconds_run: float


def _lengths(manifest: dict, steps: str) -> list[str]:
    """C expressions for the length of each output buffer of one call of ``steps`` steps."""
    out = []
    for spec in manifest["interface"]["outputs"]:
        if spec["role"] == "sequence":
            out.append(f"({steps}) * {spec['features']}")
        elif spec["role"] == "vector":
            out.append(str(spec["features"]))
        else:
            out.append(str(spec["size"]))
    return out


def _c_array(ctype: str, name: str, values: np.ndarray) -> dict:
    """A const array for the template: int16 values, or float32 bits as uint32_t."""
    flat = np.asarray(values).reshape(-1)
    if ctype == "uint32_t":
        items = [f"0x{int(v):08x}u" for v in flat.astype(np.float32).view(np.uint32)]
    else:
        items = [str(int(v)) for v in flat]
    return dict(ctype=ctype, name=name, size=max(1, flat.size), body=", ".join(items) or "0")




_TEMPLATE = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent)), trim_blocks=True,
    lstrip_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
).get_template("sanitize_driver.c.j2")


def _model_view(t: Target) -> dict:
    """What the template prints for one model (see the module docstring)."""
    m = t.manifest
    p = m["name"]
    api = m["interface"]
    has_step = bool(api["has_step"])
    # sequence buffers (bidirectional, Conv1d, pooling) bound NAME_run, even where a causal
    # conv model streams with NAME_step
    cap = api.get("max_seq_len") or STREAM_CAP
    takes_state = any(s["role"] == "h0" for s in api["forward_inputs"])
    sizes = {s["role"]: s.get("size") for s in api["forward_inputs"]}
    state_sizes = [sizes[a] for a in api["set_state_args"]] if takes_state else []
    n_out = len(api["outputs"])
    arrays, probes = [], []
    for k, probe in enumerate(t.probes):
        q = probe.x.dtype == np.int16
        roles = ["x"] + (list(api["set_state_args"]) if probe.h0 is not None else [])
        for role in roles:
            arrays.append(_c_array("int16_t" if q else "uint32_t", f"{p}_probe{k}_{role}",
                                   getattr(probe, role)))
        probes.append(dict(k=k, q=q, roles=roles, T=probe.x.shape[0],
                           ctype="int16_t" if q else "float", out="oq" if q else "of",
                           suffix="_q" if q else "", lengths=_lengths(m, str(probe.x.shape[0]))))
    return dict(
        p=p, P=p.upper(), seed=t.seed, steps=t.steps, fixed=m.get("format") != "float32", cap=cap,
        I=api["input_size"], step_out=api["step_output_size"], has_step=has_step,
        bounded=bool(api.get("max_seq_len")),
        state_sizes=state_sizes, n_out=n_out, lengths=_lengths(m, "T"),
        err_lengths=_lengths(m, str(cap + 1)),
        outs_f="".join(f", of[{j}]" for j in range(n_out)), arrays=arrays, probes=probes)


def driver(targets: Sequence[Target]) -> str:
    """The C text of one driver for ``targets``."""
    return _TEMPLATE.render(models=[_model_view(t) for t in targets])


def _run(command: Sequence[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, check=False, **kw)


def compile_model(directory: Path, name: str, work: Path) -> Path:
    """One exported model's C compiled with the sanitizers (and the strict warnings)."""
    work.mkdir(parents=True, exist_ok=True)
    obj = work / f"{name}.o"
    cmd = ["gcc", *CFLAGS, "-c", str(directory / f"{name}.c"), "-o", str(obj)]
    result = _run(cmd)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-3000:]}"
    return obj


def sanitize(targets: Sequence[Target], work: Path, batches: int = 2,
             workers: int | None = None, objects: Mapping[str, Path] | None = None) -> Result:
    """Compile ``targets`` with the sanitizers into ``batches`` executables (``workers``
    compilers at a time, default one per core; ``objects``: models compiled already by
    :func:`compile_model`), run them, and return the steps and probe outputs; raise
    AssertionError on any finding or failure."""
    import time

    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    objects = dict(objects or {})
    missing = [t for t in targets if t.name not in objects]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for t, obj in zip(missing, pool.map(
                lambda t: compile_model(t.directory, t.name, work), missing)):
            objects[t.name] = obj
    exes = []
    for b in range(batches):
        group = list(targets[b::batches])
        if not group:
            continue
        drv = work / f"driver{b}.c"
        drv.write_text(driver(group))
        obj = work / f"driver{b}.o"
        includes = [f"-I{t.directory}" for t in group]
        result = _run(["gcc", *DRIVER_FLAGS, *includes, "-c", str(drv), "-o", str(obj)])
        assert result.returncode == 0, result.stderr[-3000:]
        exe = work / f"fuzz{b}"
        result = _run(["gcc", *SANITIZE, *(str(objects[t.name]) for t in group), str(obj),
                       "-lm", "-o", str(exe)])
        assert result.returncode == 0, result.stderr[-3000:]
        exes.append((exe, group))
    compiled = time.monotonic()
    env = dict(os.environ, **ENV)
    with ThreadPoolExecutor(max_workers=len(exes)) as pool:
        runs = list(pool.map(lambda e: _run([str(e[0])], env=env), exes))
    finished = time.monotonic()
    steps: dict[str, int] = {}
    probes: dict[str, list[list[np.ndarray]]] = {t.name: [[] for _ in t.probes] for t in targets}
    by_name = {t.name: t for t in targets}
    for (exe, _), result in zip(exes, runs):
        report = result.stdout[-2000:] + result.stderr[-6000:]
        assert not FINDING.search(result.stderr), f"sanitizer finding in {exe.name}:\n{report}"
        assert result.returncode == 0, f"{exe.name} exited with {result.returncode}:\n{report}"
        lines = iter(result.stdout.splitlines())
        for line in lines:
            if line.startswith("@done "):
                _, name, count = line.split()
                steps[name] = int(count)
            elif line.startswith("@probe "):
                _, name, k, _j = line.split()
                words = next(lines).split()
                t = by_name[name]
                dtype = np.int16 if t.probes[int(k)].x.dtype == np.int16 else np.float32
                if dtype == np.int16:
                    values = np.array([int(w) for w in words], dtype=np.int16)
                else:
                    values = np.array([int(w, 16) for w in words], dtype=np.uint32).view(
                        np.float32)
                probes[name][int(k)].append(values)
    missing = [t.name for t in targets if steps.get(t.name, 0) < t.steps]
    assert not missing, f"models that did not finish their steps: {missing}"
    return Result(steps=steps, probes=probes, seconds_compile=compiled - started,
                  seconds_run=finished - compiled)
