"""``sparseflash.attention``: checks, block-mask choice, dispatch and the autograd Function.

Kernels live in ``sparseflash.kernels`` and are imported only when a kernel runs, so importing this
module does not import triton.
"""

from __future__ import annotations

import math
import os

import torch

from .blockmask import MASK_CACHE, BlockMask, compile_mask
from .parsing import parse
from .pattern import Pattern

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
# Mask block used when none is asked for: 128 x 128 suits the GPU kernels' tiles.
DEFAULT_BLOCK = 128
_BACKENDS = ("auto", "triton", "torch")

__all__ = ["attention"]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: str | Pattern | BlockMask = "dense",
    *,
    scale: float | None = None,
    return_lse: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
    allow_tf32: bool = False,
    backend: str = "auto",
):
    """Block-sparse scaled dot-product attention, exact on the pairs the pattern allows.

    Arguments:
        q: ``(B, Hq, Lq, D)``.
        k, v: ``(B, Hkv, Lk, D)``, with Hq a multiple of Hkv (GQA; Hkv = 1 is MQA). Key and value
            heads are shared by ``Hq // Hkv`` query heads each, without being copied.
            Lq and Lk are independent; any strides are accepted. dtype float16, bfloat16 or
            float32 (all three the same); D from 16 to 256, any value (non-powers of two are
            padded inside the kernel).
        pattern: a pattern string (see the pattern language in the README), a parsed
            :class:`Pattern`, or a :class:`BlockMask` built for exactly (Lq, Lk).
        scale: multiplies ``q . k``; default ``1 / sqrt(D)``.
        return_lse: also return the log-sum-exp of each row's scaled scores.
        block_m, block_n: the block mask's tile (powers of two, 16 to 256) when ``pattern`` is not
            already a BlockMask. Default 128 x 128 (smaller for short sequences).
        allow_tf32: let float32 inputs use tf32 matrix products (faster, ~1e-3 relative error);
            by default float32 products are exact-precision.
        backend: ``"auto"`` (Triton kernels on CUDA, and on the CPU when ``TRITON_INTERPRET=1``;
            the plain-PyTorch blocked path otherwise), ``"triton"`` or ``"torch"``.

    Returns:
        ``out`` ``(B, Hq, Lq, D)`` in q's dtype, and with ``return_lse`` also
        ``lse`` ``(B, Hq, Lq)`` float32, natural log. Both are differentiable in q, k, v.

    Queries are aligned to the end of the keys: query ``i`` sits at position
    ``p = i + Lk - Lq`` (FlashAttention >= 2.1). ``causal`` with Lq = 2, Lk = 5::

        keys  0 1 2 3 4
        q0    1 1 1 1 0      p = 3
        q1    1 1 1 1 1      p = 4

    and with Lq = 5, Lk = 2 the first three queries (p < 0) have no allowed key::

        keys  0 1
        q0    0 0      p = -3   -> out 0, lse -inf, zero gradient
        q1    0 0      p = -2
        q2    0 0      p = -1
        q3    1 0      p = 0
        q4    1 1      p = 1

    A row with no allowed key returns output 0, lse -inf and zero gradients, never NaN.

    Bad input raises before anything runs: ``ValueError`` naming what is wrong and what was
    expected, ``PatternError`` (a ValueError) for a bad pattern, ``TypeError`` for a wrong type.
    """
    _check_tensors(q, k, v)
    if backend not in _BACKENDS:
        raise ValueError(f"attention: backend must be one of {_BACKENDS}, got {backend!r}")
    batch, n_q_heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    scale = _check_scale(scale, head_dim)
    mask = _block_mask_for(pattern, q_len, kv_len, block_m, block_n, q.device)

    if _use_triton(q, backend):
        _check_kernel_mask(mask)
        out, lse = _BlockSparseAttention.apply(q, k, v, mask, scale, allow_tf32)
    else:
        from .blocked_reference import blocked_attention

        out, lse = blocked_attention(q, k, v, mask, scale)
    return (out, lse) if return_lse else out


# ------------------------------------------------------------------------------------- autograd


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale, allow_tf32):
        from .kernels.forward import attention_forward

        out, lse = attention_forward(q, k, v, mask, scale, allow_tf32=allow_tf32)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.scale, ctx.allow_tf32 = mask, scale, allow_tf32
        # Gradients of unused outputs arrive as None instead of materialised zeros.
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        from .kernels.backward import attention_backward

        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            # Only lse was used: dO = 0 leaves delta = -dlse, the rest of the algebra is unchanged.
            dout = torch.zeros_like(out)
        dq, dk, dv = attention_backward(
            dout, q, k, v, out, lse, ctx.mask, ctx.scale, dlse=dlse, allow_tf32=ctx.allow_tf32
        )
        return dq, dk, dv, None, None, None


# ---------------------------------------------------------------------------------------- checks


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, {t.dtype}, on {t.device}"


def _check_tensors(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t, layout in (("q", q, "(B, Hq, Lq, D)"), ("k", k, "(B, Hkv, Lk, D)"), ("v", v, "(B, Hkv, Lk, D)")):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must have 4 dimensions {layout}, got {t.dim()}: {_describe(t)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED_DTYPES)
        raise ValueError(f"attention: dtype {q.dtype} is not supported; use one of {names}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on the same device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape (B, Hkv, Lk, D), got {tuple(k.shape)} and {tuple(v.shape)}")
    batch, n_q_heads, q_len, head_dim = q.shape
    _, n_kv_heads, kv_len, kv_head_dim = k.shape
    if k.shape[0] != batch:
        raise ValueError(f"attention: batch sizes differ: q has {batch}, k and v have {k.shape[0]}")
    if kv_head_dim != head_dim:
        raise ValueError(f"attention: head dims differ: q has D={head_dim}, k and v have D={kv_head_dim}")
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim D={head_dim} is not supported; it must be from {MIN_HEAD_DIM} to {MAX_HEAD_DIM}")
    if n_kv_heads == 0 or n_q_heads % n_kv_heads:
        raise ValueError(
            f"attention: the number of query heads ({n_q_heads}) must be a multiple of the number "
            f"of key/value heads ({n_kv_heads})"
        )
    if q_len == 0 or kv_len == 0 or batch == 0 or n_q_heads == 0:
        raise ValueError(f"attention: empty input: q {tuple(q.shape)}, k {tuple(k.shape)}; every size must be at least 1")


def _check_scale(scale, head_dim) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"attention: scale must be a finite number, got {scale!r}")
    return float(scale)


def _check_block(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value > 256 or value & (value - 1):
        raise ValueError(f"attention: {name} must be a power of two from 16 to 256, got {value!r}")
    return value


def _default_block(length: int) -> int:
    """128, or the smallest power of two >= 16 that holds a short sequence (decoding: 16)."""
    return min(DEFAULT_BLOCK, max(16, 1 << (length - 1).bit_length()))


def _block_mask_for(pattern, q_len, kv_len, block_m, block_n, device) -> BlockMask:
    if isinstance(pattern, BlockMask):
        if block_m is not None or block_n is not None:
            raise ValueError("attention: block_m/block_n cannot be given with a BlockMask (it has its own blocks)")
        if (pattern.q_len, pattern.kv_len) != (q_len, kv_len):
            raise ValueError(
                f"attention: the BlockMask was built for q_len={pattern.q_len}, kv_len={pattern.kv_len}, "
                f"but q has Lq={q_len} and k has Lk={kv_len}; compile one with "
                f"sparseflash.compile_mask(pattern, {q_len}, {kv_len})"
            )
        return pattern.to(device)
    if not isinstance(pattern, (str, Pattern)):
        raise TypeError(f"attention: pattern must be a string, a Pattern or a BlockMask, got {type(pattern).__name__}")

    def compile_it():
        parsed = parse(pattern)  # PatternError (with its caret) for bad text, before anything runs
        rows = _default_block(q_len) if block_m is None else _check_block("block_m", block_m)
        cols = _default_block(kv_len) if block_n is None else _check_block("block_n", block_n)
        return compile_mask(parsed, q_len, kv_len, block_m=rows, block_n=cols, device=device)

    # The mask cache, first under the arguments as given (text or tree, a tensor's device, which
    # has its index): a repeated call skips parsing and building compile_mask's canonical key.
    # Bad arguments never get an entry, so they raise on every call.
    return MASK_CACHE.get_or_build(("as given", pattern, q_len, kv_len, block_m, block_n, device), compile_it)


def _check_kernel_mask(mask: BlockMask):
    """The kernels step through a mask block in power-of-two tiles of at least 16."""
    for name, value in (("block_m", mask.block_m), ("block_n", mask.block_n)):
        if value < 16 or value & (value - 1):
            raise ValueError(
                f"attention: the Triton kernels need a BlockMask whose blocks are powers of two of at "
                f"least 16; this one has {name}={value} (use backend='torch' or recompile the mask)"
            )


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _use_triton(q: torch.Tensor, backend: str) -> bool:
    if backend == "torch":
        return False
    on_cpu = q.device.type == "cpu"
    if backend == "triton":
        if on_cpu and not _interpreting():
            raise ValueError("attention: backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (set before importing triton)")
        if on_cpu and q.dtype == torch.bfloat16:
            raise ValueError("attention: Triton's interpreter computes bfloat16 products wrongly; use backend='torch' for bfloat16 on the CPU")
        return True
    if q.device.type == "cuda":
        return True
    # The interpreter runs the real kernels on the CPU, except for bfloat16, whose products it
    # gets wrong: those go through the blocked PyTorch path.
    return on_cpu and _interpreting() and q.dtype != torch.bfloat16

