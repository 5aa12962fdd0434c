"""Errors raised for bad patterns and bad attention inputs."""

from __future__ import annotations


class PatternError(ValueError):
    """A pattern string that cannot run: bad syntax, an unknown name, or a bad argument.

    ``text`` is the pattern as given; ``line`` and ``column`` (1-based) point at the place it broke
    when that place is known, and the message shows the text with a caret under it.
    """

    def __init__(self, message: str, text: str = "", line: int | None = None, column: int | None = None):
        self.text = text
        self.line = line
        self.column = column
        self.reason = message
        super().__init__(_with_caret(message, text, line, column))


def _with_caret(message: str, text: str, line: int | None, column: int | None) -> str:
    if not text:
        return message
    lines = text.splitlines() or [text]
    if line is None or column is None or not 1 <= line <= len(lines):
        return f"{message}\n  in pattern: {text!r}"
    where = f"line {line}, column {column}" if len(lines) > 1 else f"column {column}"
    shown = lines[line - 1]
    caret = " " * (column - 1) + "^"
    return f"{message} ({where})\n    {shown}\n    {caret}"
