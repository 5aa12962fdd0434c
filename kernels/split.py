"""Splitting long mask lines across programs, and merging their partial results.

A sparse launch gives each program one *line* of the mask: a query block's row (forward, dQ) or a
key block's column (dK/dV). When a few lines are far longer than the rest, as the first rows and
columns under ``global(g)`` (every block of the sequence), those programs run long after the others
have finished: at 32k tokens the global row of ``local(256)+global(4)`` is 256 blocks against ~5
for the others, and bounded the whole forward. A *split plan* cuts every line longer than
``split_blocks`` into work items of about equal length; each item walks a range of its line's
non-empty blocks (full blocks first, then partial, the order the kernels walk a whole line in) and
writes a partial result to a float32 scratch slot. A small merge kernel then combines the slots of
each split line, in a fixed order (deterministic, no atomics):

    forward   o = sum_s w_s o_s / sum_s w_s,  lse = m + log(sum_s w_s),  w_s = exp(lse_s - m),
              m = max_s lse_s  (slots holding no allowed key have lse_s = -inf and weigh 0)
    dQ, dK, dV   the sum of the slots' partial sums

Items are started longest first, like whole lines (``Schedule.heavy_first``); lines no longer than
``split_blocks`` stay single items writing their output directly.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import triton
import triton.language as tl

from .common import store_rows

# Never cut a line into items shorter than this many mask blocks: each item costs a prologue, an
# epilogue and a slot to merge.
MIN_SPLIT_BLOCKS = 8
# Items are sized so that the launch has about this many items' worth of work per multiprocessor:
# the longest item then takes a fraction of a multiprocessor's share and overlaps the rest.
ITEMS_PER_SM = 4
# Lines are split only when the longest holds this many multiprocessors' shares of the launch's
# work: below that the other programs hide it, and the merge costs more than it gains. Rows (the
# forward, dQ): 2 shares (measured, local(256)+global(4) at 32k, benchmarks/split_lines.py: 16 heads
# (longest row 1.2 shares) 6% slower split; 4 heads (4.7 shares) 3.4x faster; 1 head 7x). Columns
# (dK/dV): 1 share, since a long column is walked by every one of its key tiles' programs (sixth
# session, results/split_lines_16h_2.json, 16 heads: the backward of local(256)+sink(4), whose
# 256-block column holds 1.4 shares, 2.04 -> 1.85-1.87 ms in items of 16-64 blocks).
SPLIT_WHEN_SHARES = {True: 2, False: 1}  # by rows, by columns

# Rows of a mask block merged by one merge program (bounds its registers: 32 x 256 float32).
_MERGE_ROWS = 32


@dataclass(frozen=True)
class SplitPlan:
    """Work items of a launch whose longest lines are split, on the mask's device.

    ``lines``, ``begins``, ``ends``, ``slots``: int32 ``(n_items,)``, longest item first. Item ``i``
    walks blocks ``begins[i]:ends[i]`` of line ``lines[i]`` (counted over the line's full blocks,
    then its partial ones) and writes scratch slot ``slots[i]``, or its output directly when -1.
    ``merge_offsets`` int32 ``(n_split_lines + 1,)`` and ``merge_lines`` int32 ``(n_split_lines,)``:
    split line ``merge_lines[j]`` has slots ``merge_offsets[j]:merge_offsets[j+1]``.
    """

    split_blocks: int
    lines: torch.Tensor
    begins: torch.Tensor
    ends: torch.Tensor
    slots: torch.Tensor
    merge_offsets: torch.Tensor
    merge_lines: torch.Tensor
    n_slots: int
    # The merge kernels' launch.KernelLaunchers, by kernel, grid and constants.
    merge_launchers: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_items(self) -> int:
        return int(self.lines.numel())

    @property
    def n_split_lines(self) -> int:
        return int(self.merge_lines.numel())


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def auto_split_blocks(mask, by_rows: bool, n_batch_heads: int, device: torch.device) -> int:
    """Item length, in mask blocks, that balances this launch; 0 when no line needs splitting.

    Only on CUDA (the multiprocessor count sets the balance); CPU runs split only when asked to.
    """
    if mask.is_dense or device.type != "cuda":
        return 0
    n_sm = _multiprocessor_count(device)
    share = (mask.n_full + mask.n_partial) * n_batch_heads / n_sm  # blocks per multiprocessor
    longest = mask.max_blocks_per_row if by_rows else mask.max_blocks_per_col
    if longest <= SPLIT_WHEN_SHARES[by_rows] * share:
        return 0
    return max(MIN_SPLIT_BLOCKS, math.ceil(share / ITEMS_PER_SM))


def plan_for(config, mask, schedule, n_batch_heads: int, device: torch.device, by_rows: bool) -> SplitPlan | None:
    """The launch's split plan, or None to give every line one program: ``config.split_blocks``
    (0: never split) or, when None, :func:`auto_split_blocks`. Only launches that start heavy lines
    first split, and ``config.full_runs=True`` keeps whole lines (runs are walked per line)."""
    if mask.is_dense or not schedule.heavy_first or config.full_runs:
        return None
    split_blocks = config.split_blocks
    if split_blocks is None:
        split_blocks = auto_split_blocks(mask, by_rows, n_batch_heads, device)
    return split_plan(mask, by_rows, split_blocks)


def split_plan(mask, by_rows: bool, split_blocks: int) -> SplitPlan | None:
    """The plan that cuts ``mask``'s rows (``by_rows``) or columns longer than ``split_blocks``
    into items of at most ``split_blocks`` blocks; None when no line is that long. Cached per mask."""
    if split_blocks <= 0 or mask.is_dense:
        return None
    longest = mask.max_blocks_per_row if by_rows else mask.max_blocks_per_col
    if longest <= split_blocks:
        return None
    cache = _plans.setdefault(mask, {})
    key = (by_rows, split_blocks)
    if key not in cache:
        cache[key] = _build_plan(mask, by_rows, split_blocks)
    return cache[key]


def _build_plan(mask, by_rows: bool, split_blocks: int) -> SplitPlan:
    if by_rows:
        offsets = (mask.full_kv_offsets, mask.partial_kv_offsets)
    else:
        offsets = (mask.full_q_offsets, mask.partial_q_offsets)
    # One read back from the device per mask and direction; the plan is cached.
    lengths = sum(np.diff(o.cpu().numpy().astype(np.int64)) for o in offsets)
    n_items = np.maximum(1, -(-lengths // split_blocks))  # items per line
    is_split = n_items > 1
    item_line = np.repeat(np.arange(lengths.size), n_items)
    item_rank = np.arange(item_line.size) - np.repeat(np.cumsum(n_items) - n_items, n_items)  # index within its line
    # Equal cuts: item r of a line of L blocks in n items covers [r*L//n, (r+1)*L//n).
    line_lengths, line_items = lengths[item_line], n_items[item_line]
    begins = item_rank * line_lengths // line_items
    ends = (item_rank + 1) * line_lengths // line_items
    # Slots: the items of split lines, line by line; whole lines write their output (-1).
    split_items = is_split[item_line]
    slots = np.full(item_line.size, -1, dtype=np.int64)
    slots[split_items] = np.arange(int(split_items.sum()))
    merge_lines = np.flatnonzero(is_split)
    merge_offsets = np.concatenate([[0], np.cumsum(n_items[merge_lines])])
    # Longest items first; ties by line, then by position in the line.
    order = np.lexsort((begins, item_line, -(ends - begins)))
    device = mask.device
    as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a, dtype=np.int32)).to(device)  # noqa: E731
    return SplitPlan(
        split_blocks=split_blocks,
        lines=as_tensor(item_line[order]),
        begins=as_tensor(begins[order]),
        ends=as_tensor(ends[order]),
        slots=as_tensor(slots[order]),
        merge_offsets=as_tensor(merge_offsets),
        merge_lines=as_tensor(merge_lines),
        n_slots=int(split_items.sum()),
    )


def _multiprocessor_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_counts.setdefault(index, torch.cuda.get_device_properties(index).multi_processor_count)


_sm_counts: dict = {}


def item_arguments(plan: SplitPlan | None, order: torch.Tensor) -> tuple:
    """(lines, begins, ends, slots) for a kernel: the plan's items, or ``order`` (the mask's line
    order) with placeholders when nothing is split (the kernel then reads only ``order``)."""
    if plan is None:
        return (order, order, order, order)
    return (plan.lines, plan.begins, plan.ends, plan.slots)


# ---------------------------------------------------------------------------------- jit helpers

# An item range that covers any line: lines hold fewer blocks than this.
_WHOLE_LINE = tl.constexpr(2**30)


@triton.jit
def program_item(
    order,
    item_begins,
    item_ends,
    item_slots,
    BLOCK: tl.constexpr,
    MASK_BLOCK: tl.constexpr,
    HEAVY_FIRST: tl.constexpr,
    HEADS_FASTEST: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """This program's (first row of its kernel tile, batch*head, begin, end, slot).

    With HEAVY_FIRST the program's rank picks an item from ``order`` (longest first: whole lines, or
    with SPLIT the plan's items) and a kernel tile inside its mask block; otherwise rank r is simply
    tile r. ``begin:end`` is the item's range of the line's blocks and ``slot`` its scratch slot
    (-1: write the output); without SPLIT the item is the whole line.
    """
    if HEADS_FASTEST:
        rank = tl.program_id(1)
        batch_head = tl.program_id(0)
    else:
        rank = tl.program_id(0)
        batch_head = tl.program_id(1)
    if HEAVY_FIRST:
        tiles_per_block: tl.constexpr = MASK_BLOCK // BLOCK
        item = rank // tiles_per_block
        line = tl.load(order + item)
        first = line * MASK_BLOCK + (rank % tiles_per_block) * BLOCK
    else:
        item = rank
        first = rank * BLOCK
    if SPLIT:
        begin = tl.load(item_begins + item)
        end = tl.load(item_ends + item)
        slot = tl.load(item_slots + item)
    else:
        begin = 0
        end = _WHOLE_LINE
        slot = -1
    return first, batch_head, begin, end, slot


@triton.jit
def item_block_ranges(full_offsets, partial_offsets, line, begin, end):
    """Index ranges into the full and the partial block lists that item ``begin:end`` of ``line``
    covers: (full_begin, full_end, partial_begin, partial_end)."""
    full_begin = tl.load(full_offsets + line)
    full_end = tl.load(full_offsets + line + 1)
    partial_begin = tl.load(partial_offsets + line)
    partial_end = tl.load(partial_offsets + line + 1)
    n_full = full_end - full_begin
    return (
        full_begin + tl.minimum(begin, n_full),
        full_begin + tl.minimum(end, n_full),
        partial_begin + tl.maximum(begin - n_full, 0),
        tl.minimum(partial_begin + tl.maximum(end - n_full, 0), partial_end),
    )


@triton.jit
def scratch_rows(scratch, slot, batch_head, n_batch_heads, first_row_in_block, MASK_BLOCK: tl.constexpr, WIDTH: tl.constexpr):
    """Pointer to row ``first_row_in_block`` of (slot, batch_head) in a float32 scratch tensor
    shaped (n_slots, n_batch_heads, MASK_BLOCK, WIDTH)."""
    row = (tl.cast(slot, tl.int64) * n_batch_heads + batch_head) * MASK_BLOCK + first_row_in_block
    return scratch + row * WIDTH


@triton.jit
def _merge_program(merge_offsets, merge_lines, MASK_BLOCK: tl.constexpr, ROWS: tl.constexpr):
    """A merge program's (line, first row in the mask block, batch*head, slot_begin, slot_end):
    program (i, bh) merges rows ``(i % chunks) * ROWS`` onwards of split line ``i // chunks``."""
    chunks: tl.constexpr = MASK_BLOCK // ROWS
    split_line = tl.program_id(0) // chunks
    line = tl.load(merge_lines + split_line)
    slot_begin = tl.load(merge_offsets + split_line)
    slot_end = tl.load(merge_offsets + split_line + 1)
    return line, (tl.program_id(0) % chunks) * ROWS, tl.program_id(1), slot_begin, slot_end


@triton.jit
def _merge_softmax_kernel(
    OutPart, LsePart, Out, Lse,
    merge_offsets, merge_lines,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh,
    n_heads, n_batch_heads, q_len, first_stored_row,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    MASK_BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
):  # fmt: skip
    """Forward merge: one program per (ROWS rows of a split line, batch*head). Rows below
    ``first_stored_row`` are left alone (another launch writes them: full_rows.py)."""
    line, row_in_block, batch_head, slot_begin, slot_end = _merge_program(merge_offsets, merge_lines, MASK_BLOCK, ROWS)
    offs_m = tl.arange(0, ROWS)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)

    m = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    for slot in range(slot_begin, slot_end):
        lse_s = tl.load(scratch_rows(LsePart, slot, batch_head, n_batch_heads, row_in_block, MASK_BLOCK, 1) + offs_m)
        m = tl.maximum(m, lse_s)
    # Rows with no allowed key in any slot keep m = -inf: weigh every slot by exp(-inf) = 0, not NaN.
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    weight_sum = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, HEAD_DIM_PADDED], dtype=tl.float32)
    for slot in range(slot_begin, slot_end):
        lse_s = tl.load(scratch_rows(LsePart, slot, batch_head, n_batch_heads, row_in_block, MASK_BLOCK, 1) + offs_m)
        o_ptrs = scratch_rows(OutPart, slot, batch_head, n_batch_heads, row_in_block, MASK_BLOCK, HEAD_DIM_PADDED)
        o_s = tl.load(o_ptrs + offs_m[:, None] * HEAD_DIM_PADDED + offs_d[None, :])
        w = tl.exp(lse_s - m_safe)
        weight_sum += w
        acc += w[:, None] * o_s
    has_key = weight_sum > 0.0
    safe_sum = tl.where(has_key, weight_sum, 1.0)
    out = acc / safe_sum[:, None]
    lse = tl.where(has_key, m_safe + tl.log(safe_sum), float("-inf"))

    first_row = line * MASK_BLOCK + row_in_block
    batch = tl.cast(batch_head // n_heads, tl.int64)
    head = tl.cast(batch_head % n_heads, tl.int64)
    store_rows(Out + batch * stride_ob + head * stride_oh, first_row, offs_m, offs_d, stride_om, stride_od, first_stored_row, q_len, out.to(Out.dtype.element_ty), HEAD_DIM)
    rows = first_row + offs_m
    tl.store(Lse + batch * stride_lb + head * stride_lh + rows, lse, mask=(rows >= first_stored_row) & (rows < q_len))


@triton.jit
def _sum_slots(
    Part, Out, line, row_in_block, batch_head, slot_begin, slot_end,
    stride_ob, stride_oh, stride_om, stride_od,
    n_heads, n_batch_heads, length, first_stored_row,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PADDED: tl.constexpr, MASK_BLOCK: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    offs_m = tl.arange(0, ROWS)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)
    acc = tl.zeros([ROWS, HEAD_DIM_PADDED], dtype=tl.float32)
    for slot in range(slot_begin, slot_end):
        ptrs = scratch_rows(Part, slot, batch_head, n_batch_heads, row_in_block, MASK_BLOCK, HEAD_DIM_PADDED)
        acc += tl.load(ptrs + offs_m[:, None] * HEAD_DIM_PADDED + offs_d[None, :])
    first_row = line * MASK_BLOCK + row_in_block
    o_base = Out + tl.cast(batch_head // n_heads, tl.int64) * stride_ob + tl.cast(batch_head % n_heads, tl.int64) * stride_oh
    store_rows(o_base, first_row, offs_m, offs_d, stride_om, stride_od, first_stored_row, length, acc.to(Out.dtype.element_ty), HEAD_DIM)


@triton.jit
def _merge_sum_kernel(
    Part, Out, Part2, Out2,
    merge_offsets, merge_lines,
    stride_ob, stride_oh, stride_om, stride_od,
    n_heads, n_batch_heads, length, first_stored_row,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    MASK_BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    PAIRS: tl.constexpr,
):  # fmt: skip
    """Backward merge: Out rows = the sum of the slots (and Out2's of Part2's with PAIRS=2), one
    program per (ROWS rows, batch*head). Rows below ``first_stored_row`` are left alone."""
    line, row_in_block, batch_head, slot_begin, slot_end = _merge_program(merge_offsets, merge_lines, MASK_BLOCK, ROWS)
    _sum_slots(
        Part, Out, line, row_in_block, batch_head, slot_begin, slot_end, stride_ob, stride_oh, stride_om, stride_od,
        n_heads, n_batch_heads, length, first_stored_row, HEAD_DIM, HEAD_DIM_PADDED, MASK_BLOCK, ROWS,
    )  # fmt: skip
    if PAIRS == 2:
        _sum_slots(
            Part2, Out2, line, row_in_block, batch_head, slot_begin, slot_end, stride_ob, stride_oh, stride_om, stride_od,
            n_heads, n_batch_heads, length, first_stored_row, HEAD_DIM, HEAD_DIM_PADDED, MASK_BLOCK, ROWS,
        )  # fmt: skip


# ------------------------------------------------------------------------------------- launchers


def new_scratch(plan: SplitPlan, n_batch_heads: int, mask_block: int, width: int, device) -> torch.Tensor:
    """float32 (n_slots, n_batch_heads, mask_block, width) for the items' partial results."""
    return torch.empty((plan.n_slots, n_batch_heads, mask_block, width), dtype=torch.float32, device=device)


def _merge_grid(plan: SplitPlan, mask_block: int, n_batch_heads: int):
    rows = min(_MERGE_ROWS, mask_block)
    return rows, (plan.n_split_lines * (mask_block // rows), n_batch_heads)


def merge_softmax(plan: SplitPlan, out_part, lse_part, out, lse, mask_block: int, first_stored_row: int = 0):
    """Write the split rows of ``out`` (B, H, Lq, D) and ``lse`` (B, H, Lq; rows of unit stride)
    from the slots, from ``first_stored_row`` on."""
    batch, n_heads, q_len, head_dim = out.shape
    rows, grid = _merge_grid(plan, mask_block, batch * n_heads)
    constants = dict(HEAD_DIM=head_dim, HEAD_DIM_PADDED=out_part.shape[-1], MASK_BLOCK=mask_block, ROWS=rows)
    _merge_launcher(plan, _merge_softmax_kernel, grid, constants)(
        out_part, lse_part, out, lse, plan.merge_offsets, plan.merge_lines,
        *out.stride(), *lse.stride()[:2], n_heads, batch * n_heads, q_len, first_stored_row,
    )  # fmt: skip


def merge_sum(plan: SplitPlan, parts: tuple, outs: tuple, mask_block: int, first_stored_row: int = 0):
    """Write the split lines' rows of each of ``outs`` (one or two alike (B, H, L, D) tensors, dK and
    dV in one launch) as the sum of its ``parts``' slots, from row ``first_stored_row`` on."""
    out = outs[0]
    batch, n_heads, length, head_dim = out.shape
    assert len(outs) == len(parts) in (1, 2) and all(o.shape == out.shape and o.stride() == out.stride() for o in outs)
    rows, grid = _merge_grid(plan, mask_block, batch * n_heads)
    constants = dict(HEAD_DIM=head_dim, HEAD_DIM_PADDED=parts[0].shape[-1], MASK_BLOCK=mask_block, ROWS=rows, PAIRS=len(outs))
    _merge_launcher(plan, _merge_sum_kernel, grid, constants)(
        parts[0], out, parts[-1], outs[-1], plan.merge_offsets, plan.merge_lines,
        *out.stride(), n_heads, batch * n_heads, length, first_stored_row,
    )  # fmt: skip


def _merge_launcher(plan: SplitPlan, kernel, grid: tuple, constants: dict):
    """``plan``'s launch.KernelLauncher of a merge kernel with this grid and these constants."""
    from .launch import KernelLauncher  # launch.py imports this module

    key = (kernel, grid, *constants.items())
    launcher = plan.merge_launchers.get(key)
    if launcher is None:
        launcher = plan.merge_launchers[key] = KernelLauncher(kernel, grid, constants)
    return launcher
