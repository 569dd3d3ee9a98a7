"""The C interface of one export as a typed record, written once by the backend.

:class:`CInterface` lists the generated functions with their argument types and the length of
every buffer argument, the error codes, the header's size macros and the files to compile. The
backend builds it (:func:`build`), prints the header's prototypes and the definitions'
signatures from it, and writes it into ``NAME.json`` (``c_interface``). The host harness (its
cffi declarations), the board harness, ``tinyrnn profile`` and ``tinyrnn verify`` read it back
(:func:`from_manifest`): nobody parses the header or types a prototype again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import TinyRNNError

__all__ = ["ERRORS", "CArg", "CFunction", "CInterface", "ErrorCode", "Length", "Macro", "build",
           "from_manifest"]


@dataclass(frozen=True)
class ErrorCode:
    """A return value of the int functions: ``NAME_<name>``."""

    name: str
    value: int
    meaning: str

    @property
    def literal(self) -> str:
        """The macro's value, parenthesized when negative."""
        return f"({self.value})" if self.value < 0 else str(self.value)


ERRORS: tuple[ErrorCode, ...] = (
    ErrorCode("OK", 0, "success"),
    ErrorCode("ERR_NULL", -1, "a required pointer was NULL"),
    ErrorCode("ERR_SEQ_LEN", -2, "a sequence length outside 1..max_seq_len"),
    ErrorCode("ERR_UNSUPPORTED", -3, "an unsupported call (step on a bidirectional model)"),
    ErrorCode("ERR_INDEX", -4, "a selected time step outside the sequence"),
)
ERR_INPUT = ErrorCode("ERR_INPUT", -5, "a token id that is not an integer in 0..VOCAB_SIZE-1 "
                                       "(models whose input is token ids)")


@dataclass(frozen=True)
class Length:
    """Elements of a buffer argument: ``per_step * T' + fixed``, where ``T'`` is ``T`` after
    each ``(add, stride)`` of ``rules`` (a length-changing Conv1d: ``T' = (T + add) // stride
    + 1``, torch's formula; ``tinyrnn.ir.Conv1d.length_rule``)."""

    per_step: int = 0
    fixed: int = 0
    rules: tuple[tuple[int, int], ...] = ()

    def at(self, steps: int) -> int:
        for add, stride in self.rules:
            steps = (steps + add) // stride + 1 if steps > 0 and steps + add >= 0 else 0
        return self.per_step * steps + self.fixed


@dataclass(frozen=True)
class CArg:
    """One parameter: its name, its C type as written, what it is, and (buffers) its length."""

    name: str
    ctype: str  # e.g. "const float *", "int", "gesture_state_t *"
    role: str  # "state", "input", "h0", "c0", "output", "steps"
    length: Length | None = None
    dtype: str = ""  # element type of a buffer: "float" or "int16_t"

    @property
    def declaration(self) -> str:
        return f"{self.ctype}{self.name}" if self.ctype.endswith("*") else \
            f"{self.ctype} {self.name}"


@dataclass(frozen=True)
class CFunction:
    """One function of the header."""

    name: str
    returns: str
    args: tuple[CArg, ...]
    doc: str

    @property
    def prototype(self) -> str:
        return f"{self.returns} {self.name}({', '.join(a.declaration for a in self.args)})"

    def outputs(self) -> tuple[CArg, ...]:
        return tuple(a for a in self.args if a.role == "output")

    def output_lengths(self, steps: int) -> list[int]:
        """Elements each output buffer receives for a sequence of ``steps``."""
        return [a.length.at(steps) for a in self.outputs() if a.length is not None]


@dataclass(frozen=True)
class Macro:
    """A ``#define`` of the header (sizes and formats)."""

    name: str
    value: int
    comment: str


@dataclass(frozen=True)
class CInterface:
    """Everything a caller of the generated C needs to know (see the module doc)."""

    prefix: str
    header: str
    sources: tuple[str, ...]
    state_type: str
    functions: tuple[CFunction, ...]
    errors: tuple[ErrorCode, ...]
    macros: tuple[Macro, ...]

    def function(self, suffix: str) -> CFunction:
        """``NAME_<suffix>``; raises when the export has no such function."""
        name = f"{self.prefix}_{suffix}"
        for fn in self.functions:
            if fn.name == name:
                return fn
        raise TinyRNNError(f"the export has no function {name}")

    def has(self, suffix: str) -> bool:
        return any(fn.name == f"{self.prefix}_{suffix}" for fn in self.functions)

    def output_lengths(self, steps: int) -> list[int]:
        """Elements in each output buffer of ``NAME_run`` for a sequence of ``steps``."""
        return self.function("run").output_lengths(steps)

    def error(self, value: int) -> ErrorCode | None:
        return next((e for e in self.errors if e.value == value), None)

    def macro(self, suffix: str) -> int:
        name = f"{self.prefix.upper()}_{suffix}"
        return next(m.value for m in self.macros if m.name == name)

    def cdef(self) -> str:
        """Declarations for cffi: the opaque state type and every prototype."""
        lines = [f"typedef struct {{ ...; }} {self.state_type};"]
        lines += [fn.prototype + ";" for fn in self.functions]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for fn in data["functions"]:  # a length's rules only where a Conv1d changes the length
            for arg in fn["args"]:
                if arg.get("length") and not arg["length"]["rules"]:
                    del arg["length"]["rules"]
        return data


def _arg(data: Mapping[str, Any]) -> CArg:
    length = data.get("length")
    return CArg(str(data["name"]), str(data["ctype"]), str(data["role"]),
                Length(int(length["per_step"]), int(length["fixed"]),
                       tuple((int(a), int(b)) for a, b in length.get("rules", ())))
                if length else None,
                str(data.get("dtype", "")))


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CTYPE = re.compile(r"(const )?(float|int16_t) \*|int|void")


def _problems(api: CInterface, name: Any) -> list[str]:
    """What in a record read back differs from the forms :func:`build` writes (the host
    harness compiles its sources and declares its functions to cffi)."""
    p = api.prefix
    problems = []
    if p != name:
        problems.append(f"prefix {p!r} is not the model's name")
    if api.header != f"{p}.h" or api.state_type != f"{p}_state_t":
        problems.append("the header or state type is not the model's")
    if not api.sources or api.sources[0] != f"{p}.c" \
            or any(s != f"{p}_kernels.S" for s in api.sources[1:]):
        problems.append(f"sources {list(api.sources)!r} are not {p}.c (and {p}_kernels.S)")
    for fn in api.functions:
        if not (_IDENTIFIER.fullmatch(fn.name) and fn.name.startswith(f"{p}_")
                and fn.returns in ("int", "void")):
            problems.append(f"function {fn.name!r}")
        for arg in fn.args:
            if not (_IDENTIFIER.fullmatch(arg.name) and (
                    _CTYPE.fullmatch(arg.ctype) or arg.ctype == f"{p}_state_t *")):
                problems.append(f"argument {arg.name!r} ({arg.ctype!r}) of {fn.name!r}")
    return problems


def from_manifest(manifest: Mapping[str, Any]) -> CInterface:
    """The record ``tinyrnn export`` wrote into ``NAME.json``, checked against the forms
    :func:`build` writes."""
    try:
        data = manifest["c_interface"]
        api = CInterface(
            prefix=str(data["prefix"]), header=str(data["header"]),
            sources=tuple(str(s) for s in data["sources"]), state_type=str(data["state_type"]),
            functions=tuple(CFunction(str(f["name"]), str(f["returns"]),
                                      tuple(_arg(a) for a in f["args"]), str(f["doc"]))
                            for f in data["functions"]),
            errors=tuple(ErrorCode(str(e["name"]), int(e["value"]), str(e["meaning"]))
                         for e in data["errors"]),
            macros=tuple(Macro(str(m["name"]), int(m["value"]), str(m["comment"]))
                         for m in data["macros"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TinyRNNError(f"{manifest.get('name', 'the')}.json has no valid c_interface "
                           f"({type(exc).__name__}: {exc}); re-export the model") from None
    problems = _problems(api, manifest.get("name"))
    if problems:
        raise TinyRNNError(f"{manifest.get('name', 'the')}.json has no valid c_interface "
                           f"({'; '.join(problems[:3])}); re-export the model")
    return api


def build(prefix: str, *, fixed: bool, input_size: int, step_output_size: int,
          max_seq_len: int, state_size: int, set_state_args: Sequence[tuple[str, int]],
          outputs: Sequence[tuple[str, Length]], has_step: bool, sources: Sequence[str],
          no_step_why: str = "this model is bidirectional",
          format_macros: Sequence[Macro] = (), vocab: int = 0) -> CInterface:
    """The record of one export.

    ``set_state_args``: ``(role, floats)`` of h0 (and c0); ``outputs``: ``(doc, length)`` of
    each output of ``NAME_run``; ``format_macros``: the integer formats' ``*_FRAC`` macros;
    ``vocab``: the number of token ids when x holds token ids (then ``NAME_VOCAB_SIZE`` and
    ``NAME_ERR_INPUT``), else 0.
    """
    P = prefix.upper()
    state = CArg("s", f"{prefix}_state_t *", "state")
    types = ["float", "int16_t"] if fixed else ["float"]
    functions = [CFunction(f"{prefix}_reset", "void", (state,), "Zero the recurrent state.")]
    for t in types:
        q = "_q" if t == "int16_t" else ""
        docs = ("", "", "The same in int16 (formats above; h0/c0 rows in the formats of their "
                        "layers).") if q else (
            "Load initial states for one sample in torch's (layers*directions, H) order.",
            f"One time step, keeping the state: y_t gets {P}_STEP_OUTPUT_SIZE values." + (
                "" if has_step else f" Returns {P}_ERR_UNSUPPORTED: {no_step_why}."),
            f"A whole sequence x[T][{P}_INPUT_SIZE] from the state in s; the outputs follow the "
            "torch forward's return values (batch 1):\n" + "\n".join(
                f"  out{k}: {doc}" for k, (doc, _) in enumerate(outputs)))
        functions.append(CFunction(
            f"{prefix}_set_state{q}", "int",
            (state, *(CArg(role, f"const {t} *", role, Length(0, n), t)
                      for role, n in set_state_args)), docs[0 if not q else 2]))
        functions.append(CFunction(
            f"{prefix}_step{q}", "int",
            (state, CArg("x_t", f"const {t} *", "input", Length(0, input_size), t),
             CArg("y_t", f"{t} *", "output", Length(0, step_output_size), t)),
            docs[1] if not q else ""))
        functions.append(CFunction(
            f"{prefix}_run{q}", "int",
            (state, CArg("x", f"const {t} *", "input", Length(input_size, 0), t),
             CArg("T", "int", "steps"),
             *(CArg(f"out{k}", f"{t} *", "output", length, t)
               for k, (_, length) in enumerate(outputs))),
            docs[2] if not q else ""))
    macros = (
        Macro(f"{P}_INPUT_SIZE", input_size, "features of one time step x_t"),
        Macro(f"{P}_STEP_OUTPUT_SIZE", step_output_size, f"values {prefix}_step writes"),
        Macro(f"{P}_MAX_SEQ_LEN", max_seq_len, "sequence buffer capacity; 0 = no limit"),
        Macro(f"{P}_STATE_SIZE", state_size, f"values in {prefix}_set_state's h0"),
        *format_macros,
        *((Macro(f"{P}_VOCAB_SIZE", vocab, "x holds token ids: integers in 0..VOCAB_SIZE-1"),)
          if vocab else ()),
    )
    return CInterface(prefix=prefix, header=f"{prefix}.h", sources=tuple(sources),
                      state_type=f"{prefix}_state_t", functions=tuple(functions),
                      errors=ERRORS + ((ERR_INPUT,) if vocab else ()), macros=macros)
