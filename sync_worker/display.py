"""Text shown to a person (summary, status, verify, console logs, error lines) with every
control character escaped, so CRM data cannot drive the terminal that shows it."""

from __future__ import annotations


def printable(text: str, keep: str = "") -> str:
    """`text` with each non-printable character (controls such as ESC, format characters,
    line and paragraph separators, anything unassigned) written as a Python escape.

    Args:
        text: what to show.
        keep: characters to leave as they are (a rendered table keeps its newlines).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
