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


def wrap(text: str, width: int = WIDTH) -> str:
    """``text`` with every line of more than ``width`` characters broken."""
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
            out += _break_directive(line, width)
        else:
            code, comment = _split_trailing_comment(line)
            if comment is not None:
                indent = line[:len(line) - len(stripped)]
                out += _fill_block(indent, comment, width)
                out += _break_code(code.rstrip(), width)
            else:
                out += _break_code(line, width)
    return "\n".join(out)


def _fill_block(indent: str, body: str, width: int) -> list[str]:
    """A one-line comment as a block of lines no wider than ``width``."""
    words = body.split()
    first = f"{indent}/* "
    if len(first) + len(body) + 3 <= width:
        return [f"{first}{body} */"]
    lines, current = [], first
    for word in words:
        if len(current) + len(word) > width - 1 and current.strip() not in ("/*", "*"):
            lines.append(current.rstrip())
            current = f"{indent} * "
        current += word + " "
    if len(current) + 2 > width:
        lines.append(current.rstrip())
        current = f"{indent} "
    lines.append(current + "*/")
    return lines


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
    """Break a statement at commas (after) or binary operators (before), at the shallowest
    bracket depth that makes the first line fit; continue under the opening bracket."""
    if len(line) <= width:
        return [line]
    masked = _outside_strings(line)
    indent = len(line) - len(line.lstrip())
    depth = 0
    opens: list[int] = []
    candidates = []  # (depth, rank, position to cut at, column to continue at); commas first
    for i, ch in enumerate(masked):
        if ch in "([{":
            opens.append(i)
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if opens:
                opens.pop()
        elif ch == "," and depth > 0 and i + 1 < len(line) and line[i + 1] == " ":
            candidates.append((depth, 0, i + 1, opens[-1] + 1))
        elif ch == " " and masked[i + 1:i + 3] in ("+ ", "- ") and depth > 0 \
                and masked[i - 1] not in "(,":
            candidates.append((depth, 1, i, opens[-1] + 1))
    fitting = [c for c in candidates if indent + 8 < c[2] < width]
    if not fitting:
        return [line]
    best = min(c[:2] for c in fitting)
    _, _, cut, column = max(c for c in fitting if c[:2] == best)
    if column > width // 2:
        column = indent + 8
    head = line[:cut].rstrip()
    rest = " " * column + line[cut:].lstrip()
    if len(rest) >= len(line):
        return [line]
    return [head] + _break_code(rest, width)
