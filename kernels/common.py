"""Pieces shared by the forward and backward kernels: tile loads, tuning tables, launch schedules,
output allocation.

Notation (all kernels):
    B        batch                      Hq, Hkv  query / key-value heads, GROUP_SIZE = Hq // Hkv
    q_len    queries (Lq)               kv_len   keys (Lk)
    HEAD_DIM head dim D                 HEAD_DIM_PADDED  next power of two >= D (tl.arange needs one)
    MASK_BLOCK_M x MASK_BLOCK_N   the BlockMask's block (its tiles are this shape)
    BLOCK_M x BLOCK_N             the kernel's tile; it divides the mask block, so a mask block is
                                  walked in (MASK_BLOCK_M // BLOCK_M) x (MASK_BLOCK_N // BLOCK_N) steps
    qk_scale = scale * log2(e)    scores are kept in base 2: exp(s) == exp2(s * log2(e))

Offsets: batch and head offsets, and a tile's first row, are multiplied out in int64 so tensors over
2**31 elements work; offsets *inside* a tile stay int32 (they are below BLOCK * stride).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# ln(2) for use inside kernels (jit code may only read globals that are constexpr).
LN2_JIT = tl.constexpr(0.6931471805599453)

# Tests set this to fill every kernel output with NaN before the kernels run, so an element that
# a kernel forgot to write cannot pass as a plausible value.
POISON_OUTPUTS = False


def new_output(shape, dtype, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


_side_streams: dict = {}


def side_stream(device: torch.device, priority: int = 0) -> torch.cuda.Stream:
    """A second CUDA stream for ``device`` (``priority``: 0 default, negative higher), made once
    (making one costs ~10 us), for launches that run beside the caller's stream
    (``backward.BACKWARD_OVERLAP``, ``full_rows.FULL_ROWS_OVERLAP``)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, priority)
    if key not in _side_streams:
        _side_streams[key] = torch.cuda.Stream(device=index, priority=priority)
    return _side_streams[key]


def run_beside(device: torch.device, here, beside, priority: int = 0) -> None:
    """Call ``here()`` on the caller's stream and ``beside()`` on a side stream (``side_stream``,
    of ``priority``) that starts after the caller's pending work; the caller's stream then waits
    for both. Tensors that ``beside`` uses must stay alive until that wait: allocate them on the
    caller's stream, before."""
    main = torch.cuda.current_stream(device)
    side = side_stream(device, priority)
    side.wait_stream(main)
    here()
    with torch.cuda.stream(side):
        beside()
    main.wait_stream(side)


def on_device_of(tensor: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (inputs on cuda:1 work).
    No context when it already is: entering one costs host time on every call."""
    if tensor.is_cuda and tensor.device.index != torch.cuda.current_device():
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def row_list_arguments(mask, device) -> tuple:
    """The mask's per-query-block lists, tiles and row order, as the forward and dQ kernels take
    them. A dense mask's kernels read none, so they get placeholders (reading would build them)."""
    if mask.is_dense:
        return _placeholders(device)
    return (
        mask.full_kv_offsets, mask.full_kv_indices,
        mask.full_kv_run_offsets, mask.full_kv_run_starts, mask.full_kv_run_ends,
        mask.partial_kv_offsets, mask.partial_kv_indices, mask.partial_kv_tiles, mask.across_kv_starts,
        mask.across_kv_windows, mask.narrow_kv_starts, mask.tile_kv_windows, mask.tiles, mask.tile_key_spans, mask.q_block_order,
    )  # fmt: skip


def column_list_arguments(mask, device) -> tuple:
    """The per-key-block lists, tiles and column order for the dK/dV kernel; placeholders for dense."""
    if mask.is_dense:
        return _placeholders(device)
    return (
        mask.full_q_offsets, mask.full_q_indices,
        mask.full_q_run_offsets, mask.full_q_run_starts, mask.full_q_run_ends,
        mask.partial_q_offsets, mask.partial_q_indices, mask.partial_q_tiles, mask.across_q_starts,
        mask.across_q_windows, mask.narrow_q_starts, mask.tile_q_windows, mask.tiles, mask.tile_key_spans, mask.kv_block_order,
    )  # fmt: skip


def _placeholders(device) -> tuple:
    index = torch.zeros(1, dtype=torch.int32, device=device)
    return (index,) * 12 + (torch.zeros(1, dtype=torch.uint8, device=device), index, index)


def launch_grid(length: int, block: int, mask_block: int, n_batch_heads: int, schedule: Schedule, is_dense: bool, plan=None) -> tuple:
    """The grid over kernel tiles of ``block`` rows (of ``length``) and batch*heads, in the order
    ``split.program_item`` reads it.

    Heavy-first programs count work items of ``mask_block // block`` tiles each: the mask lines, or
    with a split ``plan`` its items. Counting whole mask blocks matters: the mask block holding the
    sequence end may be started early, and then the rank of its last tile (past the end, a program
    that stores nothing) must not crowd out a real tile at the end of the grid.
    """
    if schedule.heavy_first and not is_dense:
        n_items = plan.n_items if plan is not None else triton.cdiv(length, mask_block)
        n_tiles = n_items * (mask_block // block)
    else:
        n_tiles = triton.cdiv(length, block)
    if schedule.heads_fastest and not is_dense:
        return (n_batch_heads, n_tiles)
    return (n_tiles, n_batch_heads)


def schedule_constants(schedule: Schedule, is_dense: bool) -> dict:
    return dict(
        HEAVY_FIRST=schedule.heavy_first and not is_dense,
        HEADS_FASTEST=schedule.heads_fastest and not is_dense,
    )


# ---------------------------------------------------------------------------------------- tuning


@dataclass(frozen=True)
class Schedule:
    """In which order a sparse launch's programs start.

    ``heavy_first``: programs take the mask's rows (columns, for dK/dV) from ``q_block_order``
    (``kv_block_order``), longest first, so a long row does not start last and stretch the launch.
    ``heads_fastest``: consecutive programs are consecutive batch*heads of the same row rank, so the
    longest rows of *every* head start first. Dense launches keep the FlashAttention order (query
    tiles fastest: programs running together share one head's K and V in L2).
    """

    heavy_first: bool = True
    heads_fastest: bool = True


@dataclass(frozen=True)
class ForwardConfig:
    """Kernel tile and launch settings of the forward pass (BLOCK_M x BLOCK_N tiles)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    schedule: Schedule | None = None  # None: auto_schedule(mask); only sparse masks use one
    full_runs: bool | None = None  # walk full blocks as runs; None: walk_full_blocks_as_runs decides
    split_blocks: int | None = None  # split lines longer than this (split.py); None: auto, 0: never
    tma: bool | str | None = None  # tile loads through tensor descriptors: None auto, False, True/'host', 'device' (tma_mode)
    list_slots: int | None = None  # block lists read this many entries at a time into registers; None/0: per step
    key_spans: bool = False  # mask partial steps by the mask's key spans where it has them, not by loading tiles


@dataclass(frozen=True)
class BackwardConfig:
    """Tiles of the two backward kernels: dK/dV holds ``block_n1`` keys and steps ``block_m1``
    queries at a time; dQ holds ``block_m2`` queries and steps ``block_n2`` keys at a time."""

    block_m1: int
    block_n1: int
    block_m2: int
    block_n2: int
    num_warps: int
    num_stages: int
    schedule: Schedule | None = None  # None: auto_schedule(mask); only sparse masks use one
    full_runs: bool | None = None  # walk full blocks as runs; None: walk_full_blocks_as_runs decides
    split_blocks: int | None = None  # split lines longer than this (split.py); None: auto, 0: never
    tma: bool | str | None = None  # tile loads through tensor descriptors: None auto, False, True/'host', 'device' (tma_mode)
    key_spans: bool = False  # mask partial steps by the mask's key spans where it has them, not by loading tiles
    dq_num_warps: int | None = None  # the dQ kernel's, where not num_warps
    dq_num_stages: int | None = None  # the dQ kernel's, where not num_stages


def key_span_count(config, mask) -> int:
    """The kernels' KEY_SPANS: the mask's ``key_spans`` when the config asks for them, else 0 (load tiles)."""
    return mask.key_spans if config.key_spans and not mask.is_dense else 0


# Measured on an H200 (bf16, benchmarks/tune_kernels.py, 2026-11-21; results in
# benchmarks/results/tune_h200_*.json), keyed by (padded head dim, 16-bit?, row_class(mask)). Dense
# and long rows (2k+ keys a row on average) want big tiles and 8 warps, like FlashAttention; short
# rows (bands, butterflies) are dominated by each program's prologue and epilogue and run best with
# small tiles and more programs. Tiles are clamped to the mask's block (a kernel tile never spans
# two blocks).
FORWARD_DEFAULTS = {
    (64, True, "dense"): ForwardConfig(128, 64, num_warps=8, num_stages=3),
    # Long rows at D=64 step 128 keys for 64 queries: causal 8k 1.93 -> 1.54 ms (8 warps 128 x 64 ->
    # 4 warps 128 x 64, first session), then 1.378 -> 1.249 ms, 32k 10.08 -> 9.80 (128 x 64 ->
    # 64 x 128, kernel times, benchmarks/experiments/partial_row_tiles.py --round 5). Through
    # do_bench, which flushes L2, less: 1.388-1.395 -> 1.365 ms at 8k, 10.07-10.26 -> 10.01 at 32k
    # (results/h200-full-4.json, h200-full-5.json -> causal_d64_22.json, different runs).
    (64, True, "long"): ForwardConfig(64, 128, num_warps=4, num_stages=3),
    # Short rows read their block lists into registers (list_slots): 1.11-1.12x / 1.14-1.15x on
    # local(1k) & causal / butterfly(128) at 32k, two runs (benchmarks/short_rows.py, results/short_rows*.json).
    (64, True, "short"): ForwardConfig(128, 64, num_warps=4, num_stages=3, list_slots=16),
    (128, True, "dense"): ForwardConfig(128, 128, num_warps=8, num_stages=3),
    (128, True, "long"): ForwardConfig(128, 128, num_warps=8, num_stages=3),
    # 1.04x / 1.07x / 1.03-1.04x on local(1k) & causal / butterfly(128) / local(256)+global(4) at 32k
    # against the former 64 x 64, 4 warps, 3 stages (same runs, results/short_rows*.json).
    (128, True, "short"): ForwardConfig(128, 128, num_warps=8, num_stages=2, list_slots=16),
    (256, True, "dense"): ForwardConfig(64, 64, num_warps=8, num_stages=2),
    (256, True, "long"): ForwardConfig(64, 64, num_warps=8, num_stages=2),
    (256, True, "short"): ForwardConfig(64, 64, num_warps=8, num_stages=2),
}
BACKWARD_DEFAULTS = {
    (64, True, "dense"): BackwardConfig(64, 64, 64, 64, num_warps=4, num_stages=3),
    (64, True, "long"): BackwardConfig(64, 64, 64, 64, num_warps=4, num_stages=3),
    (64, True, "short"): BackwardConfig(64, 64, 64, 64, num_warps=4, num_stages=3),
    (128, True, "dense"): BackwardConfig(64, 128, 128, 64, num_warps=8, num_stages=3),
    (128, True, "long"): BackwardConfig(64, 128, 128, 64, num_warps=8, num_stages=3),
    (128, True, "short"): BackwardConfig(64, 64, 64, 64, num_warps=4, num_stages=2),
    (256, True, "dense"): BackwardConfig(32, 64, 64, 32, num_warps=8, num_stages=1),
    (256, True, "long"): BackwardConfig(32, 64, 64, 32, num_warps=8, num_stages=1),
    (256, True, "short"): BackwardConfig(32, 64, 64, 32, num_warps=8, num_stages=1),
}
# float32 (exact products on FMA units): small tiles whatever the rows, untuned.
for _rows in ("dense", "long", "short"):
    FORWARD_DEFAULTS[64, False, _rows] = ForwardConfig(64, 32, num_warps=4, num_stages=2)
    FORWARD_DEFAULTS[128, False, _rows] = ForwardConfig(64, 32, num_warps=4, num_stages=2)
    FORWARD_DEFAULTS[256, False, _rows] = ForwardConfig(32, 32, num_warps=4, num_stages=1)
    BACKWARD_DEFAULTS[64, False, _rows] = BackwardConfig(32, 64, 64, 32, num_warps=4, num_stages=2)
    BACKWARD_DEFAULTS[128, False, _rows] = BackwardConfig(32, 32, 32, 32, num_warps=4, num_stages=1)
    BACKWARD_DEFAULTS[256, False, _rows] = BackwardConfig(16, 16, 16, 16, num_warps=4, num_stages=1)

# Short rows at D=128 (16-bit): 128 x 64 tiles at 4 warps fit two programs on one SM (255 registers,
# 96 KB of shared memory), so one program's prologue and epilogue overlap the other's tiles; the
# default 128 x 128 at 8 warps fits one. H200, Triton 3.6, same run (benchmarks/occupancy.py,
# results/occupancy.json): butterfly(128) 0.775 -> 0.728 ms at 32k, 3.877 -> 3.653 ms at 128k.
# Partial blocks loaded as uint8 tiles cost ~40 more registers a thread and spill at 4 warps
# (local(1k) & causal 0.841 -> 0.858 ms); masked by one key span a row they do not, and then the
# block list read per step is 1-4% faster than in registers: kernel times, same runs, 8 warps with
# tiles -> 4 warps with spans and list slots -> without (benchmarks/experiments/key_spans.py,
# results/key_spans_2.json, key_spans.json): local(1k) & causal 32k 0.775 -> 0.707-0.717 ->
# 0.700-0.708 ms, 128k 3.09-3.25 -> 2.86-2.92 -> 2.78-2.81, local(256) 32k 0.52 -> 0.49 -> 0.48.
# Not under one long row, which a 4-warp program walks 2-3x as slowly (local(256)+global(4)
# 0.70-0.78 -> 1.85-2.32 ms), nor with two spans a row (local(256)+sink(4), before its spans
# wrapped: 0.561 -> 0.583 ms, results/long_lines_ab.json). A band beside a sink column has one
# wrapped span a row (BlockMask) and takes it: same run, forward 0.562 -> 0.534 ms at 32k,
# (local(1k)+sink(4)) & causal 0.852 -> 0.764 ms at 32k, 3.31 -> 3.07 ms at 128k
# (benchmarks/experiments/wrapped_spans.py, results/wrapped_spans.json).
TWO_PER_SM_FORWARD = {(128, True): ForwardConfig(128, 64, num_warps=4, num_stages=2, list_slots=16)}
# Short rows with partial blocks masked by one key span a row: at D=128 the two-per-SM tile above;
# at D=64 64-query tiles (twice the programs, each half as long) with spans. D=64 kernel times, H200,
# 32 heads, two rounds, default (128 x 64, 4 warps, 3 stages, uint8 tiles) -> this
# (benchmarks/experiments/partial_row_tiles.py, results/partial_row_tiles.json, _2.json):
# local(1k) & causal 32k 0.882, 0.887 -> 0.824 ms (64 x 64 without spans 0.835, 0.835), 128k
# 3.538, 3.583 -> 3.532 (without spans 3.340, 3.519); through do_bench (L2 flushed) only 0.897 ->
# 0.883 ms at 32k (h200-full-4 -> h200-full-5). Rows of full blocks keep the default at D=64:
# 64-query tiles gain at 32k but lose at 128k, where each K/V block is read from DRAM twice as
# often (butterfly(128) 0.770 -> 0.745 ms at 32k, 3.776 -> 3.960 at 128k).
SHORT_SPAN_ROWS_FORWARD = {
    (128, True): replace(TWO_PER_SM_FORWARD[128, True], list_slots=None, key_spans=True),
    (64, True): ForwardConfig(64, 64, num_warps=4, num_stages=3, key_spans=True),
}

# Rows made mostly of partial blocks, each row one key span (``strided(256)+local(128)``: a
# diagonal or a band edge in every block; bands not aligned to the block), long rows included
# (:func:`partial_span_rows`). The 8-warp long-row tile loads a uint8 tile every step; 4 warps with
# key spans and three stages load none. Same runs as above, kernel ms, default -> these tiles:
#   forward  strided(256)+local(128) D=64 8k 2.237-2.254 -> 1.811-1.812, 32k 16.53 -> 13.21;
#            D=128 8k 1.536-1.542 -> 1.371, 32k 11.71 -> 10.10; local(200) 32k D=64 0.685 -> 0.607,
#            D=128 0.495 -> 0.488 (there two stages, the short-row tile, 0.495).
#   backward strided(256)+local(128) D=128 8k 4.891-4.920 -> 4.297 (spans, 64 x 64, 2 stages),
#            32k 35.70 -> 32.80; D=64 8k 6.287-6.314 -> 5.500 (32-query dK/dV steps, no spans;
#            64 x 64 with spans 5.549), 32k 46.79 -> 41.65 (41.08); local(200) 32k D=64
#            2.021 -> 1.711, D=128 1.549 -> 1.499.
PARTIAL_SPAN_ROWS_FORWARD = {
    key: ForwardConfig(128, 64, num_warps=4, num_stages=3, key_spans=True) for key in ((64, True), (128, True))
}
# D=64 backward of short rows whose rows and columns are all about as long (is_balanced), and of
# partial-span rows: dK/dV steps of 32 queries over 64 keys, dQ 64 x 64, two stages. Same runs,
# backward kernel ms, default (64 x 64 both, 3 stages) -> this: local(1k) & causal 32k
# 2.551-2.571 -> 2.295, 128k 10.56-10.70 -> 10.09; butterfly(128) 32k 2.278-2.289 -> 2.047, 128k
# 12.08 -> 11.26, 16k 1.085 -> 0.934, 2k 0.734 -> 0.644 (round 4). Unbalanced short rows keep the
# default: causal at 2k (rows of 1 to 16 blocks) 1.134 -> 1.273, the two stages losing on its long
# runs of full blocks; local(1k) & causal at 2k (not balanced there either) would gain, 1.036 -> 0.911.
# At D=128 32-query steps lose (local(200) 1.549 -> 1.626 ms; local(1k) & causal, results/backward_tiles.json).
EVEN_ROWS_BACKWARD = {(64, True): BackwardConfig(32, 64, 64, 64, num_warps=4, num_stages=2)}
PARTIAL_SPAN_ROWS_BACKWARD = {
    **EVEN_ROWS_BACKWARD,
    (128, True): BackwardConfig(64, 64, 64, 64, num_warps=4, num_stages=2, key_spans=True),
}

# GPUs with less shared memory a block than the H100/H200's 227 KB. The tables above are the
# H200's and fit the A100's 163 KB too (its largest, the D=128 dense forward, needs 160 KB), but
# not the 99 KB of the RTX 30xx/40xx/50xx, A10, A40, L4 and L40 (sm_86/89/120): there the D=128
# dense and long-row tiles need 96-160 KB and the D=128 causal dK/dV 100 KB even with one stage,
# and every D=256 dK/dV 112 KB. Below SMALL_SHARED_MEMORY these tiles replace them, for every row
# class: the tuned shapes with the streamed tile (keys in the forward and dQ, queries in dK/dV)
# halved, so two stages fit where one did not. Fitted by cross-compiling for sm_86
# (benchmarks/experiments/shared_memory_fit.py, results/shared_memory_fit_sm86.txt: 70-88 KB);
# not timed on such a GPU (none to hand). sm_120 loads tiles through TMA, which the sm_86 check
# does not cover. A config still too large for a GPU loses stages at its first launch
# (launch.fewer_stages).
SMALL_SHARED_MEMORY = 160 * 1024
SMALL_SHARED_FORWARD = {
    (128, True): ForwardConfig(128, 64, num_warps=8, num_stages=2),
    (256, True): ForwardConfig(64, 32, num_warps=4, num_stages=2),
}
SMALL_SHARED_BACKWARD = {
    (128, True): BackwardConfig(32, 128, 128, 32, num_warps=8, num_stages=2),
    (256, True): BackwardConfig(16, 64, 64, 16, num_warps=8, num_stages=1),
}


def shared_memory_per_block(device: torch.device) -> int | None:
    """The shared memory a kernel's block may use on ``device`` (bytes, as Triton checks it at a
    kernel's first launch), or None off CUDA (the interpreter: the tables are the H200's)."""
    if device.type != "cuda":
        return None
    return _shared_memory_per_block(torch.cuda.current_device() if device.index is None else device.index)


@functools.lru_cache(maxsize=None)
def _shared_memory_per_block(index: int) -> int:
    from triton.runtime import driver

    return driver.active.utils.get_device_properties(index)["max_shared_mem"]


# Rows with at least this many keys in non-empty blocks on average count as long (16 blocks of 128).
# Counted in keys, not blocks: 64x64 masks of `local(1k) & causal` once crossed a 16-block line
# and ran 2x slower on the long-row tiles.
LONG_ROW_KEYS = 2048


def row_class(mask) -> str:
    """"dense" (no lists), "long" (LONG_ROW_KEYS keys a row or more on average) or "short"."""
    if mask.is_dense:
        return "dense"
    keys_per_row = (mask.n_full + mask.n_partial) * mask.block_n / mask.n_q_blocks
    return "long" if keys_per_row >= LONG_ROW_KEYS else "short"


def has_long_lines(mask, by_rows: bool) -> bool:
    """Whether some row (column) of a sparse mask is much longer than the average one, as the
    global row and column of ``global(g)`` are."""
    longest = mask.max_blocks_per_row if by_rows else mask.max_blocks_per_col
    n_lines = mask.n_q_blocks if by_rows else mask.n_kv_blocks
    mean = (mask.n_full + mask.n_partial) / n_lines
    return longest > 2 * mean + 1


# Whether masks whose lines all hold about as many blocks (the longest at most BALANCED_LINES times
# the mean: bands, butterflies) still start their programs longest line first, per pass. Heavy-first
# costs each program a dependent load (its line from the order table) before its block lists.
# Same-run A/B, H200, off / on, both passes switched together (benchmarks/ab_switches.py --switch
# common.HEAVY_FIRST_BALANCED --rounds 4, when it was one switch; results/heavy_first_balanced_ab_2.json):
# forward off faster at every size measured,
# local(1k) & causal 0.360 / 0.374 ms at 16k, 0.713 / 0.742 at 32k, 1.454 / 1.497 at 64k,
# 2.894 / 3.017 at 128k, butterfly(128) 0.662 / 0.696 at 32k, 3.395 / 3.492 at 128k; backward on
# faster at 32k (2.277 / 2.225, 2.185 / 2.119), level at 16k to 128k (within 1%). An earlier run
# (heavy_first_balanced_ab.json, two rounds) had local(1k) & causal at 128k the other way round.
HEAVY_FIRST_BALANCED_FORWARD = False
HEAVY_FIRST_BALANCED_BACKWARD = True
BALANCED_LINES = 1.25


def is_balanced(mask, by_rows: bool) -> bool:
    """Whether no row (column) of a sparse mask holds more than BALANCED_LINES times the mean."""
    longest = mask.max_blocks_per_row if by_rows else mask.max_blocks_per_col
    n_lines = mask.n_q_blocks if by_rows else mask.n_kv_blocks
    return longest <= BALANCED_LINES * (mask.n_full + mask.n_partial) / n_lines


def auto_schedule(mask, by_rows: bool, backward: bool = False) -> Schedule:
    """Heads fastest when a few rows (columns, for dK/dV) are much longer than the rest, as under
    ``global(g)``: then every head's long row starts at once. Balanced masks keep query tiles
    fastest, so that programs running together share one head's K and V in L2 (measured: listing
    every block of a dense mask ran 1.27x slower with heads fastest), and start longest line first
    only in the backward (HEAVY_FIRST_BALANCED_*)."""
    balanced_heavy_first = HEAVY_FIRST_BALANCED_BACKWARD if backward else HEAVY_FIRST_BALANCED_FORWARD
    heavy_first = balanced_heavy_first or not is_balanced(mask, by_rows)
    return Schedule(heavy_first=heavy_first, heads_fastest=has_long_lines(mask, by_rows))


def prefer_host_descriptors(mask, by_rows: bool, backward: bool) -> bool:
    """Whether a launch should load its tiles through host-built descriptors rather than ones each
    program builds (when both can: :func:`tma_mode`). ``by_rows``: the forward and dQ kernels,
    which walk rows; else the dK/dV kernel, which walks columns.

    Host descriptors spare every program a global write and a proxy fence before its first load
    (about 2 us a program, benchmarks/row_costs.py), which short rows feel. But in Triton 3.6 they
    are slower per tile in a kernel walking one very long row, and in the dense backward (0.95-0.96x);
    elsewhere they win. H200, kernel times (benchmarks/line_costs.py, results/line_costs.json,
    32k, 16 heads), kernel-built -> host:
      rows:    local(256)+global(4) forward 0.731 -> 0.777 ms and dQ 0.786 -> 0.862 (long rows:
               kernel-built); local(256)+sink(4) (one long column) forward 0.646 -> 0.602, dQ
               0.690 -> 0.634; local(1k) & causal forward 0.821 -> 0.812, dQ 0.890 -> 0.831.
      columns: dK/dV faster with host descriptors under long lines too: local(256)+global(4)
               1.206 -> 1.126 ms, local(256)+sink(4) 1.026 -> 0.950, local(256) 0.868 -> 0.829.
    Earlier: forward dense 8k D=128 1.07x, causal 1.03-1.05x (results/tma_modes_4.json).
    """
    if mask.is_dense:
        return not backward
    if by_rows:
        return not has_long_lines(mask, True)
    return True


# Full blocks per run, on average, from which the kernels walk runs instead of the block list.
LONG_RUN_BLOCKS = 8


def walk_full_blocks_as_runs(config, mask) -> bool:
    """Runs of consecutive full blocks give the compiler affine offsets to prefetch, which pays on
    long runs (a mask listing every block: 2.84 -> 2.60 ms; causal 32k: 11.8 -> 10.2 ms); on short
    runs the nested loop's extra prologue costs more than it gains (local(256)+global(4): 0.78 -> 1.06 ms). ``config.full_runs`` overrides."""
    if config.full_runs is not None:
        return config.full_runs
    if mask.is_dense:
        return False
    n_runs = mask.full_kv_run_starts.numel()
    return n_runs > 0 and mask.n_full >= LONG_RUN_BLOCKS * n_runs


def _table_key(head_dim_padded: int, dtype: torch.dtype, rows: str):
    size = 64 if head_dim_padded <= 64 else 128 if head_dim_padded <= 128 else 256
    return size, dtype in (torch.float16, torch.bfloat16), rows


def fit_tile(wanted: int, mask_block: int, length: int) -> int:
    """A power-of-two tile no larger than ``wanted`` that divides ``mask_block``, shrunk for short
    sequences (a decoding query needs a 16-row tile, not 128) but never below 16 (``tl.dot``)."""
    tile = min(wanted, mask_block, max(16, triton.next_power_of_2(length)))
    return max(tile, 16)


def partial_span_rows(mask) -> bool:
    """Whether a sparse mask's blocks are mostly partial, every tile row one key span, and no row or
    column much longer than the rest (``strided(256)+local(128)``, ``local(200)``): the rows that
    take PARTIAL_SPAN_ROWS_* tiles, short or long."""
    return (
        not mask.is_dense
        and mask.key_spans == 1
        and mask.n_partial > mask.n_full
        and not has_long_lines(mask, by_rows=True)
        and not has_long_lines(mask, by_rows=False)
    )


def forward_table_entry(head_dim_padded, dtype, mask, shared_memory: int | None = None) -> tuple[str, ForwardConfig]:
    """Which entry of the tables above the forward of this mask takes: its name (what
    :mod:`.tuning` caches tuned tiles under) and its config, before clamping to the mask."""
    key = _table_key(head_dim_padded, dtype, row_class(mask))
    short = key[2] == "short" and not has_long_lines(mask, by_rows=True)
    return _table_entry("forward", key, FORWARD_DEFAULTS, [
        ("small_shared", _small_shared_memory(shared_memory), SMALL_SHARED_FORWARD),
        ("partial_spans", partial_span_rows(mask), PARTIAL_SPAN_ROWS_FORWARD),
        ("two_per_sm", short and mask.n_partial == 0, TWO_PER_SM_FORWARD),
        ("short_spans", short and mask.n_partial > 0 and mask.key_spans == 1, SHORT_SPAN_ROWS_FORWARD),
    ])  # fmt: skip


def backward_table_entry(head_dim_padded, dtype, mask, shared_memory: int | None = None) -> tuple[str, BackwardConfig]:
    """As :func:`forward_table_entry`, for the backward."""
    key = _table_key(head_dim_padded, dtype, row_class(mask))
    even = key[2] == "short" and is_balanced(mask, by_rows=True) and is_balanced(mask, by_rows=False)
    return _table_entry("backward", key, BACKWARD_DEFAULTS, [
        ("small_shared", _small_shared_memory(shared_memory), SMALL_SHARED_BACKWARD),
        ("partial_spans", partial_span_rows(mask), PARTIAL_SPAN_ROWS_BACKWARD),
        ("even_rows", even, EVEN_ROWS_BACKWARD),
    ])  # fmt: skip


def _small_shared_memory(shared_memory: int | None) -> bool:
    return shared_memory is not None and shared_memory < SMALL_SHARED_MEMORY


def _table_entry(kind: str, key: tuple, defaults: dict, rules: list) -> tuple[str, object]:
    """The first of ``rules`` (name, whether it applies, its table) that applies and has an entry
    for this head dim and dtype, else ``defaults`` by row class: (entry name, config)."""
    for rule, applies, table in rules:
        if applies and key[:2] in table:
            return _entry_name(kind, key, rule), table[key[:2]]
    return _entry_name(kind, key, key[2]), defaults[key]


def _entry_name(kind: str, key: tuple, rule: str) -> str:
    return f"{kind} D{key[0]} {'16-bit' if key[1] else 'float32'} {rule}"


def default_forward_config(head_dim_padded, dtype, mask, shared_memory: int | None = None, device: torch.device | None = None) -> ForwardConfig:
    """The measured forward tiles for this mask (tables above), or those ``sparseflash tune`` kept
    for this entry on ``device``'s GPU (:mod:`.tuning`), clamped to its blocks and lengths;
    ``shared_memory``: the GPU's a block (:func:`shared_memory_per_block`), None for the H200's."""
    from . import tuning

    entry, base = forward_table_entry(head_dim_padded, dtype, mask, shared_memory)
    base = tuning.choice(entry, base, device)
    return replace(
        base,
        block_m=fit_tile(base.block_m, mask.block_m, mask.q_len),
        block_n=fit_tile(base.block_n, mask.block_n, mask.kv_len),
    )


def default_backward_config(head_dim_padded, dtype, mask, shared_memory: int | None = None, device: torch.device | None = None) -> BackwardConfig:
    """As :func:`default_forward_config`, for the backward."""
    from . import tuning

    entry, base = backward_table_entry(head_dim_padded, dtype, mask, shared_memory)
    base = tuning.choice(entry, base, device)
    return replace(
        base,
        block_m1=fit_tile(base.block_m1, mask.block_m, mask.q_len),
        block_n1=fit_tile(base.block_n1, mask.block_n, mask.kv_len),
        block_m2=fit_tile(base.block_m2, mask.block_m, mask.q_len),
        block_n2=fit_tile(base.block_n2, mask.block_n, mask.kv_len),
    )


try:
    from triton.tools.tensor_descriptor import TensorDescriptor as _TensorDescriptor
except ImportError:  # a Triton without host-side descriptors
    _TensorDescriptor = None
# Whether this Triton lets kernels build descriptors themselves (tl.make_tensor_descriptor).
_KERNEL_DESCRIPTORS = hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")


def tma_supported(*tensors: torch.Tensor) -> bool:
    """Whether kernels may load tiles of these (B, H, L, D) tensors through tensor descriptors
    (TMA, see :func:`tile_descriptor`).

    Hopper or newer, 16-bit inputs whose head dim is a power of two, a Triton with host-side or
    kernel-built descriptors, and the layout TMA needs: unit stride along the head dim, every other stride a
    non-zero multiple of 16 bytes (strides of size-1 dims do not matter), a 16-byte aligned base.
    Measured on the H200 (Triton 3.6, BENCHMARKS.md): the dense and causal forward 10-22% faster
    than with pointer loads.
    """
    first = tensors[0]
    if not (first.is_cuda and (_TensorDescriptor is not None or _KERNEL_DESCRIPTORS)):
        return False
    if first.dtype not in (torch.float16, torch.bfloat16) or torch.cuda.get_device_capability(first.device)[0] < 9:
        return False
    head_dim = first.shape[-1]
    if head_dim & (head_dim - 1):
        return False
    return all(_tma_layout_problem(t) is None for t in tensors)


def _tma_layout_problem(t: torch.Tensor) -> str | None:
    """Why TMA cannot address this (B, H, L, D) tensor's tiles, or None when it can."""
    if t.stride(-1) != 1:
        return f"stride {t.stride(-1)} along the head dim (1 needed)"
    if t.data_ptr() % 16:
        return "a base address not 16-byte aligned"
    for dim, (size, stride) in enumerate(zip(t.shape[:-1], t.stride()[:-1])):
        if size > 1 and (stride <= 0 or (stride * t.element_size()) % 16):
            return f"stride {stride} in dim {dim} (a positive multiple of 16 bytes needed)"
    return None


# How kernels load their streamed tiles (the USE_TMA constexpr).
TMA_OFF = tl.constexpr(0)  # pointer loads
TMA_HOST = tl.constexpr(1)  # TMA through (B, H, L, D) descriptors built on the host: tile_descriptor
TMA_DEVICE = tl.constexpr(2)  # TMA through per-head descriptors each program builds (tl.make_tensor_descriptor)


def tma_mode(choice, *tensors: torch.Tensor, prefer_host: bool = True) -> int:
    """The USE_TMA value for a config's ``tma``: False pointers; True or "host" host descriptors;
    "device" descriptors built in the kernel (they need Triton's allocator, which
    :func:`streamed_tiles` installs at every launch); None,
    where :func:`tma_supported`, host descriptors if ``prefer_host`` (see
    :func:`prefer_host_descriptors`) and this Triton has them, else kernel-built ones, and
    pointers elsewhere."""
    if choice is None:
        if not tma_supported(*tensors):
            return TMA_OFF.value
        choice = "host" if (prefer_host or not _KERNEL_DESCRIPTORS) and _TensorDescriptor is not None else "device"
    if choice in (True, "host", "device"):
        # An explicit choice on a layout TMA cannot address: say so, instead of Triton's assertion.
        for t in tensors:
            problem = _tma_layout_problem(t)
            if problem is not None:
                raise ValueError(f"tma={choice!r}: a {tuple(t.shape)} input has {problem}; use tma=None or False")
    if choice == "device":
        return TMA_DEVICE.value
    if choice in (True, "host"):
        return TMA_HOST.value
    if choice is False:
        return TMA_OFF.value
    raise ValueError(f"tma={choice!r}: expected None, False, True, 'host' or 'device'")


def _torch_allocator(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def install_descriptor_allocator():
    """Kernels that build tensor descriptors need a little device memory from Triton's allocator.
    Install one backed by PyTorch's caching allocator, unless the program has set its own."""
    try:
        from triton.runtime import _allocation

        if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):
        pass  # a Triton without these internals: set ours
    triton.set_allocator(_torch_allocator)


def tile_descriptor(t: torch.Tensor, block_rows: int):
    """A host-side tensor descriptor of a (B, H, L, D) tensor that loads [1, 1, block_rows, D]
    tiles at [batch, head, first_row, 0]; rows past L arrive as zeros (per head, as with masked
    pointer loads). Kernels reshape the tile to [block_rows, D].

    Built on the host and passed as a kernel argument, not built in the kernel: a descriptor made
    in the kernel costs every program a global write and a proxy fence before its first load,
    about 2 us a program on the H200 (benchmarks/row_costs.py), which short rows feel.
    Needs :func:`tma_supported`.
    """
    strides = list(t.stride())
    # A size-1 dim's stride is arbitrary in PyTorch; give TMA the contiguous one (16-byte multiple).
    for dim in range(t.dim() - 2, -1, -1):
        if t.shape[dim] == 1:
            strides[dim] = strides[dim + 1] * t.shape[dim + 1]
    return _TensorDescriptor(t, list(t.shape), strides, [1, 1, block_rows, t.shape[-1]])


def streamed_tiles(use_tma: int, block_rows: int, *tensors: torch.Tensor) -> tuple:
    """What a kernel that streams ``block_rows``-row tiles of these (B, H, L, D) tensors takes in
    their place, for a :func:`tma_mode` result: with TMA_HOST their :func:`tile_descriptor`, else
    the tensors themselves.

    Measured and not kept (H200, Triton 3.6, benchmarks/results/tma_modes_3.json): 2-D descriptors
    over the (B*H*L, D) rows, where no tile crosses a head's end, instead of the 4-D ones. Their
    forward was 3-8% slower (dense 8k, D=128: 2.126 against 1.956 ms), their backward 4% faster
    on dense rows and 4% slower on short ones."""
    if use_tma == TMA_DEVICE.value:
        # Every launch, not once per prepared launch: Triton's allocator is per context (thread).
        install_descriptor_allocator()
    if use_tma != TMA_HOST.value:
        return tensors
    if tensors[0].is_cuda:  # (the interpreter takes descriptors of CPU tensors)
        bind_cuda_context(tensors[0].device)
    return tuple(tile_descriptor(t, block_rows) for t in tensors)


_context_bound = threading.local()  # .devices: the CUDA devices whose context this thread has bound


def bind_cuda_context(device: torch.device) -> None:
    """Make ``device``'s primary CUDA context current in this thread (checked once per thread).

    Triton encodes host-built tensor descriptors through the driver API at launch, which needs a
    current context. A thread whose first CUDA work is our launch may have none (PyTorch can serve
    its allocations from the cache without a runtime call), and the launch then fails with
    "invalid device context": seen once on the H200, in a fresh thread of
    benchmarks/experiments/host_paths.py after a profiled run, and not reproduced since
    (tests/test_attention_gpu.py::test_launchers_in_a_fresh_thread passes without this). Any
    runtime call that needs a context binds the device's primary one: a stream query, ~1 us.
    """
    devices = getattr(_context_bound, "devices", None)
    if devices is None:
        devices = _context_bound.devices = set()
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in devices:
        torch.cuda.current_stream(index).query()
        devices.add(index)


def check_tile(name: str, tile: int, mask_block: int, is_dense: bool):
    if tile < 16 or tile & (tile - 1):
        raise ValueError(f"{name}={tile}: kernel tiles must be powers of two, at least 16")
    if not is_dense and mask_block % tile:
        raise ValueError(f"{name}={tile} must divide the mask's block of {mask_block}")


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """fp32 inputs get exact ``ieee`` dots unless tf32 is asked for; 16-bit inputs ignore it."""
    return "tf32" if allow_tf32 or dtype != torch.float32 else "ieee"


def head_dim_padded(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


# ---------------------------------------------------------------------------------- jit helpers


# How kernels walk runs of consecutive full blocks (the WALK constexpr).
# Both give the first run walked a top-level loop of its own, and tile offsets affine in the loop
# counter, which the compiler can prefetch stages ahead (forward.py says what that gained).
WALK_FORWARD = tl.constexpr(1)  # runs in order, each from its first tile
WALK_REVERSE = tl.constexpr(2)  # from the last run and its last tile backwards


@triton.jit
def run_tiles(run_starts, run_ends, run_begin, run_end, nth_run, MASK_BLOCK: tl.constexpr, BLOCK: tl.constexpr, WALK: tl.constexpr):
    """First row (key) of the ``nth_run``-th run walked, of runs ``run_begin:run_end``, and its
    number of BLOCK-row tiles (0 past the last run)."""
    if WALK == WALK_REVERSE:
        run = run_end - 1 - nth_run
    else:
        run = run_begin + nth_run
    exists = nth_run < run_end - run_begin
    first = tl.load(run_starts + run, mask=exists, other=0) * MASK_BLOCK
    return first, (tl.load(run_ends + run, mask=exists, other=0) * MASK_BLOCK - first) // BLOCK


@triton.jit
def run_tile_start(first, n_tiles, tile, BLOCK: tl.constexpr, WALK: tl.constexpr):
    """First row of the ``tile``-th tile walked of a run of ``n_tiles`` tiles from row ``first``."""
    if WALK == WALK_REVERSE:
        return first + (n_tiles - 1 - tile) * BLOCK
    return first + tile * BLOCK


@triton.jit
def tile_source(
    T, batch, head, stride_b, stride_h, stride_row, n_rows,
    BLOCK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, USE_TMA: tl.constexpr,
):  # fmt: skip
    """Where a kernel streams one head's (n_rows, D) tiles from, for :func:`load_tile`: with
    TMA_HOST the (B, H, L, D) host descriptor ``T`` itself, with TMA_DEVICE a descriptor of the
    head built here, else a pointer to the head's first row."""
    if USE_TMA == TMA_HOST:
        source = T
    else:
        source = T + tl.cast(batch, tl.int64) * stride_b + tl.cast(head, tl.int64) * stride_h
        if USE_TMA == TMA_DEVICE:
            source = tl.make_tensor_descriptor(source, shape=[n_rows, HEAD_DIM], strides=[stride_row, 1], block_shape=[BLOCK_ROWS, HEAD_DIM])
    return source


@triton.jit
def load_tile(
    source, batch, head, first_row, offs_rows, offs_d, stride_row, stride_d, n_rows,
    CHECK_ROWS: tl.constexpr, BLOCK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr,
    USE_TMA: tl.constexpr,
):  # fmt: skip
    """Rows ``first_row + offs_rows`` of one head from a :func:`tile_source`: a [BLOCK_ROWS,
    HEAD_DIM_PADDED] tile, zero past ``n_rows`` (descriptors always; pointers when CHECK_ROWS)."""
    if USE_TMA == TMA_HOST:
        tile = source.load([batch, head, first_row, 0]).reshape(BLOCK_ROWS, HEAD_DIM)
    elif USE_TMA == TMA_DEVICE:
        tile = source.load([first_row, 0])
    else:
        tile = load_rows(source, first_row, offs_rows, offs_d, stride_row, stride_d, n_rows, CHECK_ROWS, HEAD_DIM, HEAD_DIM_PADDED)
    return tile


@triton.jit
def load_rows(
    base,
    first_row,
    offs_rows,
    offs_d,
    stride_row,
    stride_d,
    n_rows,
    CHECK_ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
):
    """Rows ``first_row + offs_rows`` of a (rows, HEAD_DIM) matrix: a [ROWS, HEAD_DIM_PADDED] tile,
    zero past ``n_rows`` (when CHECK_ROWS) and past HEAD_DIM (when the head dim is padded)."""
    row_base = base + tl.cast(first_row, tl.int64) * stride_row
    ptrs = row_base + offs_rows[:, None] * stride_row + offs_d[None, :] * stride_d
    if CHECK_ROWS:
        if HEAD_DIM == HEAD_DIM_PADDED:
            tile = tl.load(ptrs, mask=(first_row + offs_rows)[:, None] < n_rows, other=0.0)
        else:
            in_bounds = ((first_row + offs_rows)[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM)
            tile = tl.load(ptrs, mask=in_bounds, other=0.0)
    else:
        if HEAD_DIM == HEAD_DIM_PADDED:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def store_rows(
    base,
    first_row,
    offs_rows,
    offs_d,
    stride_row,
    stride_d,
    row_begin,
    row_end,
    tile,
    HEAD_DIM: tl.constexpr,
):
    """Write a [ROWS, HEAD_DIM_PADDED] tile to rows ``first_row + offs_rows``, only those in
    [row_begin, row_end) (row_begin > 0: rows another launch writes, full_rows.py)."""
    row_base = base + tl.cast(first_row, tl.int64) * stride_row
    ptrs = row_base + offs_rows[:, None] * stride_row + offs_d[None, :] * stride_d
    rows = first_row + offs_rows
    in_bounds = ((rows >= row_begin) & (rows < row_end))[:, None] & (offs_d[None, :] < HEAD_DIM)
    tl.store(ptrs, tile, mask=in_bounds)


@triton.jit
def partial_parts(
    across_starts, across_windows, narrow_starts, line, partial_begin, partial_end, first,
    BLOCK: tl.constexpr, NARROW: tl.constexpr, SKIP_ACROSS: tl.constexpr,
):  # fmt: skip
    """How a program walks its share ``[partial_begin, partial_end)`` of a line's partial blocks
    (BlockMask: ordinary ones, those narrow across the line, narrow ones). Returns ``(wide_end,
    narrow_begin)``: whole kernel tiles over ``[partial_begin, wide_end)``, one NARROW step each
    over ``[narrow_begin, partial_end)``. With SKIP_ACROSS, the blocks narrow across the line are
    left out of the first range when the program's ``BLOCK`` rows (keys, for dK/dV) from ``first``
    within the block miss the line's window."""
    narrow_start = tl.load(narrow_starts + line)
    wide_stop = narrow_start
    if SKIP_ACROSS:
        window = tl.load(across_windows + line)
        misses = (window + NARROW <= first) | (first + BLOCK <= window)
        wide_stop = tl.where(misses, tl.load(across_starts + line), narrow_start)
    wide_end = tl.maximum(tl.minimum(partial_end, wide_stop), partial_begin)
    narrow_begin = tl.maximum(tl.minimum(partial_end, narrow_start), partial_begin)
    return wide_end, narrow_begin


@triton.jit
def load_tile_mask(
    tiles,
    key_spans,
    tile_id,
    first_row_in_tile,
    first_col_in_tile,
    offs_rows,
    offs_cols,
    MASK_BLOCK_M: tl.constexpr,
    MASK_BLOCK_N: tl.constexpr,
    KEY_SPANS: tl.constexpr,
):
    """The part of partial tile ``tile_id`` seen by a [ROWS, COLS] kernel tile, as bool.

    ``offs_rows`` index queries and ``offs_cols`` keys; pass them as [ROWS, 1] and [1, COLS] (query-
    major) or [1, ROWS] and [COLS, 1] (key-major, for dK/dV) to get either orientation.
    ``KEY_SPANS`` (the mask's ``key_spans``): 0 loads the uint8 tile from ``tiles``; 1 or 2 compares
    the keys with each row's runs of allowed keys in ``key_spans`` (``BlockMask.tile_key_spans``;
    a run may wrap around the block's ends), a load per row instead of per element.
    """
    if KEY_SPANS == 0:
        tile_base = tiles + tl.cast(tile_id, tl.int64) * (MASK_BLOCK_M * MASK_BLOCK_N)
        ptrs = tile_base + (first_row_in_tile + offs_rows) * MASK_BLOCK_N + (first_col_in_tile + offs_cols)
        allowed = tl.load(ptrs) != 0
    else:
        row_spans = key_spans + tl.cast(tile_id, tl.int64) * (MASK_BLOCK_M * 2 * KEY_SPANS) + (first_row_in_tile + offs_rows) * (2 * KEY_SPANS)
        keys = first_col_in_tile + offs_cols
        allowed = _in_span(keys, tl.load(row_spans), tl.load(row_spans + 1))
        if KEY_SPANS == 2:
            allowed = allowed | _in_span(keys, tl.load(row_spans + 2), tl.load(row_spans + 3))
    return allowed


@triton.jit
def _in_span(keys, first, end):
    """Whether ``keys`` lie in the span [first, end), or for a wrapped span (first > end, see
    ``BlockMask``) outside [end, first): three comparisons and two xors, no branch."""
    return (keys >= first) ^ (keys >= end) ^ (first > end)
