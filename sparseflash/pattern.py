"""The pattern tree: what a pattern means, token by token and block by block.

A pattern is a set of allowed (query i, key j) pairs. Queries are aligned to the end of the keys, so
query i sits at position ``p = i + kv_len - q_len``; every predicate below is written in ``p``.

Each node answers four questions, all vectorised and all working on numpy arrays and torch tensors
alike (they use only Python operators, whose integer semantics numpy and torch share):

- ``allowed(p, j)``: the exact predicate, elementwise.
- ``block_class(geometry, rows, cols)``: for the given blocks, 0 = no allowed pair, 1 = some,
  2 = every pair of the block's valid region allowed. Primitives answer exactly; combinations may
  answer 1 where the truth is 0 or 2 (the block-mask compiler then refines on the block's own tile),
  but never 0 or 2 wrongly.
- ``candidate_blocks(geometry)``: a superset of the non-empty blocks, built from the formula, so that
  the work grows with the number of non-empty blocks and never with q_len * kv_len.
- ``tile_key(geometry, p0, j0)``: integer columns such that two blocks with equal keys (and equal
  valid extents) have identical tiles; it lets the compiler compute each distinct tile once.

Nodes are frozen dataclasses: immutable, hashable, and equal when their canonical text is equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# Stand-ins for +-infinity in int64 interval arithmetic; far beyond any sequence length.
_INF = 1 << 60
# Keys for tiles that are uniformly false / true: every such tile looks the same.
_KEY_ALL_FALSE = -(1 << 61)
_KEY_ALL_TRUE = 1 << 61

EMPTY, PARTIAL, FULL = 0, 1, 2


@dataclass(frozen=True)
class TileGeometry:
    """Sizes that fix the block grid: the sequence lengths and the tile shape.

    Query block ``m`` covers queries ``[m*block_m, min((m+1)*block_m, q_len))``, i.e. positions
    ``p`` shifted by ``offset = kv_len - q_len``; key block ``n`` covers keys
    ``[n*block_n, min((n+1)*block_n, kv_len))``.
    """

    q_len: int
    kv_len: int
    block_m: int
    block_n: int

    @property
    def offset(self) -> int:
        return self.kv_len - self.q_len

    @property
    def n_q_blocks(self) -> int:
        return -(-self.q_len // self.block_m)

    @property
    def n_kv_blocks(self) -> int:
        return -(-self.kv_len // self.block_n)

    def row_positions(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last valid query position ``p`` of each query block."""
        first = rows * self.block_m
        last = np.minimum(first + self.block_m, self.q_len) - 1
        return first + self.offset, last + self.offset

    def col_positions(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last valid key index ``j`` of each key block."""
        first = cols * self.block_n
        return first, np.minimum(first + self.block_n, self.kv_len) - 1

    def all_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        rows = np.repeat(np.arange(self.n_q_blocks, dtype=np.int64), self.n_kv_blocks)
        cols = np.tile(np.arange(self.n_kv_blocks, dtype=np.int64), self.n_q_blocks)
        return rows, cols


def _blocks_from_intervals(geometry: TileGeometry, rows, first_col, last_col):
    """Expand per-row column intervals ``[first_col, last_col]`` (clipped to the grid) to blocks."""
    first_col = np.maximum(first_col, 0)
    last_col = np.minimum(last_col, geometry.n_kv_blocks - 1)
    widths = np.maximum(last_col - first_col + 1, 0)
    out_rows = np.repeat(rows, widths)
    starts = np.repeat(first_col, widths)
    within = np.arange(out_rows.size, dtype=np.int64) - np.repeat(np.cumsum(widths) - widths, widths)
    return out_rows, starts + within


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a comparison: faster than np.unique's hashing here)."""
    keys = np.sort(keys)
    if keys.size:
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    return keys


def _unique_blocks(geometry: TileGeometry, rows, cols):
    keys = _sorted_unique(rows * geometry.n_kv_blocks + cols)
    return keys // geometry.n_kv_blocks, keys % geometry.n_kv_blocks


def _all_rows(geometry: TileGeometry) -> np.ndarray:
    return np.arange(geometry.n_q_blocks, dtype=np.int64)


class Pattern:
    """Base class of pattern-tree nodes. Build them with :func:`sparseflash.parse`."""

    children: ClassVar[tuple] = ()

    def allowed(self, p, j):
        """Elementwise predicate on query positions ``p`` and key indices ``j`` (broadcast)."""
        raise NotImplementedError

    def block_class(self, geometry: TileGeometry, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def candidate_blocks(self, geometry: TileGeometry) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def candidate_estimate(self, geometry: TileGeometry) -> float:
        """A cheap upper bound on ``len(candidate_blocks(geometry))``, to pick the sparsest side."""
        return float(geometry.n_q_blocks * geometry.n_kv_blocks)

    def tile_key(self, geometry: TileGeometry, p0: np.ndarray, j0: np.ndarray) -> np.ndarray:
        """``(n, k)`` int64 keys for tiles starting at position ``p0`` and key ``j0``."""
        raise NotImplementedError

    def dense_mask(self, q_len: int, kv_len: int, device=None):
        """The exact mask as a bool tensor ``(q_len, kv_len)``: the oracle, for small sizes only."""
        import torch

        p = torch.arange(q_len, device=device, dtype=torch.int64)[:, None] + (kv_len - q_len)
        j = torch.arange(kv_len, device=device, dtype=torch.int64)[None, :]
        return torch.broadcast_to(self.allowed(p, j), (q_len, kv_len)).clone()

    # Python operators build trees too: local(256) + global(4) in code reads like the text.
    def __add__(self, other: Pattern) -> Pattern:
        return union(self, other)

    __or__ = __add__

    def __and__(self, other: Pattern) -> Pattern:
        return intersection(self, other)

    def __sub__(self, other: Pattern) -> Pattern:
        return Difference(self, other)

    def __invert__(self) -> Pattern:
        return Complement(self)

    def __repr__(self) -> str:
        return f"Pattern({str(self)!r})"


def _format_call(name: str, *args: int) -> str:
    return name if not args else f"{name}({', '.join(str(a) for a in args)})"


# --------------------------------------------------------------------------------------- primitives


@dataclass(frozen=True, repr=False)
class Dense(Pattern):
    """Every pair: exact FlashAttention."""

    def __str__(self) -> str:
        return "dense"

    def allowed(self, p, j):
        return (p == p) & (j == j)

    def block_class(self, geometry, rows, cols):
        return np.full(rows.shape, FULL, dtype=np.int8)

    def candidate_blocks(self, geometry):
        return geometry.all_blocks()

    def tile_key(self, geometry, p0, j0):
        return np.zeros((p0.size, 0), dtype=np.int64)


@dataclass(frozen=True, repr=False)
class _Band(Pattern):
    """Pairs whose distance ``d = p - j`` lies in ``[lowest, highest]`` (either may be infinite)."""

    def bounds(self) -> tuple[int, int]:
        raise NotImplementedError

    def allowed(self, p, j):
        # Infinite bounds are left out rather than compared: int32 indices (FlexAttention's)
        # cannot hold the stand-in for infinity.
        lowest, highest = self.bounds()
        d = p - j
        if lowest <= -_INF:
            return d <= highest
        if highest >= _INF:
            return d >= lowest
        return (d >= lowest) & (d <= highest)

    def block_class(self, geometry, rows, cols):
        lowest, highest = self.bounds()
        p_first, p_last = geometry.row_positions(rows)
        j_first, j_last = geometry.col_positions(cols)
        d_min, d_max = p_first - j_last, p_last - j_first
        empty = (d_max < lowest) | (d_min > highest)
        full = (d_min >= lowest) & (d_max <= highest)
        return np.where(empty, EMPTY, np.where(full, FULL, PARTIAL)).astype(np.int8)

    def candidate_blocks(self, geometry):
        lowest, highest = self.bounds()
        rows = _all_rows(geometry)
        p_first, p_last = geometry.row_positions(rows)
        j_lo = np.maximum(p_first - highest, 0)
        j_hi = np.minimum(p_last - lowest, geometry.kv_len - 1)
        keep = j_lo <= j_hi
        return _blocks_from_intervals(
            geometry, rows[keep], j_lo[keep] // geometry.block_n, j_hi[keep] // geometry.block_n
        )

    def candidate_estimate(self, geometry):
        lowest, highest = self.bounds()
        width = min(highest, geometry.kv_len) - max(lowest, -geometry.kv_len) + geometry.block_m
        return geometry.n_q_blocks * min(geometry.n_kv_blocks, width / geometry.block_n + 2)

    def tile_key(self, geometry, p0, j0):
        lowest, highest = self.bounds()
        base = p0 - j0
        d_min, d_max = base - (geometry.block_n - 1), base + (geometry.block_m - 1)
        key = np.where((d_max < lowest) | (d_min > highest), _KEY_ALL_FALSE, base)
        key = np.where((d_min >= lowest) & (d_max <= highest), _KEY_ALL_TRUE, key)
        return key[:, None]


@dataclass(frozen=True, repr=False)
class Causal(_Band):
    """``j <= p``."""

    def __str__(self) -> str:
        return "causal"

    def bounds(self):
        return 0, _INF


@dataclass(frozen=True, repr=False)
class Local(_Band):
    """``p - left <= j <= p + right``: a band of ``left`` keys before and ``right`` after, self included."""

    left: int
    right: int

    def __str__(self) -> str:
        if self.left == self.right:
            return _format_call("local", self.left)
        return _format_call("local", self.left, self.right)

    def bounds(self):
        return -self.right, self.left


@dataclass(frozen=True, repr=False)
class Global(Pattern):
    """``j < tokens or p < tokens``: the first tokens attend everywhere and are attended by all."""

    tokens: int

    def __str__(self) -> str:
        return _format_call("global", self.tokens)

    def allowed(self, p, j):
        return (j < self.tokens) | (p < self.tokens)

    def block_class(self, geometry, rows, cols):
        p_first, p_last = geometry.row_positions(rows)
        j_first, j_last = geometry.col_positions(cols)
        empty = (j_first >= self.tokens) & (p_first >= self.tokens)
        full = (j_last < self.tokens) | (p_last < self.tokens)
        return np.where(empty, EMPTY, np.where(full, FULL, PARTIAL)).astype(np.int8)

    def candidate_blocks(self, geometry):
        rows = _all_rows(geometry)
        p_first, _ = geometry.row_positions(rows)
        last_col = np.where(p_first < self.tokens, geometry.n_kv_blocks - 1, (self.tokens - 1) // geometry.block_n)
        return _blocks_from_intervals(geometry, rows, np.zeros_like(rows), last_col)

    def candidate_estimate(self, geometry):
        row_blocks = min(geometry.n_q_blocks, self.tokens // geometry.block_m + 2)
        col_blocks = min(geometry.n_kv_blocks, self.tokens // geometry.block_n + 1)
        return row_blocks * geometry.n_kv_blocks + geometry.n_q_blocks * col_blocks

    def tile_key(self, geometry, p0, j0):
        return np.stack(
            [np.clip(self.tokens - j0, 0, geometry.block_n), np.clip(self.tokens - p0, 0, geometry.block_m)], axis=1
        )


@dataclass(frozen=True, repr=False)
class Sink(Pattern):
    """``j < tokens``: every query sees the first tokens (attention sinks, prefix-LM prefixes)."""

    tokens: int

    def __str__(self) -> str:
        return _format_call("sink", self.tokens)

    def allowed(self, p, j):
        return (j < self.tokens) & (p == p)

    def block_class(self, geometry, rows, cols):
        j_first, j_last = geometry.col_positions(cols)
        return np.where(j_first >= self.tokens, EMPTY, np.where(j_last < self.tokens, FULL, PARTIAL)).astype(np.int8)

    def candidate_blocks(self, geometry):
        rows = _all_rows(geometry)
        last_col = np.full_like(rows, (self.tokens - 1) // geometry.block_n)
        return _blocks_from_intervals(geometry, rows, np.zeros_like(rows), last_col)

    def candidate_estimate(self, geometry):
        return geometry.n_q_blocks * min(geometry.n_kv_blocks, self.tokens // geometry.block_n + 1)

    def tile_key(self, geometry, p0, j0):
        return np.clip(self.tokens - j0, 0, geometry.block_n)[:, None]


@dataclass(frozen=True, repr=False)
class Strided(Pattern):
    """``(p - j) mod stride == 0``: Sparse Transformer's strided component."""

    stride: int

    def __str__(self) -> str:
        return _format_call("strided", self.stride)

    def allowed(self, p, j):
        return (p - j) % self.stride == 0

    def block_class(self, geometry, rows, cols):
        p_first, p_last = geometry.row_positions(rows)
        j_first, j_last = geometry.col_positions(cols)
        d_min, d_max = p_first - j_last, p_last - j_first
        has_multiple = (d_max // self.stride) * self.stride >= d_min
        full = (self.stride == 1) | ((d_min == d_max) & (d_min % self.stride == 0))
        return np.where(~has_multiple, EMPTY, np.where(full, FULL, PARTIAL)).astype(np.int8)

    def _is_dense(self, geometry) -> bool:
        # A full block spans block_m + block_n - 1 distances, so it holds a multiple of the stride.
        return self.stride < geometry.block_m + geometry.block_n

    def candidate_blocks(self, geometry):
        if self._is_dense(geometry):
            return geometry.all_blocks()
        rows = _all_rows(geometry)
        p_first, p_last = geometry.row_positions(rows)
        # Multiples t*stride of the distance d = p - j reachable from this row: d in [p_first-(kv_len-1), p_last].
        t_first = -((-(p_first - (geometry.kv_len - 1))) // self.stride)
        t_last = p_last // self.stride
        counts = np.maximum(t_last - t_first + 1, 0)
        row_of = np.repeat(rows, counts)
        t = np.repeat(t_first, counts) + (
            np.arange(row_of.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        d = t * self.stride
        j_lo = np.maximum(p_first[row_of] - d, 0)
        j_hi = np.minimum(p_last[row_of] - d, geometry.kv_len - 1)
        keep = j_lo <= j_hi
        out = _blocks_from_intervals(
            geometry, row_of[keep], j_lo[keep] // geometry.block_n, j_hi[keep] // geometry.block_n
        )
        return _unique_blocks(geometry, *out)

    def candidate_estimate(self, geometry):
        if self._is_dense(geometry):
            return float(geometry.n_q_blocks * geometry.n_kv_blocks)
        per_row = (geometry.kv_len + geometry.block_m) / self.stride + 1
        return geometry.n_q_blocks * min(geometry.n_kv_blocks, per_row * (geometry.block_m / geometry.block_n + 2))

    def tile_key(self, geometry, p0, j0):
        return ((p0 - j0) % self.stride)[:, None]


@dataclass(frozen=True, repr=False)
class Butterfly(Pattern):
    """``x = (p // block) XOR (j // block)`` is 0 or a power of two (below ``2**levels`` if given)."""

    block: int
    levels: int | None = None

    # Tiles spanning more than this many (query chunk, key chunk) pairs are not deduplicated.
    _MAX_KEY_BITS: ClassVar[int] = 62

    def __str__(self) -> str:
        if self.levels is None:
            return _format_call("butterfly", self.block)
        return _format_call("butterfly", self.block, self.levels)

    def _linked(self, x):
        """Whether chunk distance ``x`` (a XOR of chunk indices) is allowed."""
        power_of_two = (x > 0) & ((x & (x - 1)) == 0)
        # From 31 levels up the bound exceeds any chunk distance (and int32 could not hold it).
        if self.levels is not None and self.levels < 31:
            power_of_two = power_of_two & (x < (1 << self.levels))
        return (x == 0) | power_of_two

    def allowed(self, p, j):
        return self._linked((p // self.block) ^ (j // self.block))

    def _flips(self, geometry) -> np.ndarray:
        """The allowed XOR values: 0 and every power of two that can occur."""
        top = max(geometry.q_len, geometry.kv_len) // self.block + 1
        n_levels = int(top).bit_length()
        if self.levels is not None:
            n_levels = min(n_levels, self.levels)
        return np.array([0] + [1 << k for k in range(n_levels)], dtype=np.int64)

    def block_class(self, geometry, rows, cols):
        p_first, p_last = geometry.row_positions(rows)
        j_first, j_last = geometry.col_positions(cols)
        u_first, u_last = p_first // self.block, p_last // self.block
        v_first, v_last = j_first // self.block, j_last // self.block
        n_u = int((u_last - u_first).max(initial=0)) + 1
        n_v = int((v_last - v_first).max(initial=0)) + 1
        if n_u * n_v > 4096:
            # Chunks much smaller than the tile: no cheap exact answer; the compiler's tile check decides.
            return np.full(rows.shape, PARTIAL, dtype=np.int8)
        u = u_first[:, None, None] + np.arange(n_u)[None, :, None]
        v = v_first[:, None, None] + np.arange(n_v)[None, None, :]
        inside = (u <= u_last[:, None, None]) & (v <= v_last[:, None, None])
        linked = self._linked(u ^ v)
        any_linked = (linked & inside).any(axis=(1, 2))
        all_linked = (linked | ~inside).all(axis=(1, 2))
        return np.where(~any_linked, EMPTY, np.where(all_linked, FULL, PARTIAL)).astype(np.int8)

    def candidate_blocks(self, geometry):
        rows = _all_rows(geometry)
        p_first, p_last = geometry.row_positions(rows)
        u_first = np.maximum(p_first, 0) // self.block
        u_last = p_last // self.block
        counts = np.maximum(u_last - u_first + 1, 0)
        row_of = np.repeat(rows, counts)
        u = np.repeat(u_first, counts) + (
            np.arange(row_of.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        flips = self._flips(geometry)
        v = (u[:, None] ^ flips[None, :]).ravel()
        row_of = np.repeat(row_of, flips.size)
        j_lo, j_hi = v * self.block, np.minimum(v * self.block + self.block - 1, geometry.kv_len - 1)
        keep = j_lo <= j_hi
        out = _blocks_from_intervals(
            geometry, row_of[keep], j_lo[keep] // geometry.block_n, j_hi[keep] // geometry.block_n
        )
        return _unique_blocks(geometry, *out)

    def candidate_estimate(self, geometry):
        chunks_per_row = geometry.block_m / self.block + 2
        blocks_per_chunk = self.block / geometry.block_n + 2
        per_row = chunks_per_row * self._flips(geometry).size * blocks_per_chunk
        return geometry.n_q_blocks * min(geometry.n_kv_blocks, per_row)

    def tile_key(self, geometry, p0, j0):
        u0, v0 = p0 // self.block, j0 // self.block
        n_u = (geometry.block_m - 1) // self.block + 2
        n_v = (geometry.block_n - 1) // self.block + 2
        if n_u * n_v > self._MAX_KEY_BITS:
            return np.stack([p0, j0], axis=1)
        # The tile is fixed by where it starts inside its chunks and by which chunk pairs are linked.
        u = u0[:, None, None] + np.arange(n_u)[None, :, None]
        v = v0[:, None, None] + np.arange(n_v)[None, None, :]
        bits = self._linked(u ^ v).reshape(p0.size, -1).astype(np.int64)
        packed = (bits << np.arange(bits.shape[1], dtype=np.int64)).sum(axis=1)
        return np.stack([p0 - u0 * self.block, j0 - v0 * self.block, packed], axis=1)


@dataclass(frozen=True, repr=False)
class Chunk(Pattern):
    """``p // size == j // size``: block-diagonal (chunked) attention."""

    size: int

    def __str__(self) -> str:
        return _format_call("chunk", self.size)

    def allowed(self, p, j):
        return (p // self.size) == (j // self.size)

    def _classes(self, p_first, p_last, j_first, j_last):
        cp0, cp1 = p_first // self.size, p_last // self.size
        cj0, cj1 = j_first // self.size, j_last // self.size
        empty = (cp1 < cj0) | (cj1 < cp0)
        full = (cp0 == cp1) & (cj0 == cj1) & (cp0 == cj0)
        return np.where(empty, EMPTY, np.where(full, FULL, PARTIAL)).astype(np.int8)

    def block_class(self, geometry, rows, cols):
        return self._classes(*geometry.row_positions(rows), *geometry.col_positions(cols))

    def candidate_blocks(self, geometry):
        rows = _all_rows(geometry)
        p_first, p_last = geometry.row_positions(rows)
        j_lo = np.maximum((p_first // self.size) * self.size, 0)
        j_hi = np.minimum((p_last // self.size) * self.size + self.size - 1, geometry.kv_len - 1)
        keep = j_lo <= j_hi
        return _blocks_from_intervals(
            geometry, rows[keep], j_lo[keep] // geometry.block_n, j_hi[keep] // geometry.block_n
        )

    def candidate_estimate(self, geometry):
        per_row = (self.size + geometry.block_m) / geometry.block_n + 2
        return geometry.n_q_blocks * min(geometry.n_kv_blocks, per_row)

    def tile_key(self, geometry, p0, j0):
        into_chunk = p0 % self.size
        key_from_chunk = j0 - (p0 - into_chunk)
        uniform = self._classes(p0, p0 + geometry.block_m - 1, j0, j0 + geometry.block_n - 1)
        key = np.stack([into_chunk, key_from_chunk], axis=1)
        key[uniform == EMPTY] = _KEY_ALL_FALSE
        key[uniform == FULL] = _KEY_ALL_TRUE
        return key


# ------------------------------------------------------------------------------------- combinations


def _canonical_children(children) -> tuple:
    unique = {str(child): child for child in children}
    return tuple(unique[text] for text in sorted(unique))


def union(*patterns: Pattern) -> Pattern:
    """Union of patterns, flattened, deduplicated and put in canonical order."""
    flat = []
    for pattern in patterns:
        flat.extend(pattern.children if isinstance(pattern, Union) else (pattern,))
    children = _canonical_children(flat)
    return children[0] if len(children) == 1 else Union(children)


def intersection(*patterns: Pattern) -> Pattern:
    """Intersection of patterns, flattened, deduplicated and put in canonical order."""
    flat = []
    for pattern in patterns:
        flat.extend(pattern.children if isinstance(pattern, Intersection) else (pattern,))
    children = _canonical_children(flat)
    return children[0] if len(children) == 1 else Intersection(children)


def split_full_rows(pattern: Pattern) -> tuple[Pattern, int] | None:
    """``(rest, g)`` when ``pattern`` is a union holding ``global(g)`` (or is one), else None.

    Queries at positions ``p < g`` then allow every key, and for ``p >= g`` the pattern allows
    exactly what ``rest`` does: each ``global(t)`` (t <= g) of the union is ``sink(t)`` there. The
    kernels use this to compute the few all-key rows apart from a band that no longer has a long row.
    """
    children = pattern.children if isinstance(pattern, Union) else (pattern,)
    tokens = max((child.tokens for child in children if isinstance(child, Global)), default=0)
    if tokens == 0:
        return None
    rest = union(*(Sink(child.tokens) if isinstance(child, Global) else child for child in children))
    return rest, tokens


def _keys_of(geometry, rows, cols):
    return rows * geometry.n_kv_blocks + cols


@dataclass(frozen=True, repr=False)
class Union(Pattern):
    """Pairs allowed by any child (``a + b``, ``a | b``)."""

    children: tuple

    def __str__(self) -> str:
        return " + ".join(_operand_text(child, Union) for child in self.children)

    def allowed(self, p, j):
        result = self.children[0].allowed(p, j)
        for child in self.children[1:]:
            result = result | child.allowed(p, j)
        return result

    def block_class(self, geometry, rows, cols):
        classes = [child.block_class(geometry, rows, cols) for child in self.children]
        return np.maximum.reduce(classes)

    def candidate_blocks(self, geometry):
        keys = _sorted_unique(
            np.concatenate([_keys_of(geometry, *child.candidate_blocks(geometry)) for child in self.children])
        )
        return keys // geometry.n_kv_blocks, keys % geometry.n_kv_blocks

    def candidate_estimate(self, geometry):
        return sum(child.candidate_estimate(geometry) for child in self.children)

    def tile_key(self, geometry, p0, j0):
        return np.concatenate([child.tile_key(geometry, p0, j0) for child in self.children], axis=1)


@dataclass(frozen=True, repr=False)
class Intersection(Pattern):
    """Pairs allowed by every child (``a & b``)."""

    children: tuple

    def __str__(self) -> str:
        return " & ".join(_operand_text(child, Intersection) for child in self.children)

    def allowed(self, p, j):
        result = self.children[0].allowed(p, j)
        for child in self.children[1:]:
            result = result & child.allowed(p, j)
        return result

    def block_class(self, geometry, rows, cols):
        classes = [child.block_class(geometry, rows, cols) for child in self.children]
        return np.minimum.reduce(classes)

    def candidate_blocks(self, geometry):
        # Every non-empty block is non-empty in each child: the sparsest child's candidates suffice.
        sparsest = min(self.children, key=lambda child: child.candidate_estimate(geometry))
        return sparsest.candidate_blocks(geometry)

    def candidate_estimate(self, geometry):
        return min(child.candidate_estimate(geometry) for child in self.children)

    def tile_key(self, geometry, p0, j0):
        return np.concatenate([child.tile_key(geometry, p0, j0) for child in self.children], axis=1)


@dataclass(frozen=True, repr=False)
class Difference(Pattern):
    """Pairs allowed by ``keep`` and not by ``remove`` (``keep - remove``)."""

    keep: Pattern
    remove: Pattern

    @property
    def children(self) -> tuple:
        return (self.keep, self.remove)

    def __str__(self) -> str:
        left = _operand_text(self.keep, Difference, right_side=False)
        return f"{left} - {_operand_text(self.remove, Difference, right_side=True)}"

    def allowed(self, p, j):
        return self.keep.allowed(p, j) & ~self.remove.allowed(p, j)

    def block_class(self, geometry, rows, cols):
        kept = self.keep.block_class(geometry, rows, cols)
        removed = self.remove.block_class(geometry, rows, cols)
        return np.where(removed == FULL, EMPTY, np.where(removed == EMPTY, kept, np.minimum(kept, PARTIAL)))

    def candidate_blocks(self, geometry):
        return self.keep.candidate_blocks(geometry)

    def candidate_estimate(self, geometry):
        return self.keep.candidate_estimate(geometry)

    def tile_key(self, geometry, p0, j0):
        return np.concatenate([self.keep.tile_key(geometry, p0, j0), self.remove.tile_key(geometry, p0, j0)], axis=1)


@dataclass(frozen=True, repr=False)
class Complement(Pattern):
    """Pairs the child does not allow (``~a``)."""

    inner: Pattern

    @property
    def children(self) -> tuple:
        return (self.inner,)

    def __str__(self) -> str:
        return f"~{_operand_text(self.inner, Complement)}"

    def allowed(self, p, j):
        return ~self.inner.allowed(p, j)

    def block_class(self, geometry, rows, cols):
        return (FULL - self.inner.block_class(geometry, rows, cols)).astype(np.int8)

    def candidate_blocks(self, geometry):
        return geometry.all_blocks()

    def tile_key(self, geometry, p0, j0):
        return self.inner.tile_key(geometry, p0, j0)


_BINDING = {Union: 0, Difference: 0, Intersection: 1, Complement: 2}


def _operand_text(child: Pattern, parent: type, right_side: bool = False) -> str:
    """The child's text, parenthesised where the parent's precedence would otherwise regroup it."""
    text = str(child)
    child_binding = _BINDING.get(type(child), 3)
    parent_binding = _BINDING[parent]
    needs_parens = child_binding < parent_binding
    # Same level as + and -: a difference inside a union (whose children are reordered) or anything
    # of that level on the right of a minus would regroup, so it is bracketed.
    if child_binding == parent_binding == 0 and (parent is Union and isinstance(child, Difference) or right_side):
        needs_parens = True
    return f"({text})" if needs_parens else text
