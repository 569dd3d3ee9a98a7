"""Validators for user strings and numbers: each accepts a known form or raises a
:class:`~tinyrnn.errors.TinyRNNError` that names the value and what to give instead."""

from __future__ import annotations

import math
import re

from .errors import TinyRNNError

MAX_NAME_LENGTH = 64
"""A model name prefixes every C symbol and names the files. 64 characters leave every file
name far below the file system's 255 bytes; C99 guarantees only 63 significant characters
per identifier, so a toolchain that truncates may already confuse longer symbols."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

C_KEYWORDS = frozenset({
    # C89
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "int", "long", "register", "return",
    "short", "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned",
    "void", "volatile", "while",
    # C99, C11 (the underscore ones are refused by the leading-underscore rule as well)
    "inline", "restrict", "_Bool", "_Complex", "_Imaginary", "_Alignas", "_Alignof",
    "_Atomic", "_Generic", "_Noreturn", "_Static_assert", "_Thread_local",
    # C23
    "alignas", "alignof", "bool", "constexpr", "false", "nullptr", "static_assert",
    "thread_local", "true", "typeof", "typeof_unqual",
    # the program's entry point
    "main",
})

RESERVED_PREFIX = "tinyrnn"
"""The board and profile harnesses name their own symbols tinyrnn_* (and TINYRNN_* macros)."""


def check_name(name: str) -> str:
    """A model name: a C identifier that prefixes every symbol (``NAME_run``, ``NAME_OK``)."""
    if not isinstance(name, str):
        raise TinyRNNError(f"the model name must be a string, not {type(name).__name__}")
    shown = name if len(name) <= 40 else name[:40] + "..."
    if len(name) > MAX_NAME_LENGTH:
        raise TinyRNNError(
            f"model name {shown!r} has {len(name)} characters; the limit is {MAX_NAME_LENGTH} "
            "(it prefixes every C symbol and names the files): choose a shorter --name"
        )
    why = ""
    if name.startswith("_"):
        why = (": it starts with an underscore, and C reserves such identifiers for the "
               "compiler and its library (C99 7.1.3)")
    elif name in C_KEYWORDS:
        why = ": it is a reserved word of C"
    elif name.lower() == RESERVED_PREFIX or name.lower().startswith(RESERVED_PREFIX + "_"):
        why = ": the board and profile harnesses name their own symbols tinyrnn_*"
    if why or not _NAME.fullmatch(name):
        raise TinyRNNError(
            f"model name {shown!r} is not usable as a C identifier prefix{why}; use letters, "
            "digits and underscores, starting with a letter (e.g. --name gesture_lstm)"
        )
    return name


def check_number(option: str, value: float | int | None, *, minimum: float | None = None,
                 above: float | None = None, maximum: float | None = None,
                 why: str = "") -> None:
    """A numeric option: finite, ``>= minimum`` or ``> above``, ``<= maximum``. None passes."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise TinyRNNError(f"{option} must be a finite number, not {value}")
    low = ((minimum is not None and value < minimum) or (above is not None and value <= above))
    if low or (maximum is not None and value > maximum):
        def show(number: float) -> str:
            return f"{number:g}" if isinstance(number, float) else str(number)

        parts = []
        if minimum is not None:
            parts.append(f">= {show(minimum)}")
        if above is not None:
            parts.append(f"> {show(above)}")
        if maximum is not None:
            parts.append(f"<= {show(maximum)}")
        shown = show(value)
        raise TinyRNNError(f"{option} must be {' and '.join(parts)}, not {shown}"
                           + (f" ({why})" if why else ""))
