"""Block-sparse attention in plain PyTorch, walking a BlockMask: the CPU path and a readable spec.

It computes what the Triton kernels compute, the same way: per query block, only the key blocks the
mask lists (full ones unmasked, partial ones through their tile), softmax with fully masked rows
giving output 0 and lse -inf. It differs in one respect: each query block gathers its keys and
takes an ordinary softmax over them, instead of an online softmax over key tiles.

Memory grows with the non-empty blocks, never with ``q_len * kv_len``: one query block's scores are
``(B, Hkv, group, block_m, keys of its blocks)``. Autograd runs through the torch ops and keeps
those per-block scores for the backward pass, which is again proportional to the non-empty blocks.
"""

from __future__ import annotations

import torch

from .blockmask import BlockMask


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: BlockMask,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` for q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) and a BlockMask for (Lq, Lk).

    16-bit inputs are computed in float32 and the output cast back; lse is float32 (B, Hq, Lq).
    Differentiable with respect to q, k and v.
    """
    batch, n_q_heads, q_len, head_dim = q.shape
    n_kv_heads = k.shape[1]
    group = n_q_heads // n_kv_heads
    compute_dtype = torch.promote_types(q.dtype, torch.float32)
    # Query heads of one kv head side by side: (B, Hkv, group, Lq, D); k, v broadcast over group.
    q_grouped = q.to(compute_dtype).reshape(batch, n_kv_heads, group, q_len, head_dim)
    k_grouped = k.to(compute_dtype).unsqueeze(2)
    v_grouped = v.to(compute_dtype).unsqueeze(2)

    lists = _row_lists(mask)
    tiles = None if mask.is_dense else mask.tiles.to(q.device).bool()
    outputs, lses = [], []
    for row, (full_blocks, partial_blocks, partial_tiles) in enumerate(lists):
        q_start = row * mask.block_m
        q_stop = min(q_start + mask.block_m, q_len)
        rows = q_stop - q_start
        q_block = q_grouped[:, :, :, q_start:q_stop]  # (B, Hkv, group, rows, D)
        if not full_blocks and not partial_blocks:
            outputs.append(q_block.new_zeros(q_block.shape))
            lses.append(q_block.new_full(q_block.shape[:-1], float("-inf")))
            continue
        key_index, allowed = _row_keys(mask, tiles, full_blocks, partial_blocks, partial_tiles, rows, q.device)
        keys = k_grouped[:, :, :, key_index]  # (B, Hkv, 1, n_keys, D)
        values = v_grouped[:, :, :, key_index]
        scores = torch.matmul(q_block, keys.transpose(-1, -2)) * scale  # (B, Hkv, group, rows, n_keys)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out_block, lse_block = _masked_softmax_attention(scores, values)
        outputs.append(out_block)
        lses.append(lse_block)
    out = torch.cat(outputs, dim=3).reshape(batch, n_q_heads, q_len, head_dim).to(q.dtype)
    lse = torch.cat(lses, dim=3).reshape(batch, n_q_heads, q_len).to(torch.float32)
    return out, lse


def _masked_softmax_attention(scores: torch.Tensor, values: torch.Tensor):
    """Softmax attention over the last axis where rows may be all -inf: those give 0 and -inf.

    The max is a constant shift (softmax does not depend on it), so it is detached; a row with no
    key shifts by 0 instead of -inf, which keeps every value and every gradient finite.
    """
    row_max = scores.amax(dim=-1, keepdim=True).detach()
    has_key = row_max > float("-inf")
    shift = torch.where(has_key, row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - shift)
    total = weights.sum(dim=-1, keepdim=True)
    total_safe = torch.where(has_key, total, torch.ones_like(total))
    out = torch.matmul(weights / total_safe, values)
    lse = torch.where(has_key, shift + torch.log(total_safe), torch.full_like(total, float("-inf")))
    return out, lse.squeeze(-1)


def _row_lists(mask: BlockMask):
    """Per query block: (full kv blocks, partial kv blocks, their tile ids), as Python lists."""
    if mask.is_dense:
        # Every block; a dense mask's own lists are built only on demand, and are not needed.
        every_block = list(range(mask.n_kv_blocks))
        return [(every_block, [], [])] * mask.n_q_blocks
    full_offsets = mask.full_kv_offsets.tolist()
    full_indices = mask.full_kv_indices.tolist()
    partial_offsets = mask.partial_kv_offsets.tolist()
    partial_indices = mask.partial_kv_indices.tolist()
    partial_tiles = mask.partial_kv_tiles.tolist()
    lists = []
    for row in range(mask.n_q_blocks):
        full = full_indices[full_offsets[row] : full_offsets[row + 1]]
        partial = slice(partial_offsets[row], partial_offsets[row + 1])
        lists.append((full, partial_indices[partial], partial_tiles[partial]))
    return lists


def _row_keys(mask, tiles, full_blocks, partial_blocks, partial_tiles, rows, device):
    """Key indices of a query block's non-empty blocks and the (rows, n_keys) bool mask over them."""
    block_n, kv_len = mask.block_n, mask.kv_len
    pieces, allowed = [], []
    for block in full_blocks:
        stop = min((block + 1) * block_n, kv_len)  # only a dense mask's last block can be cut short
        pieces.append(torch.arange(block * block_n, stop, device=device))
        allowed.append(torch.ones(rows, stop - block * block_n, dtype=torch.bool, device=device))
    for block, tile_id in zip(partial_blocks, partial_tiles):
        stop = min((block + 1) * block_n, kv_len)
        width = stop - block * block_n
        pieces.append(torch.arange(block * block_n, stop, device=device))
        allowed.append(tiles[tile_id, :rows, :width])
    return torch.cat(pieces), torch.cat(allowed, dim=1)
