"""Tensors from untrusted bytes: strided views checked against their storage, and a reader of
``torch.save`` files that parses the pickle instead of running it.

:func:`strided_array` makes a numpy array from raw storage bytes with a dtype, sizes, strides
and storage offset, after checking every number (types, signs, element count, the last element
inside the storage, with Python integers so nothing overflows).

:func:`read_tensor_file` reads a ``torch.save`` zip (``data.pkl`` plus one entry per storage).
The pickle is walked opcode by opcode with :func:`pickletools.genops`, which only parses; a
small stack machine interprets the opcodes that plain tensor records use (literals, tuples,
lists, dicts, memo, ``BINPERSID`` storage references) and exactly three kinds of ``GLOBAL``:
``torch._utils._rebuild_tensor_v2``, the typed ``torch.*Storage`` classes and
``collections.OrderedDict`` (empty, for a tensor's backward hooks). Nothing is imported,
called or unpickled; any other opcode or global is refused by name.
"""

from __future__ import annotations

import io
import math
import pickletools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TinyRNNError
from .safezip import DEFAULT_LIMITS, SafeZip, ZipLimits, printable, quote

MAX_DIMS = 8
MAX_ELEMENTS = 1 << 26  # per tensor


@dataclass(frozen=True)
class DType:
    """A tensor element type: torch's name and how its bytes are read."""

    name: str
    storage: str  # numpy dtype of the stored bytes (little-endian)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.storage).itemsize

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Stored elements -> the numpy array tinyrnn works with."""
        if self.name == "bfloat16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        if self.name == "bool":
            return raw != 0
        return raw


# torch.export's serialized ScalarType codes, and torch.save's typed storage classes
SCALAR_TYPES: dict[int, DType] = {
    1: DType("uint8", "<u1"),
    2: DType("int8", "<i1"),
    3: DType("int16", "<i2"),
    4: DType("int32", "<i4"),
    5: DType("int64", "<i8"),
    6: DType("float16", "<f2"),
    7: DType("float32", "<f4"),
    8: DType("float64", "<f8"),
    12: DType("bool", "<u1"),
    13: DType("bfloat16", "<u2"),
}
STORAGE_CLASSES: dict[str, DType] = {
    "ByteStorage": SCALAR_TYPES[1],
    "CharStorage": SCALAR_TYPES[2],
    "ShortStorage": SCALAR_TYPES[3],
    "IntStorage": SCALAR_TYPES[4],
    "LongStorage": SCALAR_TYPES[5],
    "HalfStorage": SCALAR_TYPES[6],
    "FloatStorage": SCALAR_TYPES[7],
    "DoubleStorage": SCALAR_TYPES[8],
    "BoolStorage": SCALAR_TYPES[12],
    "BFloat16Storage": SCALAR_TYPES[13],
}


def _count(value: Any, what: str, low: int = 0, high: int = 1 << 40) -> int:
    if type(value) is not int or not low <= value <= high:
        raise TinyRNNError(f"{what} is {printable(repr(value), 60)}; expected an integer in "
                           f"[{low}, {high}]")
    return value


def strided_array(storage: bytes, dtype: DType, sizes: Any, strides: Any, offset: Any,
                  what: str) -> np.ndarray:
    """A copy of the tensor that ``sizes``/``strides``/``offset`` (in elements) describe in
    ``storage``, after checking that every element it addresses lies inside the storage."""
    if not isinstance(sizes, (list, tuple)) or not isinstance(strides, (list, tuple)):
        raise TinyRNNError(f"{what}: sizes and strides must be lists of integers")
    if len(sizes) > MAX_DIMS or len(sizes) != len(strides):
        raise TinyRNNError(f"{what}: {len(sizes)} sizes and {len(strides)} strides; expected "
                           f"as many of each, at most {MAX_DIMS}")
    shape = tuple(_count(s, f"{what}: size {k}", 0, (1 << 31) - 1) for k, s in enumerate(sizes))
    steps = tuple(_count(s, f"{what}: stride {k}") for k, s in enumerate(strides))
    start = _count(offset, f"{what}: storage offset")
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS:
        raise TinyRNNError(f"{what}: {numel} elements; tinyrnn reads tensors of at most "
                           f"{MAX_ELEMENTS}")
    size = dtype.itemsize
    if len(storage) % size:
        raise TinyRNNError(f"{what}: storage of {len(storage)} bytes is not a whole number of "
                           f"{dtype.name} elements")
    available = len(storage) // size
    if numel == 0:
        return dtype.decode(np.zeros(shape, dtype=dtype.storage))
    last = start + sum((n - 1) * s for n, s in zip(shape, steps))
    if last >= available:
        raise TinyRNNError(f"{what}: the tensor reaches element {last} but its storage holds "
                           f"{available}; the file is damaged or crafted")
    flat = np.frombuffer(storage, dtype=dtype.storage, count=available)
    view = np.lib.stride_tricks.as_strided(
        flat[start:], shape=shape, strides=tuple(s * size for s in steps), writeable=False)
    return dtype.decode(np.array(view))


# ---------------------------------------------------------------------------------------------
# torch.save files


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _StorageRef:
    dtype: DType
    key: str
    numel: int


class _Mark:
    pass


_MARK = _Mark()
_REBUILD = _Global("torch._utils", "_rebuild_tensor_v2")
_ORDERED_DICT = _Global("collections", "OrderedDict")
_MAX_OPS = 100_000
_MAX_MEMO = 10_000
_MAX_STACK = 10_000
_MAX_STRING = 1024
_MAX_LEAVES = 10_000
_MAX_DEPTH = 32

# opcodes of plain data; anything else is refused
_LITERALS = {"INT", "BININT", "BININT1", "BININT2", "LONG",
             "LONG1", "LONG4", "BINFLOAT", "FLOAT", "BINUNICODE", "SHORT_BINUNICODE",
             "BINUNICODE8", "UNICODE"}


def _is(value: Any, expected: Any) -> bool:
    """``value == expected`` for a value of the expected type only (never an array compare)."""
    return type(value) is type(expected) and value == expected


def _allowed_global(module: str, name: str) -> _Global:
    found = _Global(module, name)
    if found in (_REBUILD, _ORDERED_DICT) or (module == "torch" and name in STORAGE_CLASSES):
        return found
    raise TinyRNNError(f"refers to the Python object {quote(module + '.' + name)}; only plain "
                       "tensor records are read")


class _PickleReader:
    """Interprets the opcodes of a pickle of tensors in tuples/lists/dicts. No object other
    than numbers, strings, containers and numpy arrays is ever created."""

    def __init__(self, storages: dict[str, bytes], what: str):
        self.storages = storages
        self.what = what
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.cache: dict[str, bytes] = {}

    def pop_mark(self) -> list[Any]:
        for k in range(len(self.stack) - 1, -1, -1):
            if self.stack[k] is _MARK:
                items = self.stack[k + 1:]
                del self.stack[k:]
                return items
        raise TinyRNNError("a MARK is missing")

    def pop(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise TinyRNNError("the stack is empty")
        return self.stack.pop()

    def run(self, data: bytes) -> Any:
        ops = 0
        try:
            for opcode, arg, pos in pickletools.genops(io.BytesIO(data)):
                ops += 1
                if ops > _MAX_OPS or len(self.stack) > _MAX_STACK:
                    raise TinyRNNError(f"more than {_MAX_OPS} opcodes or a stack deeper than "
                                       f"{_MAX_STACK}")
                if opcode.name == "STOP":
                    result = self.pop()
                    if self.stack:
                        raise TinyRNNError("values are left on the stack at STOP")
                    return result
                try:
                    self.step(opcode.name, arg)
                except TinyRNNError as exc:
                    raise TinyRNNError(f"opcode {opcode.name} at byte {pos}: {exc}") from None
        except TinyRNNError as exc:
            raise TinyRNNError(f"{self.what}: {exc}") from None
        except (ValueError, UnicodeDecodeError, OverflowError, TypeError) as exc:
            raise TinyRNNError(f"{self.what} is not a valid pickle of tensors "
                               f"({printable(str(exc))})") from None
        raise TinyRNNError(f"{self.what} ends without a STOP opcode")

    def step(self, name: str, arg: Any) -> None:  # noqa: C901 - one branch per opcode
        stack = self.stack
        if name in ("PROTO", "FRAME"):
            if name == "PROTO" and not 2 <= arg <= 5:
                raise TinyRNNError(f"pickle protocol {arg}")
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name in _LITERALS:
            if isinstance(arg, str) and len(arg) > _MAX_STRING:
                raise TinyRNNError(f"a string of {len(arg)} characters")
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) >= 1 << 63:
                raise TinyRNNError("an integer out of the 64-bit range")
            stack.append(arg)
        elif name == "MARK":
            stack.append(_MARK)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            if not stack:
                raise TinyRNNError("nothing to memoize")
            index = len(self.memo) if name == "MEMOIZE" else arg
            if len(self.memo) >= _MAX_MEMO and index not in self.memo:
                raise TinyRNNError(f"more than {_MAX_MEMO} memo entries")
            self.memo[index] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            if arg not in self.memo:
                raise TinyRNNError(f"memo entry {arg} was never stored")
            stack.append(self.memo[arg])
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(_allowed_global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = self.pop(), self.pop()
            if not isinstance(module, str) or not isinstance(attr, str):
                raise TinyRNNError("STACK_GLOBAL of values that are not strings")
            stack.append(_allowed_global(module, attr))
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "TUPLE":
            stack.append(tuple(self.pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self.pop() for _ in range(n)][::-1]
            stack.append(tuple(items))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "LIST":
            stack.append(self.pop_mark())
        elif name in ("APPEND", "APPENDS"):
            items = [self.pop()] if name == "APPEND" else self.pop_mark()
            target = self.pop()
            if not isinstance(target, list):
                raise TinyRNNError("appending to a value that is not a list")
            target.extend(items)
            stack.append(target)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name in ("DICT", "SETITEM", "SETITEMS"):
            if name == "SETITEM":
                value = self.pop()
                items = [self.pop(), value]
            else:
                items = self.pop_mark()
            if len(items) % 2:
                raise TinyRNNError("an odd number of dict items")
            target = {} if name == "DICT" else self.pop()
            if not isinstance(target, dict):
                raise TinyRNNError("setting items of a value that is not a dict")
            for key, value in zip(items[::2], items[1::2]):
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise TinyRNNError("a dict key that is not a string or an integer")
                target[key] = value
            stack.append(target)
        elif name == "BINPERSID":
            stack.append(self.storage_ref(self.pop()))
        elif name == "REDUCE":
            args, func = self.pop(), self.pop()
            stack.append(self.reduce(func, args))
        else:
            raise TinyRNNError("is not used by plain tensor records; refused")

    def storage_ref(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and _is(pid[0], "storage")
                and isinstance(pid[1], _Global) and pid[1].module == "torch"
                and pid[1].name in STORAGE_CLASSES and isinstance(pid[2], str)
                and _is(pid[3], "cpu")):
            raise TinyRNNError("a persistent id that is not ('storage', torch.<T>Storage, key, "
                               "'cpu', numel)")
        key = pid[2]
        if key not in self.storages:
            raise TinyRNNError(f"storage {quote(key)} has no data entry")
        dtype = STORAGE_CLASSES[pid[1].name]
        numel = _count(pid[4], f"storage {quote(key)}: element count", 0, MAX_ELEMENTS)
        if len(self.storages[key]) != numel * dtype.itemsize:
            raise TinyRNNError(f"storage {quote(key)} holds {len(self.storages[key])} bytes, "
                               f"not {numel} {dtype.name} elements")
        return _StorageRef(dtype, key, numel)

    def reduce(self, func: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise TinyRNNError("REDUCE with arguments that are not a tuple")
        if _is(func, _ORDERED_DICT):
            if args:
                raise TinyRNNError("OrderedDict with arguments")
            return {}
        if not _is(func, _REBUILD):
            raise TinyRNNError("calls something other than torch._utils._rebuild_tensor_v2")
        if len(args) not in (6, 7):
            raise TinyRNNError("_rebuild_tensor_v2 with an unexpected argument count")
        storage, offset, sizes, strides, requires_grad, hooks = args[:6]
        if not isinstance(storage, _StorageRef):
            raise TinyRNNError("_rebuild_tensor_v2 without a storage")
        if not isinstance(requires_grad, bool) or not _is(hooks, {}):
            raise TinyRNNError("_rebuild_tensor_v2 with backward hooks or a bad flag")
        if len(args) == 7 and not (args[6] is None or _is(args[6], {})):
            raise TinyRNNError("_rebuild_tensor_v2 with metadata")
        return strided_array(self.storages[storage.key], storage.dtype, sizes, strides, offset,
                             f"tensor in storage {quote(storage.key)}")


_TENSOR_FILE_ENTRIES = {"data.pkl", "byteorder", "version", ".format_version",
                        ".storage_alignment", ".data/version", ".data/serialization_id"}


def read_tensor_file(data: bytes, what: str, limits: ZipLimits = DEFAULT_LIMITS) -> Any:
    """The value of a ``torch.save`` file made of tensors in tuples, lists and dicts: tensors
    become numpy arrays. Raises :class:`TinyRNNError` naming anything else."""
    archive = SafeZip(data, what, limits)
    storages: dict[str, bytes] = {}
    for rest in archive.names():
        if rest.startswith("data/") and rest.count("/") == 1:
            storages[rest[len("data/"):]] = archive.read(rest)
        elif rest not in _TENSOR_FILE_ENTRIES:
            raise TinyRNNError(f"{what}: unexpected entry {quote(rest)} in a torch.save file")
    if "data.pkl" not in archive.entries:
        raise TinyRNNError(f"{what} has no data.pkl record")
    if "byteorder" in archive.entries and archive.read("byteorder", 16) != b"little":
        raise TinyRNNError(f"{what} was written on a big-endian machine; tinyrnn reads "
                           "little-endian files")
    return _PickleReader(storages, what).run(archive.read("data.pkl", 1 << 20))


def flatten_tensors(value: Any, what: str) -> list[np.ndarray]:
    """The arrays in nested tuples/lists/dicts (dict values in order), depth first, as
    ``torch.utils._pytree`` flattens forward arguments; None is skipped."""
    out: list[np.ndarray] = []
    visited = 0

    def walk(v: Any, depth: int) -> None:
        nonlocal visited
        visited += 1
        if depth > _MAX_DEPTH or visited > _MAX_LEAVES:
            raise TinyRNNError(f"{what} nest deeper than {_MAX_DEPTH} levels or hold more "
                               f"than {_MAX_LEAVES} values")
        if isinstance(v, np.ndarray):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            for item in v:
                walk(item, depth + 1)
        elif isinstance(v, dict):
            for item in v.values():
                walk(item, depth + 1)
        elif v is not None:
            raise TinyRNNError(f"{what} hold a {type(v).__name__} where tinyrnn expects "
                               "tensors")

    walk(value, 0)
    return out
