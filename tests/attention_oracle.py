"""The independent oracle for attention: dense attention on the exact boolean mask.

Nothing here reads a BlockMask or any sparseflash kernel: the mask comes from the pattern's exact
predicate (``pattern.dense_mask``) or is given explicitly, and attention is the textbook formula.

``reference_attention(..., compute_dtype=torch.float64)`` is the oracle. With ``compute_dtype`` equal
to the inputs' dtype it is the *same-precision reference* of DESIGN.md's rule (FlashAttention's
``attention_ref`` without upcast): products and probabilities rounded to that dtype, the softmax
itself taken in at least float32.

``check_close`` applies the rule: the kernel's error against the oracle must be at most twice the
same-precision reference's error, plus a floor of a few roundings of the result in that dtype.
"""

from __future__ import annotations

import math

import torch


def reference_attention(q, k, v, allowed, scale=None, *, compute_dtype=torch.float64):
    """``(out, lse)`` of dense attention restricted to ``allowed`` (bool (Lq, Lk)), differentiable.

    q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D). Rows with no allowed key give out 0 and lse -inf with
    zero gradients. ``out`` is in ``compute_dtype``, ``lse`` in float64 or float32.
    """
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    group = q.shape[1] // k.shape[1]
    q, k, v = (t.to(compute_dtype) for t in (q, k, v))
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    softmax_dtype = torch.promote_types(compute_dtype, torch.float32)

    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # rounded to compute_dtype
    scores = scores.to(softmax_dtype).masked_fill(~allowed.to(q.device), float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True).detach()  # a constant shift: softmax ignores it
    has_key = row_max > float("-inf")
    shift = torch.where(has_key, row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - shift)
    total = weights.sum(dim=-1, keepdim=True)
    total_safe = torch.where(has_key, total, torch.ones_like(total))
    probs = (weights / total_safe).to(compute_dtype)
    out = torch.matmul(probs, v)
    lse = torch.where(has_key, shift + torch.log(total_safe), torch.full_like(total, float("-inf"))).squeeze(-1)
    return out, lse


def forward_and_grads(fn, q, k, v, dout, dlse=None):
    """Run ``fn(q, k, v) -> (out, lse)`` on fresh leaf copies and return out, lse, dq, dk, dv.

    The loss is ``sum(out * dout) + sum(lse * dlse)`` over rows with a finite lse (dlse optional).
    """
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = fn(*leaves)
    loss = (out.to(torch.float64) * dout.to(torch.float64)).sum()
    if dlse is not None:
        finite = torch.isfinite(lse)
        loss = loss + (torch.where(finite, lse, torch.zeros_like(lse)).to(torch.float64) * dlse.to(torch.float64)).sum()
    grads = torch.autograd.grad(loss, leaves)
    return (out.detach(), lse.detach(), *grads)


# Absolute part of the floor. It matters only for float32 results that cancel to ~0: a row with one
# key has dq = p * (dO.v - rowsum(dO * O)) = 0 exactly, but the kernel's two float32 sums of size
# ~10 differ by ~1e-6. Bugs give errors of 1e-2 and more.
ABSOLUTE_FLOOR = 2e-6


def rounding_floor(oracle: torch.Tensor, dtype: torch.dtype) -> float:
    """About two roundings of the oracle's largest value in ``dtype`` (FlashAttention's floor is
    alike), plus ABSOLUTE_FLOOR: the least error a correct result in ``dtype`` can be held to."""
    finite = oracle[torch.isfinite(oracle)].to(torch.float64)
    if finite.numel() == 0:
        return ABSOLUTE_FLOOR
    eps = torch.finfo(dtype).eps
    return 2 * eps * max(finite.abs().max().item(), 1.0) + ABSOLUTE_FLOOR


def max_error(got: torch.Tensor, oracle: torch.Tensor) -> float:
    """Max absolute error over positions where the oracle is finite (-inf lse rows compared apart)."""
    finite = torch.isfinite(oracle)
    if not finite.any():
        return 0.0
    return (got.to(torch.float64)[finite] - oracle.to(torch.float64)[finite]).abs().max().item()


def check_close(name: str, got: torch.Tensor, same_precision: torch.Tensor, oracle: torch.Tensor, dtype, factor=2.0):
    """DESIGN.md's rule: no NaN, infinities where the oracle has them, error <= factor x the
    same-precision reference's error + a rounding floor. Returns the two errors for reporting."""
    assert got.shape == oracle.shape, f"{name}: shape {tuple(got.shape)} != {tuple(oracle.shape)}"
    assert not torch.isnan(got).any(), f"{name}: {int(torch.isnan(got).sum())} NaN values"
    oracle_inf = torch.isinf(oracle)
    assert torch.equal(torch.isinf(got), oracle_inf), f"{name}: infinities differ from the oracle's"
    if oracle_inf.any():
        assert torch.equal(got[oracle_inf], oracle[oracle_inf].to(got.dtype)), f"{name}: wrong sign of infinity"
    error = max_error(got, oracle)
    reference_error = max_error(same_precision, oracle)
    bound = factor * reference_error + rounding_floor(oracle, dtype)
    assert error <= bound, (
        f"{name}: error {error:.3e} > {factor} x reference error {reference_error:.3e} + floor "
        f"(bound {bound:.3e})"
    )
    return error, reference_error
