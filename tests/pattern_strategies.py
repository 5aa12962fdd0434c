"""Hypothesis strategies for pattern text: random trees of primitives joined by every operator."""

from hypothesis import strategies as st

PRIMITIVE_TEXTS = [
    "dense", "causal", "local(3)", "local(0, 9)", "local(17, 2)", "global(5)", "sink(7)", "strided(3)", "strided(40)",
    "butterfly(4)", "butterfly(8, 1)", "butterfly(32)", "chunk(6)", "chunk(33)",
]  # fmt: skip


def pattern_trees(max_leaves: int):
    """Pattern text: primitives under `+`, `|`, `-`, `&` and `~`, fully parenthesised."""
    return st.recursive(
        st.sampled_from(PRIMITIVE_TEXTS),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "|", "-", "&"]), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
            inner.map(lambda t: f"~({t})"),
        ),
        max_leaves=max_leaves,
    )
