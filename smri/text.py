"""Text that came from a file, made safe to print: no byte of it can move the cursor, clear the
screen, or start a line of its own.

A patient id, a class name or a store attribute is data someone else wrote. Printed raw, an
escape sequence (``ESC[2J``) acts on the terminal and a newline forges a line of output (an
``Error: ...`` that smri never said). `printable` escapes such characters as Python's repr shows
them (``a\\nb``, ``\\x1b[2J``); `terminal_text` does the same to a whole text except its own
line ends, for the CLI's output streams (`smri.cli.common`).
"""

from __future__ import annotations

import re
import unicodedata

# Characters that break a one-line message (and can forge lines of output): controls such as
# newline, carriage return and escape, and the Unicode line and paragraph separators.
LINE_BREAKING = ("Cc", "Zl", "Zp")
# What a terminal acts on, other than the line ends and tabs text is made of: C0 controls
# (ESC among them), DEL, C1 controls (0x9b is a one-byte CSI) and the Unicode separators.
_TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a patient id or be named in a one-line message, or None."""
    if any(unicodedata.category(c) == "Cs" for c in name):  # os.fsdecode's escaped bytes
        return "is not valid UTF-8"
    if any(unicodedata.category(c) in LINE_BREAKING for c in name):
        return "holds control characters"
    return None


def has_control_characters(name: str) -> bool:
    """Whether `name` holds a newline, another control character or a line separator, or
    bytes that are not UTF-8 (a patient id must be text a store and a CSV can hold)."""
    return name_problem(name) is not None


def printable(name: str) -> str:
    """`name` with control characters and bytes that are not UTF-8 escaped (as repr shows
    them: ``Bad\\xff``), for one-line messages. Text without them comes back unchanged."""
    try:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "backslashreplace").decode("utf-8")
    if any(unicodedata.category(c) in LINE_BREAKING for c in shown):
        return repr(shown)[1:-1]
    return shown


def one_line(text: str) -> str:
    """`text` as one printable line: every control character escaped, newlines included."""
    return _TERMINAL_CONTROLS.sub(_escape, text).replace("\n", "\\n").replace("\r", "\\r")


def terminal_text(text: str) -> str:
    """`text` with every character a terminal would act on escaped (``\\x1b``), except the
    newlines, carriage returns and tabs that lay out smri's own output (a progress bar redraws
    its line with a carriage return)."""
    if not _TERMINAL_CONTROLS.search(text):
        return text
    return _TERMINAL_CONTROLS.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    c = match.group(0)
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
