"""Streamed lines: one program walks several consecutive lines of the mask in a single loop.

A sparse launch normally gives each program one kernel tile's line (a query tile's row, for the
forward). When lines are short (a band: ~10 steps a row) each program spends as long loading its Q
tile, filling its pipeline and storing its output as it spends computing. A *streamed* launch
starts a few programs per multiprocessor instead; each takes a contiguous run of one head's line
tiles and walks all of their steps in **one** loop, so the compiler's software pipeline runs on
across line boundaries (the first K/V tiles of the next row are loaded while the current row
finishes) and the per-program start-up is paid once per run, not once per row.

The loop is driven by a *step table*, the same for every head (the mask does not depend on the
head). Step ``s`` of the table is one kernel tile of keys against one query tile:

    step_keys[s]   first key of the step (a multiple of BLOCK_N)
    step_tiles[s]  -1: inside a full block;  t >= 0: inside partial block with tile t;
                   -2: a placeholder for a row with no non-empty block (every pair masked), so that
                   the row is still visited and stores o = 0, lse = -inf
    step_rows[s]   4 * (query tile index) + 1 if the step is its row's first + 2 if its last

Steps come row after row; inside a row, full blocks first, then partial blocks, each block as
``MASK_BLOCK_N // BLOCK_N`` consecutive steps. ``part_bounds`` (n_parts + 1,) cuts the table into
the programs' runs at row boundaries, with about equal numbers of steps in each.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .split import _multiprocessor_count

# Programs per multiprocessor of a streamed launch when the config does not say: two resident
# programs of 4 warps share each multiprocessor (one computes while the other waits on memory).
STREAM_PROGRAMS_PER_SM = 2
# Placeholder "multiprocessors" off CUDA (the interpreter), so CPU tests walk several rows a program.
_CPU_MULTIPROCESSORS = 2

FULL_STEP = -1
EMPTY_ROW_STEP = -2


@dataclass(frozen=True)
class StepTable:
    """A streamed launch's steps (see the module docstring), on the mask's device."""

    step_keys: torch.Tensor
    step_tiles: torch.Tensor
    step_rows: torch.Tensor
    part_bounds: torch.Tensor  # int32 (n_parts + 1,)

    @property
    def n_parts(self) -> int:
        return int(self.part_bounds.numel()) - 1


_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stream_parts(n_row_tiles: int, n_batch_heads: int, programs_per_sm: int, device: torch.device) -> int:
    """Programs per head: enough for ``programs_per_sm`` programs on every multiprocessor in all,
    at most one per row tile."""
    n_sm = _multiprocessor_count(device) if device.type == "cuda" else _CPU_MULTIPROCESSORS
    wanted = -(-(n_sm * programs_per_sm) // n_batch_heads)
    return max(1, min(n_row_tiles, wanted))


def row_step_table(mask, block_m: int, block_n: int, n_parts: int) -> StepTable:
    """The forward's step table for ``mask`` walked in BLOCK_M x BLOCK_N tiles, cut into
    ``n_parts`` runs. Cached per mask."""
    cache = _tables.setdefault(mask, {})
    key = (block_m, block_n, n_parts)
    if key not in cache:
        cache[key] = _build_row_table(mask, block_m, block_n, n_parts)
    return cache[key]


def _build_row_table(mask, block_m: int, block_n: int, n_parts: int) -> StepTable:
    as_numpy = lambda t: t.cpu().numpy().astype(np.int64)  # noqa: E731 (one read-back per mask and tiles)
    full_offsets, full_indices = as_numpy(mask.full_kv_offsets), as_numpy(mask.full_kv_indices)
    partial_offsets, partial_indices = as_numpy(mask.partial_kv_offsets), as_numpy(mask.partial_kv_indices)
    partial_tiles = as_numpy(mask.partial_kv_tiles)
    n_full, n_partial = np.diff(full_offsets), np.diff(partial_offsets)

    # Each mask row's entries: its full blocks, then its partial ones; a row with none gets one
    # placeholder entry.
    n_entries = np.maximum(n_full + n_partial, 1)
    entry_row = np.repeat(np.arange(n_entries.size), n_entries)
    entry_rank = np.arange(entry_row.size) - np.repeat(np.cumsum(n_entries) - n_entries, n_entries)
    is_empty = (n_full + n_partial)[entry_row] == 0
    is_full = ~is_empty & (entry_rank < n_full[entry_row])
    is_partial = ~is_empty & ~is_full
    entry_block = np.zeros(entry_row.size, dtype=np.int64)
    entry_tile = np.full(entry_row.size, EMPTY_ROW_STEP, dtype=np.int64)
    entry_block[is_full] = full_indices[(full_offsets[entry_row] + entry_rank)[is_full]]
    entry_tile[is_full] = FULL_STEP
    partial_at = (partial_offsets[entry_row] + entry_rank - n_full[entry_row])[is_partial]
    entry_block[is_partial] = partial_indices[partial_at]
    entry_tile[is_partial] = partial_tiles[partial_at]

    # Query tiles: each repeats its mask row's entries.
    n_row_tiles = -(-mask.q_len // block_m)
    tile_row = np.arange(n_row_tiles) * block_m // mask.block_m
    entry_begin = np.cumsum(n_entries) - n_entries
    tile_entries = n_entries[tile_row]
    step_tile_index = np.repeat(np.arange(n_row_tiles), tile_entries)
    tile_entry_rank = np.arange(step_tile_index.size) - np.repeat(np.cumsum(tile_entries) - tile_entries, tile_entries)
    entries = entry_begin[tile_row][step_tile_index] + tile_entry_rank

    # Entries into steps: a block is walked in block_n-wide steps, a placeholder in one step.
    steps_per_block = mask.block_n // block_n
    entry_steps = np.where(entry_tile[entries] == EMPTY_ROW_STEP, 1, steps_per_block)
    step_entry = np.repeat(entries, entry_steps)
    step_index_in_entry = np.arange(step_entry.size) - np.repeat(np.cumsum(entry_steps) - entry_steps, entry_steps)
    step_tile_of = np.repeat(step_tile_index, entry_steps)
    step_keys = entry_block[step_entry] * mask.block_n + step_index_in_entry * block_n
    step_tiles = entry_tile[step_entry]

    n_steps = step_tile_of.size
    first = np.ones(n_steps, dtype=bool)
    first[1:] = step_tile_of[1:] != step_tile_of[:-1]
    last = np.ones(n_steps, dtype=bool)
    last[:-1] = step_tile_of[1:] != step_tile_of[:-1]
    step_rows = step_tile_of * 4 + first + 2 * last

    # Runs of whole rows with about n_steps / n_parts steps each.
    row_starts = np.flatnonzero(first)
    targets = (np.arange(n_parts + 1) * n_steps) // n_parts
    cut = np.searchsorted(row_starts, targets, side="left")
    part_bounds = np.append(row_starts, n_steps)[cut]
    part_bounds[-1] = n_steps

    device = mask.device
    as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a, dtype=np.int32)).to(device)  # noqa: E731
    return StepTable(as_tensor(step_keys), as_tensor(step_tiles), as_tensor(step_rows), as_tensor(part_bounds))


def streamed_programs_per_sm(config, mask, device: torch.device) -> int:
    """Programs per multiprocessor of a streamed launch, or 0 for the one-program-a-line launch:
    ``config.stream_per_sm`` when set, else 0 (streaming is opt-in until measured)."""
    if mask.is_dense:
        return 0
    if config.stream_per_sm is not None:
        return config.stream_per_sm
    return 0
