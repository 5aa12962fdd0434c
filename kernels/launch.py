"""Preparing kernel launches: what a launch takes besides its tensors' values, derived once.

A launcher's choices (config, schedule, split plan, grid, block-list arguments, descriptor kind,
constexprs) depend only on the mask and the inputs' layout. :func:`line_launch` derives them for
one kernel walking a mask's rows (forward, dQ) or columns (dK/dV); :func:`prepared_launch` keeps
what a launcher built from them per mask, so later calls only allocate outputs, build host
descriptors and launch.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from .common import (
    Schedule,
    auto_schedule,
    column_list_arguments,
    has_long_lines,
    launch_grid,
    prefer_host_descriptors,
    row_list_arguments,
    schedule_constants,
    tma_mode,
    walk_full_blocks_as_runs,
)
from .split import SplitPlan, item_arguments, line_lengths, plan_for

# Per mask: launches prepared by the launchers, keyed by everything they were derived from.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Entries kept per mask; past it the mask's entries are dropped (varying batch sizes, say).
PREPARED_PER_MASK = 32


def prepared_launch(mask, key: tuple, prepare):
    """``prepare()``'s result for ``mask`` and ``key``, computed once and then reused.

    A launcher's choices (config, schedule, split plan, grid, block lists, descriptor kind,
    constexprs) depend only on the mask and the inputs' layout, not on their values, so they are
    made on the first call and looked up after that: on the H200's host they cost 100-300 us a
    call, against ~50 us for Triton's own launch (benchmarks/experiments/exposed_host.py), and small
    problems wait on the host (BENCHMARKS.md, tenth session). ``key`` must hold everything
    ``prepare`` reads besides the mask (see :func:`layout_key`), including the module switches
    tests and benchmarks flip; code that changes other module constants between calls calls
    :func:`clear_prepared_launches`.
    """
    entries = _prepared.get(mask)
    if entries is None:
        entries = _prepared.setdefault(mask, {})
    launch = entries.get(key)
    if launch is None:
        if len(entries) >= PREPARED_PER_MASK:
            entries.clear()
        launch = entries[key] = prepare()
    return launch


def clear_prepared_launches() -> None:
    """Forget every prepared launch (after changing a module constant the keys do not hold)."""
    _prepared.clear()


def layout_key(*tensors: torch.Tensor) -> tuple:
    """What a launch's choices read from its tensors: shapes, strides, dtype, device, and whether
    each base address is 16-byte aligned (TMA needs it: :func:`common.tma_supported`)."""
    return tuple((t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0) for t in tensors)


@dataclass(frozen=True)
class LaunchPart:
    """One kernel launch over some of a mask's lines, apart from the tensors' values."""

    grid: tuple
    use_tma: int  # common.tma_mode, for the tiles the kernel streams
    streamed_rows: int  # rows of those tiles (their host descriptors' boxes)
    lists: tuple  # the mask's lists and the part's items, in the kernels' argument order
    constants: dict  # constexprs and launch settings


@dataclass(frozen=True)
class LineLaunch:
    """A kernel's launches over a mask's rows or columns: one part, or the long lines and the
    short ones apart (:func:`line_launch`). The items of split lines write scratch slots, merged
    after every part has run."""

    parts: tuple  # of LaunchPart, launched in order
    plan: SplitPlan | None  # split lines, or None


# Which kernels launch a mask's long lines (common.has_long_lines: the global row and column of
# global(g)) apart from its short ones, each part with its own tiles: FORWARD | DQ | DKDV bits.
# Alone, the short lines may take the two-programs-a-multiprocessor forward, and the long ones are
# cut into items that spread over every multiprocessor.
SEPARATE_FORWARD, SEPARATE_DQ, SEPARATE_DKDV = 1, 2, 4
SEPARATE_LONG_LINES = SEPARATE_FORWARD | SEPARATE_DQ | SEPARATE_DKDV


def long_line_count(mask, by_rows: bool) -> int:
    """How many of the mask's rows (columns) are long by :func:`common.has_long_lines`' measure;
    they lead ``q_block_order`` (``kv_block_order``), which lists the longest first."""
    lengths = line_lengths(mask, by_rows)
    mean = lengths.sum() / lengths.size
    return int((lengths > 2 * mean + 1).sum())


def line_launch(
    config, mask, streamed: tuple, *, by_rows: bool, backward: bool, n_batch_heads: int, settings, separate: bool, short_config=None
) -> LineLaunch:
    """The launches of a kernel over ``mask``'s rows (``by_rows``: forward, dQ) or columns (dK/dV):
    schedule, split plan, grid, list arguments, and the descriptor kind for the ``streamed``
    tensors (all (B, H, L, D) inputs, for :func:`common.tma_mode`).

    ``settings(config)`` gives a part's (kernel tile along the lines, rows of the streamed tiles,
    the kernel's own constants); the schedule, full-run, split and TMA ones are added here. With
    ``separate``, a sparse mask with long lines gets two parts: its long lines under ``config``,
    split to spread over the GPU, then its short lines under ``short_config`` (default ``config``),
    longest first and unsplit. Otherwise one part walks every line.
    """
    schedule = config.schedule or auto_schedule(mask, by_rows=by_rows)
    if not (separate and not mask.is_dense and schedule.heavy_first and has_long_lines(mask, by_rows)):
        plan = plan_for(config, mask, schedule, n_batch_heads, streamed[0].device, by_rows=by_rows)
        part = _launch_part(config, mask, streamed, by_rows, backward, n_batch_heads, settings, schedule, plan, lines=None)
        return LineLaunch(parts=(part,), plan=plan)
    n_long = long_line_count(mask, by_rows)
    plan = plan_for(config, mask, schedule, n_batch_heads, streamed[0].device, by_rows=by_rows, long_lines=n_long)
    long_part = _launch_part(config, mask, streamed, by_rows, backward, n_batch_heads, settings, schedule, plan, lines=(0, n_long))
    # Alone, the short lines are balanced: query tiles fastest, so that programs running together
    # share one head's K and V in L2 (common.auto_schedule).
    short_schedule = short_config.schedule if short_config is not None and short_config.schedule else Schedule(heavy_first=True, heads_fastest=False)
    n_lines = mask.n_q_blocks if by_rows else mask.n_kv_blocks
    short_part = _launch_part(
        short_config or config, mask, streamed, by_rows, backward, n_batch_heads, settings, short_schedule, None, lines=(n_long, n_lines)
    )
    return LineLaunch(parts=(long_part, short_part), plan=plan)


def _launch_part(config, mask, streamed, by_rows, backward, n_batch_heads, settings, schedule, plan, lines) -> LaunchPart:
    """One part of :func:`line_launch`: every line (``lines`` None) or lines ``lines[0]:lines[1]``
    of the mask's order, with the items of ``plan`` when it splits them."""
    device = streamed[0].device
    tile, streamed_rows, constants = settings(config)
    all_lists = (row_list_arguments if by_rows else column_list_arguments)(mask, device)
    order = all_lists[-1] if lines is None else all_lists[-1][lines[0] : lines[1]]
    long_lines = None if lines is None else lines[0] == 0
    use_tma = tma_mode(config.tma, *streamed, prefer_host=prefer_host_descriptors(mask, by_rows, backward, long_lines))
    length, mask_block = (mask.q_len, mask.block_m) if by_rows else (mask.kv_len, mask.block_n)
    n_items = plan.n_items if plan is not None else None if lines is None else lines[1] - lines[0]
    return LaunchPart(
        grid=launch_grid(length, tile, mask_block, n_batch_heads, schedule, mask.is_dense, n_items),
        use_tma=use_tma,
        streamed_rows=streamed_rows,
        lists=(*all_lists[:-1], *item_arguments(plan, order)),
        constants=dict(
            **schedule_constants(schedule, mask.is_dense),
            FULL_RUNS=plan is None and walk_full_blocks_as_runs(config, mask),
            SPLIT=plan is not None,
            USE_TMA=use_tma,
            **constants,
        ),
    )
