"""Launch schedules (which program runs which row) must not change a result: each against the oracle."""

import pytest
import torch
from attention_oracle import check_close, reference_attention

import sparseflash

pytest.importorskip("triton")  # the kernels need it; without it only the torch path is tested
import sparseflash.kernels.backward as backward_kernels  # noqa: E402
import sparseflash.kernels.common as kernels  # noqa: E402
import sparseflash.kernels.forward as forward_kernel  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.common import BackwardConfig, ForwardConfig, Schedule, auto_schedule  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402
import sparseflash.kernels.split as split  # noqa: E402
from sparseflash.kernels.split import split_plan  # noqa: E402

SCHEDULES = [Schedule(heavy, heads) for heavy in (False, True) for heads in (False, True)]


# local + global at 150: the global row is the longest, so heavy-first reorders the rows. causal at
# 100 = 3 * 32 + 4: the last block is the longest and starts first, and its second tile lies past the
# end; that once cost the real tile at the grid's end its program (GPU dQ rows never written).
@pytest.mark.parametrize("pattern, length", [("local(20) + global(5)", 150), ("causal", 100)])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"heavy{int(s.heavy_first)}-heads{int(s.heads_fastest)}")
def test_every_schedule_matches_the_oracle(schedule, pattern, length, monkeypatch):
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    gen = torch.Generator().manual_seed(7)
    q, k, v, dout = (torch.randn(2, 3, length, 32, generator=gen) for _ in range(4))
    mask = sparseflash.compile_mask(pattern, length, length, block_m=32, block_n=32)
    allowed = sparseflash.parse(pattern).dense_mask(length, length)
    check_kernels_against_oracle(q, k, v, dout, mask, allowed, schedule=schedule)


# Both ways of walking full blocks: as runs of consecutive blocks, and one listed block at a time;
# runs (and dense rows, whose last tile is cut by the sequence end) forwards and backwards. At 128
# tokens, chunk(32) and local(128) (every block listed) have no partial block at all, so the
# forward runs without its partial-block loop (HAS_PARTIAL).
@pytest.mark.parametrize("walk", ["forward", "reverse"])
@pytest.mark.parametrize("full_runs", [False, True], ids=["block-list", "runs"])
@pytest.mark.parametrize(
    "pattern, length",
    [("causal", 130), ("chunk(48) + sink(3) - local(2)", 130), ("dense", 130), ("chunk(32)", 128), ("local(128)", 128)],
)
def test_full_block_walks_match_the_oracle(pattern, length, full_runs, walk, monkeypatch):
    if pattern == "dense" and not full_runs:
        pytest.skip("dense rows have no block list")
    order = {"forward": kernels.WALK_FORWARD.value, "reverse": kernels.WALK_REVERSE.value}[walk]
    for module, name in ((forward_kernel, "FORWARD_WALK"), (backward_kernels, "DKDV_WALK"), (backward_kernels, "DQ_WALK")):
        monkeypatch.setattr(module, name, order)
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    gen = torch.Generator().manual_seed(11)
    q, k, v, dout = (torch.randn(1, 2, length, 32, generator=gen) for _ in range(4))
    mask = sparseflash.compile_mask(pattern, length, length, block_m=16, block_n=16)
    assert (mask.n_partial == 0) == (length == 128)
    allowed = sparseflash.parse(pattern).dense_mask(length, length)
    check_kernels_against_oracle(q, k, v, dout, mask, allowed, full_runs=full_runs)


# Long rows and columns cut into items (kernels/split.py), merged after: the global rows and
# columns here hold every block, rows with no key at all (causal with Lq > Lk) sit inside split
# rows, GQA folds two query heads into each dK/dV item, and kernel tiles of 16 walk 32-blocks.
@pytest.mark.parametrize("split_blocks", [1, 3])
@pytest.mark.parametrize(
    "pattern, q_len, kv_len, kv_heads",
    [("local(20) + global(5)", 200, 200, 3), ("(local(30) | global(40)) & causal", 230, 150, 1), ("global(3)", 170, 97, 3)],
)
def test_split_lines_match_the_oracle(pattern, q_len, kv_len, kv_heads, split_blocks, monkeypatch):
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    gen = torch.Generator().manual_seed(q_len + split_blocks)
    q, dout = (torch.randn(1, 3, q_len, 32, generator=gen) for _ in range(2))
    k, v = (torch.randn(1, kv_heads, kv_len, 32, generator=gen) for _ in range(2))
    mask = sparseflash.compile_mask(pattern, q_len, kv_len, block_m=32, block_n=32)
    assert split_plan(mask, True, split_blocks) is not None and split_plan(mask, False, split_blocks) is not None
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    for schedule in (Schedule(True, True), Schedule(True, False)):
        check_kernels_against_oracle(q, k, v, dout, mask, allowed, schedule=schedule, split_blocks=split_blocks)


def narrow_block_masks():
    """Masks whose rows or columns hold narrow partial blocks (BlockMask.tile_kv_windows, walked in
    16-key or 16-query steps), as (mask, allowed)."""
    pattern = "local(40) + global(4)"  # the global column: 4 keys a block; the global row: 4 queries
    yield sparseflash.compile_mask(pattern, 200, 200, block_m=64, block_n=64), sparseflash.parse(pattern).dense_mask(200, 200)
    gen = torch.Generator().manual_seed(5)
    allowed = torch.rand(190, 250, generator=gen) < 0.03
    allowed[:, :64] = False
    allowed[:, 57:63] = torch.rand(190, 6, generator=gen) < 0.5  # keys 57-62: the window is 48-63
    allowed[:, 192:] = False
    allowed[:, 203:211] = torch.rand(190, 8, generator=gen) < 0.5  # keys 203-210: window 11-26 of block 3
    allowed[64:128, 64:] = False
    allowed[70:83, 64:] = torch.rand(13, 186, generator=gen) < 0.5  # queries 70-82, every key block
    allowed[:3, 64:] = False  # rows with no key at all
    yield sparseflash.mask_from_dense(allowed, block_m=64, block_n=64), allowed


# Narrow partial blocks in all three kernels: with kernel tiles as large as the mask blocks and
# smaller, in whole lines and in split ones (their narrow blocks then fall into some items only),
# with GQA folding two query heads into each dK/dV program; kernel tiles that miss the window of
# their line's blocks narrow across it skipping them, or walking them (the *_SKIP_ACROSS switches).
@pytest.mark.parametrize("skip_across", [True, False], ids=["skip", "walk"])
@pytest.mark.parametrize("tile, split_blocks", [(64, 0), (16, 0), (32, 2)])
@pytest.mark.parametrize("case", list(narrow_block_masks()), ids=["global", "from-dense"])
def test_narrow_blocks_match_the_oracle(case, tile, split_blocks, skip_across, monkeypatch):
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    for module, name in ((forward_kernel, "FORWARD_SKIP_ACROSS"), (backward_kernels, "DKDV_SKIP_ACROSS"), (backward_kernels, "DQ_SKIP_ACROSS")):
        monkeypatch.setattr(module, name, skip_across)
    mask, allowed = case
    assert mask.narrow_row_blocks > 0 and mask.narrow_col_blocks > 0
    assert mask.across_row_blocks > 0 and mask.across_col_blocks > 0
    gen = torch.Generator().manual_seed(tile + split_blocks)
    q, dout = (torch.randn(1, 2, mask.q_len, 24, generator=gen) for _ in range(2))
    k, v = (torch.randn(1, 1, mask.kv_len, 24, generator=gen) for _ in range(2))
    check_kernels_against_oracle(q, k, v, dout, mask, allowed, split_blocks=split_blocks, tile=tile)


# Partial steps mask their scores by comparing keys with each row's key spans (one run a row, one
# wrapped around the block's ends, or two), or by loading the uint8 tile: both against the oracle,
# in all three kernels, with kernel tiles smaller than the mask's blocks (the spans are read from
# inside the tile) and odd ends.
@pytest.mark.parametrize("tile_loads", [False, True], ids=["key-spans", "tile-loads"])
@pytest.mark.parametrize(
    "pattern, q_len, kv_len, key_spans",
    [
        ("local(50) & causal", 190, 170, 1),
        ("local(40) + global(4)", 301, 293, 1),  # wrapped: band rows beside the global column
        ("local(20) + global(3)", 150, 150, 2),
        ("local(6) + strided(40)", 130, 130, 2),
    ],
)
def test_key_spans_and_tile_loads_match_the_oracle(pattern, q_len, kv_len, key_spans, tile_loads, monkeypatch):
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    mask = sparseflash.compile_mask(pattern, q_len, kv_len, block_m=64, block_n=64)
    assert mask.key_spans == key_spans
    gen = torch.Generator().manual_seed(q_len + kv_len)
    q, dout = (torch.randn(1, 2, q_len, 16, generator=gen) for _ in range(2))
    k, v = (torch.randn(1, 2, kv_len, 16, generator=gen) for _ in range(2))
    check_kernels_against_oracle(q, k, v, dout, mask, sparseflash.parse(pattern).dense_mask(q_len, kv_len), tile=32, key_spans=not tile_loads)


@pytest.mark.parametrize("split_blocks", [1, 2, 5, 8])
def test_split_plan_covers_every_line_once(split_blocks):
    mask = sparseflash.compile_mask("local(50) + global(7) + strided(90)", 700, 650, block_m=32, block_n=32)
    for by_rows, offsets in ((True, (mask.full_kv_offsets, mask.partial_kv_offsets)), (False, (mask.full_q_offsets, mask.partial_q_offsets))):
        full, partial = ((o[1:] - o[:-1]).tolist() for o in offsets)
        lengths = [f + p for f, p in zip(full, partial)]
        plan = split_plan(mask, by_rows, split_blocks)
        lines, begins, ends, slots = (t.tolist() for t in (plan.lines, plan.begins, plan.ends, plan.slots))
        sizes = [e - b for b, e in zip(begins, ends)]
        assert sizes == sorted(sizes, reverse=True), "items start longest first"
        assert max(sizes) <= split_blocks
        covered = {line: [] for line in range(len(lengths))}
        for line, begin, end, slot in zip(lines, begins, ends, slots):
            covered[line].append((begin, end, slot))
        merge_offsets, merge_lines = plan.merge_offsets.tolist(), plan.merge_lines.tolist()
        assert merge_lines == [line for line, n in enumerate(lengths) if n > split_blocks]
        for line, items in covered.items():
            items.sort()
            assert [b for b, _, _ in items] == [0] + [e for _, e, _ in items[:-1]] and items[-1][1] == lengths[line]
            if line in merge_lines:
                j = merge_lines.index(line)
                assert sorted(s for _, _, s in items) == list(range(merge_offsets[j], merge_offsets[j + 1]))
            else:
                assert [s for _, _, s in items] == [-1]
        assert plan.n_slots == merge_offsets[-1] == sum(1 for s in slots if s >= 0)


def nan_padded(batch, heads, length, head_dim, gen):
    """Random (B, H, L, D) view of a buffer whose rows past L in every head are NaN: a tile load
    that reads past a head's end (into the padding) instead of getting zeros poisons the result."""
    buffer = torch.full((batch, heads, length + 24, head_dim), float("nan"))
    view = buffer[:, :, :length]
    view.copy_(torch.randn(batch, heads, length, head_dim, generator=gen))
    return view


# Tiles through tensor descriptors (TMA on Hopper; the interpreter emulates them): rows past the
# end (dense with Lk = 200, not a multiple of 16; causal with Lq > Lk) must arrive as zeros, per
# head (the descriptors span (B, H, L, D); NaN rows follow each head's end here).
# Both kinds of descriptor: built on the host (True) and built by each program ("device").
@pytest.mark.parametrize("tma", [True, "device"])
@pytest.mark.parametrize("pattern, q_len, kv_len", [("dense", 150, 200), ("causal", 120, 90), ("local(20) + global(5)", 130, 130)])
def test_tensor_descriptor_loads_match_the_oracle(pattern, q_len, kv_len, tma, monkeypatch):
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    gen = torch.Generator().manual_seed(5)
    q, dout = (nan_padded(2, 2, q_len, 32, gen) for _ in range(2))
    k, v = (nan_padded(2, 2, kv_len, 32, gen) for _ in range(2))
    mask = sparseflash.compile_mask(pattern, q_len, kv_len, block_m=32, block_n=32)
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    check_kernels_against_oracle(q, k, v, dout, mask, allowed, split_blocks=2, tma=tma)


# Block lists read a few entries at a time into registers (ForwardConfig.list_slots): rows longer
# than the slots take several chunks, split items start mid-list, and "causal - local(10)" leaves
# rows with no block at all.
@pytest.mark.parametrize("list_slots", [2, 4, 16])
@pytest.mark.parametrize(
    "pattern, q_len, kv_len, split_blocks",
    [("local(90) + global(5) + strided(50)", 200, 180, 0), ("causal - local(10)", 150, 150, 0), ("local(20) + global(5)", 200, 200, 3)],
)
def test_block_lists_in_registers_match_the_oracle(pattern, q_len, kv_len, split_blocks, list_slots, monkeypatch):
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    gen = torch.Generator().manual_seed(q_len + list_slots)
    q = torch.randn(1, 2, q_len, 32, generator=gen)
    k, v = (torch.randn(1, 1, kv_len, 32, generator=gen) for _ in range(2))
    mask = sparseflash.compile_mask(pattern, q_len, kv_len, block_m=32, block_n=32)
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    scale = 32**-0.5
    config = ForwardConfig(16, 16, 4, 1, Schedule(), None, split_blocks, list_slots=list_slots)
    out, lse = attention_forward(q, k, v, mask, scale, config=config)
    ref_out, ref_lse = reference_attention(q, k, v, allowed, scale)
    same_out, same_lse = reference_attention(q, k, v, allowed, scale, compute_dtype=torch.float32)
    check_close("out", out, same_out, ref_out, torch.float32)
    check_close("lse", lse, same_lse, ref_lse, torch.float32)


def test_tma_choice_must_be_known():
    mask = sparseflash.compile_mask("local(20)", 64, block_m=32, block_n=32)
    q = torch.randn(1, 1, 64, 16)
    with pytest.raises(ValueError, match="tma='hots'"):
        attention_forward(q, q, q, mask, 0.25, config=ForwardConfig(16, 16, 4, 1, tma="hots"))


def test_list_slots_must_be_a_power_of_two():
    mask = sparseflash.compile_mask("local(20)", 64, block_m=32, block_n=32)
    q = torch.randn(1, 1, 64, 16)
    with pytest.raises(ValueError, match="list_slots=6"):
        attention_forward(q, q, q, mask, 0.25, config=ForwardConfig(16, 16, 4, 1, list_slots=6))


def check_kernels_against_oracle(
    q, k, v, dout, mask, allowed, schedule=Schedule(), full_runs=None, split_blocks=0, tma=False, tile=16, key_spans=False
):
    scale = q.shape[-1] ** -0.5
    forward_config = ForwardConfig(tile, tile, 4, 1, schedule, full_runs, split_blocks, tma, key_spans=key_spans)
    out, lse = attention_forward(q, k, v, mask, scale, config=forward_config)
    backward_config = BackwardConfig(tile, tile, tile, tile, 4, 1, schedule, full_runs, split_blocks, tma, key_spans=key_spans)
    dq, dk, dv = attention_backward(dout, q, k, v, out, lse, mask, scale, config=backward_config)
    leaves = [t.clone().double().requires_grad_(True) for t in (q, k, v)]
    ref_out, ref_lse = reference_attention(*leaves, allowed)
    ref_grads = torch.autograd.grad((ref_out * dout.double()).sum(), leaves)
    same = [t.clone().requires_grad_(True) for t in (q, k, v)]
    same_out, same_lse = reference_attention(*same, allowed, compute_dtype=torch.float32)
    same_grads = torch.autograd.grad((same_out * dout).sum(), same)
    for name, got, same_result, oracle in zip(
        ("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), (same_out, same_lse, *same_grads), (ref_out, ref_lse, *ref_grads)
    ):
        check_close(name, got, same_result.detach(), oracle.detach(), torch.float32)


def test_auto_schedule_puts_heads_fastest_only_for_uneven_rows():
    uneven = sparseflash.compile_mask("local(256) + global(4)", 8192)
    even = sparseflash.compile_mask("local(8192)", 8192)  # every block listed as full
    assert auto_schedule(uneven, by_rows=True).heads_fastest
    assert auto_schedule(uneven, by_rows=False).heads_fastest
    assert not auto_schedule(even, by_rows=True).heads_fastest
    assert not auto_schedule(sparseflash.compile_mask("local(256)", 8192), by_rows=True).heads_fastest


def test_auto_schedule_starts_balanced_lines_longest_first_in_the_backward_only():
    """Balanced masks (bands, butterflies): the forward takes its lines in order (no order table to
    load first), the backward longest first; uneven ones longest first in both (HEAVY_FIRST_BALANCED_*)."""
    for balanced in ("local(1k) & causal", "butterfly(128)"):
        mask = sparseflash.compile_mask(balanced, 32768)
        assert not auto_schedule(mask, by_rows=True).heavy_first
        assert auto_schedule(mask, by_rows=True, backward=True).heavy_first
        assert auto_schedule(mask, by_rows=False, backward=True).heavy_first
    uneven = sparseflash.compile_mask("local(256) + global(4)", 8192)
    assert auto_schedule(uneven, by_rows=True).heavy_first and auto_schedule(uneven, by_rows=True, backward=True).heavy_first


def test_auto_split_only_when_a_line_outweighs_its_multiprocessor_shares(monkeypatch):
    """split.auto_split_blocks on a 132-multiprocessor GPU: local(256)+global(4) at 32k has 1,780
    blocks a head and a 256-block global row and column; 16 heads hide the row (1.2 shares, two
    needed), not the column (one share needed); 4 heads hide neither."""
    monkeypatch.setattr(split, "_multiprocessor_count", lambda device: 132)
    mask = sparseflash.compile_mask("local(256) + global(4)", 32768)
    cuda = torch.device("cuda")
    assert split.auto_split_blocks(mask, True, 16, cuda) == 0
    assert split.auto_split_blocks(mask, True, 4, cuda) == max(split.MIN_SPLIT_BLOCKS, -(-1780 * 4 // (132 * 4)))
    assert split.auto_split_blocks(mask, False, 1, cuda) == split.MIN_SPLIT_BLOCKS
    assert split.auto_split_blocks(mask, False, 16, cuda) == -(-1780 * 16 // (132 * 4))  # 54 blocks an item
    assert split.auto_split_blocks(sparseflash.compile_mask("local(256)", 32768), False, 16, cuda) == 0
    assert split.auto_split_blocks(mask, True, 1, torch.device("cpu")) == 0  # CPU runs split only when asked
    assert split.auto_split_blocks(sparseflash.compile_mask("dense", 32768), True, 1, cuda) == 0


def test_tma_mode_choices():
    from sparseflash.kernels.common import TMA_DEVICE, TMA_HOST, TMA_OFF, tma_mode

    cpu = torch.zeros(1, 1, 16, 16, dtype=torch.float16)
    assert tma_mode(None, cpu) == TMA_OFF.value  # not CUDA: pointers
    assert tma_mode(False, cpu) == TMA_OFF.value
    assert tma_mode(True, cpu) == tma_mode("host", cpu) == TMA_HOST.value
    assert tma_mode("device", cpu) == TMA_DEVICE.value
    # An explicit choice on a layout TMA cannot address is refused by name, not left to Triton.
    strided = torch.zeros(1, 1, 16, 32, dtype=torch.float16)[..., ::2]
    with pytest.raises(ValueError, match=r"tma=True: a \(1, 1, 16, 16\) input has stride 2 along the head dim"):
        tma_mode(True, cpu, strided)
    odd_rows = torch.zeros(1, 1, 16, 12, dtype=torch.float16)[..., :8]  # rows 24 bytes apart
    with pytest.raises(ValueError, match="stride 12 in dim 2"):
        tma_mode("device", odd_rows)


# The measured rule (common.prefer_host_descriptors): host descriptors, except for kernels that walk
# rows when one row dwarfs the rest, and for the dense backward.
@pytest.mark.parametrize(
    "pattern, forward, dq, dkdv",
    [
        ("dense", True, False, False),
        ("causal", True, True, True),
        ("local(256)+global(4)", False, False, True),
        ("local(256)+sink(4)", True, True, True),
        ("butterfly(128)", True, True, True),
    ],
)
def test_host_descriptors_where_measured_faster(pattern, forward, dq, dkdv):
    from sparseflash.kernels.common import prefer_host_descriptors

    mask = sparseflash.compile_mask(pattern, 32768)
    assert prefer_host_descriptors(mask, by_rows=True, backward=False) == forward
    assert prefer_host_descriptors(mask, by_rows=True, backward=True) == dq
    assert prefer_host_descriptors(mask, by_rows=False, backward=True) == dkdv


# The measured config rule (common.TWO_PER_SM_FORWARD): short rows of full blocks, or of partial
# ones masked by one key span a row, get the two-programs-per-SM forward tile at D=128; two spans a
# row or one long row keep the default.
@pytest.mark.parametrize(
    "pattern, two_per_sm",
    [("butterfly(128)", True), ("chunk(512)", True), ("local(1k) & causal", True), ("local(256)", True),
     ("local(256)+global(4)", False), ("local(256)+sink(4)", True), ("global(128) + chunk(256)", False),
     ("dense", False), ("causal", False)],
)  # fmt: skip
def test_short_rows_get_the_two_per_sm_forward_where_measured_faster(pattern, two_per_sm):
    from sparseflash.kernels.common import SHORT_SPAN_ROWS_FORWARD, TWO_PER_SM_FORWARD, default_forward_config

    mask = sparseflash.compile_mask(pattern, 32768)
    wanted = TWO_PER_SM_FORWARD if mask.n_partial == 0 else SHORT_SPAN_ROWS_FORWARD
    config = default_forward_config(128, torch.bfloat16, mask)
    assert (config == wanted[128, True]) == two_per_sm
    assert config.key_spans == (two_per_sm and mask.n_partial > 0)
    # Never at other head dims or in float32.
    assert default_forward_config(64, torch.bfloat16, mask) != wanted[128, True]
    assert default_forward_config(128, torch.float32, mask) != wanted[128, True]


@pytest.mark.parametrize("pattern", ["dense", "causal", "local(1k) & causal", "butterfly(128)", "strided(256)+local(128)", "local(256)+global(4)"])
def test_gpus_with_less_shared_memory_take_tiles_that_fit_it(pattern):
    """Below 160 KB a block (RTX 30xx/40xx, L4, L40: 99 KB) D=128 and D=256 take
    common.SMALL_SHARED_*, whatever the rows; D=64, float32, the A100 (163 KB) and the H200
    (227 KB) keep the tuned tables, which is also what the interpreter (no GPU) gets."""
    from sparseflash.kernels import common

    mask = sparseflash.compile_mask(pattern, 32768)
    for head_dim in (128, 256):
        for pick, small in ((common.default_forward_config, common.SMALL_SHARED_FORWARD), (common.default_backward_config, common.SMALL_SHARED_BACKWARD)):
            assert pick(head_dim, torch.bfloat16, mask, 99 * 1024) == small[head_dim, True]
            for shared_memory in (None, 163 * 1024, 227 * 1024):
                assert pick(head_dim, torch.bfloat16, mask, shared_memory) == pick(head_dim, torch.bfloat16, mask)
            assert pick(head_dim, torch.bfloat16, mask) != small[head_dim, True]
    for head_dim, dtype in ((64, torch.bfloat16), (128, torch.float32)):
        assert common.default_forward_config(head_dim, dtype, mask, 99 * 1024) == common.default_forward_config(head_dim, dtype, mask)
        assert common.default_backward_config(head_dim, dtype, mask, 99 * 1024) == common.default_backward_config(head_dim, dtype, mask)
    assert common.shared_memory_per_block(torch.device("cpu")) is None


# The measured tile rules for rows of partial blocks with one key span a row (common.PARTIAL_SPAN_ROWS_*),
# and at D=64 for short rows: the forward's SHORT_SPAN_ROWS_FORWARD (rows not long, partial blocks
# of one span) and the backward's EVEN_ROWS_BACKWARD (rows and columns balanced; the same entry as
# PARTIAL_SPAN_ROWS_BACKWARD at D=64). Causal at 2k is short but unbalanced and keeps the default.
@pytest.mark.parametrize(
    "pattern, partial_rows, d64_span_forward, d64_even_backward",
    [("strided(256)+local(128)", True, False, True), ("strided(256)", True, False, True),
     ("local(200)", True, False, True), ("local(1k) & causal", False, True, True),
     ("butterfly(128)", False, False, True), ("local(256)", False, True, True),
     ("local(256)+sink(4)", False, True, False), ("local(256)+global(4)", False, False, False),
     ("strided(256)+local(128)+global(4)", False, False, False), ("causal", False, False, False),
     ("dense", False, False, False)],
)  # fmt: skip
def test_tiles_for_partial_and_short_rows_where_measured_faster(pattern, partial_rows, d64_span_forward, d64_even_backward):
    from sparseflash.kernels import common

    mask = sparseflash.compile_mask(pattern, 32768)
    assert common.partial_span_rows(mask) == partial_rows
    for head_dim in (64, 128):
        forward = common.default_forward_config(head_dim, torch.bfloat16, mask)
        assert (forward == common.PARTIAL_SPAN_ROWS_FORWARD[head_dim, True]) == partial_rows
    d128_backward = common.default_backward_config(128, torch.bfloat16, mask)
    assert (d128_backward == common.PARTIAL_SPAN_ROWS_BACKWARD[128, True]) == partial_rows
    assert d128_backward.key_spans == partial_rows
    d64_forward = common.default_forward_config(64, torch.bfloat16, mask)
    assert (d64_forward == common.SHORT_SPAN_ROWS_FORWARD[64, True]) == d64_span_forward
    d64_backward = common.default_backward_config(64, torch.bfloat16, mask)
    assert (d64_backward == common.EVEN_ROWS_BACKWARD[64, True]) == d64_even_backward
    # float32 keeps its own small tiles.
    assert not common.default_forward_config(64, torch.float32, mask).key_spans
    assert not common.default_backward_config(128, torch.float32, mask).key_spans


@pytest.mark.parametrize("pattern, even", [("causal", False), ("local(1k) & causal", False), ("butterfly(128)", True), ("local(256)", True)])
def test_short_unbalanced_rows_keep_the_default_d64_backward(pattern, even):
    from sparseflash.kernels import common

    mask = sparseflash.compile_mask(pattern, 2048)
    assert common.row_class(mask) == "short"
    config = common.default_backward_config(64, torch.bfloat16, mask)
    assert (config == common.EVEN_ROWS_BACKWARD[64, True]) == even
    assert (config == common.BACKWARD_DEFAULTS[64, True, "short"]) == (not even)


@pytest.mark.parametrize("pattern, in_dq", [("local(1k) & causal", True), ("local(256)+global(4)", True), ("causal", False), ("dense", False)])
def test_delta_in_dq_for_short_rows_only(pattern, in_dq):
    assert backward_kernels.delta_in_dq(sparseflash.compile_mask(pattern, 32768)) == in_dq
