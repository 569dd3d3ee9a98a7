"""Read a ``.pt2`` archive (written by ``torch.export.save``) without executing anything.

The archive is a zip (:mod:`tinyrnn.frontend.safezip`). tinyrnn reads only these entries below its
root folder, and refuses an archive holding anything else, naming the entry:

==========================================  ===================================================
``archive_format``, ``archive_version``,    small markers (``pt2``, a number, ``little``)
``byteorder``, ``.data/version``,
``.data/serialization_id``
``models/model.json``                       the program, parsed by :mod:`json` into the
                                            restricted graph of :mod:`tinyrnn.frontend.graph`
``data/weights/model_weights_config.json``  per parameter/buffer: the storage entry, dtype,
``data/constants/model_constants_config.    sizes, strides and offset; ``use_pickle`` entries,
json``                                      custom objects and opaque objects are refused
``data/weights/weight_N``,                  raw little-endian storage bytes, read with
``data/constants/tensor_N``                 :func:`tinyrnn.frontend.tensorfile.strided_array`
``data/sample_inputs/model.pt``             the example inputs, a ``torch.save`` file read by
                                            :func:`tinyrnn.frontend.tensorfile.read_tensor_file`
==========================================  ===================================================

Refused, among others: AOTInductor payloads (``data/aotinductor/``, ``.so``, ``.cpp``),
further programs under ``models/``, ``extra/`` files, pickled (legacy) weights and unknown
entries. ``json``, ``zipfile``, ``pickletools.genops`` and numpy are the only readers; nothing
from the file is unpickled, evaluated, sympified or loaded as a library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TinyRNNError
from .graph import Graph, GraphError, parse_program, tensor_meta
from .safezip import DEFAULT_LIMITS, SafeZip, ZipLimits, printable, quote
from .tensorfile import flatten_tensors, read_tensor_file, strided_array

MODEL = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_MARKERS = {  # small entries: name -> accepted content
    "archive_format": re.compile(rb"pt2"),
    "archive_version": re.compile(rb"[0-9]{1,4}\n?"),
    "byteorder": re.compile(rb"little"),
    ".data/version": re.compile(rb"[0-9]{1,4}\n?"),
    ".data/serialization_id": re.compile(rb"[0-9A-Za-z]{0,64}\n?"),
}
_STORAGE = {  # storage folder -> (config entry, accepted file name of a raw storage)
    "data/weights/": (WEIGHTS_CONFIG, re.compile(r"weight_[0-9]{1,6}")),
    "data/constants/": (CONSTANTS_CONFIG, re.compile(r"tensor_[0-9]{1,6}")),
}
_CODE_SUFFIXES = (".so", ".dll", ".dylib", ".cpp", ".cc", ".c", ".h", ".o", ".a", ".cubin",
                  ".ptx", ".py", ".pyc", ".json_wrapper", ".wrapper")
MAX_JSON_BYTES = 64 << 20


@dataclass(frozen=True, eq=False)
class Program:
    """What tinyrnn takes from an archive: the restricted graph, the constant tensors by their
    FQN (parameters, buffers, tensor constants) and the example inputs (flat, or None)."""

    graph: Graph
    weights: Mapping[str, np.ndarray]
    example_inputs: tuple[np.ndarray, ...] | None
    source: str


def load(path: str | Path, limits: ZipLimits = DEFAULT_LIMITS) -> Program:
    """Read the archive at ``path``; raises :class:`TinyRNNError` with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise TinyRNNError(f"model file {path} does not exist")
    if not path.is_file():
        raise TinyRNNError(f"model path {path} is not a file")
    size = path.stat().st_size
    if size > limits.max_total_bytes + (1 << 20):
        raise TinyRNNError(f"{path} has {size} bytes; tinyrnn reads archives of at most "
                           f"{limits.max_total_bytes >> 20} MiB")
    if size == 0:
        raise TinyRNNError(f"{path} is empty; {_SAVE_HINT}")
    with open(path, "rb") as handle:
        data = handle.read(size + 1)
    return read_archive(data, path.name, limits)


_SAVE_HINT = ("create an archive with: torch.export.save(torch.export.export(model.eval(), "
              "example_inputs), 'model.pt2')")


def read_archive(data: bytes, what: str = "the archive",
                 limits: ZipLimits = DEFAULT_LIMITS) -> Program:
    """Read an archive held in memory (see the module's docstring for what is accepted)."""
    try:
        archive = SafeZip(data, what, limits)
    except TinyRNNError as exc:
        if "is not a zip archive" in str(exc):
            raise TinyRNNError(f"{what} is not a torch.export archive (not a zip file); "
                               f"{_SAVE_HINT}") from None
        raise
    _check_entries(archive)
    doc = _json(archive, MODEL, MAX_JSON_BYTES)
    try:
        graph = parse_program(doc)
    except GraphError as exc:
        raise TinyRNNError(f"{what}: {exc}") from None
    weights = _storages(archive, WEIGHTS_CONFIG)
    constants = _storages(archive, CONSTANTS_CONFIG)
    for fqn in weights.keys() & constants.keys():
        raise TinyRNNError(f"{what}: {quote(fqn)} is both a weight and a constant")
    tensors = {**weights, **constants}
    _check_weights(graph, tensors, what)
    example = _example_inputs(archive, graph)
    return Program(graph, tensors, example, what)


def _check_entries(archive: SafeZip) -> None:
    what = archive.what
    if "archive_format" not in archive.entries:
        raise TinyRNNError(f"{what} is not a torch.export archive (a zip file without an "
                           f"archive_format entry: a torch.save checkpoint?); {_SAVE_HINT}")
    for rest in archive.names():
        refusal = _refusal(rest)
        if refusal:
            raise TinyRNNError(f"{what}: entry {quote(archive.root + '/' + rest)} {refusal}")
        if rest in _MARKERS:
            content = archive.read(rest, 80)
            if not _MARKERS[rest].fullmatch(content):
                raise TinyRNNError(f"{what}: entry {quote(rest)} holds "
                                   f"{printable(repr(content), 40)}, not what torch writes "
                                   "there" + (" (a big-endian archive?)" if rest == "byteorder"
                                              else ""))
    for rest in (MODEL, WEIGHTS_CONFIG, CONSTANTS_CONFIG):
        if rest not in archive.entries:
            raise TinyRNNError(f"{what} has no {rest} entry; {_SAVE_HINT}")


def _refusal(rest: str) -> str:
    """Why an entry below the root is refused, or "" when tinyrnn may read it."""
    lower = rest.lower()
    if "aotinductor" in lower or lower.endswith(_CODE_SUFFIXES):
        return ("is compiled code or an AOTInductor payload; tinyrnn reads only the exported "
                "program (save it with torch.export.save, without AOTInductor packaging)")
    if rest in _MARKERS or rest in (MODEL, SAMPLE_INPUTS):
        return ""
    if rest.startswith("models/"):
        return "is a further program; tinyrnn reads archives holding one program, 'model'"
    if rest.startswith("extra/"):
        return "is an extra file; tinyrnn reads archives without extra_files"
    for folder, (config, pattern) in _STORAGE.items():
        if rest.startswith(folder):
            name = rest[len(folder):]
            if rest == config or pattern.fullmatch(name):
                return ""
            if name.endswith(".pt") or name.startswith(("custom_obj_", "opaque_obj_")):
                return ("is a pickled object (legacy weights, a custom or opaque object); "
                        "tinyrnn never unpickles model files")
            return "is not a storage entry tinyrnn reads"
    return "is not an entry tinyrnn reads (unknown entry)"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {quote(key, 40)} appears twice in one object")
        out[key] = value
    return out


def _json(archive: SafeZip, rest: str, limit: int) -> Any:
    raw = archive.read(rest, limit)
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except RecursionError:
        raise TinyRNNError(f"{archive.what}: {rest} nests too deeply; refused") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TinyRNNError(f"{archive.what}: {rest} is not valid JSON "
                           f"({printable(str(exc), 100)})") from None


def _storages(archive: SafeZip, config_entry: str) -> dict[str, np.ndarray]:
    """The tensors a payload config describes, from their raw storage entries."""
    what = f"{archive.what}: {config_entry}"
    folder = config_entry.rsplit("/", 1)[0] + "/"
    pattern = _STORAGE[folder][1]
    doc = _json(archive, config_entry, MAX_JSON_BYTES)
    if not isinstance(doc, dict) or set(doc) != {"config"} or not isinstance(doc["config"],
                                                                             dict):
        raise TinyRNNError(f"{what} is not a payload config ({{'config': {{...}}}})")
    used: set[str] = set()
    storages: dict[str, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for fqn, entry in doc["config"].items():
        if not isinstance(fqn, str) or not re.fullmatch(
                r"[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100}){0,31}", fqn):
            raise TinyRNNError(f"{what}: {printable(repr(fqn), 60)} is not a dotted name of "
                               "letters, digits and underscores")
        if not isinstance(entry, dict):
            raise TinyRNNError(f"{what}: {fqn} is not an object")
        if entry.get("use_pickle") is not False:
            raise TinyRNNError(f"{what}: {fqn} is stored as a pickle (use_pickle); tinyrnn "
                               "never unpickles model files. Save plain tensors (no tensor "
                               "subclasses) with torch.export.save")
        path_name = entry.get("path_name")
        if not isinstance(path_name, str) or not pattern.fullmatch(path_name):
            raise TinyRNNError(f"{what}: {fqn} is stored in "
                               f"{printable(repr(path_name), 60)}, not a raw storage entry "
                               "(custom and opaque objects are pickles; refused)")
        rest = folder + path_name
        if rest not in archive.entries:
            raise TinyRNNError(f"{what}: {fqn} is stored in {rest}, which the archive lacks")
        if rest not in storages:
            storages[rest] = archive.read(rest)
        dtype, sizes, strides, offset = tensor_meta(entry.get("tensor_meta"), f"{what}: {fqn}")
        out[fqn] = strided_array(storages[rest], dtype, sizes, strides, offset,
                                 f"{what}: {fqn}")
        used.add(rest)
    for rest in archive.names():
        if rest.startswith(folder) and rest != config_entry and rest not in used:
            raise TinyRNNError(f"{archive.what}: entry {quote(rest)} is not referenced by "
                               f"{config_entry}; refused as an unknown entry")
    return out


def _check_weights(graph: Graph, tensors: Mapping[str, np.ndarray], what: str) -> None:
    for spec in graph.inputs:
        if spec.kind == "user":
            continue
        if spec.target not in tensors:
            raise TinyRNNError(f"{what}: the program uses {spec.kind} {spec.target}, which the "
                               "archive does not store")
        want = graph.tensors[spec.name].shape
        got = tuple(tensors[spec.target].shape)
        if got != want:
            raise TinyRNNError(f"{what}: {spec.target} is stored with shape {list(got)} but "
                               f"the program uses it as {list(want)}")


def _example_inputs(archive: SafeZip, graph: Graph) -> tuple[np.ndarray, ...] | None:
    what = f"{archive.what}: the example inputs ({SAMPLE_INPUTS})"
    if SAMPLE_INPUTS not in archive.entries or archive.entries[SAMPLE_INPUTS].file_size == 0:
        return None
    value = read_tensor_file(archive.read(SAMPLE_INPUTS), what, archive.limits)
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple)
            and isinstance(value[1], dict)):
        raise TinyRNNError(f"{what} are not (args, kwargs)")
    arrays = flatten_tensors(value, what)
    users = graph.user_inputs
    shapes = [graph.tensors[name].shape for name in users]
    if [tuple(a.shape) for a in arrays] != shapes:
        raise TinyRNNError(f"{what} have shapes {[list(a.shape) for a in arrays]}, but the "
                           f"program's inputs have {[list(s) for s in shapes]}")
    return tuple(arrays)
