"""Preparing kernel launches: what a launch takes besides its tensors' values, derived once.

A launcher's choices (config, schedule, split plan, grid, block-list arguments, descriptor kind,
constexprs) depend only on the mask and the inputs' layout. :func:`line_launch` derives them for
one kernel walking a mask's rows (forward, dQ) or columns (dK/dV); :func:`prepared_launch` keeps
what a launcher built from them per mask, so later calls only allocate outputs, build host
descriptors and launch.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import torch

from .common import (
    auto_schedule,
    column_list_arguments,
    launch_grid,
    prefer_host_descriptors,
    row_list_arguments,
    schedule_constants,
    tma_mode,
    walk_full_blocks_as_runs,
)
from .split import SplitPlan, item_arguments, plan_for

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
class LineLaunch:
    """One kernel's launch over a mask's rows or columns, apart from the tensors' values."""

    grid: tuple
    plan: SplitPlan | None  # split lines, or None
    use_tma: int  # common.tma_mode, for the tiles the kernel streams
    streamed_rows: int  # rows of those tiles (their host descriptors' boxes)
    lists: tuple  # the mask's lists and the launch's items, in the kernels' argument order
    constants: dict  # constexprs and launch settings


def line_launch(
    config, mask, streamed: tuple, *, by_rows: bool, backward: bool, n_batch_heads: int, tile: int, streamed_rows: int, constants: dict
) -> LineLaunch:
    """The launch of a kernel with ``tile``-line programs over ``mask``'s rows (``by_rows``: forward,
    dQ) or columns (dK/dV): schedule, split plan, grid, list arguments, and the descriptor kind for
    the ``streamed`` tensors (all (B, H, L, D) inputs, for :func:`common.tma_mode`). ``constants``
    are the kernel's own; the schedule, full-run, split and TMA ones are added here."""
    device = streamed[0].device
    schedule = config.schedule or auto_schedule(mask, by_rows=by_rows, backward=backward)
    plan = plan_for(config, mask, schedule, n_batch_heads, device, by_rows=by_rows)
    if plan is None and config.schedule is None and not schedule.heavy_first:
        # Split items are dispatched through the heavy-first order (split.program_item), so a
        # balanced launch whose lines want splitting keeps it: the all-key rows' launch
        # (full_rows.py) is one 256-block line a head, which unsplit took 0.61 -> 1.09 ms at 32k.
        ordered = replace(schedule, heavy_first=True)
        plan = plan_for(config, mask, ordered, n_batch_heads, device, by_rows=by_rows)
        schedule = ordered if plan is not None else schedule
    lists = (row_list_arguments if by_rows else column_list_arguments)(mask, device)
    use_tma = tma_mode(config.tma, *streamed, prefer_host=prefer_host_descriptors(mask, by_rows=by_rows, backward=backward))
    length, mask_block = (mask.q_len, mask.block_m) if by_rows else (mask.kv_len, mask.block_n)
    return LineLaunch(
        grid=launch_grid(length, tile, mask_block, n_batch_heads, schedule, mask.is_dense, plan),
        plan=plan,
        use_tma=use_tma,
        streamed_rows=streamed_rows,
        lists=(*lists[:-1], *item_arguments(plan, lists[-1])),
        constants=dict(
            **schedule_constants(schedule, mask.is_dense),
            FULL_RUNS=plan is None and walk_full_blocks_as_runs(config, mask),
            SPLIT=plan is not None,
            USE_TMA=use_tma,
            **constants,
        ),
    )
