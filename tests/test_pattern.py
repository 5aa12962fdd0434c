"""The pattern language: parsing, canonical text, exact meaning, and errors."""

import pytest
import torch
from hypothesis import given, settings

import sparseflash
from pattern_strategies import pattern_trees
from sparseflash import PatternError, parse


def _power_of_two(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


# The meaning of each primitive, written out per element in plain Python, independently of the library.
PLAIN_PREDICATES = {
    "dense": lambda p, j: True,
    "causal": lambda p, j: j <= p,
    "local(3)": lambda p, j: abs(p - j) <= 3,
    "local(0)": lambda p, j: p == j,
    "local(2, 5)": lambda p, j: p - 2 <= j <= p + 5,
    "local(7, 0)": lambda p, j: p - 7 <= j <= p,
    "global(3)": lambda p, j: j < 3 or p < 3,
    "sink(4)": lambda p, j: j < 4,
    "strided(5)": lambda p, j: (p - j) % 5 == 0,
    "butterfly(4)": lambda p, j: (p // 4) ^ (j // 4) == 0 or _power_of_two((p // 4) ^ (j // 4)),
    "butterfly(2, 2)": lambda p, j: (p // 2) ^ (j // 2) in (0, 1, 2),
    "chunk(6)": lambda p, j: p // 6 == j // 6,
    "local(2) + global(1)": lambda p, j: abs(p - j) <= 2 or j < 1 or p < 1,
    "local(5) & causal": lambda p, j: abs(p - j) <= 5 and j <= p,
    "causal - local(2)": lambda p, j: j <= p and not abs(p - j) <= 2,
    "~strided(3)": lambda p, j: (p - j) % 3 != 0,
}


def plain_mask(predicate, q_len, kv_len):
    offset = kv_len - q_len
    rows = [[bool(predicate(i + offset, j)) for j in range(kv_len)] for i in range(q_len)]
    return torch.tensor(rows, dtype=torch.bool)


@pytest.mark.parametrize("text", list(PLAIN_PREDICATES))
@pytest.mark.parametrize("q_len, kv_len", [(23, 23), (9, 31), (31, 9), (1, 17)], ids=["square", "q<kv", "q>kv", "decode"])
def test_dense_mask_matches_plain_predicate(text, q_len, kv_len):
    expected = plain_mask(PLAIN_PREDICATES[text], q_len, kv_len)
    assert torch.equal(parse(text).dense_mask(q_len, kv_len), expected)


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("dense", "dense"),
        ("causal()", "causal"),
        ("local(256)", "local(256)"),
        ("local(3, 3)", "local(3)"),
        ("local(4k)", "local(4096)"),
        ("local(1K, 0)", "local(1024, 0)"),
        ("global(4)+local(256)", "global(4) + local(256)"),
        ("local(256) | global(4)", "global(4) + local(256)"),
        ("  local( 256 ) +\n global(4)  ", "global(4) + local(256)"),
        ("butterfly(64)", "butterfly(64)"),
        ("butterfly(64, 3)", "butterfly(64, 3)"),
        ("causal & local(8)", "causal & local(8)"),
        ("local(8) & causal", "causal & local(8)"),
        ("sink(4) + sink(4)", "sink(4)"),
    ],
)
def test_canonical_text(text, canonical):
    assert str(parse(text)) == canonical


def test_precedence_intersection_binds_tighter_than_union():
    assert parse("sink(1) + local(2) & causal") == parse("sink(1) + (local(2) & causal)")
    assert parse("sink(1) + local(2) & causal") != parse("(sink(1) + local(2)) & causal")


def test_difference_is_left_associative():
    left = parse("dense - local(5) - sink(2)")
    assert left == parse("(dense - local(5)) - sink(2)")
    assert left != parse("dense - (local(5) - sink(2))")
    # and the meanings differ, so the grouping matters
    assert not torch.equal(left.dense_mask(20, 20), parse("dense - (local(5) - sink(2))").dense_mask(20, 20))


def test_complement_binds_tightest():
    assert parse("~causal & local(3)") == parse("(~causal) & local(3)")
    assert parse("~causal & local(3)") != parse("~(causal & local(3))")


def test_equal_patterns_hash_equal():
    a, b = parse("local(256)+global(4)"), parse("global(4) | local(256)")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1


def test_patterns_are_immutable():
    pattern = parse("local(3)")
    with pytest.raises(AttributeError):
        pattern.left = 5


def test_python_operators_build_the_same_trees():
    local, glob, causal = parse("local(4)"), parse("global(2)"), parse("causal")
    assert local + glob == parse("local(4) + global(2)")
    assert local & causal == parse("local(4) & causal")
    assert (local - glob) == parse("local(4) - global(2)")
    assert ~causal == parse("~causal")


# ---------------------------------------------------------------------------------- round trip



@settings(max_examples=150, deadline=None)
@given(pattern_trees(max_leaves=6))
def test_canonical_text_round_trips(text):
    pattern = parse(text)
    again = parse(str(pattern))
    assert again == pattern
    assert str(again) == str(pattern)
    # The canonical text means the same thing as the original, pair for pair.
    assert torch.equal(again.dense_mask(13, 17), pattern.dense_mask(13, 17))


# ---------------------------------------------------------------------------------------- errors


def _error(text) -> PatternError:
    with pytest.raises(PatternError) as info:
        parse(text)
    assert isinstance(info.value, ValueError)
    return info.value


def test_syntax_error_shows_caret_under_the_column():
    error = _error("local(256) + + global(4)")
    assert error.column == 14
    lines = str(error).splitlines()
    assert lines[-2].strip() == "local(256) + + global(4)"
    assert lines[-1].index("^") - lines[-2].index("l") == 13


def test_error_on_second_line_names_the_line():
    error = _error("local(3) +\n  @")
    assert (error.line, error.column) == (2, 3)
    assert "line 2" in str(error)


def test_unknown_name_lists_known_and_suggests_closest():
    message = str(_error("locl(256)"))
    assert "'locl'" in message and "did you mean 'local'" in message
    for name in sparseflash.PRIMITIVES:
        assert name in message


def test_names_are_case_sensitive():
    assert "did you mean 'local'" in str(_error("Local(3)"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("strided(0)", "strided: stride must be >= 1, got 0"),
        ("local(-1)", "local: window must be >= 0, got -1"),
        ("chunk(0)", "chunk: size must be >= 1, got 0"),
        ("butterfly(0)", "butterfly: block must be >= 1"),
        ("local(2.5)", "local: window must be a whole number"),
        ("local(1, 2, 3)", "local takes 1 or 2 argument(s), got 3"),
        ("global", "global takes 1 argument(s), got 0"),
        ("causal(3)", "causal takes 0 argument(s), got 1"),
    ],
)
def test_bad_arguments_name_the_primitive_and_rule(text, expected):
    error = _error(text)
    assert expected in str(error)
    assert text in str(error)
    assert "^" in str(error)


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_is_an_error(text):
    assert "empty pattern" in str(_error(text))


@pytest.mark.parametrize("text", ["local(3", "local(3) +", "(causal", "causal)", "local(3) local(4)", "~", "3"])
def test_syntax_errors_are_pattern_errors(text):
    error = _error(text)
    assert "^" in str(error)


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError, match="a pattern is a string or a Pattern"):
        parse(42)


@pytest.mark.parametrize("text", list(PLAIN_PREDICATES))
def test_predicate_works_on_int32_indices(text):
    """FlexAttention's mask_mod gets int32 indices; causal once wrapped its infinite bound to 0 there."""
    p = torch.arange(40, dtype=torch.int32)[:, None]
    j = torch.arange(40, dtype=torch.int32)[None, :]
    expected = plain_mask(PLAIN_PREDICATES[text], 40, 40)
    assert torch.equal(torch.broadcast_to(parse(text).allowed(p, j), (40, 40)), expected)
