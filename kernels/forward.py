"""Block-sparse FlashAttention forward (FlashAttention-2 order).

Notation: see ``common.py``. One program per (kernel query tile, batch * q head), started in the
order of ``common.Schedule`` (longest rows first; heads fastest when rows are uneven):

    o[i]   = sum_j softmax_j(scale * q[i] . k[j] over allowed j) * v[j]          [BLOCK_M, D]
    lse[i] = log sum_j exp(scale * q[i] . k[j]) over allowed j (natural log)     [BLOCK_M]

The program loads its Q tile once and walks its mask row: first the *full* blocks (every pair
allowed, never padded: no mask code at all; as runs of consecutive blocks when runs are long, see
``common.walk_full_blocks_as_runs``), then the *partial* blocks (their uint8 tile masks the
scores with -inf; K/V loads are bounds-checked because a partial block may hang past kv_len). Empty
blocks are never touched. For the pattern ``dense`` no list is read: the program walks every key
tile and masks only the last one, when kv_len is not a multiple of BLOCK_N.

[Note] Base-2 online softmax and fully masked rows
    Scores are kept as ``s2 = q.k * scale * log2(e)`` so each exponential is one ``exp2``; the
    running max ``m_i`` and the final lse are in the same base-2 units until the end, where
    ``lse = (m_i + log2(l_i)) * ln(2)``.
    A row may have no allowed key in a tile, or in the whole row (``causal`` with q_len > kv_len,
    ``causal - local(10)``...). Then ``m_new`` is -inf and the textbook update
    ``exp2(m_i - m_new)`` is ``exp2(-inf + inf)`` = NaN. Masked steps therefore subtract
    ``m_safe`` (0 where ``m_new`` is -inf): p = exp2(-inf - 0) = 0 and alpha = exp2(-inf - 0) = 0,
    so the row's state stays exactly (m=-inf, l=0, acc=0). At the end such a row divides by 1
    instead of 0 and stores o = 0 and lse = -inf. Full blocks have an allowed key in every row, so
    their unmasked steps always see a finite ``m_new`` and skip the guard.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    LN2_JIT,
    LOG2E,
    ForwardConfig,
    check_tile,
    default_forward_config,
    dot_precision,
    head_dim_padded,
    key_span_count,
    load_rows,
    load_tile_mask,
    partial_parts,
    shared_memory_per_block,
    new_output,
    on_device_of,
    run_beside,
    store_rows,
    load_tile,
    run_tile_start,
    run_tiles,
    streamed_tiles,
    WALK_REVERSE,
    TMA_OFF,
    tile_source,
)
from ..blockmask import NARROW_WINDOW
from . import full_rows as full_rows_module
from .full_rows import FullRows, full_rows_apart, full_rows_config
from .launch import LineLaunch, layout_key, line_launch, prepared_launch
from .split import item_block_ranges, merge_softmax, new_scratch, program_item, scratch_rows

# The order in which the forward walks runs of full blocks and dense rows (common.WALK_*). Keys
# from the last backwards: as fast or up to 2% faster, H200, means of two runs each
# (benchmarks/backward_kernels.py --forward-walks 1,2,1,2, results/walks_4d.json): dense 32k
# 15.04 -> 14.86 ms, every block listed 32k 16.70 -> 16.46, causal 8k 1.122 -> 1.112, dense 8k level.
FORWARD_WALK = WALK_REVERSE.value

# Whether query tiles smaller than the mask block skip the blocks narrow across their row when they
# miss its window (common.partial_parts). Off, as in dQ (backward.py); the default forward tiles
# span the whole block, where it changes nothing.
FORWARD_SKIP_ACROSS = False

# How a step masks its scores.
_NO_MASK = tl.constexpr(0)  # full block (or a whole dense tile): nothing to mask
_TILE_MASK = tl.constexpr(1)  # partial block: the uint8 tile (0 also on padding)
_BOUNDS_MASK = tl.constexpr(2)  # last tile of a dense row: keys past kv_len


@triton.jit
def _online_softmax_step(
    acc,
    m_i,
    l_i,
    q,
    k_base,
    v_base,
    batch,
    kv_head,
    start_n,
    offs_n,
    offs_d,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    kv_len,
    qk_scale,
    allowed,
    MASK_MODE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Fold keys ``start_n + offs_n`` into the running (acc, m_i, l_i) of one query tile.

    ``k_base``/``v_base``: from ``common.tile_source`` (pointers to the head's K and V, the
    (B, H, L, D) host descriptors, or the head's own descriptors; rows past kv_len read as zeros)."""
    check_rows = MASK_MODE != _NO_MASK
    k = load_tile(k_base, batch, kv_head, start_n, offs_n, offs_d, stride_kn, stride_kd, kv_len, check_rows, BLOCK_N, HEAD_DIM, HEAD_DIM_PADDED, USE_TMA)  # [BLOCK_N, D]
    v = load_tile(v_base, batch, kv_head, start_n, offs_n, offs_d, stride_vn, stride_vd, kv_len, check_rows, BLOCK_N, HEAD_DIM, HEAD_DIM_PADDED, USE_TMA)  # [BLOCK_N, D]
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N], unscaled
    if MASK_MODE == _TILE_MASK:
        qk = tl.where(allowed, qk, float("-inf"))
    if MASK_MODE == _BOUNDS_MASK:
        qk = tl.where((start_n + offs_n)[None, :] < kv_len, qk, float("-inf"))
    # The scale is applied to the row max, not to every score, so that each probability is one
    # fused multiply-add and an exp2 (a plain dense kernel at D=128 ran 4-6% faster in the same run,
    # benchmarks/experiments/hopper_forward_h200_run.txt).
    # Needs qk_scale > 0 (host-checked): max(s * c) = max(s) * c and -inf * c = -inf.
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # [BLOCK_M], base 2
    if MASK_MODE == _NO_MASK:
        m_shift = m_new
    else:
        # See [Note] in the module docstring: a row with no key so far must not produce NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk * qk_scale - m_shift[:, None])  # [BLOCK_M, BLOCK_N]
    alpha = tl.math.exp2(m_i - m_shift)  # [BLOCK_M]: rescales what was summed under the old max
    l_i = l_i * alpha + tl.sum(p, 1)
    # The product accumulates into acc in place (one matrix instruction chain, no separate add).
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _list_entry(chunk_values, slots, slot):
    """Entry ``slot`` of a block-list chunk held in registers (``slots`` = arange over the chunk)."""
    return tl.sum(tl.where(slots == slot, chunk_values, 0), axis=0)


@triton.jit
def _partial_block_step(
    acc, m_i, l_i, q, k_base, v_base, batch, kv_head, kv_block, tile_id, row_in_tile, col_in_tile, tiles, key_spans, offs_m, offs_n, offs_d,
    stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale,
    MASK_BLOCK_M: tl.constexpr, MASK_BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_N: tl.constexpr, KEY_SPANS: tl.constexpr,
):  # fmt: skip
    """One step inside partial block ``kv_block``: its tile ``tile_id`` masks the scores."""
    allowed = load_tile_mask(
        tiles, key_spans, tile_id, row_in_tile, col_in_tile, offs_m[:, None], offs_n[None, :], MASK_BLOCK_M, MASK_BLOCK_N, KEY_SPANS
    )  # [BLOCK_M, BLOCK_N]
    return _online_softmax_step(
        acc, m_i, l_i, q, k_base, v_base, batch, kv_head, kv_block * MASK_BLOCK_N + col_in_tile, offs_n, offs_d,
        stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, allowed,
        _TILE_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
    )  # fmt: skip


@triton.jit
def _attention_forward_kernel(
    Q, K, V, K_rows, V_rows, Out, Lse, OutPart, LsePart,
    full_kv_offsets, full_kv_indices, full_kv_run_offsets, full_kv_run_starts, full_kv_run_ends,
    partial_kv_offsets, partial_kv_indices, partial_kv_tiles,
    across_kv_starts, across_kv_windows, narrow_kv_starts, tile_kv_windows, tiles, tile_key_spans,
    item_lines, item_begins, item_ends, item_slots,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh,
    n_q_heads, n_batch_heads, q_len, kv_len, qk_scale, first_stored_row,
    GROUP_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASK_BLOCK_M: tl.constexpr,
    MASK_BLOCK_N: tl.constexpr,
    IS_DENSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HEAVY_FIRST: tl.constexpr,
    HEADS_FASTEST: tl.constexpr,
    FULL_RUNS: tl.constexpr,
    LIST_SLOTS: tl.constexpr,
    SPLIT: tl.constexpr,
    USE_TMA: tl.constexpr,
    WALK: tl.constexpr,
    HAS_PARTIAL: tl.constexpr,
    HAS_NARROW: tl.constexpr,
    NARROW: tl.constexpr,
    SKIP_ACROSS: tl.constexpr,
    KEY_SPANS: tl.constexpr,
):  # fmt: skip
    start_m, batch_head, item_begin, item_end, slot = program_item(
        item_lines, item_begins, item_ends, item_slots, BLOCK_M, MASK_BLOCK_M, HEAVY_FIRST, HEADS_FASTEST, SPLIT
    )
    batch = batch_head // n_q_heads
    q_head = batch_head % n_q_heads
    kv_head = q_head // GROUP_SIZE  # GQA/MQA: query heads share a kv head, k and v are not copied

    q_base = Q + tl.cast(batch, tl.int64) * stride_qb + tl.cast(q_head, tl.int64) * stride_qh
    # K/V tiles by pointers or through the tensor-memory accelerator (Hopper): common.tma_mode.
    k_base = tile_source(K, batch, kv_head, stride_kb, stride_kh, stride_kn, kv_len, BLOCK_N, HEAD_DIM, USE_TMA)
    v_base = tile_source(V, batch, kv_head, stride_vb, stride_vh, stride_vn, kv_len, BLOCK_N, HEAD_DIM, USE_TMA)
    o_base = Out + tl.cast(batch, tl.int64) * stride_ob + tl.cast(q_head, tl.int64) * stride_oh
    lse_base = Lse + tl.cast(batch, tl.int64) * stride_lb + tl.cast(q_head, tl.int64) * stride_lh

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)

    q = load_rows(q_base, start_m, offs_m, offs_d, stride_qm, stride_qd, q_len, True, HEAD_DIM, HEAD_DIM_PADDED)  # [BLOCK_M, D]
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PADDED], dtype=tl.float32)

    if IS_DENSE:
        n_whole_tiles = kv_len // BLOCK_N
        for tile in range(0, n_whole_tiles):
            acc, m_i, l_i = _online_softmax_step(
                acc, m_i, l_i, q, k_base, v_base, batch, kv_head, run_tile_start(0, n_whole_tiles, tile, BLOCK_N, WALK), offs_n, offs_d,
                stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
            )  # fmt: skip
        if n_whole_tiles * BLOCK_N < kv_len:
            acc, m_i, l_i = _online_softmax_step(
                acc, m_i, l_i, q, k_base, v_base, batch, kv_head, n_whole_tiles * BLOCK_N, offs_n, offs_d,
                stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                _BOUNDS_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
            )  # fmt: skip
    else:
        # The mask row holding this kernel tile, and where the tile sits inside the mask's tiles.
        mask_row = start_m // MASK_BLOCK_M
        row_in_tile = start_m % MASK_BLOCK_M
        # One loop step per kernel tile: a mask block is N_STEPS consecutive steps.
        N_STEPS = MASK_BLOCK_N // BLOCK_N
        # This program's share of the row: all of it, or with SPLIT an item of a long row (split.py).
        full_begin, full_end, partial_begin, partial_end = item_block_ranges(
            full_kv_offsets, partial_kv_offsets, mask_row, item_begin, item_end
        )
        # Partial blocks [partial_begin, wide_end) are walked in whole kernel tiles, the narrow ones
        # (BlockMask: allowed keys within NARROW) in one NARROW-key step each (common.partial_parts).
        wide_end = partial_end
        narrow_begin = partial_end
        if HAS_NARROW:
            wide_end, narrow_begin = partial_parts(
                across_kv_starts, across_kv_windows, narrow_kv_starts, mask_row, partial_begin, partial_end, row_in_tile, BLOCK_M, NARROW, SKIP_ACROSS
            )

        if FULL_RUNS:
            # Long runs of consecutive full blocks: inside a run the key offset is affine in the
            # loop counter, as in dense attention, so the compiler can prefetch K and V stages
            # ahead (a block list with every block listed ran 27% slower than dense). The first run
            # walked gets a loop of its own, outside the loop over runs, like dense attention's loop.
            run_begin = tl.load(full_kv_run_offsets + mask_row)
            run_end = tl.load(full_kv_run_offsets + mask_row + 1)
            first_key, n_tiles = run_tiles(full_kv_run_starts, full_kv_run_ends, run_begin, run_end, 0, MASK_BLOCK_N, BLOCK_N, WALK)
            for tile in range(0, n_tiles):
                acc, m_i, l_i = _online_softmax_step(
                    acc, m_i, l_i, q, k_base, v_base, batch, kv_head, run_tile_start(first_key, n_tiles, tile, BLOCK_N, WALK), offs_n, offs_d,
                    stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                    _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
                )  # fmt: skip
            for nth_run in range(1, run_end - run_begin):
                first_key, n_tiles = run_tiles(full_kv_run_starts, full_kv_run_ends, run_begin, run_end, nth_run, MASK_BLOCK_N, BLOCK_N, WALK)
                for tile in range(0, n_tiles):
                    acc, m_i, l_i = _online_softmax_step(
                        acc, m_i, l_i, q, k_base, v_base, batch, kv_head, run_tile_start(first_key, n_tiles, tile, BLOCK_N, WALK), offs_n, offs_d,
                        stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                        _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
                    )  # fmt: skip
        elif LIST_SLOTS > 0:
            # The block list read LIST_SLOTS entries at a time into registers: each step's key
            # offset is then a function of the loop counter alone, so the compiler can issue the
            # K/V loads stages ahead (a list entry loaded inside the loop costs a pipeline stage).
            slots = tl.arange(0, LIST_SLOTS)
            for chunk in range(full_begin, full_end, LIST_SLOTS):
                chunk_blocks = tl.load(full_kv_indices + chunk + slots, mask=chunk + slots < full_end, other=0)
                for step in range(0, tl.minimum(full_end - chunk, LIST_SLOTS) * N_STEPS):
                    kv_block = _list_entry(chunk_blocks, slots, step // N_STEPS)
                    start_n = kv_block * MASK_BLOCK_N + (step % N_STEPS) * BLOCK_N
                    acc, m_i, l_i = _online_softmax_step(
                        acc, m_i, l_i, q, k_base, v_base, batch, kv_head, start_n, offs_n, offs_d,
                        stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                        _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
                    )  # fmt: skip
        else:
            # Short rows: one flat loop over the listed blocks pipelines better than nested runs.
            for step in range(full_begin * N_STEPS, full_end * N_STEPS):
                kv_block = tl.load(full_kv_indices + step // N_STEPS)
                start_n = kv_block * MASK_BLOCK_N + (step % N_STEPS) * BLOCK_N
                acc, m_i, l_i = _online_softmax_step(
                    acc, m_i, l_i, q, k_base, v_base, batch, kv_head, start_n, offs_n, offs_d,
                    stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                    _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
                )  # fmt: skip

        if not HAS_PARTIAL:
            # No partial block anywhere (a mask listing every block as full): no loop for them at
            # all, which made such a mask's forward ~5% faster (H200, results/one_run.json
            # against results/walks_4d.json: 8k 2.05 -> 1.95 ms, dense 1.90).
            pass
        elif LIST_SLOTS > 0:
            slots = tl.arange(0, LIST_SLOTS)
            for chunk in range(partial_begin, wide_end, LIST_SLOTS):
                in_chunk = chunk + slots < wide_end
                chunk_blocks = tl.load(partial_kv_indices + chunk + slots, mask=in_chunk, other=0)
                chunk_tiles = tl.load(partial_kv_tiles + chunk + slots, mask=in_chunk, other=0)
                for step in range(0, tl.minimum(wide_end - chunk, LIST_SLOTS) * N_STEPS):
                    acc, m_i, l_i = _partial_block_step(
                        acc, m_i, l_i, q, k_base, v_base, batch, kv_head,
                        _list_entry(chunk_blocks, slots, step // N_STEPS), _list_entry(chunk_tiles, slots, step // N_STEPS),
                        row_in_tile, (step % N_STEPS) * BLOCK_N, tiles, tile_key_spans, offs_m, offs_n, offs_d,
                        stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale,
                        MASK_BLOCK_M, MASK_BLOCK_N, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N, KEY_SPANS,
                    )  # fmt: skip
        else:
            for step in range(partial_begin * N_STEPS, wide_end * N_STEPS):
                acc, m_i, l_i = _partial_block_step(
                    acc, m_i, l_i, q, k_base, v_base, batch, kv_head,
                    tl.load(partial_kv_indices + step // N_STEPS), tl.load(partial_kv_tiles + step // N_STEPS),
                    row_in_tile, (step % N_STEPS) * BLOCK_N, tiles, tile_key_spans, offs_m, offs_n, offs_d,
                    stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale,
                    MASK_BLOCK_M, MASK_BLOCK_N, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N, KEY_SPANS,
                )  # fmt: skip
        if HAS_NARROW:
            # Pointer loads: the descriptors' boxes are BLOCK_N rows tall.
            k_rows = tile_source(K_rows, batch, kv_head, stride_kb, stride_kh, stride_kn, kv_len, NARROW, HEAD_DIM, TMA_OFF)
            v_rows = tile_source(V_rows, batch, kv_head, stride_vb, stride_vh, stride_vn, kv_len, NARROW, HEAD_DIM, TMA_OFF)
            offs_w = tl.arange(0, NARROW)
            for entry in range(narrow_begin, partial_end):
                tile_id = tl.load(partial_kv_tiles + entry)
                acc, m_i, l_i = _partial_block_step(
                    acc, m_i, l_i, q, k_rows, v_rows, batch, kv_head,
                    tl.load(partial_kv_indices + entry), tile_id,
                    row_in_tile, tl.load(tile_kv_windows + tile_id), tiles, tile_key_spans, offs_m, offs_w, offs_d,
                    stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale,
                    MASK_BLOCK_M, MASK_BLOCK_N, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, TMA_OFF, NARROW, KEY_SPANS,
                )  # fmt: skip

    # Rows with no allowed key: divide by 1 (acc is 0) and report lse = -inf. See [Note].
    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_key, (m_i + tl.math.log2(l_safe)) * LN2_JIT, float("-inf"))
    # An item of a split row writes its float32 partial result to its slot, merged later.
    to_slot = False
    if SPLIT:
        to_slot = slot >= 0
    if to_slot:
        row_in_block = start_m % MASK_BLOCK_M
        part_base = scratch_rows(OutPart, slot, batch_head, n_batch_heads, row_in_block, MASK_BLOCK_M, HEAD_DIM_PADDED)
        tl.store(part_base + offs_m[:, None] * HEAD_DIM_PADDED + offs_d[None, :], out)
        tl.store(scratch_rows(LsePart, slot, batch_head, n_batch_heads, row_in_block, MASK_BLOCK_M, 1) + offs_m, lse)
    else:
        # Rows below first_stored_row are another launch's (the all-key rows, full_rows.py).
        store_rows(o_base, start_m, offs_m, offs_d, stride_om, stride_od, first_stored_row, q_len, out.to(Out.dtype.element_ty), HEAD_DIM)
        rows = start_m + offs_m
        tl.store(lse_base + rows, lse, mask=(rows >= first_stored_row) & (rows < q_len))


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask,
    scale: float,
    *,
    allow_tf32: bool = False,
    config: ForwardConfig | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    first_stored_row: int = 0,
):
    """Launch the forward kernel. Returns ``(out, lse)``: out like ``q``, lse float32 (B, Hq, Lq).

    ``q`` (B, Hq, Lq, D), ``k``/``v`` (B, Hkv, Lk, D) with any strides; ``mask`` a BlockMask for
    (Lq, Lk) on q's device. Inputs are assumed checked (``sparseflash.attention`` does that).
    ``config`` overrides the kernel tiles and launch settings; ``out``/``lse`` may be given to write
    into (``lse`` with rows of unit stride, a view of a larger one allowed). Rows below
    ``first_stored_row`` are computed but not written (another launch writes them).
    """
    if scale <= 0:
        # The kernel scales row maxima, which needs scale > 0; scale * q.k is the same as
        # |scale| * (-q).k, and as 1 * 0.k for scale 0 (a rare case: it costs a copy of q).
        q, scale = (-q, -scale) if scale < 0 else (torch.zeros_like(q), 1.0)
    apart = full_rows_apart(mask, (q.shape[0] * q.shape[1], q.shape[3])) if config is None else None
    if apart is not None:
        return _forward_full_rows_apart(q, k, v, apart, scale, allow_tf32, out, lse)
    key = ("forward", config, allow_tf32, FORWARD_WALK, FORWARD_SKIP_ACROSS, *layout_key(q, k, v))
    launch = prepared_launch(mask, key, lambda: _prepare_forward(q, k, v, mask, allow_tf32, config))  # a LineLaunch
    batch, n_q_heads, q_len, _ = q.shape
    kv_len = k.shape[2]
    if out is None:
        out = new_output(q.shape, q.dtype, q.device)
    if lse is None:
        lse = new_output((batch, n_q_heads, q_len), torch.float32, q.device)
    plan = launch.plan
    if plan is not None:
        out_part = new_scratch(plan, batch * n_q_heads, mask.block_m, launch.constants["HEAD_DIM_PADDED"], q.device)
        lse_part = new_scratch(plan, batch * n_q_heads, mask.block_m, 1, q.device)
    else:
        out_part = lse_part = out  # unused
    k_tiles, v_tiles = streamed_tiles(launch.use_tma, launch.streamed_rows, k, v)
    with on_device_of(q):
        launch.launcher(_attention_forward_kernel)(
            q, k_tiles, v_tiles, k, v, out, lse, out_part, lse_part, *launch.lists,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride()[:2],
            n_q_heads, batch * n_q_heads, q_len, kv_len, scale * LOG2E, first_stored_row,
        )  # fmt: skip
        if plan is not None:
            merge_softmax(plan, out_part, lse_part, out, lse, mask.block_m, first_stored_row)
    return out, lse


def _forward_full_rows_apart(q, k, v, apart: FullRows, scale: float, allow_tf32: bool, out, lse):
    """The forward of a mask whose first ``apart.n_rows`` queries allow every key (full_rows.py):
    the rest of the pattern for the other rows, and those rows over all keys, each launch writing
    its own rows of ``out`` and ``lse``, so the two can run side by side."""
    batch, n_q_heads, q_len, _ = q.shape
    n_rows = apart.n_rows
    if out is None:
        out = new_output(q.shape, q.dtype, q.device)
    if lse is None:
        lse = new_output((batch, n_q_heads, q_len), torch.float32, q.device)
    rows_config = full_rows_config(head_dim_padded(q.shape[3]), q.dtype, apart.rows)

    def rows_pass():
        attention_forward(
            q[:, :, :n_rows], k, v, apart.rows, scale, allow_tf32=allow_tf32, config=rows_config, out=out[:, :, :n_rows], lse=lse[:, :, :n_rows]
        )

    def rest_pass():
        attention_forward(q, k, v, apart.rest, scale, allow_tf32=allow_tf32, out=out, lse=lse, first_stored_row=n_rows)

    if full_rows_module.FULL_ROWS_OVERLAP and q.is_cuda:
        # The rest first, so the GPU is busy while the host launches the rows' two kernels; those
        # go on a stream of higher priority, whose programs the GPU starts ahead of the rest's.
        with on_device_of(q):
            run_beside(q.device, rest_pass, rows_pass, full_rows_module.FULL_ROWS_PRIORITY)
    else:
        rest_pass()
        rows_pass()
    return out, lse


def _prepare_forward(q, k, v, mask, allow_tf32: bool, config: ForwardConfig | None) -> LineLaunch:
    """The forward launch's choices for this mask and these inputs' layout (not their values)."""
    batch, n_q_heads, q_len, head_dim = q.shape
    n_kv_heads = k.shape[1]
    padded = head_dim_padded(head_dim)
    if config is None:
        config = default_forward_config(padded, q.dtype, mask, shared_memory_per_block(q.device), q.device)
    if config.list_slots and (config.list_slots < 1 or config.list_slots & (config.list_slots - 1)):
        raise ValueError(f"list_slots={config.list_slots}: must be a power of two (a register vector), or 0/None for none")
    check_tile("block_m", config.block_m, mask.block_m, mask.is_dense)
    check_tile("block_n", config.block_n, mask.block_n, mask.is_dense)
    constants = dict(
        GROUP_SIZE=n_q_heads // n_kv_heads,
        HEAD_DIM=head_dim,
        HEAD_DIM_PADDED=padded,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        MASK_BLOCK_M=mask.block_m,
        MASK_BLOCK_N=mask.block_n,
        IS_DENSE=mask.is_dense,
        LIST_SLOTS=config.list_slots or 0,
        WALK=FORWARD_WALK,
        HAS_PARTIAL=mask.is_dense or mask.n_partial > 0,
        HAS_NARROW=not mask.is_dense and mask.narrow_row_blocks + mask.across_row_blocks > 0,
        NARROW=NARROW_WINDOW,
        SKIP_ACROSS=FORWARD_SKIP_ACROSS,
        KEY_SPANS=key_span_count(config, mask),
        DOT_PRECISION=dot_precision(q.dtype, allow_tf32),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return line_launch(
        config, mask, (q, k, v), by_rows=True, backward=False, n_batch_heads=batch * n_q_heads,
        tile=config.block_m, streamed_rows=config.block_n, constants=constants,
    )  # fmt: skip
