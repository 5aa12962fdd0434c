"""Pattern text -> pattern tree, with errors that point at the text.

The grammar (``grammar/pattern.lark``, shipped as ``sparseflash.grammar``) owns the syntax; this
module owns the names, their arguments and the rules those arguments must follow.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Callable

from .errors import PatternError
from .pattern import (
    Butterfly,
    Causal,
    Chunk,
    Complement,
    Dense,
    Difference,
    Global,
    Local,
    Pattern,
    Sink,
    Strided,
    intersection,
    union,
)


@dataclass(frozen=True)
class _Primitive:
    """How a name in the text becomes a node: the argument counts it takes and its rules."""

    usage: str
    arities: tuple[int, ...]
    build: Callable[..., Pattern]
    minimums: tuple[int, ...] = ()


PRIMITIVES: dict[str, _Primitive] = {
    "dense": _Primitive("dense", (0,), lambda: Dense()),
    "causal": _Primitive("causal", (0,), lambda: Causal()),
    "local": _Primitive("local(w) or local(left, right)", (1, 2), lambda left, right=None: Local(left, left if right is None else right), (0, 0)),
    "global": _Primitive("global(tokens)", (1,), lambda tokens: Global(tokens), (0,)),
    "sink": _Primitive("sink(tokens)", (1,), lambda tokens: Sink(tokens), (0,)),
    "strided": _Primitive("strided(stride)", (1,), lambda stride: Strided(stride), (1,)),
    "butterfly": _Primitive("butterfly(block) or butterfly(block, levels)", (1, 2), lambda block, levels=None: Butterfly(block, levels), (1, 0)),
    "chunk": _Primitive("chunk(size)", (1,), lambda size: Chunk(size), (1,)),
}

_ARGUMENT_NAMES = {
    "local": ("window", "window"),
    "global": ("tokens",),
    "sink": ("tokens",),
    "strided": ("stride",),
    "butterfly": ("block", "levels"),
    "chunk": ("size",),
}


@functools.lru_cache(maxsize=1)
def _parser():
    import lark

    grammar = resources.files("sparseflash.grammar").joinpath("pattern.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _number(token, text: str, primitive: str, position: int) -> int:
    raw = str(token)
    multiplier = 1024 if raw[-1] in "kK" else 1
    digits = raw[:-1] if multiplier != 1 else raw
    names = _ARGUMENT_NAMES.get(primitive, ("argument",) * 2)
    name = names[min(position, len(names) - 1)]
    if "." in digits:
        raise PatternError(
            f"{primitive}: {name} must be a whole number, got {raw}", text, token.line, token.column
        )
    value = int(digits) * multiplier
    minimum = PRIMITIVES[primitive].minimums[position]
    if value < minimum:
        raise PatternError(
            f"{primitive}: {name} must be >= {minimum}, got {raw}", text, token.line, token.column
        )
    return value


def _build(tree, text: str) -> Pattern:
    """Walk the Lark tree bottom-up. Written as a plain recursion so errors keep their positions."""
    kind = tree.data
    if kind == "union":
        return union(_build(tree.children[0], text), _build(tree.children[1], text))
    if kind == "intersection":
        return intersection(_build(tree.children[0], text), _build(tree.children[1], text))
    if kind == "difference":
        return Difference(_build(tree.children[0], text), _build(tree.children[1], text))
    if kind == "complement":
        return Complement(_build(tree.children[0], text))
    assert kind == "call", kind
    name_token = tree.children[0]
    name = str(name_token)
    if name not in PRIMITIVES:
        close = difflib.get_close_matches(name, PRIMITIVES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PatternError(
            f"unknown pattern {name!r}{hint} Known patterns: {', '.join(PRIMITIVES)}",
            text,
            name_token.line,
            name_token.column,
        )
    primitive = PRIMITIVES[name]
    argument_tokens = tree.children[1].children if len(tree.children) > 1 else []
    if len(argument_tokens) not in primitive.arities:
        expected = " or ".join(str(n) for n in primitive.arities)
        raise PatternError(
            f"{name} takes {expected} argument(s), got {len(argument_tokens)}: use {primitive.usage}",
            text,
            name_token.line,
            name_token.column,
        )
    values = [_number(token, text, name, position) for position, token in enumerate(argument_tokens)]
    return primitive.build(*values)


def parse(text: str | Pattern) -> Pattern:
    """Parse pattern text into a pattern tree (a ``Pattern`` passes through unchanged).

    Raises ``PatternError`` (a ``ValueError``) with the text and a caret under the problem.
    """
    if isinstance(text, Pattern):
        return text
    if not isinstance(text, str):
        raise TypeError(f"a pattern is a string or a Pattern, got {type(text).__name__}")
    if not text.strip():
        raise PatternError(f"empty pattern: write one of {', '.join(PRIMITIVES)}, or a combination")
    return _parse_text(text)


@functools.lru_cache(maxsize=256)
def _parse_text(text: str) -> Pattern:
    import lark

    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedCharacters as error:
        raise PatternError(f"unexpected character {text[error.pos_in_stream]!r}", text, error.line, error.column) from None
    except lark.exceptions.UnexpectedEOF:
        lines = text.splitlines() or [text]
        raise PatternError("the pattern ends too early", text, len(lines), len(lines[-1]) + 1) from None
    except lark.exceptions.UnexpectedToken as error:
        token = error.token
        if token.type == "$END":
            lines = text.splitlines() or [text]
            raise PatternError("the pattern ends too early", text, len(lines), len(lines[-1]) + 1) from None
        raise PatternError(f"unexpected {str(token)!r}", text, error.line, error.column) from None
    return _build(tree, text)
