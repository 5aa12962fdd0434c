"""The independent oracle for attention: dense attention on the exact boolean mask.

Nothing here reads a BlockMask or any sparseflash kernel: the mask comes from the pattern's exact
predicate (``pattern.dense_mask``) or is given explicitly, and attention is the textbook formula.

``reference_attention(..., compute_dtype=torch.float64)`` is the oracle. With ``compute_dtype`` equal
to the inputs' dtype it is the *same-precision reference* of DESIGN.md's rule (FlashAttention's
``attention_ref`` without upcast): products and probabilities rounded to that dtype, the softmax
itself taken in at least float32.

``check_close`` applies the rule: the kernel's error against the oracle must be at most twice the
same-precision reference's error, plus a floor. The floor is element-wise when the caller passes
``oracle_error_floors(...)`` (a few roundings of the *terms* each element is summed from, so results
that cancel to ~0 are judged fairly), else the older scalar ``rounding_floor`` of the result.
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


# The scalar floor, for callers that pass no ``floor`` tensor to ``check_close`` (all but the property test).
# Its absolute part matters only for float32 results that cancel to ~0: a row with one key has
# dq = p * (dO.v - rowsum(dO * O)) = 0 exactly, but the kernel's two float32 sums of size ~10 differ
# by ~1e-6. It does not scale with the size of those terms, so a random run found a case above it:
# pass ``oracle_error_floors(...)`` instead, which does.
ABSOLUTE_FLOOR = 2e-6


def rounding_floor(oracle: torch.Tensor, dtype: torch.dtype) -> float:
    """About two roundings of the oracle's largest value in ``dtype`` (FlashAttention's floor is
    alike), plus ABSOLUTE_FLOOR: the scalar floor ``check_close`` uses when given no ``floor``."""
    finite = oracle[torch.isfinite(oracle)].to(torch.float64)
    if finite.numel() == 0:
        return ABSOLUTE_FLOOR
    eps = torch.finfo(dtype).eps
    return 2 * eps * max(finite.abs().max().item(), 1.0) + ABSOLUTE_FLOOR


# Roundings allowed per unit of magnitude in ``oracle_error_floors``, each of at most the unit
# roundoff u = eps / 2 (2**-24 in float32). ``running_error_magnitudes`` gives M such that one
# rounding at every stage moves a result by at most ~u M; a chain of k stages rounds k times, so k
# is the count of stages along the longest dependency chain. For dQ and dK in float32 with float32
# accumulation that chain is, past the exponent's argument:
#     exp2 (forward p) -> P.V -> / l  (= O) -> rowsum(dO * O)  (= delta) -> dp - delta
#          -> p * (...)  (= dS) -> dS.K or dS^T.Q -> * scale                        8 stages
# (out, lse and dV have fewer). The roundings that build exp2's argument (q.k, * scale * log2 e, the
# forward's m + log2 l and * ln 2, lse * log2 e, the subtraction: about 6) are each at most u times
# the size of the argument's terms (kappa in the magnitudes) and become relative errors of p: 8
# covers them too. A dot of n terms counts as one stage: its worst case is n roundings, but each
# is of a partial sum, at most the absolute sum the magnitude already uses, and the partial sums of
# signed terms are ~sqrt(n) times smaller than that, so the realistic total is about one rounding
# of that size (the kernels' tl.dot blocks the sums too).
# Measured: the kernel's error beyond 2 x the reference's, over u M, came to at most 1.14 (dQ),
# 1.01 (lse), 0.99 (dK), 0.52 (dV), 0.38 (out) on the 761 hardest-looking of 2,345 random cases of
# the property test, and 1,040 further random examples pass with 2 in place of 8.
ROUNDINGS = 8

# For 16-bit inputs the kernels round a few values to 16 bits, once each (P and dS before their
# products, O and every result when stored); M16 sums the sizes of those values per result, so 1
# bounds them to first order. 2 allows for rounded operands meeting in one product.
STORED_ROUNDINGS = 2


def oracle_error_floors(q, k, v, dout, allowed, scale=None, *, dtype, dlse=None, roundings=ROUNDINGS):
    """Element-wise error floors for ``check_close``: ``roundings * u * M + tiny(dtype)``, with M
    from ``running_error_magnitudes`` and u the unit roundoff of float32 (or of ``dtype`` if finer),
    the precision the kernels compute in; for 16-bit ``dtype`` plus ``STORED_ROUNDINGS * u16 * M16``
    for the few values the kernels round to 16 bits.

    Returns ``{"out", "lse", "dq", "dk", "dv": float64 tensor}``, each shaped like that result of
    ``reference_attention`` and its gradients (same arguments; ``dlse`` as in ``forward_and_grads``).
    ``dtype`` is the inputs' dtype. float32 products are taken as exact-input ``ieee`` dots: with
    ``allow_tf32`` the kernels' products round to 10 bits and these floors do not apply.

    Why element-wise. A gradient can cancel to ~0 out of large terms: in a row with one allowed key,
    p = 1 and dS = p * (dO.v - rowsum(dO * O)) is exactly 0 (so dQ and dK are), but a FlashAttention
    kernel computes delta = rowsum(dO * O) apart from dO.v, as it must, and the two float32 sums of
    size |dO| |v| ~ 10 differ by a few roundings of *that* size. The same-precision reference can be
    exact there (its softmax backward cancels differently), so ``factor x its error`` can be 0, and
    a floor taken from the result (0) or from a tensor-wide maximum is either too small there or too
    loose elsewhere. The size of the terms each element is made of is what bounds a correct
    kernel's error, and that is what this floor measures.

    ``tiny`` (the smallest normal number: 1.2e-38 in float32) stands for underflow, where roundings
    are absolute rather than relative (and a GPU may flush to zero). Nothing larger is added: a
    bug that drops a key, misplaces a tile or mis-scales a row is far above the floor wherever its
    p is not negligible.
    """
    compute, stored = running_error_magnitudes(q, k, v, dout, allowed, scale, dlse=dlse)
    unit = torch.finfo(torch.promote_types(dtype, torch.float32)).eps / 2  # the kernels compute in float32
    unit_stored = torch.finfo(dtype).eps / 2
    floors = {name: roundings * unit * mag + torch.finfo(dtype).tiny for name, mag in compute.items()}
    if unit_stored > unit:
        for name, mag in stored.items():
            floors[name] = floors[name] + STORED_ROUNDINGS * unit_stored * mag
    return floors


def running_error_magnitudes(q, k, v, dout, allowed, scale=None, *, dlse=None):
    """``(M, M16)``: dicts of float64 magnitudes such that one rounding (unit roundoff u) at every
    stage of the kernel's computation changes each result by at most ~u x M, to first order, and
    the roundings to a 16-bit dtype (P, dS, O and the results, each rounded once) by ~u16 x M16.

    The first-order error of a result y is sum over stages z of (dy/dz) z delta_z, |delta_z| <= u,
    so M = sum |dy/dz| |z|: the computation redone with absolute values (every subtraction an
    addition), except that where an error multiplies a *value* the value is used. That is what keeps
    cancellation fair: in dS = p * (dp - delta) the error of p multiplies the value dp - delta
    (0 when a row has one key), while the roundings of dp and delta are of their terms' size.

    P >= 0 are the oracle's probabilities (0 on masked pairs), s = scale Q K^T, m the row max,
    l = rowsum(exp(s - m)), lse = m + log l, O = P V, and dp - delta the oracle's value
    dO.v_j - rowsum(dO * O) + dlse:

        S       = |scale| |Q| |K|^T                      the scores' terms
        L       = |m| + log l + rowsum(P * S) + 1        lse's terms, and the scores' errors in it
        kappa   = S + L                                  the backward's p = exp(s - lse) has
                                                         relative error <= ~u kappa
        out     = P |V| + sum_j P_j (1 + S_j + |s_j - m|) |v_j - O|
                  (the sums' roundings; an error in p_j's exponent moves O along v_j - O)
        lse     = L
        dV      = (P (1 + kappa))^T |dO|
        A       = P * (|dO| |V|^T + rowsum(|dO| * (|O| + out)) + |dlse| + (1 + kappa) |dp - delta|)
                  (dp's and delta's terms, O's error inside delta, p's error times dp - delta)
        dQ      = |scale| A |K|,    dK = |scale| A^T |Q|

    dK and dV sum the group's query heads, as the oracle's autograd does. Fully masked rows have
    P = 0, hence magnitude 0: their exact zeros must be met exactly (their lse is -inf)."""
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    group = q.shape[1] // k.shape[1]
    q, k, v, dout = (t.detach().to(torch.float64) for t in (q, k, v, dout))
    k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    allowed = allowed.to(q.device)

    scores = (torch.matmul(q, k.transpose(-1, -2)) * scale).masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    has_key = row_max > float("-inf")
    row_max = torch.where(has_key, row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)  # 0 on masked pairs and in fully masked rows
    total = torch.where(has_key, weights.sum(dim=-1, keepdim=True), torch.ones_like(row_max))
    probs = weights / total
    out = torch.matmul(probs, v)
    dp_minus_delta = torch.matmul(dout, v.transpose(-1, -2)) - (dout * out).sum(dim=-1, keepdim=True)
    if dlse is not None:
        dlse = dlse.detach().to(torch.float64).unsqueeze(-1)
        dp_minus_delta = dp_minus_delta + dlse

    score_terms = abs(scale) * torch.matmul(q.abs(), k.abs().transpose(-1, -2))
    lse_terms = row_max.abs() + torch.log(total) + (probs * score_terms).sum(dim=-1, keepdim=True) + 1.0
    lse_terms = torch.where(has_key, lse_terms, torch.zeros_like(lse_terms))
    kappa = score_terms + lse_terms
    shift = torch.where(allowed, scores - row_max, torch.zeros_like(scores)).abs()
    out_mag = torch.matmul(probs, v.abs()) + _weighted_spread(probs * (1.0 + score_terms + shift), v, out)
    dv_mag = torch.matmul((probs * (1.0 + kappa)).transpose(-1, -2), dout.abs())
    delta_terms = (dout.abs() * (out.abs() + out_mag)).sum(dim=-1, keepdim=True)
    if dlse is not None:
        delta_terms = delta_terms + dlse.abs()
    dp_terms = torch.matmul(dout.abs(), v.abs().transpose(-1, -2)) + delta_terms
    ds_mag = probs * (dp_terms + (1.0 + kappa) * dp_minus_delta.abs())
    dq_mag = abs(scale) * torch.matmul(ds_mag, k.abs())
    dk_mag = abs(scale) * torch.matmul(ds_mag.transpose(-1, -2), q.abs())

    def sum_groups(t):  # (B, Hq, Lk, D) -> (B, Hkv, Lk, D): the oracle's repeat_interleave, reversed
        return t.unflatten(1, (t.shape[1] // group, group)).sum(dim=2)

    lse_mag = lse_terms.squeeze(-1)
    compute = {"out": out_mag, "lse": lse_mag, "dq": dq_mag, "dk": sum_groups(dk_mag), "dv": sum_groups(dv_mag)}

    # Rounded to a 16-bit dtype once each: P before P.V and P^T.dO, O and every gradient when
    # stored, dS before dS.K and dS^T.Q, and (through the stored O) delta.
    ds = probs * dp_minus_delta
    ds_stored = ds.abs() + probs * (dout.abs() * out.abs()).sum(dim=-1, keepdim=True)
    dv = torch.matmul(probs.transpose(-1, -2), dout)
    dq = scale * torch.matmul(ds, k)
    dk = scale * torch.matmul(ds.transpose(-1, -2), q)
    stored = {
        "out": torch.matmul(probs, v.abs()) + out.abs(),
        "lse": torch.zeros_like(lse_mag),  # float32 in every kernel
        "dq": abs(scale) * torch.matmul(ds_stored, k.abs()) + dq.abs(),
        "dk": sum_groups(abs(scale) * torch.matmul(ds_stored.transpose(-1, -2), q.abs()) + dk.abs()),
        "dv": sum_groups(torch.matmul(probs.transpose(-1, -2), dout.abs()) + dv.abs()),
    }
    return compute, stored


def _weighted_spread(w, v, o):
    """``sum_j w[..., i, j] * |v[..., j, :] - o[..., i, :]|`` over keys j, a chunk of keys at a time."""
    result = torch.zeros_like(o)
    chunk = max(1, (1 << 22) // max(1, o.numel()))
    for start in range(0, v.shape[-2], chunk):
        spread = (v[..., None, start : start + chunk, :] - o[..., :, None, :]).abs()  # (..., Lq, chunk, D)
        result += (w[..., start : start + chunk, None] * spread).sum(dim=-2)
    return result


def max_error(got: torch.Tensor, oracle: torch.Tensor) -> float:
    """Max absolute error over positions where the oracle is finite (-inf lse rows compared apart)."""
    finite = torch.isfinite(oracle)
    if not finite.any():
        return 0.0
    return (got.to(torch.float64)[finite] - oracle.to(torch.float64)[finite]).abs().max().item()


def check_close(
    name: str, got: torch.Tensor, same_precision: torch.Tensor, oracle: torch.Tensor, dtype, factor=2.0, floor=None
):
    """DESIGN.md's rule: no NaN, infinities where the oracle has them, and the error against the
    oracle at most ``factor`` x the same-precision reference's (max) error plus a floor.

    ``floor``: a tensor shaped like ``oracle`` (``oracle_error_floors(...)[name]``): then every
    element is held to ``factor x reference error + floor[element]``, a floor that scales with the
    terms the element is made of, so results that cancel to ~0 are judged by the size of what
    cancelled. Without it the floor is the scalar ``rounding_floor(oracle, dtype)`` (older rule).
    Returns the two max errors for reporting."""
    assert got.shape == oracle.shape, f"{name}: shape {tuple(got.shape)} != {tuple(oracle.shape)}"
    assert not torch.isnan(got).any(), f"{name}: {int(torch.isnan(got).sum())} NaN values"
    oracle_inf = torch.isinf(oracle)
    assert torch.equal(torch.isinf(got), oracle_inf), f"{name}: infinities differ from the oracle's"
    if oracle_inf.any():
        assert torch.equal(got[oracle_inf], oracle[oracle_inf].to(got.dtype)), f"{name}: wrong sign of infinity"
    error = max_error(got, oracle)
    reference_error = max_error(same_precision, oracle)
    if floor is None:
        bound = factor * reference_error + rounding_floor(oracle, dtype)
        assert error <= bound, (
            f"{name}: error {error:.3e} > {factor} x reference error {reference_error:.3e} + floor "
            f"(bound {bound:.3e})"
        )
        return error, reference_error
    assert floor.shape == oracle.shape, f"{name}: floor shape {tuple(floor.shape)} != {tuple(oracle.shape)}"
    finite = torch.isfinite(oracle)
    errors = (got.to(torch.float64) - oracle.to(torch.float64)).abs()
    excess = torch.where(finite, errors - factor * reference_error - floor.to(errors.device), -math.inf)
    worst = int(excess.argmax()) if excess.numel() else 0
    if excess.numel() and excess.flatten()[worst] > 0:
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), oracle.shape))
        raise AssertionError(
            f"{name}: error {errors.flatten()[worst].item():.3e} at {where} (oracle "
            f"{oracle.flatten()[worst].item():.3e}) > {factor} x reference error {reference_error:.3e} "
            f"+ floor {floor.flatten()[worst].item():.3e}; {int((excess > 0).sum())} elements over"
        )
    return error, reference_error
