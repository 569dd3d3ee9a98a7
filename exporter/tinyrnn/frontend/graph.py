"""The restricted graph: the part of a serialized torch.export program that tinyrnn reads.

:func:`parse_program` walks the JSON document of ``models/model.json`` (already parsed by
:mod:`json`) and accepts a known form only:

- nodes whose target is a plain ATen operator name, kept as a STRING (``aten.lstm.input``); it
  is never looked up in ``torch.ops``. Other namespaces (custom operators), higher-order
  operators and anything else are refused, naming the node;
- arguments that are literals: tensor references, lists of them, optional tensors, integers,
  floats, booleans, None, integer/float/boolean lists, scalar types, the CPU device, memory
  formats, layouts, and short strings of a safe alphabet. Subgraphs, custom objects, operator
  references and other argument kinds are refused;
- static shapes only: a symbolic size, a range constraint, a symbolic value or guard code is
  refused (torch would hand those strings to sympy, which evaluates them);
- metadata as text: the stack trace and ``nn_module_stack`` split into (path, type) pairs,
  never evaluated.

Fields tinyrnn does not interpret (``module_call_graph``, the graph's metadata, namedtuple
definitions, other node metadata) are ignored; unknown fields are accepted only when empty.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import TinyRNNError
from .safezip import printable, quote
from .tensorfile import SCALAR_TYPES, DType

SCHEMA_MAJOR = 8  # the export schema major version of torch 2.10 ... 2.14
MAX_NODES = 20_000
MAX_TEXT = 1 << 16  # per metadata string
MAX_LIST = 4096  # per argument list

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_FQN = re.compile(r"[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100}){0,31}")
_SAFE_STRING = re.compile(r"[A-Za-z0-9_.\-]{0,64}")
_ATEN = re.compile(r"torch\.ops\.aten\.(?!.*__)(_?[a-z][a-z0-9_]{0,99})"
                   r"\.([A-Za-z][A-Za-z0-9_]{0,49})")  # no "__" anywhere: no dunder names
_OTHER_OP = re.compile(r"torch\.ops\.([A-Za-z_][A-Za-z0-9_]*)\.")
_MODULE_TYPE = re.compile(r"[A-Za-z0-9_.<>]{1,300}")

DYNAMIC_HINT = (
    "tinyrnn reads programs exported with static shapes: export with static example shapes "
    "(no dynamic_shapes=). tinyrnn's C takes any batch size and sequence length at run time, "
    "and tinyrnn verify works at any length"
)


class GraphError(TinyRNNError):
    """The serialized program is outside the form tinyrnn reads."""


# ---------------------------------------------------------------------------------------------
# The restricted graph


@dataclass(frozen=True)
class TensorRef:
    """A reference to a tensor value of the graph, by name."""

    name: str


@dataclass(frozen=True)
class ScalarType:
    code: int

    @property
    def dtype(self) -> DType:
        return SCALAR_TYPES[self.code]


@dataclass(frozen=True)
class MemoryFormat:
    code: int


@dataclass(frozen=True)
class Layout:
    code: int


@dataclass(frozen=True)
class Device:
    type: str
    index: int | None


Value = Any  # TensorRef | tuple | int | float | bool | str | None | ScalarType | ...

_REQUIRED = object()


@dataclass(frozen=True)
class ModuleFrame:
    """One entry of a node's ``nn_module_stack``: the module path and its class."""

    path: str  # e.g. "encoder.0"
    type: str  # e.g. "torch.nn.modules.conv.Conv1d"

    @property
    def short_type(self) -> str:
        return self.type.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Node:
    """One operator call: its target name, named arguments in schema order, output names."""

    name: str
    target: str  # "aten.<op>.<overload>"
    args: tuple[tuple[str, Value], ...]
    outputs: tuple[str | None, ...]  # a Tensor[] return is flattened into the tuple
    stack_trace: str = ""
    module_stack: tuple[ModuleFrame, ...] = ()

    def arg(self, name: str, default: Value = _REQUIRED) -> Value:
        for key, value in self.args:
            if key == name:
                return value
        if default is _REQUIRED:
            raise GraphError(f"node {self.name} ({self.target}) has no argument {name!r}")
        return default

    def first(self) -> Value:
        """The first argument (the tensor an ATen operator works on)."""
        if not self.args:
            raise GraphError(f"node {self.name} ({self.target}) has no arguments")
        return self.args[0][1]

    @property
    def tensor_inputs(self) -> tuple[str, ...]:
        found: list[str] = []

        def walk(value: Value) -> None:
            if isinstance(value, TensorRef):
                found.append(value.name)
            elif isinstance(value, tuple):
                for item in value:
                    walk(item)

        for _, value in self.args:
            walk(value)
        return tuple(found)

    @property
    def module(self) -> ModuleFrame | None:
        """The innermost module the node ran in (None at the top level)."""
        frames = [f for f in self.module_stack if f.path]
        return frames[-1] if frames else None


@dataclass(frozen=True)
class TensorInfo:
    dtype: DType
    shape: tuple[int, ...]


@dataclass(frozen=True)
class GraphInput:
    """A placeholder: a parameter, buffer or constant (``target`` is its FQN) or a user input."""

    name: str
    kind: Literal["parameter", "buffer", "constant", "user"]
    target: str = ""


@dataclass(frozen=True, eq=False)
class Graph:
    inputs: tuple[GraphInput, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    tensors: Mapping[str, TensorInfo]

    @property
    def user_inputs(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs if i.kind == "user")


# ---------------------------------------------------------------------------------------------
# JSON -> Graph


def _fail(where: str, why: str) -> GraphError:
    return GraphError(f"{where}: {why}")


def _obj(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
         ) -> dict:
    """A JSON object with the ``required`` keys; other keys only from ``optional`` or empty."""
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, found {type(value).__name__}")
    for key in required:
        if key not in value:
            raise _fail(where, f"field {key!r} is missing")
    for key, item in value.items():
        if key not in required and key not in optional and item not in (None, {}, [], "", 0,
                                                                          False):
            raise _fail(where, f"unknown field {quote(key, 40)}; tinyrnn does not read it")
    return value


def _union(value: Any, where: str) -> tuple[str, Any]:
    """A serialized union: an object with exactly one key."""
    if not isinstance(value, dict) or len(value) != 1:
        raise _fail(where, "expected an object with exactly one field")
    return next(iter(value.items()))


def _int(value: Any, where: str, low: int = -(1 << 63), high: int = (1 << 63) - 1) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail(where, f"expected an integer in [{low}, {high}], found "
                           f"{printable(repr(value), 40)}")
    return value


def _float(value: Any, where: str) -> float:
    if type(value) not in (int, float):
        raise _fail(where, f"expected a number, found {type(value).__name__}")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise _fail(where, f"expected true or false, found {type(value).__name__}")
    return value


def _list(value: Any, where: str, limit: int = MAX_LIST) -> list:
    if not isinstance(value, list) or len(value) > limit:
        raise _fail(where, f"expected a list of at most {limit} items")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise _fail(where, f"name {printable(repr(value), 60)} is not an identifier")
    return value


def _fqn(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _FQN.fullmatch(value):
        raise _fail(where, f"{printable(repr(value), 60)} is not a dotted module path of "
                           "letters, digits and underscores")
    return value


def _static(value: Any, where: str) -> int:
    """A serialized SymInt that must be a plain integer."""
    kind, item = _union(value, where)
    if kind == "as_int":
        return _int(item, where)
    if kind == "as_expr":
        raise _fail(where, f"a symbolic (dynamic) size; {DYNAMIC_HINT}")
    raise _fail(where, f"a size of unknown form {quote(kind, 40)}")


def tensor_meta(value: Any, where: str) -> tuple[DType, tuple[int, ...], tuple[int, ...], int]:
    meta = _obj(value, where, ("dtype", "sizes", "strides", "storage_offset", "device",
                               "layout"), ("requires_grad",))
    code = meta["dtype"]
    if type(code) is not int or code not in SCALAR_TYPES:
        raise _fail(where, f"dtype code {printable(repr(code), 20)} is not one tinyrnn reads "
                           f"({', '.join(d.name for d in SCALAR_TYPES.values())})")
    sizes = tuple(_static(s, f"{where}, size {k}")
                  for k, s in enumerate(_list(meta["sizes"], where, 8)))
    strides = tuple(_static(s, f"{where}, stride {k}")
                    for k, s in enumerate(_list(meta["strides"], where, 8)))
    offset = _static(meta["storage_offset"], f"{where}, storage offset")
    _device(meta["device"], where)
    if meta["layout"] != 7:
        raise _fail(where, "a tensor layout other than strided (sparse or mkldnn)")
    if any(not 0 <= s < 1 << 31 for s in sizes):
        raise _fail(where, f"size {list(sizes)} out of range (each from 0 to 2**31 - 1)")
    return SCALAR_TYPES[code], sizes, strides, offset


def _device(value: Any, where: str) -> Device:
    device = _obj(value, where, ("type",), ("index",))
    if device["type"] != "cpu":
        raise _fail(where, f"device {quote(str(device['type']), 20)}; tinyrnn reads programs "
                           "exported on the CPU (move the model with .cpu() before exporting)")
    index = device.get("index")
    if index is not None:
        _int(index, where, 0, 0)
    return Device("cpu", index)


def _tensor_ref(value: Any, where: str) -> TensorRef:
    return TensorRef(_name(_obj(value, where, ("name",))["name"], where))


def _argument(value: Any, where: str) -> Value:  # noqa: C901 - one branch per accepted kind
    kind, item = _union(value, where)
    if kind == "as_none":
        return None
    if kind == "as_tensor":
        return _tensor_ref(item, where)
    if kind == "as_tensors":
        return tuple(_tensor_ref(t, where) for t in _list(item, where))
    if kind in ("as_optional_tensor", "as_optional_tensors"):
        items = [item] if kind == "as_optional_tensor" else _list(item, where)
        out = []
        for entry in items:
            sub, ref = _union(entry, where)
            if sub not in ("as_tensor", "as_none"):
                raise _fail(where, f"an optional tensor of form {quote(sub, 40)}")
            out.append(_tensor_ref(ref, where) if sub == "as_tensor" else None)
        return out[0] if kind == "as_optional_tensor" else tuple(out)
    if kind in ("as_int", "as_sym_int"):
        return _int(item, where) if kind == "as_int" else _sym_literal(item, where, "as_int")
    if kind in ("as_ints", "as_sym_ints"):
        if kind == "as_ints":
            return tuple(_int(v, where) for v in _list(item, where))
        return tuple(_sym_literal(v, where, "as_int") for v in _list(item, where))
    if kind in ("as_float", "as_sym_float"):
        return (_float(item, where) if kind == "as_float"
                else _sym_literal(item, where, "as_float"))
    if kind in ("as_floats", "as_sym_floats"):
        if kind == "as_floats":
            return tuple(_float(v, where) for v in _list(item, where))
        return tuple(_sym_literal(v, where, "as_float") for v in _list(item, where))
    if kind in ("as_bool", "as_sym_bool"):
        return _bool(item, where) if kind == "as_bool" else _sym_literal(item, where, "as_bool")
    if kind in ("as_bools", "as_sym_bools"):
        if kind == "as_bools":
            return tuple(_bool(v, where) for v in _list(item, where))
        return tuple(_sym_literal(v, where, "as_bool") for v in _list(item, where))
    if kind in ("as_string", "as_strings"):
        items = [item] if kind == "as_string" else _list(item, where)
        for text in items:
            if not isinstance(text, str) or not _SAFE_STRING.fullmatch(text):
                raise _fail(where, f"string {printable(repr(text), 60)} is not a short word "
                                   "of letters, digits, '_', '.', '-'")
        return items[0] if kind == "as_string" else tuple(items)
    if kind == "as_scalar_type":
        if type(item) is not int or item not in SCALAR_TYPES:
            raise _fail(where, f"scalar type {printable(repr(item), 20)} is not one tinyrnn "
                               "reads")
        return ScalarType(item)
    if kind == "as_memory_format":
        return MemoryFormat(_int(item, where, 0, 4))
    if kind == "as_layout":
        return Layout(_int(item, where, 0, 7))
    if kind == "as_device":
        return _device(item, where)
    if kind == "as_graph":
        raise _fail(where, "a subgraph argument (a higher-order operator); refused")
    if kind == "as_custom_obj":
        raise _fail(where, "a custom (TorchScript/opaque) object argument; refused")
    if kind == "as_operator":
        raise _fail(where, "an operator-valued argument (a higher-order operator); refused")
    raise _fail(where, f"an argument of kind {quote(kind, 40)}, which tinyrnn does not read")


def _sym_literal(value: Any, where: str, literal: str) -> Any:
    """A Sym{Int,Float,Bool}Argument that must hold a literal, not a symbol's name."""
    kind, item = _union(value, where)
    if kind == "as_name":
        raise _fail(where, f"a symbolic (dynamic) value; {DYNAMIC_HINT}")
    if kind != literal:
        raise _fail(where, f"a value of form {quote(kind, 40)}")
    checks = {"as_int": _int, "as_float": _float, "as_bool": _bool}
    return checks[literal](item, where)


def _target(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, "the target is not a string")
    match = _ATEN.fullmatch(value)
    if match:
        return f"aten.{match.group(1)}.{match.group(2)}"
    other = _OTHER_OP.match(value)
    if other and other.group(1) == "higher_order":
        raise _fail(where, f"higher-order operator {quote(value, 60)} (control flow or "
                           "wrapped code); tinyrnn reads plain ATen operators only")
    if other and other.group(1) != "aten":
        raise _fail(where, f"custom operator {quote(value, 60)} (namespace "
                           f"{quote(other.group(1), 30)}); tinyrnn reads ATen operators only")
    raise _fail(where, f"target {quote(value, 60)} is not a plain ATen operator name")


def _module_stack(text: str) -> tuple[ModuleFrame, ...]:
    """``key,path,type;key,path,type`` -> (path, type) pairs (the path may hold commas).
    Only shown in messages: an entry of another form is left out, not refused."""
    frames = []
    for entry in text.split(";")[:64]:
        _key, sep1, rest = entry.partition(",")
        path, sep2, kind = rest.rpartition(",")
        if sep1 and sep2 and _MODULE_TYPE.fullmatch(kind):
            frames.append(ModuleFrame(printable(path, 120), kind))
    return tuple(frames)


def _node(value: Any, index: int) -> Node:
    where = f"node {index}"
    raw = _obj(value, where, ("target", "inputs", "outputs"),
               ("metadata", "is_hop_single_tensor_return", "name"))
    name = _name(raw.get("name"), where)
    where = f"node {name}"
    target = _target(raw["target"], where)
    args = []
    seen = set()
    for k, entry in enumerate(_list(raw["inputs"], where, 64)):
        named = _obj(entry, f"{where}, argument {k}", ("name", "arg"), ("kind",))
        arg_name = _name(named["name"], f"{where}, argument {k}")
        if arg_name in seen:
            raise _fail(where, f"argument {arg_name!r} is given twice")
        seen.add(arg_name)
        args.append((arg_name, _argument(named["arg"], f"{where}, argument {arg_name!r}")))
    outputs: list[str | None] = []
    for k, entry in enumerate(_list(raw["outputs"], where, 64)):
        value = _argument(entry, f"{where}, output {k}")
        if isinstance(value, TensorRef):
            outputs.append(value.name)
        elif value is None:
            outputs.append(None)
        elif isinstance(value, tuple) and all(isinstance(v, TensorRef) for v in value):
            outputs.extend(v.name for v in value)
        else:
            raise _fail(where, f"output {k} is not a tensor")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _fail(where, "metadata is not an object")
    for key, text in metadata.items():
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise _fail(where, f"metadata {quote(str(key), 30)} is not a string of at most "
                               f"{MAX_TEXT} characters")
    stack = metadata.get("nn_module_stack", "")
    return Node(
        name=name,
        target=target,
        args=tuple(args),
        outputs=tuple(outputs),
        stack_trace=metadata.get("stack_trace", ""),
        module_stack=_module_stack(stack),
    )


def _input_spec(value: Any, k: int) -> GraphInput:
    where = f"input spec {k}"
    kind, item = _union(value, where)
    if kind == "user_input":
        arg = _argument(_obj(item, where, ("arg",))["arg"], where)
        if not isinstance(arg, TensorRef):
            raise _fail(where, "a forward argument that is not a tensor")
        return GraphInput(arg.name, "user")
    if kind == "parameter":
        spec = _obj(item, where, ("arg", "parameter_name"))
        return GraphInput(_tensor_ref(spec["arg"], where).name, "parameter",
                          _fqn(spec["parameter_name"], where))
    if kind == "buffer":
        spec = _obj(item, where, ("arg", "buffer_name"), ("persistent",))
        return GraphInput(_tensor_ref(spec["arg"], where).name, "buffer",
                          _fqn(spec["buffer_name"], where))
    if kind == "tensor_constant":
        spec = _obj(item, where, ("arg", "tensor_constant_name"))
        return GraphInput(_tensor_ref(spec["arg"], where).name, "constant",
                          _fqn(spec["tensor_constant_name"], where))
    raise _fail(where, f"an input of kind {quote(kind, 40)} (custom objects, tokens and "
                       "non-tensor constants are not read)")


def _output_spec(value: Any, k: int) -> str:
    where = f"output spec {k}"
    kind, item = _union(value, where)
    if kind != "user_output":
        raise _fail(where, f"an output of kind {quote(kind, 40)}: the program mutates a "
                           "buffer or input, or computes gradients; export the model in "
                           "eval() without side effects")
    arg = _argument(_obj(item, where, ("arg",))["arg"], where)
    if not isinstance(arg, TensorRef):
        raise _fail(where, "a forward result that is not a tensor")
    return arg.name


def parse_program(doc: Any) -> Graph:
    """The restricted graph of a serialized ExportedProgram (the parsed ``model.json``)."""
    top = _obj(doc, "the program", ("graph_module", "schema_version"),
               ("opset_version", "range_constraints", "verifiers", "torch_version",
                "guards_code"))
    version = _obj(top["schema_version"], "schema_version", ("major", "minor"))
    if version["major"] != SCHEMA_MAJOR:
        raise _fail("the program", f"export schema version {printable(repr(version['major']))}"
                                   f"; tinyrnn reads version {SCHEMA_MAJOR} (torch 2.10 to "
                                   "2.14): save the program again with such a torch")
    if top.get("range_constraints"):
        raise _fail("range_constraints", f"the program has symbolic (dynamic) dimensions; "
                                         f"{DYNAMIC_HINT}")
    if top.get("guards_code"):
        raise _fail("guards_code", "the program carries guard code (Python source that torch "
                                   f"would run); refused. {DYNAMIC_HINT}")
    for key in ("opset_version",):
        if not isinstance(top.get(key, {}), dict):
            raise _fail(key, "expected an object")
    module = _obj(top["graph_module"], "graph_module", ("graph", "signature"),
                  ("module_call_graph", "metadata", "treespec_namedtuple_fields"))
    graph = _obj(module["graph"], "graph", ("inputs", "outputs", "nodes", "tensor_values"),
                 ("sym_int_values", "sym_bool_values", "sym_float_values",
                  "is_single_tensor_return", "custom_obj_values"))
    for key in ("sym_int_values", "sym_bool_values", "sym_float_values"):
        if graph.get(key):
            raise _fail(f"graph.{key}", f"the program has symbolic values; {DYNAMIC_HINT}")
    if graph.get("custom_obj_values"):
        raise _fail("graph.custom_obj_values", "the program holds custom objects; refused")

    values = graph["tensor_values"]
    if not isinstance(values, dict) or len(values) > 4 * MAX_NODES:
        raise _fail("graph.tensor_values", "expected an object")
    metas = {_name(k, "graph.tensor_values"): tensor_meta(v, f"tensor {k}")
             for k, v in values.items()}

    signature = _obj(module["signature"], "signature", ("input_specs", "output_specs"))
    inputs = tuple(_input_spec(v, k) for k, v in
                   enumerate(_list(signature["input_specs"], "input_specs", MAX_NODES)))
    outputs = tuple(_output_spec(v, k) for k, v in
                    enumerate(_list(signature["output_specs"], "output_specs", MAX_NODES)))
    placeholders = [_argument(v, f"graph input {k}") for k, v in
                    enumerate(_list(graph["inputs"], "graph.inputs", MAX_NODES))]
    if [p.name if isinstance(p, TensorRef) else None for p in placeholders] != [
            i.name for i in inputs]:
        raise _fail("graph.inputs", "the graph's inputs differ from the signature's")
    nodes = tuple(_node(v, k) for k, v in
                  enumerate(_list(graph["nodes"], "graph.nodes", MAX_NODES)))

    defined: set[str] = set()
    for spec in inputs:
        if spec.name in defined:
            raise _fail("graph.inputs", f"{spec.name} is defined twice")
        defined.add(spec.name)
    for node in nodes:
        for ref in node.tensor_inputs:
            if ref not in defined:
                raise _fail(f"node {node.name}", f"uses {ref}, which no earlier node defines")
        for out in node.outputs:
            if out is not None:
                if out in defined:
                    raise _fail(f"node {node.name}", f"redefines {out}")
                defined.add(out)
    for out in outputs:
        if out not in defined:
            raise _fail("output_specs", f"returns {out}, which no node defines")
    missing = sorted(defined - set(metas))
    if missing:
        raise _fail("graph.tensor_values", f"no shape recorded for {', '.join(missing[:5])}")
    tensors = {name: TensorInfo(dtype, sizes) for name, (dtype, sizes, _, _) in metas.items()}
    return Graph(inputs, nodes, outputs, tensors)
