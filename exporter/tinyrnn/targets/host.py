"""Host harness: compile exported C with the host's gcc through cffi and run it on numpy data.

``load(DIR)`` builds one extension module for one exported model; ``load_many(DIRS)`` builds
one module for many (one compile for a whole test table). Builds are cached by the hash of
the sources and flags, under ``$TINYRNN_CACHE`` (default ``~/.cache/tinyrnn``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..backend.interface import from_manifest
from ..backend.manifest import read_manifest  # noqa: F401 - cross, report and verify import it here
from ..errors import TinyRNNError
from ..io import assemble_outputs, split_inputs

CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
GLUE_FLAGS = ["-O0", "-g0"]
"""cffi's glue module (argument conversion only; the model C is compiled with CFLAGS): Python's
default -O3 -g spends minutes on the glue of a few hundred models, -O0 a fraction of that."""


def _cache_root() -> Path:
    root = Path(os.environ.get("TINYRNN_CACHE", Path.home() / ".cache" / "tinyrnn"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def compile_object(source: Path, out_dir: Path) -> Path:
    """Compile one generated .c with the strict flags; a failure shows gcc's message."""
    obj = out_dir / (source.name.replace(".", "_") + ".o")
    cmd = ["gcc", *CFLAGS, "-fPIC", "-c", str(source), "-o", str(obj)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise TinyRNNError(
            f"gcc rejected {source}:\n{result.stderr.strip()}\n(command: {' '.join(cmd)})"
        )
    return obj


def _build(dirs: Sequence[Path], manifests: Sequence[dict]):
    import cffi

    apis = [from_manifest(m) for m in manifests]
    digest = hashlib.sha256(" ".join(CFLAGS + GLUE_FLAGS).encode())
    for d, api in zip(dirs, apis):
        for filename in (api.header, *api.sources):
            digest.update((d / filename).read_bytes())
    module_name = "_tinyrnn_" + digest.hexdigest()[:20]
    build_dir = _cache_root() / module_name
    existing = list(build_dir.glob(f"{module_name}*.so")) if build_dir.exists() else []
    if not existing:
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=_cache_root()))
        # every source the C interface lists (assembly kernels assemble to nothing here)
        sources = [d / filename for d, api in zip(dirs, apis) for filename in api.sources]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # gcc runs in parallel
            objects = list(pool.map(lambda src: compile_object(src, tmp), sources))
        ffi = cffi.FFI()
        ffi.cdef("".join(api.cdef() for api in apis))
        ffi.set_source(
            module_name,
            "".join(f'#include "{api.header}"\n' for api in apis),
            include_dirs=sorted({str(d.resolve()) for d in dirs}),
            extra_objects=[str(o) for o in objects],
            libraries=["m"],
            extra_compile_args=GLUE_FLAGS,
        )
        try:
            built = Path(ffi.compile(tmpdir=str(tmp), verbose=False))
        except Exception as exc:  # cffi wraps the compiler's failure
            raise TinyRNNError(f"compiling the generated C failed:\n{exc}") from None
        build_dir.mkdir(exist_ok=True)
        target = build_dir / built.name
        os.replace(built, target)
        existing = [target]
    spec = importlib.util.spec_from_file_location(module_name, existing[0])
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(module_name) or importlib.util.module_from_spec(spec)
    if module_name not in sys.modules:
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    return module


class CompiledModel:
    """One exported model compiled for the host; runs batches in torch's layout."""

    def __init__(self, module, manifest: dict, folder: Path | None = None):
        self.ffi = module.ffi
        self.folder = folder  # where the export is
        self.lib = module.lib
        self.manifest = manifest
        self.interface = manifest["interface"]
        self.api = from_manifest(manifest)
        self.name = manifest["name"]

    def _fn(self, suffix: str):
        return getattr(self.lib, f"{self.name}_{suffix}")

    def new_state(self):
        state = self.ffi.new(f"{self.name}_state_t *")
        self._fn("reset")(state)
        return state

    def _floats(self, array: np.ndarray):
        array = np.ascontiguousarray(array, dtype=np.float32)
        return self.ffi.from_buffer("float[]", array), array

    def set_state(self, state, sample: dict[str, np.ndarray]) -> None:
        args = [self._floats(sample[a])[0] for a in self.interface["set_state_args"]]
        self._check(self._fn("set_state")(state, *args), "set_state")

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            error = self.api.error(status)
            meaning = error.meaning if error is not None else "an error"
            max_t = self.interface.get("max_seq_len")
            hint = (f" (this export's --max-seq-len is {max_t})"
                    if error is not None and error.name == "ERR_SEQ_LEN" and max_t else "")
            raise TinyRNNError(f"{self.name}_{what} returned {status}: {meaning}{hint}")

    def run_sample(self, sample: dict[str, np.ndarray], state=None) -> list[np.ndarray]:
        """Run one sample from reset (or from ``state``); returns flat per-sample outputs."""
        if state is None:
            state = self.new_state()
            if "h0" in sample:
                self.set_state(state, sample)
        x = sample["x"]
        T = x.shape[0]
        outs = [np.zeros(n, dtype=np.float32) for n in self.api.output_lengths(T)]
        x_buf, _keep = self._floats(x)
        out_bufs = [self.ffi.from_buffer("float[]", o) for o in outs]
        self._check(self._fn("run")(state, x_buf, T, *out_bufs), "run")
        return outs

    def step(self, state, x_t: np.ndarray) -> np.ndarray:
        """The streaming API: one step from ``state``; returns the step's output."""
        y = np.zeros(self.api.function("step").output_lengths(1)[0], dtype=np.float32)
        x_buf, _keep = self._floats(x_t)
        self._check(self._fn("step")(state, x_buf, self.ffi.from_buffer("float[]", y)), "step")
        return y

    def run_sample_q(self, sample: dict[str, np.ndarray], state=None) -> list[np.ndarray]:
        """``run_sample`` through the int16 API (integer formats): int16 in, int16 out."""
        if state is None:
            state = self.new_state()
            if "h0" in sample:
                args = [self.ffi.from_buffer("int16_t[]", np.ascontiguousarray(
                    sample[a], dtype=np.int16)) for a in self.interface["set_state_args"]]
                self._check(self._fn("set_state_q")(state, *args), "set_state_q")
        x = np.ascontiguousarray(sample["x"], dtype=np.int16)
        T = x.shape[0]
        outs = [np.zeros(n, dtype=np.int16) for n in self.api.output_lengths(T)]
        bufs = [self.ffi.from_buffer("int16_t[]", o) for o in outs]
        self._check(self._fn("run_q")(state, self.ffi.from_buffer("int16_t[]", x), T, *bufs),
                    "run_q")
        return outs

    def step_q(self, state, x_t: np.ndarray) -> np.ndarray:
        """``step`` through the int16 API (integer formats)."""
        y = np.zeros(self.api.function("step_q").output_lengths(1)[0], dtype=np.int16)
        x = np.ascontiguousarray(x_t, dtype=np.int16)
        self._check(self._fn("step_q")(state, self.ffi.from_buffer("int16_t[]", x),
                                       self.ffi.from_buffer("int16_t[]", y)), "step_q")
        return y

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Run a batch given as the torch forward's arguments; returns its outputs."""
        samples = split_inputs(self.interface, arrays)
        per_sample = [self.run_sample(s) for s in samples]
        return assemble_outputs(self.interface, per_sample, samples[0]["x"].shape[0])


def load(model_dir: str | Path) -> CompiledModel:
    """Compile the exported model in ``model_dir`` for the host."""
    return load_many([model_dir])[0]


def load_many(model_dirs: Sequence[str | Path]) -> list[CompiledModel]:
    """Compile many exported models (distinct names) into one host module."""
    dirs = [Path(d) for d in model_dirs]
    manifests = [read_manifest(d) for d in dirs]
    names = [m["name"] for m in manifests]
    if len({n.upper() for n in names}) != len(names):  # macros and guards are upper case
        raise TinyRNNError("models compiled together need names that differ in more than "
                           "letter case (--name)")
    for m in manifests:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", m["name"]):
            raise TinyRNNError(f"manifest name {m['name']!r} is not a C identifier")
    module = _build(dirs, manifests)
    return [CompiledModel(module, m, d) for m, d in zip(manifests, dirs)]
