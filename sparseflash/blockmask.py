"""Pattern -> block mask, without ever building a q_len x kv_len mask.

A ``BlockMask`` tells the kernels, for a tile of ``block_m`` queries by ``block_n`` keys, which
blocks to skip (empty), which to run with no mask code (full) and which to mask (partial), and
gives the partial blocks' element masks. The compiler works in four steps, each growing with the
number of non-empty blocks only:

1. ``pattern.candidate_blocks``: a superset of the non-empty blocks, from the formulas.
2. ``pattern.block_class``: each candidate is empty, partial or full (interval arithmetic).
3. Partial blocks are grouped by ``pattern.tile_key`` (blocks with equal keys have equal tiles);
   each distinct tile is computed once from the exact predicate. A tile that turns out all-false is
   dropped, one that is all-true with no padding becomes full: the final classes are exact.
4. The lists are laid out as CSR rows (per query block, for the forward and dQ passes) and CSR
   columns (per key block, for dK/dV), all int32, in one buffer moved to the device in one copy.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

import numpy as np
import torch

from .parsing import parse
from .pattern import EMPTY, FULL, PARTIAL, Dense, Pattern, Strided, TileGeometry

# Tiles are computed this many at a time, bounding the temporary arrays to ~64 MB.
_TILES_PER_BATCH = 256


_TENSOR_NAMES = (
    "full_kv_offsets", "full_kv_indices", "partial_kv_offsets", "partial_kv_indices", "partial_kv_tiles",
    "full_q_offsets", "full_q_indices", "partial_q_offsets", "partial_q_indices", "partial_q_tiles",
    "q_block_order", "kv_block_order", "full_kv_run_offsets", "full_kv_run_starts", "full_kv_run_ends",
    "full_q_run_offsets", "full_q_run_starts", "full_q_run_ends",
    "narrow_kv_starts", "narrow_q_starts", "tile_kv_windows", "tile_q_windows",
    "across_kv_starts", "across_q_starts", "across_kv_windows", "across_q_windows", "tile_key_spans", "tiles",
)  # fmt: skip

# A partial block whose allowed keys (queries) all lie in this many consecutive ones is walked in
# one step of this width by the kernels that walk rows (columns), instead of whole kernel tiles:
# the global column of local(256)+global(4) allows 4 keys of each 128-key block. 16 is the
# smallest tl.dot dimension.
NARROW_WINDOW = 16
# ...and only in blocks at least this many times wider, where the step saves most of the work.
_NARROW_MIN_RATIO = 4
# Tiles whose rows each allow at most this many runs of consecutive keys are also given as those
# runs ("key spans"), which the kernels compare against instead of loading the uint8 tile: bands,
# causal diagonals, global lines and sequence ends need one, a band beside a global column or a
# stride point two.
KEY_SPAN_LIMIT = 2


class _MaskTensor:
    """One of a BlockMask's tensors; a mask that defers its lists (``dense``) builds them on first read."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, mask, owner=None):
        if mask is None:
            return self
        if mask._tensors is None:
            object.__setattr__(mask, "_tensors", mask._build_tensors())
        return mask._tensors[self.name]


class BlockMask:
    """Which (query block, key block) pairs the kernels run, and how.

    Blocks: query block ``m`` holds queries ``[m*block_m, (m+1)*block_m)``, key block ``n`` keys
    ``[n*block_n, (n+1)*block_n)``, the last of each possibly cut short by the sequence end (a
    block with such padding is never *full*).

    Per query block ``m`` (forward and dQ passes), CSR over ``n_q_blocks`` rows, ascending ``n``
    (but narrow partial blocks last, see below):

    - ``full_kv_offsets`` int32 ``(n_q_blocks + 1,)``, ``full_kv_indices`` int32 ``(n_full,)``:
      the full blocks of row ``m`` are ``full_kv_indices[full_kv_offsets[m]:full_kv_offsets[m+1]]``.
    - ``partial_kv_offsets``, ``partial_kv_indices``: the same for partial blocks, and
      ``partial_kv_tiles`` int32 ``(n_partial,)``: each partial block's index into ``tiles``.

    Per key block ``n`` (dK/dV pass), CSR over ``n_kv_blocks`` columns, ascending ``m``:
    ``full_q_offsets``, ``full_q_indices``, ``partial_q_offsets``, ``partial_q_indices``,
    ``partial_q_tiles``.

    ``tiles`` uint8 ``(n_tiles, block_m, block_n)``: the distinct element masks of partial blocks,
    1 where the pair is allowed, 0 where it is not or lies past the sequence end.

    *Narrow* partial blocks: ``tile_kv_windows`` int32 ``(n_tiles,)`` gives, for a tile whose
    allowed keys all lie in ``NARROW_WINDOW`` consecutive keys, the first of them (within the
    block; the window never crosses the block's end), and -1 for other tiles; ``tile_q_windows``
    the same for queries. Row ``m``'s partial blocks whose tile has a key window come last in its
    list, from index ``narrow_kv_starts[m]``; the forward and dQ kernels walk them one
    NARROW_WINDOW-key step each. Before them, from ``across_kv_starts[m]``, come the row's blocks
    that are narrow the other way, all with the row's query window ``across_kv_windows[m]`` (-1:
    none), as the global row's blocks under ``global(g)``: a kernel tile of fewer rows than the
    block skips them when its rows miss that window. Each part is ascending. Columns likewise, with
    the roles of keys and queries swapped (``narrow_q_starts``, ``across_q_starts``,
    ``across_q_windows``), for dK/dV. ``narrow_row_blocks`` / ``narrow_col_blocks`` and
    ``across_row_blocks`` / ``across_col_blocks`` count the entries.

    *Key spans*: when every row of every tile allows at most ``KEY_SPAN_LIMIT`` runs of consecutive
    keys, ``key_spans`` is the most any row has (1 or 2) and ``tile_key_spans`` int32, flat
    ``(n_tiles, block_m, key_spans, 2)``, gives each row's runs as [first, end) key offsets within
    the block (an unused run is [0, 0); a run with first > end wraps: keys >= first or < end,
    see ``_key_spans``): kernels configured for them (``key_spans`` in their
    config) compute a partial step's mask from two (four) comparisons instead of loading its uint8
    tile. ``key_spans`` is 0 otherwise, and for ``dense``.

    The full blocks again as runs of consecutive blocks, which is how the kernels walk them (a
    run's key offsets are affine in the loop counter, so K and V can be prefetched): row ``m``'s runs
    are ``full_kv_run_starts[r]`` to ``full_kv_run_ends[r]`` (exclusive) for ``r`` in
    ``full_kv_run_offsets[m]:full_kv_run_offsets[m+1]``; ``full_q_run_*`` likewise per key block.

    ``q_block_order`` int32 ``(n_q_blocks,)`` and ``kv_block_order`` int32 ``(n_kv_blocks,)``: the
    query (key) blocks by decreasing number of non-empty blocks, ties in index order. The kernels
    start the longest rows (columns) first, so that a heavy row, such as the one of the first query
    block under ``global(g)``, does not start last and stretch the whole launch.

    ``max_blocks_per_row`` / ``max_blocks_per_col``: non-empty blocks in the longest row / column
    (the launchers use them to choose a schedule without reading the lists back from the device).

    ``is_dense`` is set for the pattern ``dense``: the kernels then read no lists at all, and the
    mask builds them only if something reads them (at 1M tokens they would hold 67M blocks).
    Instances are immutable.
    """

    full_kv_offsets = _MaskTensor()
    full_kv_indices = _MaskTensor()
    partial_kv_offsets = _MaskTensor()
    partial_kv_indices = _MaskTensor()
    partial_kv_tiles = _MaskTensor()
    full_q_offsets = _MaskTensor()
    full_q_indices = _MaskTensor()
    partial_q_offsets = _MaskTensor()
    partial_q_indices = _MaskTensor()
    partial_q_tiles = _MaskTensor()
    q_block_order = _MaskTensor()
    kv_block_order = _MaskTensor()
    full_kv_run_offsets = _MaskTensor()
    full_kv_run_starts = _MaskTensor()
    full_kv_run_ends = _MaskTensor()
    full_q_run_offsets = _MaskTensor()
    full_q_run_starts = _MaskTensor()
    full_q_run_ends = _MaskTensor()
    narrow_kv_starts = _MaskTensor()
    narrow_q_starts = _MaskTensor()
    tile_kv_windows = _MaskTensor()
    tile_q_windows = _MaskTensor()
    across_kv_starts = _MaskTensor()
    across_q_starts = _MaskTensor()
    across_kv_windows = _MaskTensor()
    across_q_windows = _MaskTensor()
    tile_key_spans = _MaskTensor()
    tiles = _MaskTensor()

    def __init__(
        self,
        *,
        pattern: Pattern | None,
        q_len: int,
        kv_len: int,
        block_m: int,
        block_n: int,
        allowed_pairs: int,
        max_blocks_per_row: int,
        max_blocks_per_col: int,
        device: torch.device,
        tensors: dict | None = None,
        build_tensors=None,
        is_dense: bool = False,
        narrow_row_blocks: int = 0,
        narrow_col_blocks: int = 0,
        across_row_blocks: int = 0,
        across_col_blocks: int = 0,
    ):
        if (tensors is None) == (build_tensors is None):
            raise ValueError("BlockMask needs its tensors or a function that builds them, not both")
        for name, value in (
            ("pattern", pattern), ("q_len", q_len), ("kv_len", kv_len), ("block_m", block_m),
            ("block_n", block_n), ("allowed_pairs", allowed_pairs), ("max_blocks_per_row", max_blocks_per_row),
            ("max_blocks_per_col", max_blocks_per_col), ("device", torch.device(device)),
            ("is_dense", is_dense), ("narrow_row_blocks", narrow_row_blocks),
            ("narrow_col_blocks", narrow_col_blocks), ("across_row_blocks", across_row_blocks),
            ("across_col_blocks", across_col_blocks), ("_tensors", tensors), ("_build_tensors", build_tensors), ("_copies", {}),
        ):  # fmt: skip
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"BlockMask is immutable; cannot set {name!r}")

    # ------------------------------------------------------------------------------------- shape
    @property
    def n_q_blocks(self) -> int:
        return -(-self.q_len // self.block_m)

    @property
    def n_kv_blocks(self) -> int:
        return -(-self.kv_len // self.block_n)

    @property
    def full_kv_counts(self) -> torch.Tensor:
        """int32 ``(n_q_blocks,)``: full blocks per query block."""
        return (self.full_kv_offsets[1:] - self.full_kv_offsets[:-1]).to(torch.int32)

    @property
    def partial_kv_counts(self) -> torch.Tensor:
        """int32 ``(n_q_blocks,)``: partial blocks per query block."""
        return (self.partial_kv_offsets[1:] - self.partial_kv_offsets[:-1]).to(torch.int32)

    @property
    def n_full(self) -> int:
        """Number of full blocks."""
        if self._tensors is None and self.is_dense:
            return (self.q_len // self.block_m) * (self.kv_len // self.block_n)
        return int(self.full_kv_indices.numel())

    @property
    def n_tiles(self) -> int:
        """Distinct partial-block tiles the kernels read (none for ``dense``, which masks its tail itself)."""
        return 0 if self.is_dense else int(self.tiles.shape[0])

    @property
    def key_spans(self) -> int:
        """Runs of allowed keys per tile row in ``tile_key_spans`` (1 or 2); 0 when the tiles are not
        given that way (a row with more runs, no tiles, or ``dense``). Read from shapes: no copy."""
        if self.n_tiles == 0:
            return 0
        return self.tile_key_spans.numel() // (self.n_tiles * self.block_m * 2)

    @property
    def n_partial(self) -> int:
        """Number of partial blocks."""
        if self._tensors is None and self.is_dense:
            return self.n_q_blocks * self.n_kv_blocks - self.n_full
        return int(self.partial_kv_indices.numel())

    # ------------------------------------------------------------------------------------ summaries
    def to_dense(self, max_rows: int | None = None, max_cols: int | None = None) -> torch.Tensor:
        """int8 block classes on the CPU: 0 empty, 1 partial, 2 full; ``(n_q_blocks, n_kv_blocks)``.

        With ``max_rows`` / ``max_cols`` the grid is reduced to at most that many cells, each keeping
        the strongest class (full > partial > empty) of the blocks it covers (steps of
        :func:`grid_steps`), read straight from the lists: no full-size grid is built (at 1M tokens
        it would hold 67M blocks).
        """
        row_step, col_step = grid_steps(self.n_q_blocks, self.n_kv_blocks, max_rows, max_cols)
        n_rows, n_cols = -(-self.n_q_blocks // row_step), -(-self.n_kv_blocks // col_step)
        if self.is_dense:
            # Every block is live; only blocks reaching past a sequence end are partial.
            full_rows, full_cols = self.q_len // self.block_m, self.kv_len // self.block_n
            grid = torch.full((n_rows, n_cols), PARTIAL, dtype=torch.int8)
            grid[: -(-full_rows // row_step), : -(-full_cols // col_step)] = FULL
            return grid
        grid = torch.zeros(n_rows, n_cols, dtype=torch.int8)
        # Partial first, then full: a cell holding both ends up full, the stronger class.
        for offsets, indices, value in (
            (self.partial_kv_offsets, self.partial_kv_indices, PARTIAL),
            (self.full_kv_offsets, self.full_kv_indices, FULL),
        ):
            counts = (offsets[1:] - offsets[:-1]).cpu().long()
            rows = torch.repeat_interleave(torch.arange(self.n_q_blocks), counts) // row_step
            grid[rows, indices.cpu().long() // col_step] = value
        return grid

    def to_dense_mask(self) -> torch.Tensor:
        """bool ``(q_len, kv_len)``: the element mask the kernels apply. For small sizes and tests."""
        grid = self.to_dense()
        padded = torch.zeros(self.n_q_blocks * self.block_m, self.n_kv_blocks * self.block_n, dtype=torch.bool)
        view = padded.view(self.n_q_blocks, self.block_m, self.n_kv_blocks, self.block_n)
        view.permute(0, 2, 1, 3)[grid == FULL] = True
        counts = (self.partial_kv_offsets[1:] - self.partial_kv_offsets[:-1]).cpu().long()
        rows = torch.repeat_interleave(torch.arange(self.n_q_blocks), counts)
        cols = self.partial_kv_indices.cpu().long()
        tiles = self.tiles.cpu()[self.partial_kv_tiles.cpu().long()].bool()
        view.permute(0, 2, 1, 3)[rows, cols] = tiles
        return padded[: self.q_len, : self.kv_len].clone()

    def density(self) -> float:
        """Fraction of (query, key) pairs the pattern allows."""
        return self.allowed_pairs / (self.q_len * self.kv_len)

    def block_density(self) -> float:
        """Fraction of blocks that are not empty (full or partial)."""
        return (self.n_full + self.n_partial) / (self.n_q_blocks * self.n_kv_blocks)

    @property
    def nbytes(self) -> int:
        """Bytes held by the mask's tensors (0 for a ``dense`` mask whose lists were never read)."""
        if self._tensors is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

    def to(self, device) -> BlockMask:
        """The same mask with its tensors on ``device``. The copy is kept, so a CPU-built mask passed
        with CUDA inputs is copied once, not on every call."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device == self.device:
            return self
        if device not in self._copies:
            self._copies[device] = self._copy_to(device)
        return self._copies[device]

    def _copy_to(self, device: torch.device) -> BlockMask:
        if self._tensors is None:
            moved = {"build_tensors": lambda: {k: v.to(device) for k, v in self._build_tensors().items()}}
        else:
            moved = {"tensors": {k: v.to(device) for k, v in self._tensors.items()}}
        return BlockMask(
            pattern=self.pattern, q_len=self.q_len, kv_len=self.kv_len, block_m=self.block_m,
            block_n=self.block_n, allowed_pairs=self.allowed_pairs, max_blocks_per_row=self.max_blocks_per_row,
            max_blocks_per_col=self.max_blocks_per_col, device=device, is_dense=self.is_dense,
            narrow_row_blocks=self.narrow_row_blocks, narrow_col_blocks=self.narrow_col_blocks,
            across_row_blocks=self.across_row_blocks, across_col_blocks=self.across_col_blocks, **moved,
        )  # fmt: skip

    def __str__(self) -> str:
        head = (
            f"BlockMask({self.pattern if self.pattern is not None else 'custom'}, q_len={self.q_len}, "
            f"kv_len={self.kv_len}, block={self.block_m}x{self.block_n}, density={self.density():.2%}, "
            f"blocks={self.block_density():.2%})"
        )
        return head + "\n" + ascii_grid(self.to_dense(max_rows=32, max_cols=64))

    __repr__ = __str__


# ---------------------------------------------------------------------------------------- pictures

_GLYPHS = {EMPTY: " ", PARTIAL: "░", FULL: "█"}


def grid_steps(n_rows: int, n_cols: int, max_rows: int | None, max_cols: int | None) -> tuple[int, int]:
    """Blocks per cell along each axis when a grid is reduced to at most ``max_rows x max_cols``."""
    row_step = -(-n_rows // max(max_rows, 1)) if max_rows else 1
    col_step = -(-n_cols // max(max_cols, 1)) if max_cols else 1
    return row_step, col_step


def reduce_grid(grid: torch.Tensor, max_rows: int, max_cols: int) -> torch.Tensor:
    """Shrink a block-class grid to at most ``max_rows x max_cols`` cells, each keeping the
    strongest class (full > partial > empty) of the blocks it covers."""
    rows, cols = grid.shape
    row_step, col_step = grid_steps(rows, cols, max_rows, max_cols)
    if row_step == 1 and col_step == 1:
        return grid
    padded = torch.zeros(-(-rows // row_step) * row_step, -(-cols // col_step) * col_step, dtype=grid.dtype)
    padded[:rows, :cols] = grid
    return padded.view(padded.shape[0] // row_step, row_step, padded.shape[1] // col_step, col_step).amax(dim=(1, 3))


def ascii_grid(grid: torch.Tensor, max_rows: int = 32, max_cols: int = 64) -> str:
    """Block classes as text: █ full, ░ partial, blank empty, one character per (reduced) block."""
    reduced = reduce_grid(grid, max_rows, max_cols)
    return "\n".join("".join(_GLYPHS[int(v)] for v in row).rstrip() for row in reduced.tolist())


# ---------------------------------------------------------------------------------------- compiler


def _classify(pattern: Pattern, geometry: TileGeometry):
    """Non-empty blocks of the pattern as sorted (rows, cols, classes), before tile refinement."""
    rows, cols = pattern.candidate_blocks(geometry)
    classes = pattern.block_class(geometry, rows, cols)
    keep = classes != EMPTY
    rows, cols, classes = rows[keep], cols[keep], classes[keep].astype(np.int8)
    # Classes describe the valid region; a block that reaches past a sequence end needs the
    # kernel's masking all the same, so it is partial (its tile is 0 on the padding).
    padded = ((rows + 1) * geometry.block_m > geometry.q_len) | ((cols + 1) * geometry.block_n > geometry.kv_len)
    classes[padded & (classes == FULL)] = PARTIAL
    return rows, cols, classes


def _compute_tiles(pattern: Pattern, geometry: TileGeometry, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """bool ``(len(rows), block_m, block_n)``: the exact element masks of the given blocks."""
    bm, bn = geometry.block_m, geometry.block_n
    # int32 halves the memory traffic of the predicate's arithmetic; positions fit far below 2**30.
    index_type = np.int32 if max(geometry.q_len, geometry.kv_len) < 2**30 else np.int64
    r = np.arange(bm, dtype=index_type)[None, :, None]
    c = np.arange(bn, dtype=index_type)[None, None, :]
    out = np.empty((rows.size, bm, bn), dtype=bool)
    for start in range(0, rows.size, _TILES_PER_BATCH):
        batch_rows, batch_cols = rows[start : start + _TILES_PER_BATCH], cols[start : start + _TILES_PER_BATCH]
        first_q = (batch_rows * bm).astype(index_type)
        first_k = (batch_cols * bn).astype(index_type)
        p = (first_q + geometry.offset)[:, None, None] + r
        j = first_k[:, None, None] + c
        valid = ((first_q[:, None, None] + r) < geometry.q_len) & (j < geometry.kv_len)
        out[start : start + batch_rows.size] = np.asarray(pattern.allowed(p, j)) & valid
    return out


def _group_equal_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For an ``(n, k)`` int array: the index of one row per distinct row, and each row's group.

    A lexsort over the columns; np.unique(axis=0) does the same through a much slower void view.
    """
    order = np.lexsort(keys.T[::-1])
    ordered = keys[order]
    starts = np.concatenate([[True], (ordered[1:] != ordered[:-1]).any(axis=1)])
    group_of_sorted = np.cumsum(starts) - 1
    group = np.empty(keys.shape[0], dtype=np.int64)
    group[order] = group_of_sorted
    return order[starts], group


def _refine_partial(pattern: Pattern, geometry: TileGeometry, rows, cols, classes):
    """Compute each distinct partial tile once; drop all-false blocks, promote all-true unpadded ones.

    Returns (rows, cols, classes, tile_of_block, tiles) where ``tile_of_block`` is -1 for full blocks.
    """
    partial = np.flatnonzero(classes == PARTIAL)
    tile_of_block = np.full(rows.size, -1, dtype=np.int64)
    bm, bn = geometry.block_m, geometry.block_n
    if partial.size == 0:
        return rows, cols, classes, tile_of_block, np.zeros((0, bm, bn), dtype=bool)
    p_rows, p_cols = rows[partial], cols[partial]
    first_q, first_k = p_rows * bm, p_cols * bn
    valid_rows = np.minimum(geometry.q_len - first_q, bm)
    valid_cols = np.minimum(geometry.kv_len - first_k, bn)
    keys = np.concatenate(
        [valid_rows[:, None], valid_cols[:, None], pattern.tile_key(geometry, first_q + geometry.offset, first_k)],
        axis=1,
    )
    representative, key_index = _group_equal_rows(keys)
    tiles = _compute_tiles(pattern, geometry, p_rows[representative], p_cols[representative])
    population = np.count_nonzero(tiles, axis=(1, 2))
    padded = (valid_rows < bm) | (valid_cols < bn)
    tile_empty = population[key_index] == 0
    tile_full = (population[key_index] == bm * bn) & ~padded
    classes = classes.copy()
    classes[partial[tile_empty]] = EMPTY
    classes[partial[tile_full]] = FULL
    # Keep only the tiles that some block still uses, renumbered densely.
    still_partial = ~tile_empty & ~tile_full
    used = np.flatnonzero(np.bincount(key_index[still_partial], minlength=tiles.shape[0]))
    renumber = np.full(tiles.shape[0], -1, dtype=np.int64)
    renumber[used] = np.arange(used.size)
    tile_of_block[partial[still_partial]] = renumber[key_index[still_partial]]
    keep = classes != EMPTY
    return rows[keep], cols[keep], classes[keep], tile_of_block[keep], tiles[used]


def _narrow_windows(allowed_lines: np.ndarray, block: int) -> np.ndarray:
    """int32 ``(n_tiles,)``: for ``allowed_lines`` bool ``(n_tiles, block)`` (which keys, or
    queries, a tile allows anywhere), the first of NARROW_WINDOW consecutive lines holding them
    all, kept inside the block; -1 where they span more, or the block is too small to gain."""
    windows = np.full(allowed_lines.shape[0], -1, dtype=np.int32)
    if block < _NARROW_MIN_RATIO * NARROW_WINDOW or allowed_lines.shape[0] == 0:
        return windows
    first = allowed_lines.argmax(axis=1)
    last = block - 1 - allowed_lines[:, ::-1].argmax(axis=1)
    narrow = last - first < NARROW_WINDOW
    windows[narrow] = np.minimum(first[narrow], block - NARROW_WINDOW)
    return windows


def _key_spans(tiles: np.ndarray) -> np.ndarray:
    """The tiles as runs of allowed keys per row (see BlockMask): int32 ``(n_tiles, block_m,
    key_spans, 2)``, or empty when some row has more than KEY_SPAN_LIMIT runs (or there are no tiles).

    Two runs that touch the block's two ends (a band row beside a global column: keys 0-3 and
    200-255 of a block) are given as one *wrapped* span [first, end) with first > end, meaning
    keys >= first or < end, when that leaves every row one span: one span a row lets the forward
    take its two-programs-a-multiprocessor tiles (kernels.common.SHORT_SPAN_ROWS_FORWARD)."""
    n_tiles, block_m, _ = tiles.shape
    previous = np.zeros_like(tiles)
    previous[..., 1:] = tiles[..., :-1]
    following = np.zeros_like(tiles)
    following[..., :-1] = tiles[..., 1:]
    firsts, lasts = tiles & ~previous, tiles & ~following  # each run's first and last key
    runs_per_row = np.count_nonzero(firsts, axis=2)
    n_spans = int(runs_per_row.max(initial=0))
    if n_spans == 0 or n_spans > KEY_SPAN_LIMIT:
        return np.zeros(0, dtype=np.int32)
    tile, row, first = np.nonzero(firsts)  # row-major: each row's runs in key order
    last = np.nonzero(lasts)[2]  # the same runs, in the same order
    line = tile * block_m + row
    rank = np.arange(line.size) - np.searchsorted(line, line)  # which run of its row
    two_run_rows = runs_per_row == 2  # (n_tiles, block_m)
    if n_spans == 2 and tiles[..., 0][two_run_rows].all() and tiles[..., -1][two_run_rows].all():
        # Every two-run row holds key 0 and the last key: wrap each into one span, from its
        # second run's first key to its first run's end.
        two_runs = two_run_rows[tile, row]  # per run: whether its row has two
        spans = np.zeros((n_tiles, block_m, 1, 2), dtype=np.int32)
        one = ~two_runs
        spans[tile[one], row[one], 0, 0] = first[one]
        spans[tile[one], row[one], 0, 1] = last[one] + 1
        second, opening = two_runs & (rank == 1), two_runs & (rank == 0)
        spans[tile[second], row[second], 0, 0] = first[second]
        spans[tile[opening], row[opening], 0, 1] = last[opening] + 1
        return spans
    spans = np.zeros((n_tiles, block_m, n_spans, 2), dtype=np.int32)
    spans[tile, row, rank, 0] = first
    spans[tile, row, rank, 1] = last + 1
    return spans


def _across_blocks(major: np.ndarray, windows: np.ndarray, eligible: np.ndarray, n_major: int):
    """Blocks narrow across their line: for each line (``major``), its most common window among
    the ``eligible`` blocks that have one (``windows`` >= 0), and which blocks have that window.
    Returns (bool per block, int32 window per line, -1 where none)."""
    line_windows = np.full(n_major, -1, dtype=np.int32)
    candidates = eligible & (windows >= 0)
    if not candidates.any():
        return candidates, line_windows
    pairs, counts = np.unique(major[candidates].astype(np.int64) * (windows.max() + 1) + windows[candidates], return_counts=True)
    lines, line_window = pairs // (windows.max() + 1), pairs % (windows.max() + 1)
    most = np.lexsort((-counts, lines))  # per line, its most common window first
    first = np.concatenate([[True], lines[most][1:] != lines[most][:-1]])
    line_windows[lines[most][first]] = line_window[most][first]
    return candidates & (windows == line_windows[major]), line_windows


def _runs(major: np.ndarray, minor: np.ndarray, n_major: int):
    """Maximal runs of consecutive ``minor`` indices within each ``major`` line (input sorted by
    (major, minor)): CSR offsets over the lines, and each run's first and one-past-last index."""
    starts_run = np.ones(major.size, dtype=bool)
    starts_run[1:] = (major[1:] != major[:-1]) | (minor[1:] != minor[:-1] + 1)
    first = np.flatnonzero(starts_run)
    last = np.append(first[1:], major.size)[: first.size] - 1
    offsets = np.zeros(n_major + 1, dtype=np.int64)
    np.cumsum(np.bincount(major[first], minlength=n_major), out=offsets[1:])
    return offsets, minor[first], minor[last] + 1


def _is_sorted(major: np.ndarray, minor: np.ndarray) -> bool:
    """Whether the pairs are in strictly ascending (major, minor) order."""
    step_major, step_minor = np.diff(major), np.diff(minor)
    return bool(np.all((step_major > 0) | ((step_major == 0) & (step_minor > 0))))


def _csr(major: np.ndarray, minor: np.ndarray, n_major: int):
    """CSR offsets over ``major``, and the order that sorts the blocks by (major, minor)."""
    if _is_sorted(major, minor):
        order = np.arange(major.size)  # the compiler's row-major order already
    elif _is_sorted(minor, major):
        order = np.argsort(major, kind="stable")  # row-major blocks, wanted column-major
    else:
        order = np.lexsort((minor, major))
    offsets = np.zeros(n_major + 1, dtype=np.int64)
    np.cumsum(np.bincount(major, minlength=n_major), out=offsets[1:])
    return offsets, order


def _allowed_pairs(geometry: TileGeometry, classes, tile_of_block, tiles) -> int:
    # A full block is never padded, so it holds block_m * block_n allowed pairs.
    full = classes == FULL
    tile_population = np.count_nonzero(tiles, axis=(1, 2))
    n_full = int(np.count_nonzero(full))
    return n_full * geometry.block_m * geometry.block_n + int(tile_population[tile_of_block[~full]].sum())


def _leaves(pattern: Pattern):
    yield pattern
    for child in getattr(pattern, "children", ()):
        yield from _leaves(child)


def _warn_about_dense_strides(pattern: Pattern, geometry: TileGeometry) -> None:
    for node in _leaves(pattern):
        if isinstance(node, Strided) and node.stride < geometry.block_m + geometry.block_n:
            warnings.warn(
                f"{node} leaves no empty {geometry.block_m}x{geometry.block_n} block: every block holds a "
                f"multiple of the stride, so it costs as much as dense attention for the blocks it touches",
                SparsityWarning,
                stacklevel=4,
            )


class SparsityWarning(UserWarning):
    """A pattern that the block mask cannot make cheaper than dense attention."""


def _build_tensors(pattern: Pattern, geometry: TileGeometry, device: torch.device) -> tuple[dict, dict]:
    """The mask's tensors (see BlockMask) and its summary numbers (allowed pairs, longest row and column)."""
    rows, cols, classes = _classify(pattern, geometry)
    rows, cols, classes, tile_of_block, tiles = _refine_partial(pattern, geometry, rows, cols, classes)
    arrays = {}
    summary_counts = {"kv": 0, "q": 0, "across_kv": 0, "across_q": 0}
    arrays["tile_key_spans"] = _key_spans(tiles)
    for kind, name in ((FULL, "full"), (PARTIAL, "partial")):
        selected = classes == kind
        block_rows, block_cols, block_tiles = rows[selected], cols[selected], tile_of_block[selected]
        row_offsets, by_row = _csr(block_rows, block_cols, geometry.n_q_blocks)
        col_offsets, by_col = _csr(block_cols, block_rows, geometry.n_kv_blocks)
        arrays[f"{name}_kv_offsets"], arrays[f"{name}_kv_indices"] = row_offsets, block_cols[by_row]
        arrays[f"{name}_q_offsets"], arrays[f"{name}_q_indices"] = col_offsets, block_rows[by_col]
        if kind == FULL:
            for side, major, minor, n_major in (("kv", block_rows[by_row], block_cols[by_row], geometry.n_q_blocks),
                                                ("q", block_cols[by_col], block_rows[by_col], geometry.n_kv_blocks)):
                offsets, starts, ends = _runs(major, minor, n_major)
                arrays[f"full_{side}_run_offsets"], arrays[f"full_{side}_run_starts"], arrays[f"full_{side}_run_ends"] = offsets, starts, ends
        if kind == PARTIAL:
            arrays["tile_kv_windows"] = _narrow_windows(tiles.any(axis=1), geometry.block_n)
            arrays["tile_q_windows"] = _narrow_windows(tiles.any(axis=2), geometry.block_m)
            for side, other, major, minor, offsets, order, n_major in (
                ("kv", "q", block_rows, block_cols, row_offsets, by_row, geometry.n_q_blocks),
                ("q", "kv", block_cols, block_rows, col_offsets, by_col, geometry.n_kv_blocks),
            ):  # fmt: skip
                narrow = arrays[f"tile_{side}_windows"][block_tiles] >= 0
                across, line_windows = _across_blocks(major, arrays[f"tile_{other}_windows"][block_tiles], ~narrow, n_major)
                # Each line: ordinary blocks, then the ones narrow across it, then narrow ones.
                part = np.where(narrow, 2, np.where(across, 1, 0))
                if part.any():
                    order = np.lexsort((minor, part, major))
                    arrays[f"partial_{side}_indices"] = minor[order]
                arrays[f"across_{side}_starts"] = offsets[:-1] + np.bincount(major[part == 0], minlength=n_major)
                arrays[f"narrow_{side}_starts"] = arrays[f"across_{side}_starts"] + np.bincount(major[part == 1], minlength=n_major)
                arrays[f"across_{side}_windows"] = line_windows
                arrays[f"partial_{side}_tiles"] = block_tiles[order]
                summary_counts[side] = int(narrow.sum())
                summary_counts[f"across_{side}"] = int(across.sum())
    longest = {}
    for name, offsets in (("q_block_order", "kv_offsets"), ("kv_block_order", "q_offsets")):
        work = np.diff(arrays[f"full_{offsets}"]) + np.diff(arrays[f"partial_{offsets}"])
        arrays[name] = np.argsort(-work, kind="stable")
        longest[name] = int(work.max(initial=0))
    names = [name for name in _TENSOR_NAMES if name != "tiles"]
    # One host buffer and one copy: on a GPU each separate copy would cost a launch and a sync.
    flat = torch.from_numpy(np.concatenate([arrays[name].ravel() for name in names]).astype(np.int32))
    tensors = dict(zip(names, torch.split(flat.to(device), [arrays[name].size for name in names])))
    tensors["tiles"] = torch.from_numpy(tiles.astype(np.uint8)).to(device)
    summary = dict(
        allowed_pairs=_allowed_pairs(geometry, classes, tile_of_block, tiles),
        max_blocks_per_row=longest["q_block_order"],
        max_blocks_per_col=longest["kv_block_order"],
        narrow_row_blocks=summary_counts["kv"],
        narrow_col_blocks=summary_counts["q"],
        across_row_blocks=summary_counts["across_kv"],
        across_col_blocks=summary_counts["across_q"],
    )
    return tensors, summary


def _build(pattern: Pattern, geometry: TileGeometry, device: torch.device) -> BlockMask:
    """Compile one mask (uncached)."""
    _warn_about_dense_strides(pattern, geometry)
    sizes = dict(q_len=geometry.q_len, kv_len=geometry.kv_len, block_m=geometry.block_m, block_n=geometry.block_n)
    if isinstance(pattern, Dense):
        # The kernels read no lists for dense attention: build them only if someone asks.
        return BlockMask(
            pattern=pattern, **sizes, allowed_pairs=geometry.q_len * geometry.kv_len,
            max_blocks_per_row=geometry.n_kv_blocks, max_blocks_per_col=geometry.n_q_blocks, device=device,
            is_dense=True, build_tensors=lambda: _build_tensors(pattern, geometry, device)[0],
        )  # fmt: skip
    tensors, summary = _build_tensors(pattern, geometry, device)
    return BlockMask(pattern=pattern, **sizes, **summary, device=device, tensors=tensors)


class _MaskCache:
    """A small LRU of compiled masks keyed by (canonical pattern, sizes, tiles, device)."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key, build):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        mask = build()
        with self._lock:
            self._entries[key] = mask
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return mask

    def clear(self):
        with self._lock:
            self._entries.clear()


MASK_CACHE = _MaskCache()


def _check_sizes(q_len, kv_len, block_m, block_n):
    for name, value in (("q_len", q_len), ("kv_len", kv_len), ("block_m", block_m), ("block_n", block_n)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"compile_mask: {name} must be a positive integer, got {value!r}")


def compile_mask(
    pattern: str | Pattern,
    q_len: int,
    kv_len: int | None = None,
    *,
    block_m: int = 128,
    block_n: int = 128,
    device=None,
    cache: bool = True,
) -> BlockMask:
    """Compile a pattern into a :class:`BlockMask` for ``q_len`` queries and ``kv_len`` keys.

    ``kv_len`` defaults to ``q_len``. Time and memory grow with the number of non-empty blocks,
    never with ``q_len * kv_len``. Results are cached by (canonical pattern, q_len, kv_len,
    block_m, block_n, device): ``local(256)+global(4)`` and ``global(4) + local(256)`` share an
    entry. ``cache=False`` builds afresh and leaves the cache alone.
    """
    pattern = parse(pattern)
    kv_len = q_len if kv_len is None else kv_len
    _check_sizes(q_len, kv_len, block_m, block_n)
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    geometry = TileGeometry(int(q_len), int(kv_len), int(block_m), int(block_n))
    if not cache:
        return _build(pattern, geometry, device)
    key = (str(pattern), geometry, str(device))
    return MASK_CACHE.get_or_build(key, lambda: _build(pattern, geometry, device))


def mask_from_dense(mask: torch.Tensor, *, block_m: int = 128, block_n: int = 128, device=None) -> BlockMask:
    """A :class:`BlockMask` from an explicit bool ``(q_len, kv_len)`` mask (any mask you can build).

    This reads every element, so it is for masks that fit in memory; patterns go through
    :func:`compile_mask`, which never builds one.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask_from_dense: expected a 2-d bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}")
    q_len, kv_len = mask.shape
    _check_sizes(q_len, kv_len, block_m, block_n)
    geometry = TileGeometry(q_len, kv_len, block_m, block_n)
    padded = torch.zeros(geometry.n_q_blocks * block_m, geometry.n_kv_blocks * block_n, dtype=torch.bool)
    padded[:q_len, :kv_len] = mask.cpu()
    blocks = padded.view(geometry.n_q_blocks, block_m, geometry.n_kv_blocks, block_n).permute(0, 2, 1, 3)
    return _build(_ExplicitMask(blocks.numpy(), q_len, kv_len), geometry, torch.device(device or "cpu"))


class _ExplicitMask(Pattern):
    """Adapter that lets the compiler walk an explicit mask as if it were a pattern."""

    def __init__(self, blocks: np.ndarray, q_len: int, kv_len: int):
        self.blocks, self.q_len, self.kv_len = blocks, q_len, kv_len

    def __str__(self) -> str:
        return f"<explicit {self.q_len}x{self.kv_len} mask>"

    def __hash__(self):
        return id(self)

    def allowed(self, p, j):
        bm, bn = self.blocks.shape[2:]
        i = p - (self.kv_len - self.q_len)
        return self.blocks[i // bm, j // bn, i % bm, j % bn]

    def candidate_blocks(self, geometry):
        rows, cols = np.nonzero(self.blocks.any(axis=(2, 3)))
        return rows.astype(np.int64), cols.astype(np.int64)

    def block_class(self, geometry, rows, cols):
        return np.full(rows.shape, PARTIAL, dtype=np.int8)

    def tile_key(self, geometry, p0, j0):
        return np.stack([p0, j0], axis=1)
