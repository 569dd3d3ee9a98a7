"""Crafted .pt2 archives: tinyrnn reads model files without executing anything from them.

Every archive here is made by the test from one real archive (a small LSTM saved with
torch.export.save): pickle payloads in every entry, expression strings where torch would call
sympy, guard code, AOTInductor payloads, custom and higher-order operators, bad shapes and
strides, zip bombs, path traversal, broken JSON. Each case asserts
- no execution: the payload's sentinel file never appears, and tripwires on torch.export.load,
  torch.load, pickle, sympy.sympify / parse_expr, eval/exec of source text and ctypes.CDLL
  fail the test if the untrusted path calls them;
- nothing written outside --out (and, on an error, no --out at all);
- the outcome: exit code 2 with a one-line message naming the problem, or a correct export;
- no traceback on stderr.
Most cases run in-process through tinyrnn.cli.main; a handful run as real processes to show
that stderr holds our one line and nothing from torch's logger.
"""

from __future__ import annotations

import builtins
import ctypes
import importlib
import io
import json
import os
import pickle
import pkgutil
import re
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sympy
import sympy.parsing.sympy_parser
import torch
import torch._export.serde.serialize
from torch import nn

import tinyrnn
from tinyrnn.cli import main
from tinyrnn.frontend.reader import archive_bytes, trace

# tinyrnn's own modules are imported now, not lazily under the tripwires (defining a dataclass
# runs exec on generated source, which the exec tripwire would rightly flag)
for _module in pkgutil.iter_modules(tinyrnn.__path__):
    if _module.name != "__main__":
        importlib.import_module(f"tinyrnn.{_module.name}")

ROOT = "archive"
MODEL = "models/model.json"
WEIGHTS = "data/weights/model_weights_config.json"
CONSTANTS = "data/constants/model_constants_config.json"
SAMPLES = "data/sample_inputs/model.pt"


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, bytes]:
    """The entries (below the root folder) of one real archive, and a verified export of it."""
    torch.manual_seed(0)
    data = archive_bytes(trace(Small(), (torch.randn(2, 5, 3),)))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        entries = {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}
    root = tmp_path_factory.mktemp("crafted_base")
    (root / "good.pt2").write_bytes(data)
    assert main(["export", str(root / "good.pt2"), "--out", str(root / "c"), "--format",
                 "float32", "--name", "small"]) == 0
    np.save(root / "x.npy", np.random.default_rng(0).normal(size=(3, 7, 3)).astype(np.float32))
    # built now, before the tripwires: cffi parses the C declarations with pycparser, which
    # runs exec on its own generated parser tables
    tinyrnn.targets.host.load(root / "c")
    entries["__root__"] = str(root).encode()
    return entries


# ---------------------------------------------------------------------------------------------
# Building archives


def zip_of(entries: dict[str, bytes], root: str | None = ROOT,
           method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(buf, "w", method) as z:
            for name, data in entries.items():
                name = name.split("#", 1)[0]  # "name#2": a second entry of the same name
                z.writestr(f"{root}/{name}" if root else name, data)
    return buf.getvalue()


def central_directory(data: bytes) -> int:
    """Where the outer archive's central directory starts (the stored sample-inputs zip
    inside it has signatures of its own)."""
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        return z.start_dir


def entries_of(base: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in base.items() if k != "__root__"}


def with_json(base, entry: str, change: Callable[[dict], None]) -> bytes:
    entries = entries_of(base)
    doc = json.loads(entries[entry])
    change(doc)
    entries[entry] = json.dumps(doc).encode()
    return zip_of(entries)


def with_entries(base, changes: dict[str, bytes]) -> bytes:
    return zip_of({**entries_of(base), **changes})


def graph(doc: dict) -> dict:
    return doc["graph_module"]["graph"]


def node(doc: dict, target_part: str) -> dict:
    return next(n for n in graph(doc)["nodes"] if target_part in n["target"])


def torch_save_zip(pickle_bytes: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    """A torch.save-style zip around a data.pkl record."""
    entries = {"data.pkl": pickle_bytes, "byteorder": b"little", "version": b"3\n"}
    entries.update({f"data/{k}": v for k, v in (storages or {}).items()})
    return zip_of(entries, root="archive")


def sample_pickle(base) -> tuple[bytes, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(base[SAMPLES])) as z:
        names = z.namelist()
        pkl = z.read(next(n for n in names if n.endswith("data.pkl")))
        storages = {n.rsplit("/", 1)[1]: z.read(n) for n in names if "/data/" in n}
    return pkl, storages


class _Reduce:
    """Pickles as ``func(*args)``: the classic code-execution payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def touch(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').write('pwned')"


def os_system(sentinel: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(_Reduce(os.system, f"touch {sentinel}"), protocol=protocol)


def builtins_eval(sentinel: Path) -> bytes:
    """eval(source) as pickle.dumps writes it (by hand: builtins.eval is wired in the tests)."""
    code = touch(sentinel).encode()
    return b"\x80\x02cbuiltins\neval\nX" + struct.pack("<I", len(code)) + code + b"\x85R."


def reduce_chain(sentinel: Path) -> bytes:
    """getattr(__import__('os'), 'system')('touch SENTINEL'), written opcode by opcode."""
    return (b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\n__import__\n(X\x02\x00\x00\x00ostR"
            b"X\x06\x00\x00\x00systemtR(X" + struct.pack("<I", len(f"touch {sentinel}"))
            + f"touch {sentinel}".encode() + b"tR.")


# expression strings that sympy's parser would evaluate
EXPRESSIONS = {
    "import": "__import__('os').system('touch {s}')",
    "attribute_chain": "().__class__.__base__.__subclasses__()[0].__init__.__globals__"
                       "['__builtins__']['__import__']('os').system('touch {s}')",
    "lambda": "(lambda: __import__('os').system('touch {s}'))()",
    "dunder": "Symbol.__init__.__globals__['__builtins__']['exec'](\"open('{s}','w')\")",
}


def _sym(expr: str) -> dict:
    return {"as_expr": {"expr_str": expr, "hint": {"as_int": 2}}}


def _place_x_size(doc, expr):
    graph(doc)["tensor_values"]["x"]["sizes"][0] = _sym(expr)


def _place_x_stride(doc, expr):
    graph(doc)["tensor_values"]["x"]["strides"][0] = _sym(expr)


def _place_x_offset(doc, expr):
    graph(doc)["tensor_values"]["x"]["storage_offset"] = _sym(expr)


def _place_range(doc, expr):
    doc["range_constraints"] = {expr: {"min_val": 1, "max_val": 8}}


def _place_sym_int(doc, expr):
    graph(doc)["sym_int_values"] = {"s0": _sym(expr)}


def _place_sym_bool(doc, expr):
    graph(doc)["sym_bool_values"] = {"b0": {"as_expr": {"expr_str": expr}}}


def _place_sym_float(doc, expr):
    graph(doc)["sym_float_values"] = {"f0": {"as_expr": {"expr_str": expr}}}


def _place_argument(doc, expr):
    node(doc, "zeros")["inputs"][0]["arg"] = {"as_sym_ints": [{"as_int": 1},
                                                             {"as_name": "s0"},
                                                             {"as_int": 4}]}
    graph(doc)["sym_int_values"] = {}
    del expr  # the symbol's expression would sit in sym_int_values (tested above)


def _place_guards(doc, expr):
    doc["guards_code"] = [f"import os\nos.system('true')\n{expr}"]


PLACES = {
    "tensor_size": (_place_x_size, "symbolic (dynamic) size"),
    "tensor_stride": (_place_x_stride, "symbolic (dynamic) size"),
    "storage_offset": (_place_x_offset, "symbolic (dynamic) size"),
    "range_constraints": (_place_range, "symbolic (dynamic) dimensions"),
    "sym_int_values": (_place_sym_int, "symbolic values"),
    "sym_bool_values": (_place_sym_bool, "symbolic values"),
    "sym_float_values": (_place_sym_float, "symbolic values"),
    "node_argument": (_place_argument, "symbolic (dynamic)"),
    "guards_code": (_place_guards, "guard code"),
}


def _weight_meta(doc, change):
    change(doc["config"]["lstm.weight_ih_l0"]["tensor_meta"])


def _set(path: list, value):
    def change(meta):
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


# ---------------------------------------------------------------------------------------------
# The cases: (id, builder(base, sentinel) -> archive bytes, expected message or None = exports)


@dataclass(frozen=True)
class Crafted:
    id: str
    make: Callable[[dict, Path], bytes]
    expect: str | None  # a substring of the error; None: the export must succeed


def _cases() -> list[Crafted]:
    cases: list[Crafted] = []

    def add(id_: str, expect: str | None):
        def register(make):
            cases.append(Crafted(id_, make, expect))
            return make
        return register

    # -- expression strings wherever torch would call sympy, and guard code ----------------
    for place, (put, message) in PLACES.items():
        for kind, template in EXPRESSIONS.items():
            def make(base, s, put=put, template=template):
                return with_json(base, MODEL, lambda doc: put(doc, template.format(s=s)))
            cases.append(Crafted(f"sympify-{place}-{kind}", make, message))

    def weight_expr(base, s):
        return with_json(base, WEIGHTS, lambda d: _weight_meta(
            d, _set(["sizes", 0], _sym(EXPRESSIONS["import"].format(s=s)))))
    cases.append(Crafted("sympify-weight_meta", weight_expr, "symbolic (dynamic) size"))

    # -- pickles in every entry ----------------------------------------------------------
    @add("pickle-weights-use_pickle", "stored as a pickle (use_pickle)")
    def _(base, s):
        entries = entries_of(base)
        doc = json.loads(entries[WEIGHTS])
        doc["config"]["lstm.weight_ih_l0"]["use_pickle"] = True
        entries[WEIGHTS] = json.dumps(doc).encode()
        path = doc["config"]["lstm.weight_ih_l0"]["path_name"]
        entries[f"data/weights/{path}"] = os_system(s)
        return zip_of(entries)

    @add("pickle-weights-legacy_model_pt", "is a pickled object")
    def _(base, s):
        return with_entries(base, {"data/weights/model.pt": os_system(s)})

    def constant(id_: str, path_name: str, use_pickle: bool, payload, message: str):
        """A constants config naming one entry, and that entry holding ``payload``."""
        def make(base, s):
            config = {"c": {"path_name": path_name, "is_param": False,
                            "use_pickle": use_pickle, "tensor_meta": None}}
            entries = {**entries_of(base), CONSTANTS: json.dumps({"config": config}).encode()}
            if payload is not None:
                entries[f"data/constants/{path_name}"] = payload(s)
            return zip_of(entries)
        cases.append(Crafted(id_, make, message))

    constant("pickle-constants-use_pickle", "tensor_0", True, builtins_eval,
             "stored as a pickle (use_pickle)")
    constant("pickle-constants-custom_obj", "custom_obj_0", True, os_system,
             "is a pickled object")
    constant("pickle-constants-opaque_obj", "opaque_obj_0", True, os_system,
             "is a pickled object")
    constant("pickle-constants-path_name", "../../weights/weight_0", False, None,
             "not a raw storage entry")

    for name, payload, message in (
        ("os_system", os_system, "Python object 'posix.system'"),
        ("builtins_eval", builtins_eval, "Python object 'builtins.eval'"),
        ("reduce_chain", reduce_chain, "Python object 'builtins.getattr'"),
        ("stack_global", lambda s: os_system(s, protocol=4), "Python object 'posix.system'"),
    ):
        def make(base, s, payload=payload):
            return with_entries(base, {SAMPLES: torch_save_zip(payload(s))})
        cases.append(Crafted(f"pickle-sample_inputs-{name}", make, message))

    def opcode_case(id_: str, data: Callable[[Path], bytes], message: str):
        def make(base, s):
            return with_entries(base, {SAMPLES: torch_save_zip(data(s))})
        cases.append(Crafted(f"pickle-sample_inputs-{id_}", make, message))

    opcode_case("build", lambda s: b"\x80\x02]q\x00}q\x01b.", "opcode BUILD")
    opcode_case("newobj", lambda s: b"\x80\x02ccollections\nOrderedDict\n)\x81.",
                "opcode NEWOBJ")
    opcode_case("inst", lambda s: b"(ios\nsystem\nVtouch " + str(s).encode() + b"\ni.",
                "opcode INST")
    opcode_case("obj", lambda s: b"(ccollections\nOrderedDict\no.", "opcode OBJ")
    opcode_case("ext1", lambda s: b"\x80\x02\x82\x01.", "opcode EXT1")
    opcode_case("persid_text", lambda s: b"P0\n.", "opcode PERSID")
    opcode_case("rebuild_parameter",
                lambda s: b"\x80\x02ctorch._utils\n_rebuild_parameter\n)R.",
                "torch._utils._rebuild_parameter")
    # a list that holds itself, and 2**20 references to one value (memo reuse)
    opcode_case("memo_cycle", lambda s: b"\x80\x02]q\x00h\x00a\x85}\x86.", "nest deeper")
    opcode_case("billion_laughs",
                lambda s: b"\x80\x02Nq\x00" + b"h\x00\x86q\x00" * 20 + b"}\x86.",
                "hold more than")

    def edited_sample(id_: str, old: bytes, new: bytes, message: str):
        """The real example-inputs pickle with the first ``old`` bytes replaced by ``new``."""
        def make(base, s):
            pkl, storages = sample_pickle(base)
            assert old in pkl, f"{id_}: the real pickle no longer holds {old!r}"
            edited = pkl.replace(old, new, 1)
            return with_entries(base, {SAMPLES: torch_save_zip(edited, storages)})
        cases.append(Crafted(id_, make, message))

    edited_sample("pickle-sample_inputs-storage_global", b"ctorch\nFloatStorage\n",
                  b"cposix\nsystem\n", "Python object 'posix.system'")
    # the empty OrderedDict() of the first tensor's backward hooks gets an item
    edited_sample("pickle-sample_inputs-backward_hooks", b")R",
                  b")RX\x01\x00\x00\x00aK\x01s", "backward hooks")
    # the storage's element count 30 -> 31; the storage offset 0 -> 65536; the size (2, 5, 3)
    # -> (1, 5, 3)
    edited_sample("sample_inputs-numel_mismatch", b"K\x1et", b"K\x1ft",
                  "holds 120 bytes, not 31")
    edited_sample("sample_inputs-offset_past_end", b"QK\x00", b"QJ\x00\x00\x01\x00",
                  "reaches element")
    edited_sample("sample_inputs-wrong_shape", b"K\x02K\x05K\x03\x87",
                  b"K\x01K\x05K\x03\x87", "but the program's inputs have")

    @add("pickle-sample_inputs-not_a_zip", "not a zip archive")
    def _(base, s):
        return with_entries(base, {SAMPLES: os_system(s)})

    @add("pickle-model_json", "is not valid JSON")
    def _(base, s):
        return with_entries(base, {MODEL: os_system(s)})

    @add("pickle-weights_config", "is not valid JSON")
    def _(base, s):
        return with_entries(base, {WEIGHTS: os_system(s)})

    # -- AOTInductor payloads and other entries ----------------------------------------------
    for id_, entry in (
        ("aoti-so", "data/aotinductor/model/model.so"),
        ("aoti-cpp", "data/aotinductor/model/model.cpp"),
        ("aoti-wrapper", "data/aotinductor/model/model_wrapper.json"),
        ("aoti-so_in_weights", "data/weights/weight_9.so"),
        ("aoti-so_at_root", "libevil.so"),
    ):
        def make(base, s, entry=entry):
            entries = entries_of(base)
            entries[entry] = b"\x7fELF" + os_system(s)
            return zip_of(entries)
        cases.append(Crafted(id_, make, "compiled code or an AOTInductor payload"))

    for id_, entry, message in (
        ("entry-extra_file", "extra/module_info.json", "is an extra file"),
        ("entry-second_model", "models/evil.json", "is a further program"),
        ("entry-executorch", "data/executorch/model.pte", "unknown entry"),
        ("entry-xl_weights", "xl_model_weights/model_param_config", "unknown entry"),
        ("entry-unreferenced_weight", "data/weights/weight_99", "not referenced"),
    ):
        def make(base, s, entry=entry):
            entries = entries_of(base)
            entries[entry] = os_system(s)
            return zip_of(entries)
        cases.append(Crafted(id_, make, message))

    # -- operators -------------------------------------------------------------------------
    def target_case(id_: str, target: str, message: str):
        def make(base, s):
            return with_json(base, MODEL, lambda d: node(d, "linear").__setitem__(
                "target", target))
        cases.append(Crafted(id_, make, message))

    target_case("op-custom", "torch.ops.evil.system.default", "custom operator")
    target_case("op-higher_order", "torch.ops.higher_order.cond", "higher-order operator")
    target_case("op-builtins_eval", "builtins.eval", "not a plain ATen operator name")
    target_case("op-dunder", "torch.ops.aten.__import__.default",
                "not a plain ATen operator name")
    target_case("op-attribute_chain", "torch.ops.aten.linear.default.__class__",
                "not a plain ATen operator name")
    target_case("op-unknown_aten", "torch.ops.aten.frobnicate.default",
                "aten.frobnicate.default (unsupported operation) at fc (Linear)")

    def argument_case(id_: str, arg: dict, message: str):
        def make(base, s):
            return with_json(base, MODEL, lambda d: node(d, "linear")["inputs"].append(
                {"name": "extra", "arg": arg, "kind": 1}))
        cases.append(Crafted(id_, make, message))

    argument_case("arg-subgraph", {"as_graph": {"name": "g", "graph": {}}}, "subgraph")
    argument_case("arg-custom_obj", {"as_custom_obj": {"name": "o", "class_fqn": "os.system"}},
                  "custom (TorchScript/opaque) object")
    argument_case("arg-operator", {"as_operator": "builtins.exec"}, "operator-valued")
    argument_case("arg-code_string", {"as_string": "__import__('os').system('x')"},
                  "is not a short word")
    argument_case("arg-string_to_argument", {"as_string_to_argument": {"a": {"as_int": 1}}},
                  "does not read")

    @add("spec-custom_obj_input", "custom objects")
    def _(base, s):
        return with_json(base, MODEL, lambda d: d["graph_module"]["signature"][
            "input_specs"].append({"custom_obj": {"arg": {"name": "o", "class_fqn": "x"},
                                                  "custom_obj_name": "o"}}))

    @add("spec-buffer_mutation", "mutates a buffer")
    def _(base, s):
        return with_json(base, MODEL, lambda d: d["graph_module"]["signature"][
            "output_specs"].append({"buffer_mutation": {"arg": {"name": "linear"},
                                                        "buffer_name": "b"}}))

    @add("op-device_cuda", "device 'cuda'")
    def _(base, s):
        def change(d):
            zeros = node(d, "zeros")
            for arg in zeros["inputs"]:
                if arg["name"] == "device":
                    arg["arg"]["as_device"]["type"] = "cuda"
        return with_json(base, MODEL, change)

    @add("op-num_layers_huge", "arguments of an unexpected form")
    def _(base, s):
        def change(d):
            for arg in node(d, "lstm")["inputs"]:
                if arg["name"] == "num_layers":
                    arg["arg"]["as_int"] = 10**9
        return with_json(base, MODEL, change)

    @add("op-params_missing", "weight tensors for 1 layer(s)")
    def _(base, s):
        def change(d):
            for arg in node(d, "lstm")["inputs"]:
                if arg["name"] == "params":
                    arg["arg"]["as_tensors"].pop()
        return with_json(base, MODEL, change)

    # -- metadata is text: payloads there change nothing, the export succeeds --------------
    @add("metadata-payloads_ignored", None)
    def _(base, s):
        def change(d):
            code = touch(s)
            for n in graph(d)["nodes"]:
                n["metadata"]["custom"] = json.dumps({"eval": code})
                n["metadata"]["source_fn_stack"] = f"x,{code}"
                n["metadata"]["from_node"] = json.dumps([{"name": code}])
                n["metadata"]["stack_trace"] += f"\n\x1b[2J{code}"
            d["graph_module"]["metadata"] = {"x": code}
            d["graph_module"]["treespec_namedtuple_fields"] = {
                "os.system": {"field_names": [code]}}
            for entry in d["graph_module"]["module_call_graph"]:
                if entry["signature"]:
                    entry["signature"]["in_spec"] = json.dumps({"type": "os.system",
                                                                "context": code})
            d["torch_version"] = code
        return with_json(base, MODEL, change)

    @add("metadata-module_stack_code", None)
    def _(base, s):
        def change(d):
            for n in graph(d)["nodes"]:
                n["metadata"]["nn_module_stack"] = f"k,__import__('os').system('x'),{'M'}"
        return with_json(base, MODEL, change)

    @add("zip-deflated_is_fine", None)
    def _(base, s):
        return zip_of(entries_of(base), method=zipfile.ZIP_DEFLATED)

    # -- shapes, strides, offsets, dtypes --------------------------------------------------
    for id_, change, message in (
        ("tensor-negative_size", _set(["sizes", 0], {"as_int": -16}), "out of range"),
        ("tensor-huge_size", _set(["sizes", 0], {"as_int": 1 << 40}), "out of range"),
        ("tensor-overflow", _set(["sizes"], [{"as_int": (1 << 31) - 1}] * 2), "elements"),
        ("tensor-offset_past_end", _set(["storage_offset"], {"as_int": 10**6}),
         "reaches element"),
        ("tensor-stride_past_end", _set(["strides", 0], {"as_int": 10**6}), "reaches element"),
        ("tensor-negative_stride", _set(["strides", 0], {"as_int": -3}),
         "expected an integer in [0"),
        ("tensor-dtype_unknown", _set(["dtype"], 99), "dtype code 99"),
        ("tensor-dtype_complex", _set(["dtype"], 10), "dtype code 10"),
        ("tensor-layout_sparse", _set(["layout"], 1), "layout other than strided"),
        ("tensor-bool_size", _set(["sizes", 0], {"as_int": True}), "expected an integer"),
        ("tensor-shape_mismatch", _set(["sizes"], [{"as_int": 8}, {"as_int": 6}]),
         "stored with shape [8, 6]"),
    ):
        def make(base, s, change=change):
            return with_json(base, WEIGHTS, lambda d: _weight_meta(d, change))
        cases.append(Crafted(id_, make, message))

    @add("tensor-truncated_storage", "reaches element")
    def _(base, s):
        doc = json.loads(base[WEIGHTS])
        path = doc["config"]["lstm.weight_ih_l0"]["path_name"]
        return with_entries(base, {f"data/weights/{path}": base[f"data/weights/{path}"][:20]})

    @add("tensor-graph_huge_dim", "out of range")
    def _(base, s):
        return with_json(base, MODEL, lambda d: graph(d)["tensor_values"]["x"]["sizes"]
                         .__setitem__(1, {"as_int": 1 << 40}))

    # -- zip structure ---------------------------------------------------------------------
    @add("zip-ratio_bomb", "possible zip bomb")
    def _(base, s):
        entries = entries_of(base)
        entries["data/weights/weight_9"] = bytes(8 << 20)
        return zip_of(entries, method=zipfile.ZIP_DEFLATED)

    def declared(size: int):
        def make(base, s):
            data = bytearray(zip_of(entries_of(base)))
            pos = data.find(b"PK\x01\x02", central_directory(data))
            while pos >= 0:  # every uncompressed size in the central directory
                data[pos + 24:pos + 28] = struct.pack("<I", size)
                pos = data.find(b"PK\x01\x02", pos + 4)
            return bytes(data)
        return make

    cases.append(Crafted("zip-declared_2GiB", declared(0x7FFFFFFF),
                         "tinyrnn reads entries of at most 256 MiB"))
    cases.append(Crafted("zip-declared_100MiB", declared(100 << 20), "possible zip bomb"))

    @add("zip-nested_bomb", "possible zip bomb")
    def _(base, s):
        inner = io.BytesIO()
        with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("archive/data.pkl", b"\x80\x02N.")
            z.writestr("archive/data/0", bytes(8 << 20))
        return with_entries(base, {SAMPLES: inner.getvalue()})

    for id_, name in (("zip-traversal", f"{ROOT}/../../evil.json"),
                      ("zip-absolute", "/etc/evil.json"),
                      ("zip-backslash", f"{ROOT}\\..\\evil.json"),
                      ("zip-drive", "C:/evil.json")):
        def make(base, s, name=name):
            entries = {f"{ROOT}/{k}": v for k, v in entries_of(base).items()}
            entries[name] = os_system(s)
            return zip_of(entries, root=None)
        cases.append(Crafted(id_, make, "not a plain relative path"))

    @add("zip-duplicate", "appears twice")
    def _(base, s):
        entries = entries_of(base)
        entries[MODEL + "#2"] = b'{"evil": true}'
        return zip_of(entries)

    @add("zip-two_roots", "outside the root folder")
    def _(base, s):
        entries = {f"{ROOT}/{k}": v for k, v in entries_of(base).items()}
        entries["other/models/model.json"] = entries[f"{ROOT}/{MODEL}"]
        return zip_of(entries, root=None)

    @add("zip-too_many_entries", "entries; tinyrnn reads at most")
    def _(base, s):
        entries = entries_of(base)
        entries.update({f"data/weights/weight_{1000 + k}": b"" for k in range(4200)})
        return zip_of(entries)

    @add("zip-encrypted", "is encrypted")
    def _(base, s):
        data = bytearray(zip_of(entries_of(base)))
        pos = data.find(b"PK\x01\x02", central_directory(data))
        data[pos + 8] |= 1  # the general purpose flag of the first entry: encrypted
        return bytes(data)

    @add("zip-bzip2", "compression method 12")
    def _(base, s):
        return zip_of(entries_of(base), method=zipfile.ZIP_BZIP2)

    @add("zip-control_characters", "characters tinyrnn does not accept")
    def _(base, s):
        entries = entries_of(base)
        entries["models/\x1b[2Jmodel.json"] = b"{}"
        return zip_of(entries)

    @add("zip-header_mismatch", "cannot be read")
    def _(base, s):
        data = bytearray(zip_of(entries_of(base)))
        pos = data.find(b"PK\x03\x04")  # rename the first local header's entry: a confusion
        name_len = struct.unpack("<H", data[pos + 26:pos + 28])[0]
        data[pos + 30 + name_len - 1] ^= 0x01
        return bytes(data)

    @add("zip-empty_file", "is empty")
    def _(base, s):
        return b""

    @add("zip-text_file", "is not a torch.export archive")
    def _(base, s):
        return b"import os\nos.system('touch x')\n"

    @add("zip-truncated", "is not a torch.export archive")
    def _(base, s):
        data = zip_of(entries_of(base))
        return data[: len(data) // 2]

    @add("zip-torch_save_checkpoint", "is not a torch.export archive")
    def _(base, s):
        buf = io.BytesIO()
        torch.save({"w": torch.zeros(2)}, buf)
        return buf.getvalue()

    @add("marker-archive_format", "not what torch writes there")
    def _(base, s):
        return with_entries(base, {"archive_format": b"pt3"})

    @add("marker-big_endian", "big-endian")
    def _(base, s):
        return with_entries(base, {"byteorder": b"big"})

    # -- JSON ------------------------------------------------------------------------------
    @add("json-truncated", "is not valid JSON")
    def _(base, s):
        return with_entries(base, {MODEL: base[MODEL][:100]})

    @add("json-duplicate_keys", "appears twice in one object")
    def _(base, s):
        text = base[MODEL].decode()
        return with_entries(base, {MODEL: (
            '{"guards_code": ["evil"], ' + text[1:]).encode()})

    @add("json-deep_nesting", "nests too deeply")
    def _(base, s):
        return with_entries(base, {MODEL: b"[" * 200_000 + b"]" * 200_000})

    @add("json-huge_integer", "is not valid JSON")
    def _(base, s):
        text = base[MODEL].decode().replace('"as_int": 3', '"as_int": 3' + "0" * 5000, 1)
        return with_entries(base, {MODEL: text.encode()})

    @add("json-schema_version", "export schema version 99")
    def _(base, s):
        return with_json(base, MODEL, lambda d: d["schema_version"].__setitem__("major", 99))

    @add("json-unknown_field", "unknown field 'evil_code'")
    def _(base, s):
        return with_json(base, MODEL, lambda d: d.__setitem__("evil_code", touch(s)))

    @add("json-wrong_types", "expected an integer")
    def _(base, s):
        return with_json(base, MODEL, lambda d: graph(d)["tensor_values"]["x"]["sizes"]
                         .__setitem__(0, {"as_int": "2"}))

    return cases


CASES = _cases()
BY_ID = {c.id: c for c in CASES}


def test_the_suite_has_enough_archives():
    assert len(CASES) >= 50 and len(BY_ID) == len(CASES)


# ---------------------------------------------------------------------------------------------
# Tripwires and checks


class Tripwire(BaseException):
    """Raised by a tripwire: BaseException, so no `except Exception` in the path swallows it."""


@pytest.fixture(autouse=True)
def tripwires(monkeypatch):
    """Calls the untrusted path must never make. Each records itself and raises."""
    calls: list[str] = []

    def wire(name: str):
        def tripped(*_args, **_kwargs):
            calls.append(name)
            raise Tripwire(f"{name} was called while reading an untrusted archive")
        return tripped

    targets = [
        (torch.export, "load"), (torch, "load"), (torch._C, "_pickle_load_obj"),
        (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
        (sympy, "sympify"), (sys.modules["sympy.core.sympify"], "sympify"),
        (sympy.parsing.sympy_parser, "parse_expr"),
        (ctypes, "CDLL"), (ctypes.cdll, "LoadLibrary"), (torch.ops, "load_library"),
        (torch._export.serde.serialize, "deserialize"),
    ]
    for owner, attr in targets:
        monkeypatch.setattr(owner, attr, wire(f"{getattr(owner, '__name__', owner)}.{attr}"))

    def source_guard(real, name: str):
        def guarded(source, *args, **kwargs):
            # source text, or code compiled from a string as sympy's parser does, is refused;
            # code objects compiled from files (imports, Jinja templates) pass
            if isinstance(source, (str, bytes)) or getattr(source, "co_filename", "") in (
                    "<string>", "<unknown>"):
                calls.append(name)
                raise Tripwire(f"{name} of source text while reading an untrusted archive")
            return real(source, *args, **kwargs)
        return guarded

    monkeypatch.setattr(builtins, "eval", source_guard(builtins.eval, "eval"))
    monkeypatch.setattr(builtins, "exec", source_guard(builtins.exec, "exec"))
    yield calls
    assert calls == [], f"tripwires fired: {calls}"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run(argv: list[str], capfd) -> tuple[int, str, str]:
    """Run the CLI in-process; capfd also catches what torch's C++ side writes to fd 2."""
    code = main(argv)
    out, err = capfd.readouterr()
    return code, out, err


def _check(case: Crafted, code: int, err: str, sentinel: Path) -> None:
    assert not sentinel.exists(), f"{case.id}: the payload ran"
    # no traceback, no Python warning, no line from torch's C++ logger ("[W1129 ...] ...")
    assert "Traceback" not in err and "Warning:" not in err, err
    assert not re.search(r"^\[[WE]\d{4} ", err, re.MULTILINE), err
    if case.expect is None:
        assert code == 0, err
        assert all(line.startswith("warning: ") for line in err.splitlines()), err
    else:
        assert code == 2, f"{case.id}: exit {code}, stderr {err!r}"
        assert err.startswith("error: "), err
        assert case.expect in err, f"{case.id}: {err!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_export(case: Crafted, base, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "pwned"
    archive = tmp_path / "model.pt2"
    archive.write_bytes(case.make(base, sentinel))
    before = _files(tmp_path)
    out = tmp_path / "out"
    code, _, err = _run(["export", str(archive), "--out", str(out)], capfd)
    _check(case, code, err, sentinel)
    written = _files(tmp_path) - before
    if case.expect is None:
        # an integer export (the default w8a16) adds its assembly kernels, model_kernels.S
        assert written == {"out", "out/model.h", "out/model.c", "out/model_kernels.S",
                           "out/model.json"}, written
    else:
        assert written == set(), written


# the archives that attacked verify and report through torch's loader, and a few more; a
# successful report also profiles on the emulated board (covered by test_profile), so the
# archive whose export succeeds goes through verify only
COMMAND_CASES = [
    (c, command) for c in CASES
    if c.id.startswith(("sympify-tensor_size-", "sympify-range", "sympify-guards",
                        "pickle-sample", "aoti-so", "op-custom", "zip-empty", "zip-text",
                        "metadata-payloads"))
    for command in ("verify", "report") if c.expect is not None or command == "verify"
]


@pytest.mark.parametrize(("case", "command"), COMMAND_CASES,
                         ids=[f"{c.id}-{command}" for c, command in COMMAND_CASES])
def test_verify_and_report(case: Crafted, command: str, base, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "pwned"
    archive = tmp_path / "model.pt2"
    archive.write_bytes(case.make(base, sentinel))
    good = Path(base["__root__"].decode())
    before = _files(tmp_path)
    argv = [command, str(archive), str(good / "c"), "--input", str(good / "x.npy")]
    if command == "report":
        argv += ["-o", str(tmp_path / "report")]
    code, out, err = _run(argv, capfd)
    _check(case, code, err, sentinel)
    if case.expect is None:
        assert "PASS" in out
    assert _files(tmp_path) - before == set()


@pytest.mark.parametrize("case_id", ["zip-empty_file", "zip-truncated",
                                     "sympify-tensor_size-import"])
def test_a_real_process_prints_one_line(case_id: str, base, tmp_path):
    """As a user sees it: one line on stderr, no traceback, nothing from torch's logger."""
    case = BY_ID[case_id]
    sentinel = tmp_path / "pwned"
    archive = tmp_path / "model.pt2"
    archive.write_bytes(case.make(base, sentinel))
    result = subprocess.run(
        [sys.executable, "-m", "tinyrnn", "export", str(archive), "--out", str(tmp_path / "c")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert case.expect in result.stderr
    assert not sentinel.exists() and not (tmp_path / "c").exists()


LIVE_CASES = ["sympify-tensor_size-import", "pickle-weights-use_pickle",
              "pickle-sample_inputs-os_system"]


def test_the_payloads_are_live_against_torchs_own_loader(base, tmp_path):
    """The sentinel checks above can fail: torch.export.load (in a separate process, outside
    the tripwires) runs these archives' payloads and creates their sentinels."""
    script = ["import sys, torch", "for path in sys.argv[1:]:", "    try:",
              "        torch.export.load(path)", "    except Exception:", "        pass"]
    archives, sentinels = [], []
    for case_id in LIVE_CASES:
        folder = tmp_path / case_id
        folder.mkdir()
        sentinels.append(folder / "pwned")
        archives.append(folder / "model.pt2")
        archives[-1].write_bytes(BY_ID[case_id].make(base, sentinels[-1]))
    subprocess.run([sys.executable, "-c", "\n".join(script), *map(str, archives)],
                   capture_output=True, timeout=300, check=False)
    assert [s.exists() for s in sentinels] == [True] * len(LIVE_CASES), (
        "torch's loader no longer runs one of these payloads; pick live ones so that the "
        "sentinel checks keep meaning something")
