"""The block-mask compiler against blocks reduced from the exact dense mask."""

import numpy as np
import pytest
import torch

import sparseflash
from sparseflash import compile_mask, mask_from_dense, parse
from sparseflash.blockmask import MASK_CACHE, ascii_grid, reduce_grid

EMPTY, PARTIAL, FULL = 0, 1, 2

# Small strides on purpose: the warning they raise is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore::sparseflash.SparsityWarning")

PATTERNS = [
    "dense", "causal", "local(5)", "local(3, 17)", "local(0)", "global(7)", "sink(20)", "strided(7)",
    "strided(300)", "strided(1)", "butterfly(16)", "butterfly(8, 2)", "butterfly(64)", "butterfly(3)", "chunk(40)",
    "local(30) + global(4)", "local(50) & causal", "~local(20)", "strided(64) + local(16)", "causal - local(10)",
    "~causal & local(40)", "chunk(64) + sink(3)", "(local(9) - sink(5)) & ~strided(3)", "dense - dense",
    "local(70) & ~local(20) & causal", "butterfly(32) & causal",
]  # fmt: skip

SIZES = [(97, 97), (113, 200), (200, 113), (1, 150), (256, 256), (300, 45)]
TILES = [(16, 16), (32, 64), (64, 16), (128, 128), (16, 128)]


def reference_block_classes(mask: torch.Tensor, block_m: int, block_n: int) -> torch.Tensor:
    """Block classes straight from the element mask; padding past the sequence end makes a block partial."""
    q_len, kv_len = mask.shape
    n_q, n_kv = -(-q_len // block_m), -(-kv_len // block_n)
    padded = torch.full((n_q * block_m, n_kv * block_n), -1, dtype=torch.int8)
    padded[:q_len, :kv_len] = mask.to(torch.int8)
    blocks = padded.view(n_q, block_m, n_kv, block_n).permute(0, 2, 1, 3).reshape(n_q, n_kv, -1)
    any_allowed, all_allowed = (blocks == 1).any(-1), (blocks == 1).all(-1)
    return torch.where(all_allowed, FULL, torch.where(any_allowed, PARTIAL, EMPTY)).to(torch.int8)


@pytest.mark.parametrize("tile", TILES, ids=lambda t: f"{t[0]}x{t[1]}")
@pytest.mark.parametrize("q_len, kv_len", SIZES, ids=lambda s: str(s))
@pytest.mark.parametrize("text", PATTERNS)
def test_block_classes_and_tiles_are_exact(text, q_len, kv_len, tile):
    block_m, block_n = tile
    exact = parse(text).dense_mask(q_len, kv_len)
    mask = compile_mask(text, q_len, kv_len, block_m=block_m, block_n=block_n)
    assert torch.equal(mask.to_dense(), reference_block_classes(exact, block_m, block_n))
    assert torch.equal(mask.to_dense_mask(), exact)
    assert mask.density() == pytest.approx(exact.float().mean().item())


@pytest.mark.parametrize("text", ["local(30) + global(4)", "causal - local(10)", "strided(64) + local(16)"])
def test_transposed_lists_hold_the_same_blocks(text):
    mask = compile_mask(text, 300, 333, block_m=32, block_n=16)
    for kind in ("full", "partial"):
        row_off, row_idx = getattr(mask, f"{kind}_kv_offsets"), getattr(mask, f"{kind}_kv_indices")
        col_off, col_idx = getattr(mask, f"{kind}_q_offsets"), getattr(mask, f"{kind}_q_indices")
        by_row = {(m, int(n)) for m in range(mask.n_q_blocks) for n in row_idx[row_off[m] : row_off[m + 1]]}
        by_col = {(int(m), n) for n in range(mask.n_kv_blocks) for m in col_idx[col_off[n] : col_off[n + 1]]}
        assert by_row == by_col
        # ascending within each row and column, so neighbouring programs walk K/V in the same order
        # (no block here is narrow: the blocks are too small, so partial rows are ascending too)
        assert mask.narrow_row_blocks == mask.narrow_col_blocks == 0
        for m in range(mask.n_q_blocks):
            assert torch.all(torch.diff(row_idx[row_off[m] : row_off[m + 1]]) > 0)
    # each partial block points at the same tile from both sides
    row_tile = {}
    for m in range(mask.n_q_blocks):
        for idx in range(mask.partial_kv_offsets[m], mask.partial_kv_offsets[m + 1]):
            row_tile[(m, int(mask.partial_kv_indices[idx]))] = int(mask.partial_kv_tiles[idx])
    for n in range(mask.n_kv_blocks):
        for idx in range(mask.partial_q_offsets[n], mask.partial_q_offsets[n + 1]):
            assert row_tile[(int(mask.partial_q_indices[idx]), n)] == int(mask.partial_q_tiles[idx])


def narrow_case_masks():
    """Masks with narrow partial blocks: global columns and rows, and random ones from a dense mask
    whose blocks allow at most 16 consecutive keys or queries, some at a block's end."""
    yield compile_mask("local(100) + global(4)", 700, block_m=64, block_n=128)
    yield compile_mask("local(60) + sink(3)", 333, 290, block_m=128, block_n=64)
    generator = torch.Generator().manual_seed(7)
    dense = torch.rand(320, 384, generator=generator) < 0.02  # scattered pairs: wide blocks
    dense[:, :128] = False
    dense[:, 120:126] = torch.rand(320, 6, generator=generator) < 0.5  # keys 120-125: a narrow column
    dense[64:128, 128:] = False
    dense[64:79, 128:] = torch.rand(15, 256, generator=generator) < 0.5  # queries 64-78: narrow rows
    yield mask_from_dense(dense, block_m=64, block_n=128)


@pytest.mark.parametrize("mask", list(narrow_case_masks()), ids=["global", "sink", "from-dense"])
def test_narrow_windows_hold_every_allowed_pair_and_come_last(mask):
    from sparseflash.blockmask import NARROW_WINDOW

    tiles = mask.tiles.bool()
    if "sink" not in str(mask.pattern):  # the global row and the dense case's rows 64-78
        assert mask.narrow_col_blocks > 0 and mask.across_row_blocks > 0
    for side, axis, block, windows in (("kv", 1, mask.block_n, mask.tile_kv_windows), ("q", 2, mask.block_m, mask.tile_q_windows)):
        lines = tiles.any(axis)  # (n_tiles, block): keys (queries) each tile allows
        positions = torch.arange(block)
        for t, window in enumerate(windows.tolist()):
            allowed = positions[lines[t]]
            span = int(allowed.max() - allowed.min()) + 1
            if window < 0:
                assert span > NARROW_WINDOW
            else:
                assert 0 <= window <= block - NARROW_WINDOW
                assert window <= allowed.min() and allowed.max() < window + NARROW_WINDOW
        offsets, indices, tile_ids = (getattr(mask, f"partial_{side}_{name}") for name in ("offsets", "indices", "tiles"))
        across_windows = mask.tile_q_windows if side == "kv" else mask.tile_kv_windows
        across_starts, narrow_starts = getattr(mask, f"across_{side}_starts"), getattr(mask, f"narrow_{side}_starts")
        line_windows = getattr(mask, f"across_{side}_windows")
        n_across = n_narrow = 0
        for line in range(offsets.numel() - 1):
            begin, across, narrow, end = (int(x) for x in (offsets[line], across_starts[line], narrow_starts[line], offsets[line + 1]))
            assert begin <= across <= narrow <= end
            # ordinary blocks, then those narrow across the line (all in the line's window), then narrow ones
            assert all(windows[tile_ids[begin:narrow]] < 0) and all(windows[tile_ids[narrow:end]] >= 0)
            assert all(across_windows[tile_ids[across:narrow]] == line_windows[line])
            assert (line_windows[line] >= 0) == (narrow > across)
            for part in (indices[begin:across], indices[across:narrow], indices[narrow:end]):
                assert torch.all(torch.diff(part) > 0)
            n_across, n_narrow = n_across + narrow - across, n_narrow + end - narrow
        assert n_narrow == (mask.narrow_row_blocks if side == "kv" else mask.narrow_col_blocks)
        assert n_across == (mask.across_row_blocks if side == "kv" else mask.across_col_blocks)
    assert mask.narrow_row_blocks > 0 and mask.across_col_blocks > 0  # each case has a narrow column


def test_narrow_lists_keep_the_exact_mask():
    text = "local(100) + global(4)"
    mask = compile_mask(text, 700, block_m=64, block_n=128)
    assert torch.equal(mask.to_dense_mask(), parse(text).dense_mask(700, 700))


def tiles_from_key_spans(mask) -> torch.Tensor:
    """bool (n_tiles, block_m, block_n): each row's allowed keys rebuilt from its key spans."""
    spans = mask.tile_key_spans.view(mask.n_tiles, mask.block_m, mask.key_spans, 2)
    keys = torch.arange(mask.block_n)
    first, end = spans[..., 0, None], spans[..., 1, None]  # (n_tiles, block_m, key_spans, 1)
    inside = (keys >= first) & (keys < end)
    wrapped = (first > end) & ((keys >= first) | (keys < end))  # keys 0-3 and 200-255 as [200, 4)
    return (inside | wrapped).any(dim=2)


@pytest.mark.parametrize(
    "text, q_len, kv_len, block, key_spans",
    [
        ("local(100) & causal", 1000, 1000, 128, 1),  # diagonal and window edge: one run a row
        ("causal", 300, 250, 64, 1),  # ends cut the tiles
        ("local(40) + global(4)", 300, 300, 64, 1),  # a band row beside the global column: one wrapped span
        ("local(8) + strided(64)", 500, 500, 64, 2),  # a band and a stride point
        ("strided(8)", 100, 100, 32, 0),  # 4 stride points a row: the kernels load the tiles
    ],
)
def test_key_spans_rebuild_every_tile(text, q_len, kv_len, block, key_spans):
    mask = compile_mask(text, q_len, kv_len, block_m=block, block_n=block)
    assert mask.key_spans == key_spans
    if key_spans:
        assert mask.tile_key_spans.dtype == torch.int32
        assert torch.equal(tiles_from_key_spans(mask), mask.tiles.bool())
    else:
        assert mask.tile_key_spans.numel() == 0


def test_lists_are_int32_and_tiles_uint8():
    mask = compile_mask("local(30) + global(4)", 200, block_m=32, block_n=32)
    for name in ("full_kv_offsets", "full_kv_indices", "partial_kv_indices", "partial_kv_tiles", "full_q_indices"):
        assert getattr(mask, name).dtype == torch.int32
    assert mask.tiles.dtype == torch.uint8
    assert mask.full_kv_counts.tolist() == torch.diff(mask.full_kv_offsets).tolist()


def test_band_tiles_are_stored_once():
    """A band has a handful of distinct diagonal tiles however long the sequence is."""
    short = compile_mask("local(256) + global(4)", 4096)
    long = compile_mask("local(256) + global(4)", 65536)
    assert short.tiles.shape[0] == long.tiles.shape[0] <= 8
    assert long.n_partial > 16 * long.tiles.shape[0]


def test_dense_flag_only_for_dense():
    assert compile_mask("dense", 100).is_dense
    assert not compile_mask("local(1000)", 100).is_dense


def test_cache_is_keyed_by_canonical_pattern():
    MASK_CACHE.clear()
    first = compile_mask("local(256)+global(4)", 1000)
    assert compile_mask("global(4) | local(256)", 1000) is first
    assert compile_mask("local(256)+global(4)", 1000, block_m=64) is not first
    assert compile_mask("local(256)+global(4)", 1000, 999) is not first


def test_million_tokens_without_a_dense_mask():
    """1M tokens: a dense mask would be 2**40 bools; the block mask stays a few MB."""
    mask = compile_mask("local(256) + global(4)", 1 << 20)
    assert mask.n_q_blocks == 8192
    assert mask.nbytes < 4 * 2**20
    n = 1 << 20
    band = n * 513 - 256 * 257  # 2w+1 keys per query, less the ends
    global_rows_and_cols = 8 * n - 16
    both = 2 * sum(p + 257 for p in range(4)) - 16  # global pairs that the band holds too
    assert mask.allowed_pairs == band + global_rows_and_cols - both


def test_mask_from_dense_round_trips():
    generator = torch.Generator().manual_seed(0)
    explicit = torch.rand(150, 90, generator=generator) < 0.05
    explicit[:32, :16] = True
    mask = mask_from_dense(explicit, block_m=32, block_n=16)
    assert torch.equal(mask.to_dense_mask(), explicit)
    assert torch.equal(mask.to_dense(), reference_block_classes(explicit, 32, 16))


def test_str_draws_the_grid():
    text = str(compile_mask("local(128) & causal", 512, block_m=128, block_n=128))
    assert text.splitlines()[1:] == ["░", "░░", " ░░", "  ░░"]


def test_ascii_glyphs():
    grid = torch.tensor([[2, 1, 0], [0, 2, 1]], dtype=torch.int8)
    assert ascii_grid(grid) == "█░\n █░"


def test_reduce_grid_keeps_the_strongest_class():
    generator = torch.Generator().manual_seed(1)
    grid = torch.randint(0, 3, (37, 53), generator=generator, dtype=torch.int8)
    reduced = reduce_grid(grid, 10, 10)
    row_step, col_step = -(-37 // 10), -(-53 // 10)
    for r in range(reduced.shape[0]):
        for c in range(reduced.shape[1]):
            cell = grid[r * row_step : (r + 1) * row_step, c * col_step : (c + 1) * col_step]
            assert reduced[r, c] == cell.max()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="must be a positive integer"):
        compile_mask("causal", bad)


def test_bad_pattern_text_is_a_pattern_error():
    with pytest.raises(sparseflash.PatternError, match="did you mean 'causal'"):
        compile_mask("casual", 100)


def test_to_moves_every_tensor():
    mask = compile_mask("local(30)", 100, block_m=16, block_n=16)
    meta = mask.to("meta")
    assert meta.tiles.device.type == "meta" and meta.partial_q_tiles.device.type == "meta"
    assert meta.full_kv_run_ends.device.type == "meta" and meta.q_block_order.device.type == "meta"


def test_to_keeps_its_copy():
    """A CPU mask passed with GPU inputs was once copied to the device on every call."""
    mask = compile_mask("local(30)", 100, block_m=16, block_n=16)
    assert mask.to("meta") is mask.to("meta")
    assert mask.to("cpu") is mask


@pytest.mark.gpu
def test_compiles_onto_the_gpu():
    mask = compile_mask("local(256) + global(4)", 32768, device="cuda")
    assert mask.full_kv_indices.is_cuda and mask.tiles.is_cuda
    cpu = compile_mask("local(256) + global(4)", 32768)
    assert torch.equal(mask.to_dense(), cpu.to_dense())


def test_candidate_blocks_grow_with_the_band_not_the_square():
    """The compiler's first step never enumerates all n_q x n_kv blocks for a band."""
    from sparseflash.pattern import TileGeometry

    geometry = TileGeometry(1 << 20, 1 << 20, 128, 128)
    rows, cols = parse("local(256) & causal").candidate_blocks(geometry)
    assert rows.size <= 5 * geometry.n_q_blocks  # the band: 5 blocks a row; causal alone would give 4096
    assert np.all(np.diff(rows) >= 0)


def test_strides_that_fill_every_block_warn():
    from sparseflash.blockmask import SparsityWarning

    with pytest.warns(SparsityWarning, match="strided\\(64\\) leaves no empty 128x128 block"):
        compile_mask("strided(64) + local(3)", 1024, block_m=128, block_n=128)


def test_sparse_strides_do_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_mask("strided(256) + local(3)", 1024, block_m=128, block_n=128)


def test_dense_defers_its_lists():
    """Dense attention reads no lists: at 1M tokens they would hold 67M blocks (once took 24 s)."""
    mask = compile_mask("dense", 1 << 20)
    assert mask.is_dense and mask.nbytes == 0
    assert mask.n_full == 8192 * 8192 and mask.block_density() == 1.0
    small = compile_mask("dense", 300, 200, block_m=64, block_n=64)
    assert small.n_full == 4 * 3 and small.n_partial == 5 * 4 - 12
    assert small.full_kv_indices.numel() == small.n_full  # reading a list builds them all
    assert small.nbytes > 0


def test_block_orders_put_the_longest_rows_and_columns_first():
    mask = compile_mask("local(40) + global(5)", 300, 260, block_m=32, block_n=16)
    grid = mask.to_dense()
    for order, work in ((mask.q_block_order, (grid > 0).sum(1)), (mask.kv_block_order, (grid > 0).sum(0))):
        order = order.long()
        assert sorted(order.tolist()) == list(range(work.numel()))  # a permutation
        assert torch.all(torch.diff(work[order]) <= 0)  # longest first
        assert order[0] == 0  # the global row (column) is the longest


@pytest.mark.parametrize("text", ["causal", "local(40) + global(5)", "chunk(48) - sink(16)", "dense - dense"])
def test_full_block_runs_cover_exactly_the_full_blocks(text):
    mask = compile_mask(text, 300, 260, block_m=32, block_n=16)
    for side, n_lines, offsets, indices in (
        ("kv", mask.n_q_blocks, mask.full_kv_offsets, mask.full_kv_indices),
        ("q", mask.n_kv_blocks, mask.full_q_offsets, mask.full_q_indices),
    ):
        run_offsets = getattr(mask, f"full_{side}_run_offsets")
        starts, ends = getattr(mask, f"full_{side}_run_starts"), getattr(mask, f"full_{side}_run_ends")
        for line in range(n_lines):
            listed = indices[offsets[line] : offsets[line + 1]].tolist()
            from_runs = [b for r in range(run_offsets[line], run_offsets[line + 1]) for b in range(starts[r], ends[r])]
            assert from_runs == listed
            # maximal runs: two runs of a line never touch
            for r in range(run_offsets[line] + 1, run_offsets[line + 1]):
                assert starts[r] > ends[r - 1]


# ------------------------------------------------------------------ random trees (property test)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pattern_strategies import pattern_trees  # noqa: E402


@settings(max_examples=120, deadline=None)
@given(
    text=pattern_trees(max_leaves=5),
    q_len=st.integers(1, 90),
    kv_len=st.integers(1, 90),
    block_m=st.sampled_from([16, 32]),
    block_n=st.sampled_from([16, 64]),
)
def test_random_trees_compile_exactly(text, q_len, kv_len, block_m, block_n):
    """Any combination, any sizes: block classes and element masks equal the dense oracle's."""
    exact = parse(text).dense_mask(q_len, kv_len)
    mask = compile_mask(text, q_len, kv_len, block_m=block_m, block_n=block_n, cache=False)
    assert torch.equal(mask.to_dense(), reference_block_classes(exact, block_m, block_n))
    assert torch.equal(mask.to_dense_mask(), exact)
    assert mask.allowed_pairs == int(exact.sum())
    if mask.key_spans:
        assert torch.equal(tiles_from_key_spans(mask), mask.tiles.bool())


@pytest.mark.parametrize("text", ["dense", "local(30) + global(4)", "butterfly(16)", "causal - local(10)"])
@pytest.mark.parametrize("cells", [(3, 5), (7, 7), (100, 100)])
def test_reduced_grid_keeps_the_strongest_class_of_each_cell(text, cells):
    """Read from the lists (or, for dense, from the sizes): equal to reducing the oracle's full grid."""
    q_len, kv_len = 300, 250
    mask = compile_mask(text, q_len, kv_len, block_m=16, block_n=16)
    oracle = reference_block_classes(parse(text).dense_mask(q_len, kv_len), 16, 16)
    assert torch.equal(mask.to_dense(*cells), reduce_grid(oracle, *cells))
