"""Line breaking for the generated C and assembly: no line longer than :data:`WIDTH`.

The templates print each statement, declaration and comment on one line; :func:`wrap` breaks
the long ones the way a person would, without changing a token: a block comment is re-filled
word by word, a comment behind code moves above it, code breaks after a comma or before an
operator at the outermost bracket level it can (continuing under the bracket), and a
preprocessor condition breaks before ``&&``/``||`` with a backslash.
"""

from __future__ import annotations

import re

WIDTH = 120

__all__ = ["WIDTH", "wrap"]


def wrap(text: str, width: int = WIDTH, asm: bool = False) -> str:
    """``text`` with every line of more than ``width`` characters broken (``asm``: the lines
    that are not preprocessor directives or comments are assembler statements)."""
    out: list[str] = []
    in_comment = False
    for line in text.split("\n"):
        if in_comment:
            in_comment = "*/" not in line
            out += _fill_comment_line(line, width)
            continue
        stripped = line.lstrip()
        if stripped.startswith("/*") and "*/" not in stripped:
            in_comment = True
            out += _fill_comment_line(line, width)
        elif len(line) <= width:
            out.append(line)
        elif stripped.startswith("/*") and stripped.endswith("*/") \
                and stripped.count("/*") == 1:
            out += _fill_block(line[:len(line) - len(stripped)], stripped[2:-2].strip(), width)
        elif stripped.startswith("#"):
            code, comment = _split_trailing_comment(line)
            if comment is not None:  # the comment goes above
                out += _fill_block("", comment, width)
                line = code.rstrip()
            out += _break_directive(line, width) if len(line) > width else [line]
        elif asm:
            out += _break_asm(line, width)
        elif _IF_RETURN.match(line):  # too long for one line: braced, as a person would
            indent, condition, statement = _IF_RETURN.match(line).groups()  # type: ignore
            out += _break_code(f"{indent}if ({condition}) {{", width)
            out += _break_code(f"{indent}    {statement}", width) + [f"{indent}}}"]
        else:
            code, comment = _split_trailing_comment(line)
            if comment is not None:
                indent = line[:len(line) - len(stripped)]
                out += _fill_block(indent, comment, width)
                out += _break_code(code.rstrip(), width)
            else:
                out += _break_code(line, width)
    return "\n".join(out)


_IF_RETURN = re.compile(r"^(\s*)if \((.*)\) (return[^;]*;)$")
_OPERATOR = re.compile(r"^[-+*/%<>=&|^!~]+[,;:]?$")


def _glued(before: str, after: str) -> bool:
    """Whether a line break between two words would split a formula (``i = u >> 14``)."""
    return bool(_OPERATOR.match(after) or _OPERATOR.match(before))


def _fill_words(words: list[str], first: str, rest: str, width: int, end: str) -> list[str]:
    """``words`` in lines of at most ``width`` characters (the last one ending in ``end``),
    broken between words that do not belong to one formula where a line allows it."""
    lines: list[str] = []
    current: list[str] = []
    prefix = first

    def length(ws: list[str]) -> int:
        return len(prefix) + len(" ".join(ws))

    for word in words:
        if current and length(current + [word]) > width:
            cut = len(current)
            while cut > 1 and _glued(current[cut - 1], current[cut] if cut < len(current)
                                     else word):
                cut -= 1
            if cut == 1 and _glued(current[0], current[1] if len(current) > 1 else word):
                cut = len(current)  # one formula longer than a line: break anywhere
            lines.append((prefix + " ".join(current[:cut])).rstrip())
            current, prefix = current[cut:], rest
        current.append(word)
    if current and length(current) + len(end) + 1 > width and len(current) > 1:
        lines.append((prefix + " ".join(current[:-1])).rstrip())  # no "*/" on its own
        current, prefix = current[-1:], rest
    lines.append((prefix + " ".join(current) + (" " + end if end else "")).rstrip())
    return lines


def _fill_block(indent: str, body: str, width: int) -> list[str]:
    """A one-line comment as a block of lines no wider than ``width``."""
    first = f"{indent}/* "
    if len(first) + len(body) + 3 <= width:
        return [f"{first}{body} */"]
    return _fill_words(body.split(), first, f"{indent} * ", width, "*/")


def _fill_comment_line(line: str, width: int) -> list[str]:
    """A line inside a block comment: broken at spaces, continued with `` * ``."""
    if len(line) <= width:
        return [line]
    stripped = line.lstrip()
    indent = line[:len(line) - len(stripped)]
    lead = "/* " if stripped.startswith("/*") else "* "
    if not stripped.startswith(("/*", "*")):
        lead = ""
    continuation = indent + (" * " if lead.startswith("/*") else "* " if lead else "")
    words = stripped[len(lead):].split(" ")
    lines, current = [], indent + lead
    for word in words:
        if len(current) + len(word) > width and current.strip() not in ("/*", "*", ""):
            lines.append(current.rstrip())
            current = continuation
        current += word + " "
    lines.append(current.rstrip())
    return lines


def _split_trailing_comment(line: str) -> tuple[str, str | None]:
    """``code`` and the text of a ``/* ... */`` that ends the line, if any."""
    if not line.rstrip().endswith("*/"):
        return line, None
    start = _outside_strings(line).rfind("/*")
    if start <= 0 or not line[:start].strip():
        return line, None
    return line[:start], line[start + 2:line.rstrip().rfind("*/")].strip()


def _outside_strings(line: str) -> str:
    """``line`` with the contents of string and character literals blanked out."""
    return re.sub(r"\"(\\.|[^\"\\])*\"|'(\\.|[^'\\])*'", lambda m: " " * len(m.group(0)), line)


def _break_directive(line: str, width: int) -> list[str]:
    parts = re.split(r"(?<=\S) (?=&&|\|\|)", line)
    lines, current = [], ""
    for part in parts:
        candidate = f"{current} {part}" if current else part
        if current and len(candidate) + 2 > width:
            lines.append(current + " \\")
            current = "    " + part
        else:
            current = candidate
    lines.append(current)
    return lines


def _break_code(line: str, width: int) -> list[str]:
    """Break a statement at commas (after) or binary operators (before), each line at the
    shallowest bracket depth that makes it fit, continuing under the innermost open bracket
    (or 8 columns in, when that is past the middle of the line)."""
    if len(line) <= width:
        return [line]
    masked = _outside_strings(line)
    indent = len(line) - len(line.lstrip())
    depth = 0
    opens: list[int] = []
    candidates = []  # (position to cut at, depth, rank: commas first, innermost open bracket)
    for i, ch in enumerate(masked):
        if ch in "([{":
            opens.append(i)
            depth += 1
            if ch == "(" and masked[i + 1:i + 2] not in (")", ""):  # last resort: after "("
                candidates.append((i + 1, depth, 2, -1))
        elif ch in ")]}":
            depth -= 1
            if opens:
                opens.pop()
        elif ch == "," and depth > 0 and i + 1 < len(line) and line[i + 1] == " ":
            candidates.append((i + 1, depth, 0, opens[-1]))
        elif ch == " " and (masked[i + 1:i + 3] in ("+ ", "- ") or masked[i + 1:i + 4] in
                            ("|| ", "&& ")) and masked[i - 1] not in "(,=":
            candidates.append((i, depth, 1, opens[-1] if opens else -1))
    column_of: dict[int, int] = {}  # input position -> output column, for the open brackets
    lines: list[str] = []
    start, column = 0, 0  # the current line prints line[start:] from output column `column`
    while column + len(line) - start > width:
        fitting = [c for c in candidates
                   if start < c[0] and column + (c[0] - start) <= width
                   and c[0] - start > (indent + 8 if not lines else 8)]
        if not fitting:
            break
        best = min(c[1:3] for c in fitting)
        cut, _, _, bracket = max(c for c in fitting if c[1:3] == best)
        for pos in opens_before(masked, start, cut):
            column_of.setdefault(pos, column + pos - start)
        lines.append((" " * column + line[start:cut].strip()) if lines else line[:cut].rstrip())
        under = column_of.get(bracket, bracket) + 1 + (line[bracket + 1:bracket + 2] == " ")
        column = under if 0 < under <= width // 2 else indent + 8
        start = cut + (len(line[cut:]) - len(line[cut:].lstrip()))
    lines.append(" " * column + line[start:] if lines else line)
    return lines


def opens_before(masked: str, start: int, end: int) -> list[int]:
    """Positions of the opening brackets in ``masked[start:end]``."""
    return [i for i in range(start, end) if masked[i] in "([{"]


def _break_asm(line: str, width: int) -> list[str]:
    """An assembler statement of NAME_kernels.S broken after commas, continued with a backslash
    (the C preprocessor joins the lines before the assembler reads them)."""
    lines, current = [], ""
    for part in re.split(r"(?<=,) ", line):
        candidate = f"{current} {part}" if current else part
        if current and len(candidate) + 2 > width:
            lines.append(current + " \\")
            current = "        " + part
        else:
            current = candidate
    lines.append(current)
    return lines
