"""Rows that allow every key, computed apart from the rest of the mask (the forward, and dQ).

Under ``local(256)+global(4)`` the first 4 queries attend to all keys. In the block mask they make
the first query block's row 256 blocks long at 32k tokens, where every other row has ~6; that row
keeps the whole forward on the 8-warp tile that long rows need, and its 256 steps compute 128
query rows for 4 wanted ones. Apart, the rest of the pattern (``local(256)+sink(4)``: for every
other query ``global(t)`` is ``sink(t)``, ``pattern.split_full_rows``) has only short rows and
takes the two-programs-per-SM tile, and the 4 rows become a small dense attention over all keys
in 16-row tiles, split across the multiprocessors (``split.py``).

    forward:  out[:, :, n:], lse[:, :, n:] = rest-of-pattern attention   (rows < n computed, not stored)
              out[:, :, :n], lse[:, :, :n] = attention of q[:, :, :n] over all keys

The two forward launches write disjoint rows, so they run side by side, the rows on a stream of
high priority (FULL_ROWS_PRIORITY).

The backward reads only ``out`` and ``lse``, which are the same. Its dK/dV keeps the whole mask
(each column program takes the rows in one narrow step); its dQ is split the same way
(``backward._dq_rows_apart``):

    dQ:       dq[:, :, n:] = rest-of-pattern dQ                      (rows < n computed, not stored)
              dq[:, :, :n] = dQ of q[:, :, :n] over all keys        (same high-priority stream)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import torch

from ..blockmask import BlockMask, compile_mask
from ..pattern import Sink, split_full_rows
from .common import BackwardConfig, ForwardConfig, has_long_lines

# Whether the forward computes all-key rows apart (see the module docstring).
FULL_ROWS_APART = True
# Most all-key rows computed apart; more would no longer be a small attention.
MAX_FULL_ROWS = 64
# The all-key rows' launch (16-bit inputs, D <= 128): 16-row tiles over 64-key steps, small enough
# for several programs a multiprocessor (the work is reading K and V once), in items of
# ``split_blocks`` mask blocks. float32 and wider heads take narrower steps and fewer stages
# (shared memory): full_rows_config.
FULL_ROWS_CONFIG = ForwardConfig(16, 64, num_warps=4, num_stages=3, split_blocks=8)
# Whether the all-key rows run on a second stream beside the rest (they read memory; the rest is
# bound by latency and arithmetic).
FULL_ROWS_OVERLAP = True
# The side stream's priority for the rows (0 default; lower is higher). At the default the GPU may
# start the rows' programs only when the rest's grid has drained, and they finish after it; at high
# priority they go first and finish beside it. H200, local(256)+global(4), GPU time with every
# launch queued (benchmarks/experiments/full_rows_streams.py, results/full_rows_streams_1.json):
# 32k 0.628-0.632 -> 0.604-0.606 ms, 128k 2.467-2.471 -> 2.367-2.370, 32k D=64 0.750-0.757 -> 0.725.
# The rows' dQ (backward) takes the same stream: forward+backward level at 32k, 128k 8.85 -> 8.83 ms
# (results/full_rows_streams.json).
FULL_ROWS_PRIORITY = -1


@dataclass(frozen=True)
class FullRows:
    """A forward split: ``rest`` (a mask for all of (Lq, Lk), right on rows ``>= n_rows``) and
    ``rows`` (a mask for (n_rows, Lk) allowing every key)."""

    rest: BlockMask
    rows: BlockMask
    n_rows: int


_splits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# Apart only for launches of at least this much work: mask blocks (a head's, times batch * heads)
# times the head dim. The rows' launches cost 400-800 us of host time (the H200 hosts lent vary;
# benchmarks/experiments/full_rows_host.py, host_profile.py), which the rest's GPU time must hide.
# local(256)+global(4) at 32k, 16 heads of 128 (28k blocks, 0.6 ms of kernels) gains apart; at 8k
# with B=2 and 32 heads of 64 (29k blocks of half the work, 0.3 ms) the split read 0.740 ms
# through do_bench against 0.40 whole, and at 2k 0.600 against 0.385 (results/h200-full-3.json
# against h200-full-2.json): the size counts the head dim since a block's work does.
# Re-measured with direct launches (launch.py; benchmarks/experiments/apart_threshold.py,
# results/apart_threshold.json): apart still loses below the threshold, forward+backward by
# 23-45% at 2k-16k, the forward by 29-41% at 8k-16k; only the 2k forward gains (1.23-1.31x).
MIN_APART_WORK = 20000 * 128


def full_rows_apart(mask: BlockMask, launch: tuple[int, int] | None = None) -> FullRows | None:
    """The split for ``mask``, or None to run it whole: when it was compiled from a pattern whose
    top-level union holds ``global(g)``, those rows make a long row, and they are few; with
    ``launch`` = (batch * heads, head dim), also only when the launch is large enough
    (MIN_APART_WORK). Cached."""
    if not FULL_ROWS_APART or mask.is_dense or mask.pattern is None:
        return None
    if launch is not None and (mask.n_full + mask.n_partial) * launch[0] * launch[1] < MIN_APART_WORK:
        return None
    if mask not in _splits:
        _splits[mask] = _build(mask)
    return _splits[mask]


def full_rows_config(head_dim_padded: int, dtype: torch.dtype, rows: BlockMask) -> ForwardConfig:
    """FULL_ROWS_CONFIG fitted to the head dim, the dtype and the rows' mask blocks."""
    config = FULL_ROWS_CONFIG
    wide = head_dim_padded > 128
    if dtype not in (torch.float16, torch.bfloat16):
        config = replace(config, block_n=32, num_stages=1 if wide else 2)
    elif wide:
        config = replace(config, num_stages=2)
    return replace(config, block_n=min(config.block_n, rows.block_n))


def _build(mask: BlockMask) -> FullRows | None:
    split = split_full_rows(mask.pattern)
    if split is None or not has_long_lines(mask, by_rows=True):
        return None
    rest_pattern, tokens = split
    # Query i sits at position i + Lk - Lq (queries aligned to the end of the keys).
    n_rows = min(max(tokens - (mask.kv_len - mask.q_len), 0), mask.q_len)
    if n_rows == 0 or n_rows > MAX_FULL_ROWS:
        return None
    device = mask.device
    rest = compile_mask(rest_pattern, mask.q_len, mask.kv_len, block_m=mask.block_m, block_n=mask.block_n, device=device)
    rows_block = max(16, 1 << (n_rows - 1).bit_length())
    # sink(Lk) allows every key as a mask of listed full blocks: a dense mask would have no lists
    # for split.py to cut into items.
    rows = compile_mask(Sink(mask.kv_len), n_rows, mask.kv_len, block_m=rows_block, block_n=mask.block_n, device=device)
    return FullRows(rest=rest, rows=rows, n_rows=n_rows)


# Whether the backward computes the all-key rows' dQ apart (backward._dq_rows_apart). dK/dV keeps
# the whole mask either way: its column programs take those rows in one narrow step each.
FULL_ROWS_APART_BACKWARD = True
# The rows' dQ launch: 16-row tiles over 64-key steps, items of 8 mask blocks, as in the forward.
FULL_ROWS_BACKWARD_CONFIG = BackwardConfig(16, 64, 16, 64, num_warps=4, num_stages=3, split_blocks=8)


def full_rows_backward_config(head_dim_padded: int, dtype: torch.dtype, rows: BlockMask) -> BackwardConfig:
    """FULL_ROWS_BACKWARD_CONFIG fitted to the head dim, the dtype and the rows' mask blocks."""
    forward = full_rows_config(head_dim_padded, dtype, rows)
    return replace(FULL_ROWS_BACKWARD_CONFIG, block_n1=forward.block_n, block_n2=forward.block_n, num_stages=forward.num_stages)
