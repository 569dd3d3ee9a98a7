"""``tinyrnn package``: an export as a drop-in library for CMake, Zephyr, Arduino, PlatformIO or
CMSIS-Pack.

An export folder holds ``NAME.h``, ``NAME.c`` (and any other ``NAME_*.c/.S/.h`` the exporter
writes) and the manifest ``NAME.json``. :func:`package` copies every generated source of the
model into the layout the chosen build system expects, writes that system's metadata from the
templates in ``templates/package/``, a minimal example application that runs the model once on
an input compiled into it and prints every output value, and a README naming the model, its
format, its sizes and its C API.

    result = package("out/", "arduino", "gesture-arduino/")
    print(result.format())      # the files it wrote

The example input is the first sequence of ``inputs`` (torch layout, as for ``run-host``) or,
without it, a deterministic input shaped like the export's example; it is also written beside
the example as ``example_input.npz`` so that ``tinyrnn run-host`` can be run on the very same
values. The package folder appears only complete: it is written to a temporary folder beside
the target and renamed into place.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from .. import __version__
from ..api import FORMATS
from ..backend.render import initializer
from ..checks import check_name
from ..errors import TinyRNNError
from ..io import split_inputs
from ..resources import resource_dir
from ..results import JsonResult
from .cross import ExportedModel
from .host import read_manifest

FORMS = ("cmake", "zephyr", "arduino", "platformio", "cmsis-pack")
DEFAULT_VERSION = "1.0.0"
PACK_VENDOR = "tinyrnn"                  # CMSIS-Pack vendor of every generated pack
PACK_CLASS = "Machine Learning"          # CMSIS-Pack component class (Cclass)
AUTHOR = "tinyrnn"                       # who wrote the library files: the generator
EXAMPLE_INPUT = "example_input.npz"
# 32-bit Arm cores of the Arduino and PlatformIO ecosystems (the generated C is verified on
# the host and on Cortex-M; an 8-bit AVR's 16-bit int is not).
ARDUINO_ARCHITECTURES = ("samd", "sam", "mbed", "mbed_nano", "mbed_portenta", "mbed_rp2040",
                         "renesas_uno", "renesas_portenta", "rp2040", "stm32", "nrf52")
PLATFORMIO_PLATFORMS = ("native", "ststm32", "nordicnrf52", "atmelsam", "raspberrypi", "teensy")

_SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
_URL = re.compile(r"https?://[^\s<>\"'`]+")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same model packs to the same bytes
_OUTPUT_ROLES = ("sequence", "vector", "h_n", "c_n")
_TITLES = {"cmake": "CMake library", "zephyr": "Zephyr module", "arduino": "Arduino library",
           "platformio": "PlatformIO library", "cmsis-pack": "CMSIS-Pack"}
# where each form keeps the example's input as .npz ({name}: the model name)
_INPUT_DIRS = {"cmake": "example", "zephyr": "samples/{name}", "arduino": "extras",
               "platformio": "examples/{name}", "cmsis-pack": "Templates"}


# ---------------------------------------------------------------------------------------------
# Names each build system accepts (the model name is already a C identifier)


@dataclass(frozen=True)
class NameRule:
    """One naming rule of a build system, applied to the name the package gives it."""

    what: str                          # e.g. "Arduino library name"
    rule: str                          # the rule in words, quoted in the error
    derive: Callable[[str], str]       # model name -> the name the rule applies to
    accepts: Callable[[str], bool]


def _full(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern)
    return lambda value: compiled.fullmatch(value) is not None


def _same(name: str) -> str:
    return name


NAME_RULES: dict[str, tuple[NameRule, ...]] = {
    "cmake": (
        NameRule("CMake target name", "letters, digits and _ . + - only (CMake policy CMP0037)",
                 lambda n: f"tinyrnn_{n}", _full(r"[A-Za-z0-9_.+-]+")),
    ),
    "zephyr": (
        NameRule("Kconfig symbol", "upper-case letters, digits and underscores only",
                 lambda n: f"TINYRNN_{n.upper()}", _full(r"[A-Z0-9_]+")),
    ),
    "arduino": (
        NameRule("Arduino library name", "at most 63 characters: letters, digits, spaces, _ . "
                 "and -, starting with a letter or digit and holding at least one letter "
                 "(library specification 1.5)", _same,
                 lambda n: _full(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,62}")(n)
                 and re.search("[A-Za-z]", n) is not None),
        NameRule("Arduino library name", "must not start with \"Arduino\": such names are "
                 "reserved for official Arduino libraries (library specification 1.5)", _same,
                 lambda n: not n.lower().startswith("arduino")),
        NameRule("Arduino sketch folder name", "at most 63 characters: letters, digits, _ . "
                 "and -, starting with a letter or digit (sketch specification)", _same,
                 _full(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")),
    ),
    "platformio": (
        NameRule("PlatformIO library name", "at most 50 characters, none of : ; / , @ < > "
                 "(library.json manifest)", _same, _full(r"[^:;/,@<>]{1,50}")),
    ),
    "cmsis-pack": (
        NameRule("CMSIS-Pack name", "letters, digits, _ and - only (PACK.xsd RestrictedString)",
                 _same, _full(r"[-_A-Za-z0-9]+")),
        NameRule("CMSIS-Pack component group (Cgroup)", "2 to 32 characters starting with a "
                 "letter or digit (PACK.xsd CidPartType)", _same,
                 _full(r"[A-Za-z0-9][A-Za-z0-9_+()'/\- .]{1,31}")),
    ),
}


def check_form(form: str) -> str:
    """``form`` if tinyrnn can write it; else a TinyRNNError listing the forms."""
    if form not in FORMS:
        raise TinyRNNError(f"unknown package form {form!r}; choose one of {', '.join(FORMS)}")
    return form


def check_library_name(name: str, form: str) -> None:
    """Raise a TinyRNNError naming every rule of ``form``'s build system ``name`` breaks."""
    broken = []
    for rule in NAME_RULES[check_form(form)]:
        value = rule.derive(name)
        if not rule.accepts(value):
            broken.append(f"{rule.what} {value!r}: {rule.rule}")
    if broken:
        raise TinyRNNError(f"model name {name!r} cannot name the {_TITLES[form]}: "
                           + "; ".join(broken) + ". Export again with another --name")


# ---------------------------------------------------------------------------------------------
# What an export folder holds


@dataclass(frozen=True)
class Export:
    """An export folder as the packager sees it: the manifest and the model's generated files."""

    model: ExportedModel
    sources: tuple[str, ...]   # file names of NAME.c and any other NAME_*.c / NAME_*.S
    headers: tuple[str, ...]   # file names of NAME.h and any other NAME_*.h

    @property
    def name(self) -> str:
        """The model name (the C symbol prefix)."""
        return self.model.name

    @property
    def manifest(self) -> Mapping[str, Any]:
        """The manifest NAME.json."""
        return self.model.manifest

    @property
    def has_asm(self) -> bool:
        """Whether an assembly source is among the generated files."""
        return any(s.endswith(".S") for s in self.sources)


def read_export(directory: str | Path) -> Export:
    """Check that ``directory`` is a tinyrnn export and list the model's generated files."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    where = f"{directory}: the manifest"
    problems = _manifest_problems(manifest)
    if problems:
        raise TinyRNNError(f"{where} is not a tinyrnn manifest ({'; '.join(problems)}); pass "
                           "a folder written by tinyrnn export, or export again")
    name = manifest["name"]
    check_name(name)
    own = re.compile(re.escape(name) + r"(_[A-Za-z0-9_]+)?\.(c|S|h)")
    if "files" in manifest:  # an exporter that lists its files: trust the list, not a glob
        listed = manifest["files"]
        if not (isinstance(listed, list) and all(isinstance(f, str) for f in listed)):
            raise TinyRNNError(f"{where}'s 'files' must be a list of file names")
        bad = [f for f in listed if own.fullmatch(f) is None and not f.endswith(".json")]
        if bad:
            raise TinyRNNError(f"{where} lists files that are not this model's generated C: "
                               f"{', '.join(map(repr, bad))}")
        names = [f for f in listed if not f.endswith(".json")]
        missing = [f for f in names if not (directory / f).is_file()]
        if missing:
            raise TinyRNNError(f"{directory} lacks {', '.join(missing)}, which its manifest "
                               "lists; export again")
    else:
        names = [p.name for p in directory.iterdir() if p.is_file() and own.fullmatch(p.name)]
    sources = tuple(sorted(f for f in names if not f.endswith(".h")))
    headers = tuple(sorted(f for f in names if f.endswith(".h")))
    if f"{name}.h" not in headers or f"{name}.c" not in sources:
        raise TinyRNNError(f"{directory} lacks {name}.h or {name}.c; export again")
    model = ExportedModel(directory=directory, name=name, manifest=manifest)
    return Export(model=model, sources=sources, headers=headers)


def _manifest_problems(manifest: Any) -> list[str]:
    """What a manifest lacks that the packager reads (docs/c-api.md), as short phrases."""
    if not isinstance(manifest, dict):
        return ["it is not a JSON object"]
    problems = []
    if not isinstance(manifest.get("name"), str):
        problems.append("'name' is not a string")
    if manifest.get("format") not in FORMATS:
        problems.append(f"'format' is not one of {', '.join(FORMATS)}")
    sizes = manifest.get("sizes")
    if not (isinstance(sizes, dict) and all(
            _count(sizes.get(k)) for k in ("weights_bytes", "state_bytes", "scratch_bytes"))):
        problems.append("'sizes' lacks weights_bytes, state_bytes or scratch_bytes")
    api = manifest.get("interface")
    if not isinstance(api, dict):
        return problems + ["'interface' is missing"]
    if not (_count(api.get("input_size")) and api["input_size"] > 0):
        problems.append("'interface.input_size' is not a positive integer")
    if not (api.get("max_seq_len") is None or _count(api["max_seq_len"])):
        problems.append("'interface.max_seq_len' is not an integer")
    if not isinstance(api.get("set_state_args"), list) or not set(
            api["set_state_args"]) <= {"h0", "c0"}:
        problems.append("'interface.set_state_args' is not a list of h0, c0")
    inputs = api.get("forward_inputs")
    if not (isinstance(inputs, list) and inputs and all(_input_ok(s) for s in inputs)
            and inputs[0].get("role") == "x"):
        problems.append("'interface.forward_inputs' is not a list of inputs starting with x")
    outputs = api.get("outputs")
    if not (isinstance(outputs, list) and outputs and all(_output_ok(s) for s in outputs)):
        problems.append("'interface.outputs' is not a list of outputs")
    if not isinstance(manifest.get("layers", []), list):
        problems.append("'layers' is not a list")
    return problems


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _input_ok(spec: Any) -> bool:
    if not (isinstance(spec, dict) and spec.get("role") in ("x", "h0", "c0")
            and isinstance(spec.get("torch_shape"), list)
            and all(_count(d) for d in spec["torch_shape"])
            and _count(spec.get("batch_axis"))
            and spec["batch_axis"] < len(spec["torch_shape"])):
        return False
    if spec["role"] != "x":
        return _count(spec.get("size"))
    return (_count(spec.get("time_axis")) and spec["time_axis"] < len(spec["torch_shape"])
            and _count(spec.get("features")))


def _output_ok(spec: Any) -> bool:
    if not (isinstance(spec, dict) and spec.get("role") in _OUTPUT_ROLES):
        return False
    return _count(spec.get("features" if spec["role"] in ("sequence", "vector") else "size"))


# ---------------------------------------------------------------------------------------------
# The example input


def example_inputs(export: Export, inputs: Sequence[np.ndarray] | None = None
                   ) -> list[np.ndarray]:
    """The forward's arguments the example runs on, in torch layout with a batch of one.

    ``inputs``: the user's arrays (as for ``run-host``); the first sequence of the batch is
    used. Without them: a deterministic input shaped like the export's example, every value
    a multiple of 1/16 in [-0.5, 0.5] (exact in float32 and in the integer formats), or token
    ids for a model whose input is token ids.
    """
    specs = export.model.interface["forward_inputs"]
    if inputs is None:
        steps = specs[0]["torch_shape"][specs[0]["time_axis"]]
        max_len = export.model.interface.get("max_seq_len") or steps
        arrays = []
        for j, spec in enumerate(specs):
            shape = list(spec["torch_shape"])
            shape[spec["batch_axis"]] = 1
            if spec["role"] == "x":
                shape[spec["time_axis"]] = max(1, min(steps, max_len))
            k = np.arange(int(np.prod(shape)))
            if spec.get("vocab"):  # token ids, spread over the vocabulary
                arrays.append(((7 * k + 3) % int(spec["vocab"])).reshape(shape))
                continue
            values = ((7 * k + 5 * j + 3) % 17 - 8) / 16.0
            arrays.append(values.reshape(shape).astype(np.float32))
        return arrays
    samples = split_inputs(export.model.interface, inputs)  # checks count, shapes, values
    if not samples:
        raise TinyRNNError("the example input holds no sequence (its batch size is 0)")
    return [np.take(np.asarray(array), [0], axis=spec["batch_axis"]).astype(np.float32)
            for spec, array in zip(specs, inputs)]


def _sample(export: Export, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    sample = split_inputs(export.model.interface, arrays)[0]
    max_len = export.model.interface.get("max_seq_len")
    if max_len and sample["x"].shape[0] > max_len:
        raise TinyRNNError(f"the example input has {sample['x'].shape[0]} time steps; "
                           f"{export.name} was exported for at most {max_len} (--max-seq-len)")
    return sample


def _npz(arrays: Sequence[np.ndarray]) -> bytes:
    """The arrays as an .npz with in0, in1, ... (the run-host contract), byte for byte stable."""
    members = []
    for i, array in enumerate(arrays):
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
        members.append((f"in{i}.npy", buffer.getvalue()))
    return zip_bytes(members, zipfile.ZIP_STORED)


def zip_bytes(members: Sequence[tuple[str, bytes]],
              compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of ``members`` (path, bytes) in order, with fixed dates and modes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in members:
            info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Template context


@dataclass(frozen=True)
class PackageOptions:
    """What the user chose beyond the export: the library version and its project page."""

    version: str = DEFAULT_VERSION
    url: str | None = None


def _check_options(options: PackageOptions) -> None:
    if _SEMVER.fullmatch(options.version) is None:
        raise TinyRNNError(f"library version {options.version!r} is not MAJOR.MINOR.PATCH "
                           "(semantic versioning, which Arduino, PlatformIO and CMSIS-Pack "
                           "require); e.g. --lib-version 1.0.0")
    if options.url is not None and _URL.fullmatch(options.url) is None:
        raise TinyRNNError(f"--url {options.url!r} is not an http:// or https:// address")


_RECURRENT = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (ReLU)"}
_WORD = re.compile(r"[a-z][a-z0-9_]{0,31}")
_VERSION_TEXT = re.compile(r"[0-9A-Za-z.+_-]{1,40}")


def _layer_text(layer: Any) -> str | None:
    """One layer of the manifest in words, or None. The manifest is untrusted: only known
    kinds and integer sizes reach the text that the templates put into comments and metadata."""
    if not isinstance(layer, dict) or not isinstance(layer.get("kind"), str):
        return None
    kind = layer["kind"]
    if kind in _RECURRENT:
        sizes = (layer.get("input_size"), layer.get("hidden_size"))
        if not all(_count(v) for v in sizes):
            return None
        bidi = " bidirectional" if layer.get("directions") == 2 else ""
        return f"{_RECURRENT[kind]}{bidi} {sizes[0]}->{sizes[1]}"
    if kind == "dense":
        sizes = (layer.get("in_features"), layer.get("out_features"))
        return f"dense {sizes[0]}->{sizes[1]}" if all(_count(v) for v in sizes) else None
    if kind == "select_step" or not _WORD.fullmatch(kind):
        return None
    return kind  # an activation: softmax, tanh, ...


def _text(value: Any, pattern: re.Pattern[str], default: str) -> str:
    """``value`` if it is a string of the expected form (for untrusted manifest text)."""
    return value if isinstance(value, str) and pattern.fullmatch(value) else default


def _context(export: Export, arrays: Sequence[np.ndarray], options: PackageOptions,
             form: str) -> dict[str, Any]:
    """Everything the templates print, decided here."""
    model = export.model
    api = model.interface
    sample = _sample(export, arrays)
    steps = int(sample["x"].shape[0])
    state_args = list(api["set_state_args"]) if model.takes_state else []
    lengths = model.output_lengths(steps)
    outputs = []
    for k, (spec, length) in enumerate(zip(api["outputs"], lengths)):
        shape = "x".join(str(d) for d in ((steps, spec["features"]) if spec["role"] == "sequence"
                                          else (length,)))
        outputs.append({"index": k, "role": spec["role"], "length": length, "shape": shape,
                        "features": spec.get("features", length)})
    layers = [t for t in map(_layer_text, export.manifest.get("layers", [])) if t]
    kinds = sorted({layer["kind"].split("_")[0] for layer in export.manifest.get("layers", [])
                    if isinstance(layer, dict) and layer.get("kind") in _RECURRENT})
    sizes = dict(export.manifest["sizes"])
    name = export.name
    summary = ", ".join(layers) or "recurrent network"
    fmt = export.manifest["format"]
    return {
        "form": form,
        "name": name,
        "P": name.upper(),
        "form_title": _TITLES[form],
        "format": fmt,
        "fixed": fmt != "float32",
        "needs_libm": fmt == "float32",  # expf, tanhf
        "summary": summary,
        "description": f"The recurrent network {name} ({summary}) in {fmt} C, exported from "
                       "PyTorch by tinyrnn",
        "kinds": kinds,
        "sizes": {k: sizes[k] for k in sorted(sizes)
                  if isinstance(k, str) and _WORD.fullmatch(k) and _count(sizes[k])},
        "state_total": sizes["state_bytes"] + sizes["scratch_bytes"],
        "tinyrnn_version": __version__,
        "torch_version": _text(export.manifest.get("torch_version"), _VERSION_TEXT, "unknown"),
        "version": options.version,
        "url": options.url,
        "sources": export.sources,
        "headers": export.headers,
        "has_asm": export.has_asm,
        "input_size": api["input_size"],
        "max_seq_len": api.get("max_seq_len") or 0,
        "has_step": bool(api.get("has_step")),
        "api_state_args": list(api["set_state_args"]),
        "steps": steps,
        "x_rows": [_literals(row) for row in sample["x"]],
        "state": [{"role": role, "size": sample[role].size,
                   "rows": [_literals(sample[role][k:k + 8])
                            for k in range(0, sample[role].size, 8)]}
                  for role in state_args],
        "outputs": outputs,
        "example_input": EXAMPLE_INPUT,
        "example_input_path": f"{_INPUT_DIRS[form].format(name=name)}/{EXAMPLE_INPUT}",
        "pack_vendor": PACK_VENDOR,
        "pack_class": PACK_CLASS,
        "pack_file": f"{PACK_VENDOR}.{name}.{options.version}.pack",
        "pdsc_file": f"{PACK_VENDOR}.{name}.pdsc",
        "author": AUTHOR,
        "arduino_architectures": ",".join(ARDUINO_ARCHITECTURES),
        "platformio_platforms": list(PLATFORMIO_PLATFORMS),
    }


def _literals(values: np.ndarray) -> str:
    """float32 values as exact C/C++ literals on one line."""
    return initializer(np.asarray(values, np.float32).reshape(-1), "float", indent=0, width=1 << 30)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates") / "package")),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
        lstrip_blocks=True, autoescape=False)
    env.filters["json"] = json.dumps  # JSON strings and lists, as library.json holds them
    return env


# ---------------------------------------------------------------------------------------------
# The forms: each lists the files of its library folder


@dataclass(frozen=True)
class _File:
    path: str   # relative to the package folder, with /
    data: bytes


class _Layout:
    """Collects one package's files."""

    def __init__(self, export: Export, context: dict[str, Any], npz: bytes):
        self.export = export
        self.context = context
        self.npz = npz
        self.env = _environment()
        self.files: list[_File] = []

    def render(self, path: str, template: str, **extra: Any) -> None:
        text = self.env.get_template(template).render(**self.context, **extra)
        self.files.append(_File(path, text.encode("utf-8")))

    def copy(self, folder: str, names: Sequence[str]) -> None:
        for name in names:
            self.files.append(_File(f"{folder}/{name}",
                                    (self.export.model.directory / name).read_bytes()))

    def example_input(self) -> None:
        self.files.append(_File(self.context["example_input_path"], self.npz))


def _cmake(layout: _Layout) -> None:
    layout.render("CMakeLists.txt", "cmake/CMakeLists.txt.j2")
    layout.copy("include", layout.export.headers)
    layout.copy("src", layout.export.sources)
    layout.render("example/main.c", "example_main.c.j2")
    layout.example_input()
    layout.render("README.md", "README.md.j2", example_dir="example")


def _zephyr(layout: _Layout) -> None:
    name = layout.export.name
    sample = f"samples/{name}"
    layout.render("zephyr/module.yml", "zephyr/module.yml.j2", sample_dir=sample)
    layout.render("zephyr/CMakeLists.txt", "zephyr/CMakeLists.txt.j2")
    layout.render("zephyr/Kconfig", "zephyr/Kconfig.j2")
    layout.copy("include", layout.export.headers)
    layout.copy("src", layout.export.sources)
    layout.render(f"{sample}/CMakeLists.txt", "zephyr/sample_CMakeLists.txt.j2")
    layout.render(f"{sample}/prj.conf", "zephyr/prj.conf.j2")
    layout.render(f"{sample}/sample.yaml", "zephyr/sample.yaml.j2")
    layout.render(f"{sample}/src/main.c", "example_main.c.j2")
    layout.example_input()
    layout.render("README.md", "README.md.j2", example_dir=sample)


def _arduino(layout: _Layout) -> None:
    name = layout.export.name
    layout.render("library.properties", "arduino/library.properties.j2")
    layout.copy("src", layout.export.headers + layout.export.sources)
    layout.render(f"examples/{name}/{name}.ino", "arduino/sketch.ino.j2")
    layout.example_input()
    layout.render("README.md", "README.md.j2", example_dir=f"examples/{name}")


def _platformio(layout: _Layout) -> None:
    example = f"examples/{layout.export.name}"
    layout.render("library.json", "platformio/library.json.j2", example_dir=example)
    layout.copy("include", layout.export.headers)
    layout.copy("src", layout.export.sources)
    layout.render(f"{example}/platformio.ini", "platformio/platformio.ini.j2")
    layout.render(f"{example}/src/main.c", "example_main.c.j2")
    layout.example_input()
    layout.render("README.md", "README.md.j2", example_dir=example)


def _cmsis_pack(layout: _Layout) -> None:
    context = layout.context
    layout.render(context["pdsc_file"], "cmsis-pack/package.pdsc.j2")
    layout.copy("Include", layout.export.headers)
    layout.copy("Source", layout.export.sources)
    layout.render(f"Templates/{layout.export.name}_example.c", "example_main.c.j2")
    layout.example_input()
    layout.render("README.md", "README.md.j2", example_dir="Templates")
    # the pack: a zip of everything above, the .pdsc at its root
    members = [(f.path, f.data) for f in sorted(layout.files, key=lambda f: f.path)]
    layout.files.append(_File(context["pack_file"], zip_bytes(members)))


_FORMS: dict[str, Callable[[_Layout], None]] = {
    "cmake": _cmake, "zephyr": _zephyr, "arduino": _arduino, "platformio": _platformio,
    "cmsis-pack": _cmsis_pack,
}


# ---------------------------------------------------------------------------------------------
# Writing the folder


@dataclass(frozen=True)
class PackageResult(JsonResult):
    """What :func:`package` wrote (``to_dict()``: its fields as JSON data)."""

    form: str
    title: str                  # e.g. "Arduino library"
    name: str
    version: str
    directory: Path
    files: tuple[str, ...]      # relative paths, sorted
    notes: tuple[str, ...]      # things the user should know (e.g. metadata left out)

    def format(self) -> str:
        """The folder and its files, for people."""
        lines = [f"wrote {self.directory}/ ({self.title} {self.name} {self.version}):"]
        lines += [f"  {path}" for path in self.files]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def text(self) -> str:
        """What ``tinyrnn package`` prints (:meth:`format`)."""
        return self.format()


def package(export_dir: str | Path, form: str, out: str | Path, *, force: bool = False,
            inputs: Sequence[np.ndarray] | None = None,
            options: PackageOptions | None = None) -> PackageResult:
    """Write the export in ``export_dir`` as a ``form`` library into the folder ``out``.

    ``form``: one of :data:`FORMS`. ``out`` must not exist or be empty, unless ``force``
    (then it is replaced). ``inputs``: the example's input, the forward's arguments in torch
    layout (first sequence used); default: a deterministic input. Raises TinyRNNError naming
    the rule for an unknown form, a model name the build system refuses, a folder that is not
    an export, or an ``out`` that is in the way.
    """
    check_form(form)
    options = options or PackageOptions()
    _check_options(options)
    export = read_export(export_dir)
    check_library_name(export.name, form)
    out = Path(out)
    _check_out(out, Path(export_dir), force)
    arrays = example_inputs(export, inputs)
    layout = _Layout(export, _context(export, arrays, options, form), _npz(arrays))
    _FORMS[form](layout)
    _publish(layout.files, out)
    notes = []
    if form == "arduino" and options.url is None:
        notes.append("library.properties has no url= line, which the Arduino Library Manager "
                     "requires; pass --url https://... (your project's page) to add it")
    return PackageResult(form=form, title=_TITLES[form], name=export.name,
                         version=options.version, directory=out,
                         files=tuple(sorted(f.path for f in layout.files)), notes=tuple(notes))


def default_package_dir(export_dir: str | Path, form: str) -> Path:
    """Where ``tinyrnn export --package FORM`` puts the package: beside the export folder."""
    export_dir = Path(export_dir).resolve()
    return export_dir.parent / f"{export_dir.name}-{form}"


def _check_out(out: Path, export_dir: Path, force: bool) -> None:
    target = out.resolve()
    source = export_dir.resolve()
    if target == source or target in source.parents:
        raise TinyRNNError(f"--out {out} holds the export folder {export_dir}, which writing the "
                           "package would replace; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise TinyRNNError(f"--out {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise TinyRNNError(f"--out {out} exists and is not empty; pass --force to replace it, "
                           "or choose another --out")


def _publish(files: Sequence[_File], out: Path) -> None:
    """Write ``files`` into a temporary folder beside ``out``, then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it private; the package is an ordinary folder
    old = None
    try:
        for item in files:
            path = work / item.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(item.data)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old)
        try:
            os.replace(work, out)
        except OSError:
            if old is not None:
                os.replace(old, out)
                old = None
            raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Command line


def register_cli(subparsers: Any) -> None:
    """Add ``package`` to the tinyrnn command line (its handler sets ``func``)."""
    parser = subparsers.add_parser(
        "package", help="wrap an export into a library for CMake, Zephyr, Arduino, PlatformIO "
        "or CMSIS-Pack, with an example application")
    parser.add_argument("dir", type=Path, help="folder written by `tinyrnn export`")
    parser.add_argument("--as", dest="form", required=True, metavar="FORM",
                        help=f"the kind of library: {', '.join(FORMS)}")
    parser.add_argument("--out", type=Path, required=True, help="the library folder to write")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_package_options(parser)
    parser.set_defaults(func=_cli_package)


def add_package_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options ``package`` shares with ``export --package``."""
    parser.add_argument("--force", action="store_true",
                        help="replace the library folder if it exists and is not empty")
    parser.add_argument("--input", type=Path, default=None,
                        help="the example's input: .npy or .npz as for run-host (first "
                        "sequence used); default: a deterministic input of the export's shape")
    parser.add_argument("--lib-version", default=DEFAULT_VERSION,
                        help=f"the library's version, MAJOR.MINOR.PATCH (default "
                        f"{DEFAULT_VERSION})")
    parser.add_argument("--url", default=None,
                        help="the project's web page, for the library metadata")


def package_options_given(args: argparse.Namespace) -> bool:
    """Whether any option of :func:`add_package_options` differs from its default."""
    return (args.force or args.input is not None or args.url is not None
            or args.lib_version != DEFAULT_VERSION)


def package_from_args(args: argparse.Namespace, export_dir: Path, form: str,
                      out: Path) -> PackageResult:
    """Run :func:`tinyrnn.package` with the options of :func:`add_package_options`."""
    from ..commands import package as package_command

    return package_command(export_dir, form=form, out=out, force=args.force,
                           inputs=args.input, lib_version=args.lib_version, url=args.url)


def _cli_package(args: argparse.Namespace) -> int:
    result = package_from_args(args, args.dir, args.form, args.out)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
    return 0
