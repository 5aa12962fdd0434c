"""Rows that allow every key, computed apart in the forward (kernels/full_rows.py)."""

import pytest
import torch
from attention_oracle import check_close, forward_and_grads, reference_attention

import sparseflash
from sparseflash.pattern import split_full_rows

pytest.importorskip("triton")  # the kernels need it; without it only the torch path is tested
import sparseflash.kernels.backward as backward  # noqa: E402
import sparseflash.kernels.common as kernels  # noqa: E402
import sparseflash.kernels.full_rows as full_rows  # noqa: E402


@pytest.mark.parametrize(
    "pattern, q_len, kv_len",
    [("local(20) + global(5)", 90, 90), ("global(7)", 40, 60), ("global(3) + global(9) + (strided(5) - chunk(4))", 70, 50),
     ("causal + global(6)", 30, 80), ("butterfly(8) + global(12)", 64, 64)],
)  # fmt: skip
def test_split_full_rows_is_exact(pattern, q_len, kv_len):
    """Queries at p < g allow every key; every other query allows exactly what ``rest`` allows."""
    parsed = sparseflash.parse(pattern)
    rest, tokens = split_full_rows(parsed)
    positions = torch.arange(q_len) + kv_len - q_len
    whole, apart = parsed.dense_mask(q_len, kv_len), rest.dense_mask(q_len, kv_len)
    full = positions < tokens
    assert whole[full].all()
    assert torch.equal(whole[~full], apart[~full])
    assert not any(type(node).__name__ == "Global" for node in (rest.children or (rest,)))


# A difference at the top (a + b - c is (a + b) - c) may take keys from the global rows.
@pytest.mark.parametrize("pattern", ["global(9) + strided(5) - chunk(4)", "local(20) & global(5)", "(local(20) + global(5)) & causal", "local(3)", "dense", "global(0) + local(2)"])
def test_split_full_rows_needs_a_global_in_the_top_union(pattern):
    assert split_full_rows(sparseflash.parse(pattern)) is None


@pytest.mark.parametrize(
    "pattern, length, n_rows",
    [("local(256)+global(4)", 32768, 4), ("global(64) + local(128)", 32768, 64), ("global(65) + local(128)", 32768, None),
     ("local(256)+sink(4)", 32768, None), ("(local(256)+global(4)) & causal", 32768, None), ("causal + global(4)", 32768, None),
     ("local(256)+global(4)", 1000, None)],
)  # fmt: skip
def test_full_rows_go_apart_when_they_make_a_long_row(pattern, length, n_rows):
    """Apart only when the global rows are the long row of an otherwise short-row mask (not when
    every row is long, as under causal, nor at 1000 tokens, 8 blocks a row), and are at most
    MAX_FULL_ROWS rows."""
    split = full_rows.full_rows_apart(sparseflash.compile_mask(pattern, length))
    assert (split.n_rows if split else None) == n_rows
    if split:
        assert str(split.rest.pattern) == str(split_full_rows(sparseflash.parse(pattern))[0])
        assert split.rows.allowed_pairs == n_rows * length


# Queries sit at p = i + Lk - Lq: at 390 x 400 global(16) covers 6 query rows, at 300 x 250
# global(5) 55 (the first 50 at p < 0), at 300 x 340 global(50) 10, at 330 x 320 global(4) 14.
# Two query heads a key head, fp16 and fp32; 16-blocks make the global rows long. Outputs are
# poisoned first, so a row neither pass writes is NaN. Both passes split (checked, not assumed):
# the forward computes those rows apart, the backward their dQ (backward._dq_rows_apart). The
# gradient flows into out and lse, so the rows' delta takes dlse too.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    "pattern, q_len, kv_len, n_rows",
    [("local(8) + global(5)", 203, 203, 5), ("global(16) + local(7)", 390, 400, 6), ("local(9) + global(5)", 300, 250, 55),
     ("sink(3) + local(9) + global(16)", 300, 300, 16), ("global(50) + local(3)", 300, 340, 10), ("global(4) + local(3)", 330, 320, 14)],
)  # fmt: skip
def test_full_rows_apart_match_the_oracle(pattern, q_len, kv_len, n_rows, dtype, monkeypatch):
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    monkeypatch.setattr(full_rows, "MIN_APART_WORK", 0)  # these launches are small
    mask = sparseflash.compile_mask(pattern, q_len, kv_len, block_m=16, block_n=16)
    split = full_rows.full_rows_apart(mask, (4, 32))
    assert split is not None and split.n_rows == n_rows
    gen = torch.Generator().manual_seed(q_len)
    q, dout = (torch.randn(1, 4, q_len, 32, generator=gen).to(dtype) for _ in range(2))
    k, v = (torch.randn(1, 2, kv_len, 32, generator=gen).to(dtype) for _ in range(2))
    dlse = torch.randn(1, 4, q_len, generator=gen)
    rows_dq_calls = []
    split_dq = backward._dq_rows_apart
    monkeypatch.setattr(backward, "_dq_rows_apart", lambda *args: rows_dq_calls.append(1) or split_dq(*args))
    got = forward_and_grads(lambda *qkv: sparseflash.attention(*qkv, mask, return_lse=True), q, k, v, dout, dlse)
    assert rows_dq_calls == [1]
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    expected, same = (
        forward_and_grads(lambda *qkv: reference_attention(*qkv, allowed, compute_dtype=precision), q, k, v, dout, dlse)
        for precision in (torch.float64, dtype)
    )
    for name, g, s, o in zip(("out", "lse", "dq", "dk", "dv"), got, same, expected):
        check_close(name, g, s, o, dtype)


# The split's two launches write disjoint rows of the same out/lse, which lets them run side by
# side: the rest's leaves the rows below first_stored_row alone, the rows' writes into views of
# out and lse. At 16-blocks global(9) makes a long row; with items of 2 blocks both the rows' and
# (at 3 rows) the rest's first row block go through the split merge, whose stores are bounded too.
@pytest.mark.parametrize("split_blocks", [None, 2], ids=["whole rows", "items"])
def test_launches_write_only_their_rows(split_blocks):
    from sparseflash.kernels import forward
    from sparseflash.kernels.common import ForwardConfig

    q_len, kv_len, n_rows = 70, 90, 3
    mask = sparseflash.compile_mask("local(9) + global(9)", q_len, kv_len, block_m=16, block_n=16)
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, 2, q_len, 16, generator=gen, dtype=torch.float16)
    k, v = (torch.randn(1, 2, kv_len, 16, generator=gen, dtype=torch.float16) for _ in range(2))
    config = ForwardConfig(16, 16, num_warps=4, num_stages=1, split_blocks=split_blocks)
    whole_out, whole_lse = forward.attention_forward(q, k, v, mask, 0.25, config=config)

    out = torch.full_like(q, 7.0)
    lse = torch.full((1, 2, q_len), 7.0)
    forward.attention_forward(q, k, v, mask, 0.25, config=config, out=out, lse=lse, first_stored_row=n_rows)
    assert (out[:, :, :n_rows] == 7).all() and (lse[:, :, :n_rows] == 7).all()
    assert torch.equal(out[:, :, n_rows:], whole_out[:, :, n_rows:]) and torch.equal(lse[:, :, n_rows:], whole_lse[:, :, n_rows:])

    # Into views of the first rows (lse rows strided by q_len): nothing else is touched.
    out_view, lse_view = out[:, :, :n_rows], lse[:, :, :n_rows]
    forward.attention_forward(q[:, :, :n_rows], k, v, sparseflash.compile_mask("dense", n_rows, kv_len), 0.25, out=out_view, lse=lse_view)
    allowed = torch.ones(n_rows, kv_len, dtype=torch.bool)
    same, expected = (reference_attention(q[:, :, :n_rows], k, v, allowed, 0.25, compute_dtype=d) for d in (torch.float16, torch.float64))
    check_close("out", out_view, same[0], expected[0], torch.float16)
    check_close("lse", lse_view, same[1], expected[1], torch.float16)
    assert torch.equal(out[:, :, n_rows:], whole_out[:, :, n_rows:]) and torch.equal(lse[:, :, n_rows:], whole_lse[:, :, n_rows:])


def test_the_rows_launch_is_split_into_items():
    """The rows' mask is balanced (one line a head), and balanced forwards take their lines in order
    (common.HEAVY_FIRST_BALANCED_FORWARD); split items need the heavy-first order, so the rows'
    launch keeps it (launch.line_launch). Unsplit, its one line a head ran 1.8x slower (H200, 32k)."""
    from sparseflash.kernels import forward
    from sparseflash.kernels.common import head_dim_padded

    mask = sparseflash.compile_mask("global(16) + local(7)", 390, 400, block_m=16, block_n=16)
    split = full_rows.full_rows_apart(mask)
    q = torch.randn(1, 4, split.n_rows, 32, dtype=torch.float16)
    k = torch.randn(1, 2, 400, 32, dtype=torch.float16)
    config = full_rows.full_rows_config(head_dim_padded(32), q.dtype, split.rows)
    rows_launch = forward._prepare_forward(q, k, k, split.rows, False, config)
    assert rows_launch.plan is not None and rows_launch.constants["HEAVY_FIRST"]
    rest_launch = forward._prepare_forward(torch.randn(1, 4, 390, 32, dtype=torch.float16), k, k, split.rest, False, None)
    assert rest_launch.plan is None and not rest_launch.constants["HEAVY_FIRST"]


def test_small_launches_keep_the_whole_mask():
    """The rows' extra launches cost host time that a small launch cannot hide (MIN_APART_WORK:
    blocks x heads x head dim)."""
    mask = sparseflash.compile_mask("local(256)+global(4)", 32768)
    blocks = mask.n_full + mask.n_partial
    assert full_rows.full_rows_apart(mask, (16, 128)) is not None  # 28k blocks of D=128
    assert full_rows.full_rows_apart(mask, (32, 64)) is not None  # 57k blocks of D=64
    assert full_rows.full_rows_apart(mask, (full_rows.MIN_APART_WORK // (blocks * 128), 128)) is None
    assert full_rows.full_rows_apart(mask, (16, 64)) is None  # half the work of 16 heads of 128
    # 8k: B=2 x 32 heads of 64 (29k blocks, half the work each) and 16 heads of 128 (14k) stay whole.
    small = sparseflash.compile_mask("local(256)+global(4)", 8192)
    assert full_rows.full_rows_apart(small, (64, 64)) is None and full_rows.full_rows_apart(small, (16, 128)) is None


def test_whole_mask_when_switched_off(monkeypatch):
    mask = sparseflash.compile_mask("local(8) + global(5)", 203, block_m=16, block_n=16)
    assert full_rows.full_rows_apart(mask) is not None
    monkeypatch.setattr(full_rows, "FULL_ROWS_APART", False)
    assert full_rows.full_rows_apart(mask) is None
