"""Block-sparse FlashAttention backward: delta, dK/dV and dQ, deterministic (no atomics).

Notation: see ``common.py``. With ``s = scale * q . k`` on allowed pairs, ``p = exp(s - lse)``:

    delta[i] = sum_d dO[i, d] * O[i, d]  -  dlse[i]     (preprocess or dQ, [BLOCK_M])
    dS[i, j] = p[i, j] * (dO[i] . v[j] - delta[i])
    dV[j]    = sum_i p[i, j] * dO[i]          dK[j] = scale * sum_i dS[i, j] * q[i]
    dQ[i]    = scale * sum_j dS[i, j] * k[j]

``dlse`` is the gradient flowing into the returned lse (d lse / d s = p), so it folds into delta.

- dK/dV: one program per (kernel key tile, batch * kv head). It keeps its K, V tiles and the dK,
  dV accumulators and walks, for every query head of its GQA group, the key block's column of the
  mask (full query blocks, then partial ones) in BLOCK_M1-row steps. Each dK/dV row is written by
  exactly one program: no atomics, the same bits on every run.
- dQ: one program per (kernel query tile, batch * q head) walking the query block's row of the mask.
  For short rows it runs first, computes its rows' delta and stores it for dK/dV (``DELTA_IN_DQ``);
  otherwise a preprocess pass computes delta before dK/dV and dQ.
- Queries that allow every key (the first ones under ``global(g)``, ``full_rows.py``) get their
  dQ from a small launch of their own beside the rest (``_dq_rows_apart``).

[Note] Probabilities are recomputed from the saved lse in base 2: ``p = exp2(s2 - lse * log2(e))``
with ``s2 = q.k * scale * log2(e)``. A fully masked row has lse = -inf; there it is replaced by
+inf so ``exp2(s2 - inf) = 0`` and the row contributes nothing (its O is 0, so delta is 0 too):
zero gradients, never NaN. Rows past q_len load lse = +inf for the same reason. Full blocks have an
allowed key in every row, so their lse is finite and their steps skip the guard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .common import (
    LOG2E,
    BackwardConfig,
    check_tile,
    default_backward_config,
    dot_precision,
    head_dim_padded,
    key_span_count,
    row_class,
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
    side_stream,
    streamed_tiles,
    WALK_FORWARD,
    WALK_REVERSE,
    TMA_OFF,
    tile_source,
)
from ..blockmask import NARROW_WINDOW
from . import full_rows as full_rows_module
from .full_rows import FullRows, full_rows_apart, full_rows_backward_config
from .launch import LineLaunch, layout_key, line_launch, prepared_launch
from .split import item_block_ranges, merge_sum, new_scratch, program_item, scratch_rows

_NO_MASK = tl.constexpr(0)  # full block (or a whole dense tile)
_TILE_MASK = tl.constexpr(1)  # partial block: the uint8 tile (0 also on padding)
_BOUNDS_MASK = tl.constexpr(2)  # last tile of a dense walk: rows past the sequence end
_LOG2E_JIT = tl.constexpr(LOG2E)

# The order in which each kernel walks its runs of full blocks (and dense rows): common.WALK_*.
# Measured on the H200 (benchmarks/backward_kernels.py, results/backward_walks_2.json): walking its
# key block's column backwards makes the dK/dV kernel 13-16% faster per block on causal masks and
# on a mask listing every block (causal 32k: 18.4 -> 16.0 ms), the same on dense; dQ is as fast
# either way or 1-4% faster forwards. Why backwards helps was not found.
DKDV_WALK = WALK_REVERSE.value
DQ_WALK = WALK_FORWARD.value

# Whether kernel tiles smaller than the mask block skip the blocks narrow across their line when
# they miss its window (common.partial_parts). Same-run A/B on the H200, local(256)+global(4),
# kernel times, walked -> skipped (benchmarks/experiments/across_skip.py, results/across_skip.json):
# dK/dV (64-key tiles, the global column) 1.111 -> 1.024 ms at 32k with 16 heads, 0.283 -> 0.261
# at 8k, 0.294 -> 0.268 at 32k with 4 heads; dQ (64-query tiles, the global row) 0.756 -> 0.870 at
# 32k with 16 heads and 0.191 -> 0.199 at 8k, faster only at 4 heads (0.204 -> 0.192, the row
# split). Why dQ loses was not found.
DKDV_SKIP_ACROSS = True
DQ_SKIP_ACROSS = False

# Whether the dQ kernel computes delta = rowsum(O * dO) itself (each program for its own rows, from
# the dO tile it loads anyway) and runs before dK/dV, which reads it, instead of a preprocess pass
# over O and dO before both: one launch and one read of dO fewer, but an O tile more in each dQ
# program's prologue. None: for short rows only (common.row_class). Same-run A/B, H200, whole
# backward, two runs each, preprocess -> in dQ (benchmarks/experiments/delta_in_dq.py,
# results/delta_in_dq.json): local(256)+global(4) 32k 1.944 / 1.966 -> 1.890 / 1.907 ms,
# local(1k) & causal 32k 2.267 / 2.289 -> 2.261 / 2.335, butterfly(128) 32k 2.155 / 2.177 ->
# 2.127 / 2.194; long rows lose: dense 8k 6.600 / 6.622 -> 6.739 / 6.732, causal 8k level.
DELTA_IN_DQ = None

# Whether, after the preprocess pass, the dQ kernel runs on a second CUDA stream beside dK/dV
# instead of after it. The two read the same inputs and write different outputs; side by side, the
# dQ programs fill the multiprocessors that dK/dV's last, partly empty wave leaves idle (dense 32k
# at D=128: 4096 dK/dV programs on 132 SMs, the 32nd wave holds 4). None: on CUDA whenever the
# preprocess pass runs (see DELTA_IN_DQ).
BACKWARD_OVERLAP = None


def delta_in_dq(mask) -> bool:
    """Whether this mask's backward computes delta in the dQ kernel (see DELTA_IN_DQ)."""
    return DELTA_IN_DQ if DELTA_IN_DQ is not None else row_class(mask) == "short"


@triton.jit
def _preprocess_kernel(
    Out, DOut, Dlse, Delta,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    n_q_heads, q_len,
    HAS_DLSE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    BLOCK_M: tl.constexpr,
):  # fmt: skip
    start_m = tl.program_id(0) * BLOCK_M
    batch_head = tl.program_id(1)
    batch = batch_head // n_q_heads
    head = batch_head % n_q_heads
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)
    o_base = Out + tl.cast(batch, tl.int64) * stride_ob + tl.cast(head, tl.int64) * stride_oh
    do_base = DOut + tl.cast(batch, tl.int64) * stride_dob + tl.cast(head, tl.int64) * stride_doh
    o = load_rows(o_base, start_m, offs_m, offs_d, stride_om, stride_od, q_len, True, HEAD_DIM, HEAD_DIM_PADDED)
    do = load_rows(do_base, start_m, offs_m, offs_d, stride_dom, stride_dod, q_len, True, HEAD_DIM, HEAD_DIM_PADDED)
    in_bounds = (start_m + offs_m) < q_len
    row_offsets = tl.cast(batch_head, tl.int64) * q_len + start_m + offs_m
    tl.store(Delta + row_offsets, _delta(o, do, Dlse, row_offsets, in_bounds, HAS_DLSE), mask=in_bounds)


@triton.jit
def _delta(o, do, Dlse, row_offsets, in_bounds, HAS_DLSE: tl.constexpr):
    """delta = rowsum(O * dO) - dlse, float32 [BLOCK_M]: the softmax backward's per-row term."""
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(Dlse + row_offsets, mask=in_bounds, other=0.0)
    return delta


@triton.jit
def _dkdv_step(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    batch,
    q_head,
    lse_base,
    delta_base,
    start_m,
    offs_m,
    offs_d,
    stride_qm,
    stride_qd,
    stride_dom,
    stride_dod,
    q_len,
    qk_scale,
    allowed_t,
    MASK_MODE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Add the contribution of queries ``start_m + offs_m`` to one key tile's dK and dV.

    ``q_base``/``do_base``: from ``common.tile_source`` (pointers to the head's rows or tensor
    descriptors; rows past q_len read as zeros)."""
    q = load_tile(q_base, batch, q_head, start_m, offs_m, offs_d, stride_qm, stride_qd, q_len, MASK_MODE != 0, BLOCK_M, HEAD_DIM, HEAD_DIM_PADDED, USE_TMA)  # [BLOCK_M, D]
    do = load_tile(do_base, batch, q_head, start_m, offs_m, offs_d, stride_dom, stride_dod, q_len, MASK_MODE != 0, BLOCK_M, HEAD_DIM, HEAD_DIM_PADDED, USE_TMA)  # [BLOCK_M, D]
    if MASK_MODE == _NO_MASK:
        lse2 = tl.load(lse_base + start_m + offs_m) * _LOG2E_JIT
        delta = tl.load(delta_base + start_m + offs_m)
    else:
        in_bounds = (start_m + offs_m) < q_len
        lse = tl.load(lse_base + start_m + offs_m, mask=in_bounds, other=float("inf"))
        # See [Note]: a row with no key (lse = -inf) or past q_len gets p = 0.
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * _LOG2E_JIT)
        delta = tl.load(delta_base + start_m + offs_m, mask=in_bounds, other=0.0)
    scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M], base 2
    if MASK_MODE == _TILE_MASK:
        scores_t = tl.where(allowed_t, scores_t, float("-inf"))
    p_t = tl.math.exp2(scores_t - lse2[None, :])  # [BLOCK_N, BLOCK_M]
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # accumulates in place
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _attention_backward_dkdv_kernel(
    Q, K, V, DOut, Q_rows, DOut_rows, Lse, Delta, DK, DV, DKPart, DVPart,
    full_q_offsets, full_q_indices, full_q_run_offsets, full_q_run_starts, full_q_run_ends,
    partial_q_offsets, partial_q_indices, partial_q_tiles,
    across_q_starts, across_q_windows, narrow_q_starts, tile_q_windows, tiles, tile_key_spans,
    item_lines, item_begins, item_ends, item_slots,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    n_kv_heads, n_batch_heads, q_len, kv_len, qk_scale, scale,
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
    SPLIT: tl.constexpr,
    USE_TMA: tl.constexpr,
    WALK: tl.constexpr,
    HAS_NARROW: tl.constexpr,
    NARROW: tl.constexpr,
    SKIP_ACROSS: tl.constexpr,
    KEY_SPANS: tl.constexpr,
):  # fmt: skip
    start_n, batch_head, item_begin, item_end, slot = program_item(
        item_lines, item_begins, item_ends, item_slots, BLOCK_N, MASK_BLOCK_N, HEAVY_FIRST, HEADS_FASTEST, SPLIT
    )
    batch = batch_head // n_kv_heads
    kv_head = batch_head % n_kv_heads

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)

    k_base = K + tl.cast(batch, tl.int64) * stride_kb + tl.cast(kv_head, tl.int64) * stride_kh
    v_base = V + tl.cast(batch, tl.int64) * stride_vb + tl.cast(kv_head, tl.int64) * stride_vh
    k = load_rows(k_base, start_n, offs_n, offs_d, stride_kn, stride_kd, kv_len, True, HEAD_DIM, HEAD_DIM_PADDED)  # [BLOCK_N, D]
    v = load_rows(v_base, start_n, offs_n, offs_d, stride_vn, stride_vd, kv_len, True, HEAD_DIM, HEAD_DIM_PADDED)  # [BLOCK_N, D]
    dk = tl.zeros([BLOCK_N, HEAD_DIM_PADDED], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM_PADDED], dtype=tl.float32)

    mask_col = start_n // MASK_BLOCK_N
    col_in_tile = start_n % MASK_BLOCK_N
    M_STEPS = MASK_BLOCK_M // BLOCK_M  # loop steps per mask block
    if not IS_DENSE:
        # This program's share of the column: all of it, or with SPLIT an item of a long one (split.py).
        full_begin, full_end, partial_begin, partial_end = item_block_ranges(
            full_q_offsets, partial_q_offsets, mask_col, item_begin, item_end
        )
        # Narrow partial blocks (allowed queries within NARROW, BlockMask) come last: one
        # NARROW-query step each, after the others' whole tiles (common.partial_parts).
        wide_end = partial_end
        narrow_begin = partial_end
        if HAS_NARROW:
            wide_end, narrow_begin = partial_parts(
                across_q_starts, across_q_windows, narrow_q_starts, mask_col, partial_begin, partial_end, col_in_tile, BLOCK_N, NARROW, SKIP_ACROSS
            )

    for member in range(0, GROUP_SIZE):
        q_head = kv_head * GROUP_SIZE + member
        q_base = tile_source(Q, batch, q_head, stride_qb, stride_qh, stride_qm, q_len, BLOCK_M, HEAD_DIM, USE_TMA)
        do_base = tile_source(DOut, batch, q_head, stride_dob, stride_doh, stride_dom, q_len, BLOCK_M, HEAD_DIM, USE_TMA)
        row_base = (tl.cast(batch, tl.int64) * n_kv_heads * GROUP_SIZE + q_head) * q_len
        lse_base = Lse + row_base
        delta_base = Delta + row_base
        if IS_DENSE:
            # Key rows past kv_len are not masked: their dK/dV rows are never stored, and each
            # row of dK/dV depends on its own key only.
            n_whole_tiles = q_len // BLOCK_M
            for tile in range(0, n_whole_tiles):
                dk, dv = _dkdv_step(
                    dk, dv, k, v, q_base, do_base, batch, q_head, lse_base, delta_base, run_tile_start(0, n_whole_tiles, tile, BLOCK_M, WALK), offs_m, offs_d,
                    stride_qm, stride_qd, stride_dom, stride_dod, q_len, qk_scale, 0,
                    _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_M,
                )  # fmt: skip
            if n_whole_tiles * BLOCK_M < q_len:
                dk, dv = _dkdv_step(
                    dk, dv, k, v, q_base, do_base, batch, q_head, lse_base, delta_base, n_whole_tiles * BLOCK_M, offs_m, offs_d,
                    stride_qm, stride_qd, stride_dom, stride_dod, q_len, qk_scale, 0,
                    _BOUNDS_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_M,
                )  # fmt: skip
        else:
            if FULL_RUNS:
                # Runs of consecutive full blocks: affine offsets the compiler can prefetch (forward.py).
                run_begin = tl.load(full_q_run_offsets + mask_col)
                run_end = tl.load(full_q_run_offsets + mask_col + 1)
                # The first run walked gets a top-level loop of its own (as in forward.py).
                first_query, n_tiles = run_tiles(full_q_run_starts, full_q_run_ends, run_begin, run_end, 0, MASK_BLOCK_M, BLOCK_M, WALK)
                for tile in range(0, n_tiles):
                    dk, dv = _dkdv_step(
                        dk, dv, k, v, q_base, do_base, batch, q_head, lse_base, delta_base,
                        run_tile_start(first_query, n_tiles, tile, BLOCK_M, WALK), offs_m, offs_d,
                        stride_qm, stride_qd, stride_dom, stride_dod, q_len, qk_scale, 0,
                        _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_M,
                    )  # fmt: skip
                for nth_run in range(1, run_end - run_begin):
                    first_query, n_tiles = run_tiles(full_q_run_starts, full_q_run_ends, run_begin, run_end, nth_run, MASK_BLOCK_M, BLOCK_M, WALK)
                    for tile in range(0, n_tiles):
                        dk, dv = _dkdv_step(
                            dk, dv, k, v, q_base, do_base, batch, q_head, lse_base, delta_base,
                            run_tile_start(first_query, n_tiles, tile, BLOCK_M, WALK), offs_m, offs_d,
                            stride_qm, stride_qd, stride_dom, stride_dod, q_len, qk_scale, 0,
                            _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_M,
                        )  # fmt: skip
            else:
                for step in range(full_begin * M_STEPS, full_end * M_STEPS):
                    q_block = tl.load(full_q_indices + step // M_STEPS)
                    start_m = q_block * MASK_BLOCK_M + (step % M_STEPS) * BLOCK_M
                    dk, dv = _dkdv_step(
                        dk, dv, k, v, q_base, do_base, batch, q_head, lse_base, delta_base, start_m, offs_m, offs_d,
                        stride_qm, stride_qd, stride_dom, stride_dod, q_len, qk_scale, 0,
                        _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_M,
                    )  # fmt: skip
            for step in range(partial_begin * M_STEPS, wide_end * M_STEPS):
                q_block = tl.load(partial_q_indices + step // M_STEPS)
                tile_id = tl.load(partial_q_tiles + step // M_STEPS)
                row_in_tile = (step % M_STEPS) * BLOCK_M
                # Key-major view of the tile: [BLOCK_N, BLOCK_M], matching scores_t.
                allowed_t = load_tile_mask(
                    tiles, tile_key_spans, tile_id, row_in_tile, col_in_tile, offs_m[None, :], offs_n[:, None], MASK_BLOCK_M, MASK_BLOCK_N, KEY_SPANS
                )
                dk, dv = _dkdv_step(
                    dk, dv, k, v, q_base, do_base, batch, q_head, lse_base, delta_base, q_block * MASK_BLOCK_M + row_in_tile,
                    offs_m, offs_d, stride_qm, stride_qd, stride_dom, stride_dod, q_len, qk_scale, allowed_t,
                    _TILE_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_M,
                )  # fmt: skip
            if HAS_NARROW:
                # Pointer loads: the descriptors' boxes are BLOCK_M rows tall.
                q_rows = tile_source(Q_rows, batch, q_head, stride_qb, stride_qh, stride_qm, q_len, NARROW, HEAD_DIM, TMA_OFF)
                do_rows = tile_source(DOut_rows, batch, q_head, stride_dob, stride_doh, stride_dom, q_len, NARROW, HEAD_DIM, TMA_OFF)
                offs_w = tl.arange(0, NARROW)
                for entry in range(narrow_begin, partial_end):
                    tile_id = tl.load(partial_q_tiles + entry)
                    window = tl.load(tile_q_windows + tile_id)
                    allowed_t = load_tile_mask(
                        tiles, tile_key_spans, tile_id, window, col_in_tile, offs_w[None, :], offs_n[:, None], MASK_BLOCK_M, MASK_BLOCK_N, KEY_SPANS
                    )
                    dk, dv = _dkdv_step(
                        dk, dv, k, v, q_rows, do_rows, batch, q_head, lse_base, delta_base,
                        tl.load(partial_q_indices + entry) * MASK_BLOCK_M + window,
                        offs_w, offs_d, stride_qm, stride_qd, stride_dom, stride_dod, q_len, qk_scale, allowed_t,
                        _TILE_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, TMA_OFF, NARROW,
                    )  # fmt: skip

    dk = dk * scale
    # An item of a split column writes float32 partial sums to its slot, summed later.
    to_slot = False
    if SPLIT:
        to_slot = slot >= 0
    if to_slot:
        col_in_block = start_n % MASK_BLOCK_N
        tile_offsets = offs_n[:, None] * HEAD_DIM_PADDED + offs_d[None, :]
        tl.store(scratch_rows(DKPart, slot, batch_head, n_batch_heads, col_in_block, MASK_BLOCK_N, HEAD_DIM_PADDED) + tile_offsets, dk)
        tl.store(scratch_rows(DVPart, slot, batch_head, n_batch_heads, col_in_block, MASK_BLOCK_N, HEAD_DIM_PADDED) + tile_offsets, dv)
    else:
        dk_base = DK + tl.cast(batch, tl.int64) * stride_dkb + tl.cast(kv_head, tl.int64) * stride_dkh
        dv_base = DV + tl.cast(batch, tl.int64) * stride_dvb + tl.cast(kv_head, tl.int64) * stride_dvh
        store_rows(dk_base, start_n, offs_n, offs_d, stride_dkn, stride_dkd, 0, kv_len, dk.to(DK.dtype.element_ty), HEAD_DIM)
        store_rows(dv_base, start_n, offs_n, offs_d, stride_dvn, stride_dvd, 0, kv_len, dv.to(DV.dtype.element_ty), HEAD_DIM)


@triton.jit
def _dq_step(
    dq,
    q,
    do,
    lse2,
    delta,
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
    """Add the contribution of keys ``start_n + offs_n`` to one query tile's dQ (unscaled).

    ``k_base``/``v_base``: from ``common.tile_source`` (pointers to the head's rows or tensor
    descriptors; rows past kv_len read as zeros)."""
    k = load_tile(k_base, batch, kv_head, start_n, offs_n, offs_d, stride_kn, stride_kd, kv_len, MASK_MODE != 0, BLOCK_N, HEAD_DIM, HEAD_DIM_PADDED, USE_TMA)  # [BLOCK_N, D]
    v = load_tile(v_base, batch, kv_head, start_n, offs_n, offs_d, stride_vn, stride_vd, kv_len, MASK_MODE != 0, BLOCK_N, HEAD_DIM, HEAD_DIM_PADDED, USE_TMA)  # [BLOCK_N, D]
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N], base 2
    if MASK_MODE == _TILE_MASK:
        scores = tl.where(allowed, scores, float("-inf"))
    if MASK_MODE == _BOUNDS_MASK:
        # Zero keys past kv_len would give p = exp2(-lse2), which can overflow: mask them.
        scores = tl.where((start_n + offs_n)[None, :] < kv_len, scores, float("-inf"))
    p = tl.math.exp2(scores - lse2[:, None])  # [BLOCK_M, BLOCK_N]
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _attention_backward_dq_kernel(
    Q, K, V, DOut, K_rows, V_rows, Lse, Delta, DQ, DQPart, Out, Dlse,
    full_kv_offsets, full_kv_indices, full_kv_run_offsets, full_kv_run_starts, full_kv_run_ends,
    partial_kv_offsets, partial_kv_indices, partial_kv_tiles,
    across_kv_starts, across_kv_windows, narrow_kv_starts, tile_kv_windows, tiles, tile_key_spans,
    item_lines, item_begins, item_ends, item_slots,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_ob, stride_oh, stride_om, stride_od,
    n_q_heads, n_batch_heads, q_len, kv_len, qk_scale, scale, first_stored_row,
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
    SPLIT: tl.constexpr,
    USE_TMA: tl.constexpr,
    WALK: tl.constexpr,
    HAS_NARROW: tl.constexpr,
    NARROW: tl.constexpr,
    SKIP_ACROSS: tl.constexpr,
    KEY_SPANS: tl.constexpr,
    DELTA_HERE: tl.constexpr,
    HAS_DLSE: tl.constexpr,
):  # fmt: skip
    start_m, batch_head, item_begin, item_end, slot = program_item(
        item_lines, item_begins, item_ends, item_slots, BLOCK_M, MASK_BLOCK_M, HEAVY_FIRST, HEADS_FASTEST, SPLIT
    )
    batch = batch_head // n_q_heads
    q_head = batch_head % n_q_heads
    kv_head = q_head // GROUP_SIZE

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)

    q_base = Q + tl.cast(batch, tl.int64) * stride_qb + tl.cast(q_head, tl.int64) * stride_qh
    do_base = DOut + tl.cast(batch, tl.int64) * stride_dob + tl.cast(q_head, tl.int64) * stride_doh
    k_base = tile_source(K, batch, kv_head, stride_kb, stride_kh, stride_kn, kv_len, BLOCK_N, HEAD_DIM, USE_TMA)
    v_base = tile_source(V, batch, kv_head, stride_vb, stride_vh, stride_vn, kv_len, BLOCK_N, HEAD_DIM, USE_TMA)
    q = load_rows(q_base, start_m, offs_m, offs_d, stride_qm, stride_qd, q_len, True, HEAD_DIM, HEAD_DIM_PADDED)  # [BLOCK_M, D]
    do = load_rows(do_base, start_m, offs_m, offs_d, stride_dom, stride_dod, q_len, True, HEAD_DIM, HEAD_DIM_PADDED)  # [BLOCK_M, D]
    in_bounds = (start_m + offs_m) < q_len
    row_offsets = tl.cast(batch_head, tl.int64) * q_len + start_m + offs_m
    lse = tl.load(Lse + row_offsets, mask=in_bounds, other=float("inf"))
    # See [Note]: a row with no key (lse = -inf) or past q_len gets p = 0 everywhere.
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * _LOG2E_JIT)  # [BLOCK_M]
    if DELTA_HERE:
        # DELTA_IN_DQ: the preprocess pass folded in; the dK/dV kernel runs after and reads it. The
        # items of a split row all store the same values.
        o_base = Out + tl.cast(batch, tl.int64) * stride_ob + tl.cast(q_head, tl.int64) * stride_oh
        o = load_rows(o_base, start_m, offs_m, offs_d, stride_om, stride_od, q_len, True, HEAD_DIM, HEAD_DIM_PADDED)
        delta = _delta(o, do, Dlse, row_offsets, in_bounds, HAS_DLSE)  # [BLOCK_M]
        tl.store(Delta + row_offsets, delta, mask=in_bounds)
    else:
        delta = tl.load(Delta + row_offsets, mask=in_bounds, other=0.0)  # [BLOCK_M]
    dq = tl.zeros([BLOCK_M, HEAD_DIM_PADDED], dtype=tl.float32)

    if IS_DENSE:
        n_whole_tiles = kv_len // BLOCK_N
        for tile in range(0, n_whole_tiles):
            dq = _dq_step(
                dq, q, do, lse2, delta, k_base, v_base, batch, kv_head, run_tile_start(0, n_whole_tiles, tile, BLOCK_N, WALK), offs_n, offs_d,
                stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
            )  # fmt: skip
        if n_whole_tiles * BLOCK_N < kv_len:
            dq = _dq_step(
                dq, q, do, lse2, delta, k_base, v_base, batch, kv_head, n_whole_tiles * BLOCK_N, offs_n, offs_d,
                stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                _BOUNDS_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
            )  # fmt: skip
    else:
        mask_row = start_m // MASK_BLOCK_M
        row_in_tile = start_m % MASK_BLOCK_M
        N_STEPS = MASK_BLOCK_N // BLOCK_N  # loop steps per mask block
        # This program's share of the row: all of it, or with SPLIT an item of a long row (split.py).
        full_begin, full_end, partial_begin, partial_end = item_block_ranges(
            full_kv_offsets, partial_kv_offsets, mask_row, item_begin, item_end
        )
        # Narrow partial blocks last, one NARROW-key step each (as in the forward).
        wide_end = partial_end
        narrow_begin = partial_end
        if HAS_NARROW:
            wide_end, narrow_begin = partial_parts(
                across_kv_starts, across_kv_windows, narrow_kv_starts, mask_row, partial_begin, partial_end, row_in_tile, BLOCK_M, NARROW, SKIP_ACROSS
            )
        if FULL_RUNS:
            run_begin = tl.load(full_kv_run_offsets + mask_row)
            run_end = tl.load(full_kv_run_offsets + mask_row + 1)
            first_key, n_tiles = run_tiles(full_kv_run_starts, full_kv_run_ends, run_begin, run_end, 0, MASK_BLOCK_N, BLOCK_N, WALK)
            for tile in range(0, n_tiles):
                dq = _dq_step(
                    dq, q, do, lse2, delta, k_base, v_base, batch, kv_head,
                    run_tile_start(first_key, n_tiles, tile, BLOCK_N, WALK), offs_n, offs_d,
                    stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                    _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
                )  # fmt: skip
            for nth_run in range(1, run_end - run_begin):
                first_key, n_tiles = run_tiles(full_kv_run_starts, full_kv_run_ends, run_begin, run_end, nth_run, MASK_BLOCK_N, BLOCK_N, WALK)
                for tile in range(0, n_tiles):
                    dq = _dq_step(
                        dq, q, do, lse2, delta, k_base, v_base, batch, kv_head,
                        run_tile_start(first_key, n_tiles, tile, BLOCK_N, WALK), offs_n, offs_d,
                        stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                        _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
                    )  # fmt: skip
        else:
            for step in range(full_begin * N_STEPS, full_end * N_STEPS):
                kv_block = tl.load(full_kv_indices + step // N_STEPS)
                start_n = kv_block * MASK_BLOCK_N + (step % N_STEPS) * BLOCK_N
                dq = _dq_step(
                    dq, q, do, lse2, delta, k_base, v_base, batch, kv_head, start_n, offs_n, offs_d,
                    stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, 0,
                    _NO_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
                )  # fmt: skip
        for step in range(partial_begin * N_STEPS, wide_end * N_STEPS):
            kv_block = tl.load(partial_kv_indices + step // N_STEPS)
            tile_id = tl.load(partial_kv_tiles + step // N_STEPS)
            col_in_tile = (step % N_STEPS) * BLOCK_N
            allowed = load_tile_mask(
                tiles, tile_key_spans, tile_id, row_in_tile, col_in_tile, offs_m[:, None], offs_n[None, :], MASK_BLOCK_M, MASK_BLOCK_N, KEY_SPANS
            )  # [BLOCK_M, BLOCK_N]
            dq = _dq_step(
                dq, q, do, lse2, delta, k_base, v_base, batch, kv_head, kv_block * MASK_BLOCK_N + col_in_tile, offs_n, offs_d,
                stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, allowed,
                _TILE_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, USE_TMA, BLOCK_N,
            )  # fmt: skip
        if HAS_NARROW:
            # Pointer loads: the descriptors' boxes are BLOCK_N rows tall.
            k_rows = tile_source(K_rows, batch, kv_head, stride_kb, stride_kh, stride_kn, kv_len, NARROW, HEAD_DIM, TMA_OFF)
            v_rows = tile_source(V_rows, batch, kv_head, stride_vb, stride_vh, stride_vn, kv_len, NARROW, HEAD_DIM, TMA_OFF)
            offs_w = tl.arange(0, NARROW)
            for entry in range(narrow_begin, partial_end):
                tile_id = tl.load(partial_kv_tiles + entry)
                window = tl.load(tile_kv_windows + tile_id)
                allowed = load_tile_mask(
                    tiles, tile_key_spans, tile_id, row_in_tile, window, offs_m[:, None], offs_w[None, :], MASK_BLOCK_M, MASK_BLOCK_N, KEY_SPANS
                )  # [BLOCK_M, NARROW]
                dq = _dq_step(
                    dq, q, do, lse2, delta, k_rows, v_rows, batch, kv_head, tl.load(partial_kv_indices + entry) * MASK_BLOCK_N + window,
                    offs_w, offs_d, stride_kn, stride_kd, stride_vn, stride_vd, kv_len, qk_scale, allowed,
                    _TILE_MASK, HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, TMA_OFF, NARROW,
                )  # fmt: skip

    dq = dq * scale
    to_slot = False
    if SPLIT:
        to_slot = slot >= 0
    if to_slot:
        # An item of a split row writes its float32 partial sum to its slot, summed later.
        row_in_block = start_m % MASK_BLOCK_M
        part_base = scratch_rows(DQPart, slot, batch_head, n_batch_heads, row_in_block, MASK_BLOCK_M, HEAD_DIM_PADDED)
        tl.store(part_base + offs_m[:, None] * HEAD_DIM_PADDED + offs_d[None, :], dq)
    else:
        dq_base = DQ + tl.cast(batch, tl.int64) * stride_dqb + tl.cast(q_head, tl.int64) * stride_dqh
        # Rows below first_stored_row are another launch's (the all-key rows, full_rows.py).
        store_rows(dq_base, start_m, offs_m, offs_d, stride_dqm, stride_dqd, first_stored_row, q_len, dq.to(DQ.dtype.element_ty), HEAD_DIM)


@dataclass(frozen=True)
class _BackwardLaunch:
    """The backward's launches besides the tensors' values (``launch.prepared_launch``)."""

    dkdv: LineLaunch
    dq: LineLaunch
    delta_in_dq: bool  # dQ computes delta and runs first; else the preprocess kernel does
    head_dim_padded: int


def attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mask,
    scale: float,
    *,
    dlse: torch.Tensor | None = None,
    allow_tf32: bool = False,
    config: BackwardConfig | None = None,
    preprocess_block_m: int = 64,
):
    """Launch the backward kernels (preprocess for delta, dK/dV, dQ; or for short rows dQ, which
    computes delta, then dK/dV: ``delta_in_dq``). Returns ``(dq, dk, dv)`` shaped and typed like q, k, v.

    ``out`` and ``lse`` are the forward's results; ``dlse`` (B, Hq, Lq), if given, is the gradient
    of the lse output. ``config`` overrides tiles and launch settings. Rows that allow every key
    (``full_rows.py``) get their dQ apart: see :func:`_dq_rows_apart`.
    """
    batch, n_q_heads, q_len, head_dim = q.shape
    switches = (DKDV_WALK, DQ_WALK, DKDV_SKIP_ACROSS, DQ_SKIP_ACROSS, DELTA_IN_DQ)
    key = ("backward", config, allow_tf32, dlse is not None, *switches, *layout_key(q, k, v, dout))
    launch = prepared_launch(mask, key, lambda: _prepare_backward(q, k, v, dout, mask, allow_tf32, config, dlse is not None))
    apart = None
    if config is None and full_rows_module.FULL_ROWS_APART_BACKWARD:
        apart = full_rows_apart(mask, (batch * n_q_heads, head_dim))
    dq_run = launch.dq
    if apart is not None:
        # dQ over the rest of the pattern, delta where the whole mask's launch expects it.
        rest_key = (*key, "rest dq", launch.delta_in_dq)
        dq_run = prepared_launch(
            apart.rest, rest_key, lambda: _prepare_dq_only(q, k, v, dout, apart.rest, allow_tf32, None, launch.delta_in_dq, dlse is not None)
        )
    lse = lse.contiguous()  # written by our forward, so already contiguous: no copy in practice
    delta = new_output((batch, n_q_heads, q_len), torch.float32, q.device)
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()
    dq = new_output(q.shape, q.dtype, q.device)
    dk = new_output(k.shape, k.dtype, k.device)
    dv = new_output(v.shape, v.dtype, v.device)
    dlse_pointer = dlse if dlse is not None else delta  # any tensor: the kernels read it only with HAS_DLSE
    scales = (scale * LOG2E, scale)

    def dkdv_pass():
        _run_dkdv(launch.dkdv, q, k, v, dout, lse, delta, dk, dv, mask.block_n, launch.head_dim_padded, scales)

    def dq_pass():
        # With the all-key rows apart, their rows of dq are the side launch's (_dq_rows_apart).
        first_stored_row = apart.n_rows if apart is not None else 0
        _run_dq(dq_run, q, k, v, dout, out, lse, delta, dlse_pointer, dq, mask.block_m, launch.head_dim_padded, scales, first_stored_row)

    with on_device_of(q):
        rows = None
        if apart is not None:
            rows = _dq_rows_apart(apart, q, k, v, dout, out, lse, dlse, dq, allow_tf32, scales)
        if launch.delta_in_dq:
            dq_pass()
            dkdv_pass()
        else:
            preprocess = launch.dkdv.launcher(
                _preprocess_kernel,
                key=("preprocess", preprocess_block_m),
                grid=(triton.cdiv(q_len, preprocess_block_m), batch * n_q_heads),
                constants=dict(HAS_DLSE=dlse is not None, HEAD_DIM=head_dim, HEAD_DIM_PADDED=launch.head_dim_padded, BLOCK_M=preprocess_block_m),
            )
            preprocess(out, dout, dlse_pointer, delta, *out.stride(), *dout.stride(), n_q_heads, q_len)
            if overlap_passes(q.device):
                # dK/dV first (the longer programs), dQ beside it; the caller's stream then waits
                # for both. Every tensor the side stream touches is alive until after that wait.
                run_beside(q.device, dkdv_pass, dq_pass)
            else:
                dkdv_pass()
                dq_pass()
        if rows is not None:
            rows.finish(dq)
    return dq, dk, dv


def _run_dkdv(run: LineLaunch, q, k, v, dout, lse, delta, dk, dv, mask_block_n: int, padded: int, scales) -> None:
    """Launch the dK/dV kernel and, for split columns, sum its partials into ``dk`` and ``dv``."""
    batch, _, q_len, _ = q.shape
    n_kv_heads, kv_len = k.shape[1], k.shape[2]
    q_tiles, do_tiles = streamed_tiles(run.use_tma, run.streamed_rows, q, dout)
    if run.plan is not None:
        dk_part = new_scratch(run.plan, batch * n_kv_heads, mask_block_n, padded, q.device)
        dv_part = new_scratch(run.plan, batch * n_kv_heads, mask_block_n, padded, q.device)
    else:
        dk_part = dv_part = dk  # unused
    run.launcher(_attention_backward_dkdv_kernel)(
        q_tiles, k, v, do_tiles, q, dout, lse, delta, dk, dv, dk_part, dv_part, *run.lists,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
        n_kv_heads, batch * n_kv_heads, q_len, kv_len, *scales,
    )  # fmt: skip
    if run.plan is not None:
        merge_sum(run.plan, (dk_part, dv_part), (dk, dv), mask_block_n)


def _run_dq(run: LineLaunch, q, k, v, dout, out, lse, delta, dlse, dq, mask_block_m: int, padded: int, scales, first_stored_row: int = 0) -> None:
    """Launch the dQ kernel and, for split rows, sum its partials into ``dq``. ``lse``, ``delta``
    and ``dlse`` are contiguous (B, Hq, Lq); ``out`` is read only when the kernel computes delta.
    dQ rows below ``first_stored_row`` are computed but not written (another launch writes them)."""
    batch, n_q_heads, q_len, _ = q.shape
    k_tiles, v_tiles = streamed_tiles(run.use_tma, run.streamed_rows, k, v)
    dq_part = dq if run.plan is None else new_scratch(run.plan, batch * n_q_heads, mask_block_m, padded, q.device)
    run.launcher(_attention_backward_dq_kernel)(
        q, k_tiles, v_tiles, dout, k, v, lse, delta, dq, dq_part, out, dlse, *run.lists,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(), *out.stride(),
        n_q_heads, batch * n_q_heads, q_len, k.shape[2], *scales, first_stored_row,
    )  # fmt: skip
    if run.plan is not None:
        merge_sum(run.plan, (dq_part,), (dq,), mask_block_m, first_stored_row)


@dataclass
class _RowsDq:
    """The all-key rows' dQ, launched on a side stream (or already done) into their rows of the
    whole dQ: ``finish`` joins it."""

    side: torch.cuda.Stream | None
    # The side stream's other inputs, allocated on the caller's stream: held until the join, so
    # the allocator cannot hand their memory to the caller's stream while the rows read it.
    inputs: tuple = ()

    def finish(self, dq: torch.Tensor) -> None:
        if self.side is not None:
            torch.cuda.current_stream(dq.device).wait_stream(self.side)
        self.inputs = ()


def _dq_rows_apart(apart: FullRows, q, k, v, dout, out, lse, dlse, dq, allow_tf32: bool, scales) -> _RowsDq:
    """Start the dQ of the first ``apart.n_rows`` queries, which allow every key.

    The whole mask's dQ walks their block row, 256 blocks at 32k tokens under
    ``local(256)+global(4)`` where the others have ~6, in tiles of 64 rows for 4 wanted ones. Here
    it is a small dense dQ in 16-row tiles split over the multiprocessors (items of the rows'
    ``sink(Lk)`` mask, as in the forward), run on a side stream beside the rest of the backward,
    which computes dQ over ``apart.rest`` for the other rows (``first_stored_row``) and dK/dV over
    the whole mask. The rows write their rows of ``dq`` and compute their own delta, so nothing
    orders them after the rest. Their lse and dlse are small copies: the kernel reads lse and delta
    at rows ``batch_head * n_rows + row``."""
    n_rows = apart.n_rows
    q_rows, dout_rows, out_rows = q[:, :, :n_rows], dout[:, :, :n_rows], out[:, :, :n_rows]
    padded = head_dim_padded(q.shape[3])
    config = full_rows_backward_config(padded, q.dtype, apart.rows)
    key = ("backward rows", config, allow_tf32, dlse is not None, DQ_WALK, DQ_SKIP_ACROSS, *layout_key(q_rows, k, v, dout_rows))
    run = prepared_launch(
        apart.rows, key, lambda: _prepare_dq_only(q_rows, k, v, dout_rows, apart.rows, allow_tf32, config, True, dlse is not None)
    )
    # Allocated on the caller's stream, which reads them last: safe to free there.
    lse_rows = lse[:, :, :n_rows].contiguous()
    dlse_rows = dlse[:, :, :n_rows].contiguous() if dlse is not None else lse_rows  # read only with HAS_DLSE
    delta_rows = torch.empty_like(lse_rows)

    def rows_pass():
        _run_dq(run, q_rows, k, v, dout_rows, out_rows, lse_rows, delta_rows, dlse_rows, dq[:, :, :n_rows], apart.rows.block_m, padded, scales)

    if not (full_rows_module.FULL_ROWS_OVERLAP and q.is_cuda):
        rows_pass()
        return _RowsDq(None)
    main = torch.cuda.current_stream(q.device)
    side = side_stream(q.device, full_rows_module.FULL_ROWS_PRIORITY)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        rows_pass()
    return _RowsDq(side, (lse_rows, dlse_rows, delta_rows))


def overlap_passes(device: torch.device) -> bool:
    """Whether a backward with a preprocess pass runs dQ beside dK/dV (BACKWARD_OVERLAP)."""
    if device.type != "cuda":
        return False
    return True if BACKWARD_OVERLAP is None else bool(BACKWARD_OVERLAP)



def _prepare_backward(q, k, v, dout, mask, allow_tf32: bool, config: BackwardConfig | None, has_dlse: bool) -> _BackwardLaunch:
    """The backward launches' choices for this mask and these inputs' layout (not their values)."""
    config, common = _backward_common(q, k, v, dout, mask, allow_tf32, config)
    delta_here = delta_in_dq(mask)
    return _BackwardLaunch(
        dkdv=_prepare_dkdv(config, common, mask, q, k, v, dout),
        dq=_prepare_dq(config, common, mask, q, k, v, dout, delta_here, has_dlse),
        delta_in_dq=delta_here,
        head_dim_padded=common["HEAD_DIM_PADDED"],
    )


def _prepare_dq_only(q, k, v, dout, mask, allow_tf32: bool, config: BackwardConfig | None, delta_here: bool, has_dlse: bool) -> LineLaunch:
    """The dQ launch alone, computing delta itself or not as the caller says (full-rows split)."""
    config, common = _backward_common(q, k, v, dout, mask, allow_tf32, config)
    return _prepare_dq(config, common, mask, q, k, v, dout, delta_here, has_dlse)


def _backward_common(q, k, v, dout, mask, allow_tf32: bool, config: BackwardConfig | None):
    """The config (the default for this mask if None, tiles checked) and both kernels' shared constexprs."""
    _, n_q_heads, _, head_dim = q.shape
    n_kv_heads = k.shape[1]
    padded = head_dim_padded(head_dim)
    if config is None:
        config = default_backward_config(padded, q.dtype, mask, shared_memory_per_block(q.device), q.device)
    for name, tile, mask_block in (
        ("block_m1", config.block_m1, mask.block_m),
        ("block_n1", config.block_n1, mask.block_n),
        ("block_m2", config.block_m2, mask.block_m),
        ("block_n2", config.block_n2, mask.block_n),
    ):
        check_tile(name, tile, mask_block, mask.is_dense)
    common = dict(
        GROUP_SIZE=n_q_heads // n_kv_heads,
        HEAD_DIM=head_dim,
        HEAD_DIM_PADDED=padded,
        MASK_BLOCK_M=mask.block_m,
        MASK_BLOCK_N=mask.block_n,
        IS_DENSE=mask.is_dense,
        DOT_PRECISION=dot_precision(q.dtype, allow_tf32),
        NARROW=NARROW_WINDOW,
        KEY_SPANS=key_span_count(config, mask),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return config, common


# dK/dV walks columns and streams Q and dO tiles, dQ walks rows and streams K and V: each gets its
# own schedule, split plan and kind of descriptor.
def _prepare_dkdv(config: BackwardConfig, common: dict, mask, q, k, v, dout) -> LineLaunch:
    return line_launch(
        config, mask, (q, k, v, dout), by_rows=False, backward=True, n_batch_heads=q.shape[0] * k.shape[1],
        tile=config.block_n1, streamed_rows=config.block_m1,
        constants=dict(
            BLOCK_M=config.block_m1,
            BLOCK_N=config.block_n1,
            WALK=DKDV_WALK,
            SKIP_ACROSS=DKDV_SKIP_ACROSS,
            HAS_NARROW=not mask.is_dense and mask.narrow_col_blocks + mask.across_col_blocks > 0,
            **common,
        ),
    )  # fmt: skip


def _prepare_dq(config: BackwardConfig, common: dict, mask, q, k, v, dout, delta_here: bool, has_dlse: bool) -> LineLaunch:
    return line_launch(
        config, mask, (q, k, v, dout), by_rows=True, backward=True, n_batch_heads=q.shape[0] * q.shape[1],
        tile=config.block_m2, streamed_rows=config.block_n2,
        constants=dict(
            BLOCK_M=config.block_m2,
            BLOCK_N=config.block_n2,
            WALK=DQ_WALK,
            SKIP_ACROSS=DQ_SKIP_ACROSS,
            HAS_NARROW=not mask.is_dense and mask.narrow_row_blocks + mask.across_row_blocks > 0,
            DELTA_HERE=delta_here,
            HAS_DLSE=has_dlse,
            **{
                **common,
                "num_warps": config.dq_num_warps or config.num_warps,
                "num_stages": config.dq_num_stages or config.num_stages,
            },
        ),
    )  # fmt: skip
