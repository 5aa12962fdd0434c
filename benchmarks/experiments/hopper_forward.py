#!/usr/bin/env python3
"""How much faster can a dense (non-causal) FlashAttention forward go in Triton on Hopper?

One experiment, one device call. For bf16 (B, H, N, D) inputs it checks and times:

- ``sparseflash``: the library itself, ``sparseflash.attention(q, k, v, pattern="dense")``.
- ``pointers``: a copy of the dense path of ``kernels/forward.py`` (pointer loads, base-2 online
  softmax, ``acc * alpha`` folded into ``tl.dot``'s accumulator): the baseline the levers below
  are measured against, with the library's tile settings.
- ``tma``: the same loop with Q, K, V and O moved by the Hopper tensor-memory accelerator through
  tensor descriptors: host-side ``triton.tools.tensor_descriptor.TensorDescriptor`` arguments, or
  (``dev``) device-side ``tl.make_tensor_descriptor`` (needs ``triton.set_allocator``).
- ``tma+ws``: as ``tma`` with ``tl.range(..., warp_specialize=True)`` on the key/value loop.
- levers from Triton's fused-attention tutorial (``python/tutorials/06-fused-attention.py``):
  ``fma`` (scale the row max, then one fused multiply-add per score: ``exp2(qk*scale - m)``,
  instead of scaling every score and subtracting), BLOCK_N 64 vs 128, num_warps 4/8,
  num_stages 2/3/4, ``noaccmb`` (``tl.range(disallow_acc_multi_buffer=True)``), ``split2``
  (each program keeps two query sub-tiles with their own softmax state, so one's softmax can
  overlap the other's matrix products), and ``persistent`` (one program per SM walking tiles;
  ``flat``: ``tl.range(flatten=True)`` on the tile loop).
- peers, in the same run: SDPA pinned to FlashAttention-2 (``fa2``) and to cuDNN (``cudnn``),
  and FlexAttention (``torch.compile(flex_attention)``, no block mask, i.e. dense).

Every implementation is first checked against ``scaled_dot_product_attention`` on float32 copies
of the same inputs (on up to 1024 sampled query rows of every head; the whole output is also
checked for NaN, as it is filled with NaN before the run): its max abs error must be within
2x the bf16 SDPA's own error + 1e-3, or it is WRONG and not timed. Our kernels' log-sum-exp is
checked too (within 1e-2). Times are medians of ``triton.testing.do_bench(fn, warmup=25,
rep=100)`` (L2 flushed between runs); TFLOP/s = 4*B*H*N*N*D / time. ``sparseflash`` is timed
again at the end of each shape (``sparseflash (again)``): the spread between its two times is the
noise floor for reading the table.

Shapes as ``benchmarks/bench_attention.py``: D=128 with H=16, D=64 with H=32; B=2 at N=8k, B=1
at 32k. Every case is wrapped: a compile error, an out-of-resources or a wrong result is recorded
and the sweep goes on; the JSON is rewritten after every case; no case starts after ``--budget-s``.

Run on the H200 (one device call; on 2026-11-21 it took 53 s, about 0.5 s to compile a variant):

    source benchmarks/device_setup.sh; python benchmarks/experiments/hopper_forward.py

Output: a line per case as it finishes, a table at the end, and ``hopper_forward.json`` /
``hopper_forward.txt`` in ``--out`` (default ``$OUT`` when set, else ``benchmarks/results``; the
smoke check below writes to a temporary folder instead).
``--filter REGEX`` keeps only the cases whose label matches; ``--peers fa2,cudnn`` drops flex.
That first run's output is kept beside this script: ``hopper_forward_h200_run.json`` / ``.txt``.

Without a GPU (or with ``--smoke``) it runs a smoke check instead: B=2, H=3, N=256, D=64, float16 (the
interpreter's bf16 products are wrong), every variant checked under Triton's interpreter
(``TRITON_INTERPRET=1``, set before triton is imported), nothing timed (about 5 s):

    python benchmarks/experiments/hopper_forward.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

SCRIPT_STARTED = time.monotonic()  # --budget-s counts from here

import torch  # noqa: E402

# Triton reads TRITON_INTERPRET when it is first imported: decide before importing it.
HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError as error:  # older Triton: no host-side descriptors
    TensorDescriptor = None
    HOST_DESCRIPTOR_MISSING = f"{type(error).__name__}: {error}"
else:
    HOST_DESCRIPTOR_MISSING = None

REPO = Path(__file__).resolve().parents[2]
try:
    import sparseflash
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
    import sparseflash

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)


# ------------------------------------------------------------------------------------- kernels


@triton.jit
def _softmax_step(acc, m_i, l_i, q, k, v, qk_scale, FMA_SOFTMAX: tl.constexpr):
    """Fold one [BLOCK_N, D] tile of keys ``k`` and values ``v`` into a query tile's running
    (acc, m_i, l_i). Scores are in base 2 (qk_scale = scale * log2(e)); dense, so no masking."""
    qk = tl.dot(q, tl.trans(k))  # [ROWS, BLOCK_N]
    if FMA_SOFTMAX:
        # Triton's tutorial: scale the row max only, then one fused multiply-add per score.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    else:
        # sparseflash's forward: scale every score, then subtract the max.
        scores = qk * qk_scale
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.math.exp2(scores - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)  # rescales what was summed under the old max
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, m_new, l_i


@triton.jit
def _fwd_pointers_kernel(
    Q, K, V, Out, Lse,
    stride_bh, stride_n,
    seq_len, qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FMA_SOFTMAX: tl.constexpr,
):  # fmt: skip
    """The dense path of sparseflash's forward: program (query tile, batch*head), pointer loads,
    every key tile whole (N is a multiple of BLOCK_N here, so no bounds checks)."""
    start_m = tl.program_id(0) * BLOCK_M
    batch_head = tl.program_id(1)
    head = tl.cast(batch_head, tl.int64) * stride_bh
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    q_rows = Q + head + tl.cast(start_m, tl.int64) * stride_n
    q = tl.load(q_rows + offs_m[:, None] * stride_n + offs_d[None, :])
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for tile in range(0, seq_len // BLOCK_N):
        kv_rows = head + tl.cast(tile * BLOCK_N, tl.int64) * stride_n
        k = tl.load(K + kv_rows + offs_n[:, None] * stride_n + offs_d[None, :])
        v = tl.load(V + kv_rows + offs_n[:, None] * stride_n + offs_d[None, :])
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, qk_scale, FMA_SOFTMAX)

    out = acc / l_i[:, None]
    o_rows = Out + head + tl.cast(start_m, tl.int64) * stride_n
    tl.store(o_rows + offs_m[:, None] * stride_n + offs_d[None, :], out.to(Out.dtype.element_ty))
    tl.store(Lse + batch_head * seq_len + start_m + offs_m, (m_i + tl.math.log2(l_i)) * LN2)


@triton.jit
def _store_rows(desc_o, Lse, row, acc, m_i, l_i, dtype: tl.constexpr, ROWS: tl.constexpr):
    desc_o.store([row, 0], (acc / l_i[:, None]).to(dtype))
    tl.store(Lse + row + tl.arange(0, ROWS), (m_i + tl.math.log2(l_i)) * LN2)


@triton.jit
def _attend_tile(
    desc_q, desc_k, desc_v, desc_o, Lse,
    m_tile, batch_head, seq_len, qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SUB_M: tl.constexpr,
    SPLIT_M: tl.constexpr,
    FMA_SOFTMAX: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    NO_ACC_MULTI_BUFFER: tl.constexpr,
):  # fmt: skip
    """One query tile of SPLIT_M * SUB_M rows, as SPLIT_M sub-tiles sharing each K/V load.

    Descriptors view (B, H, N, D) as (B*H*N, D): a head's rows start at batch_head * seq_len."""
    q_row = batch_head * seq_len + m_tile * (SUB_M * SPLIT_M)
    kv_row = batch_head * seq_len

    q0 = desc_q.load([q_row, 0])
    m0 = tl.full([SUB_M], float("-inf"), dtype=tl.float32)
    l0 = tl.zeros([SUB_M], dtype=tl.float32)
    acc0 = tl.zeros([SUB_M, HEAD_DIM], dtype=tl.float32)
    if SPLIT_M == 2:
        q1 = desc_q.load([q_row + SUB_M, 0])
        m1 = tl.full([SUB_M], float("-inf"), dtype=tl.float32)
        l1 = tl.zeros([SUB_M], dtype=tl.float32)
        acc1 = tl.zeros([SUB_M, HEAD_DIM], dtype=tl.float32)

    for start_n in tl.range(
        0, seq_len, BLOCK_N, warp_specialize=WARP_SPECIALIZE, disallow_acc_multi_buffer=NO_ACC_MULTI_BUFFER
    ):
        k = desc_k.load([kv_row + start_n, 0])  # [BLOCK_N, D]
        v = desc_v.load([kv_row + start_n, 0])  # [BLOCK_N, D]
        acc0, m0, l0 = _softmax_step(acc0, m0, l0, q0, k, v, qk_scale, FMA_SOFTMAX)
        if SPLIT_M == 2:
            acc1, m1, l1 = _softmax_step(acc1, m1, l1, q1, k, v, qk_scale, FMA_SOFTMAX)

    _store_rows(desc_o, Lse, q_row, acc0, m0, l0, q0.dtype, SUB_M)
    if SPLIT_M == 2:
        _store_rows(desc_o, Lse, q_row + SUB_M, acc1, m1, l1, q0.dtype, SUB_M)


@triton.jit
def _fwd_tma_kernel(
    q_arg, k_arg, v_arg, o_arg, Lse,
    seq_len, n_rows, qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_M: tl.constexpr,
    FMA_SOFTMAX: tl.constexpr,
    DEVICE_DESC: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    NO_ACC_MULTI_BUFFER: tl.constexpr,
    PERSISTENT: tl.constexpr,
    FLATTEN: tl.constexpr,
):  # fmt: skip
    """Dense forward through tensor descriptors (TMA on Hopper).

    ``*_arg`` are host TensorDescriptors, or with DEVICE_DESC plain tensors from which the kernel
    builds its descriptors. One program per (query tile, batch*head), or with PERSISTENT a grid
    of about one program per SM, each walking tiles (query tiles fastest, as the plain grid)."""
    SUB_M: tl.constexpr = BLOCK_M // SPLIT_M
    if DEVICE_DESC:
        desc_q = tl.make_tensor_descriptor(q_arg, shape=[n_rows, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[SUB_M, HEAD_DIM])
        desc_k = tl.make_tensor_descriptor(k_arg, shape=[n_rows, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM])
        desc_v = tl.make_tensor_descriptor(v_arg, shape=[n_rows, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM])
        desc_o = tl.make_tensor_descriptor(o_arg, shape=[n_rows, HEAD_DIM], strides=[HEAD_DIM, 1], block_shape=[SUB_M, HEAD_DIM])
    else:
        desc_q = q_arg
        desc_k = k_arg
        desc_v = v_arg
        desc_o = o_arg

    n_m_tiles = seq_len // BLOCK_M
    if PERSISTENT:
        n_tiles = n_m_tiles * (n_rows // seq_len)
        for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), flatten=FLATTEN):
            _attend_tile(
                desc_q, desc_k, desc_v, desc_o, Lse, tile % n_m_tiles, tile // n_m_tiles, seq_len, qk_scale,
                HEAD_DIM, BLOCK_N, SUB_M, SPLIT_M, FMA_SOFTMAX, WARP_SPECIALIZE, NO_ACC_MULTI_BUFFER,
            )  # fmt: skip
    else:
        _attend_tile(
            desc_q, desc_k, desc_v, desc_o, Lse, tl.program_id(0), tl.program_id(1), seq_len, qk_scale,
            HEAD_DIM, BLOCK_N, SUB_M, SPLIT_M, FMA_SOFTMAX, WARP_SPECIALIZE, NO_ACC_MULTI_BUFFER,
        )  # fmt: skip


# ------------------------------------------------------------------------------------ variants


@dataclasses.dataclass(frozen=True)
class Variant:
    """One Triton kernel configuration of this experiment."""

    family: str  # "pointers", "tma", "tma+ws"
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    fma: bool = False  # tutorial-style softmax
    device_desc: bool = False  # tl.make_tensor_descriptor instead of host TensorDescriptor
    split_m: int = 1  # query sub-tiles per program
    no_acc_multi_buffer: bool = False
    persistent: bool = False
    flatten: bool = False

    @property
    def warp_specialize(self) -> bool:
        return self.family == "tma+ws"

    @property
    def label(self) -> str:
        parts = [self.family, f"{self.block_m}x{self.block_n}", f"w{self.num_warps}", f"s{self.num_stages}"]
        parts += [name for name, on in (
            ("dev", self.device_desc), ("fma", self.fma), (f"split{self.split_m}", self.split_m > 1),
            ("noaccmb", self.no_acc_multi_buffer), ("persistent", self.persistent), ("flat", self.flatten),
        ) if on]  # fmt: skip
        return " ".join(parts)


def variants_for(head_dim: int) -> list[Variant]:
    """About 20 configurations per head dim (both head dims: ~40 compilations in all)."""
    # sparseflash's dense tiles (kernels/common.py FORWARD_DEFAULTS): 128x128 at D=128, 128x64 at D=64.
    bn = 128 if head_dim > 64 else 64
    other_bn = 64 if bn == 128 else 128
    # At D=128 a 128x128 tile has shared memory for 3 stages (4 needed 295 KB of the 227 KB there
    # is), and the persistent kernel for 2 only (3 needed 262 KB).
    persistent_stages = 2 if head_dim > 64 else 3
    P, T, WS = "pointers", "tma", "tma+ws"
    variants = [
        Variant(P, 128, bn, 8, 3),  # the baseline: our kernel's structure and tiles
        Variant(P, 128, bn, 8, 3, fma=True),
        # TMA through host descriptors, then the tutorial's levers one at a time
        Variant(T, 128, bn, 8, 3),
        Variant(T, 128, other_bn, 8, 3),
        Variant(T, 128, bn, 8, 2),
        Variant(T, 128, 64, 8, 4),
        Variant(T, 128, bn, 4, 3),
        Variant(T, 128, bn, 8, 3, fma=True),
        Variant(T, 128, bn, 8, 3, fma=True, no_acc_multi_buffer=True),
        Variant(T, 128, bn, 8, 3, fma=True, device_desc=True),
        # Warp specialization (the tutorial uses device-side descriptors for it on Hopper). Seen on
        # the H200 with Triton 3.6: num_warps=8 compiles to the same 8-warp kernel as without it;
        # num_warps=4 gives 12 warps (a loading warpgroup and two computing ones), and then host
        # descriptors fail to compile, 3 stages of 128x128 run out of shared memory and 3 stages
        # of 128x64 compute NaN (the check catches it).
        Variant(WS, 128, bn, 8, 3, fma=True, device_desc=True),
        Variant(WS, 128, bn, 4, 3, fma=True, device_desc=True),
        Variant(WS, 128, bn, 4, 2, fma=True, device_desc=True),
        Variant(WS, 128, 64, 4, 3, fma=True, device_desc=True),
        Variant(WS, 128, bn, 4, 2, fma=True),
        Variant(WS, 128, bn, 4, 2, fma=True, device_desc=True, no_acc_multi_buffer=True),
        # two query sub-tiles per program
        Variant(T, 128, bn, 4, 3, fma=True, split_m=2),
        Variant(T, 128, 64, 4, 3, fma=True, split_m=2),
        Variant(T, 256, bn, 8, 2, fma=True, split_m=2),
        # persistent grid
        Variant(T, 128, bn, 8, persistent_stages, fma=True, persistent=True),
        Variant(T, 128, bn, 8, persistent_stages, fma=True, persistent=True, flatten=True),
    ]
    return list(dict.fromkeys(variants))  # at D=64 some of these coincide


def launch(variant: Variant, q, k, v, out, lse, num_sms: int):
    """Run ``variant`` on contiguous (B, H, N, D) q, k, v into ``out`` and ``lse`` (B*H*N float32).
    Returns Triton's compiled-kernel handle (None under the interpreter)."""
    batch, heads, seq_len, head_dim = q.shape
    qk_scale = LOG2E / math.sqrt(head_dim)
    if variant.family == "pointers":
        grid = (seq_len // variant.block_m, batch * heads)
        return _fwd_pointers_kernel[grid](
            q, k, v, out, lse, q.stride(1), q.stride(2), seq_len, qk_scale,
            HEAD_DIM=head_dim, BLOCK_M=variant.block_m, BLOCK_N=variant.block_n, FMA_SOFTMAX=variant.fma,
            num_warps=variant.num_warps, num_stages=variant.num_stages,
        )  # fmt: skip
    n_rows = batch * heads * seq_len
    sub_m = variant.block_m // variant.split_m
    if variant.device_desc:
        args = (q, k, v, out)
    else:
        blocks = (sub_m, variant.block_n, variant.block_n, sub_m)
        args = tuple(
            TensorDescriptor.from_tensor(t.view(n_rows, head_dim), [rows, head_dim]) for t, rows in zip((q, k, v, out), blocks)
        )
    n_tiles = (seq_len // variant.block_m) * batch * heads
    grid = (min(num_sms, n_tiles),) if variant.persistent else (seq_len // variant.block_m, batch * heads)
    return _fwd_tma_kernel[grid](
        *args, lse, seq_len, n_rows, qk_scale,
        HEAD_DIM=head_dim, BLOCK_M=variant.block_m, BLOCK_N=variant.block_n, SPLIT_M=variant.split_m,
        FMA_SOFTMAX=variant.fma, DEVICE_DESC=variant.device_desc, WARP_SPECIALIZE=variant.warp_specialize,
        NO_ACC_MULTI_BUFFER=variant.no_acc_multi_buffer, PERSISTENT=variant.persistent, FLATTEN=variant.flatten,
        num_warps=variant.num_warps, num_stages=variant.num_stages,
    )  # fmt: skip


# ---------------------------------------------------------------------------- what is available


def detect_apis() -> dict:
    """What this Triton/torch/GPU offers for the variants, with reasons for what is missing."""
    range_params = inspect.signature(tl.range.__init__).parameters
    capability = torch.cuda.get_device_capability() if HAS_GPU else None
    apis = {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "interpreter": INTERPRET,
        "gpu": torch.cuda.get_device_name() if HAS_GPU else None,
        "capability": capability,
        "host TensorDescriptor (triton.tools.tensor_descriptor)": HOST_DESCRIPTOR_MISSING or True,
        "tl.make_tensor_descriptor": hasattr(tl, "make_tensor_descriptor") or "missing",
        "triton.set_allocator": hasattr(triton, "set_allocator") or "missing",
    }
    for name in ("warp_specialize", "disallow_acc_multi_buffer", "flatten", "num_stages"):
        apis[f"tl.range({name}=)"] = name in range_params or "missing"
    return apis


def unavailable(variant: Variant, apis: dict) -> str | None:
    """Why ``variant`` cannot run here, or None."""
    if variant.family == "pointers":
        return None
    if HAS_GPU and not INTERPRET and torch.cuda.get_device_capability() < (9, 0):
        return f"tensor descriptors need TMA (compute capability 9.0+), this GPU is {apis['capability']}"
    if variant.device_desc:
        for name in ("tl.make_tensor_descriptor", "triton.set_allocator"):
            if apis[name] is not True:
                return f"{name} missing in triton {triton.__version__}"
    elif TensorDescriptor is None:
        return f"no host TensorDescriptor: {HOST_DESCRIPTOR_MISSING}"
    needed = ["warp_specialize", "disallow_acc_multi_buffer"] + (["flatten"] if variant.persistent else [])
    for name in needed:
        if apis[f"tl.range({name}=)"] is not True:
            return f"tl.range has no {name}= in triton {triton.__version__}"
    return None


# ------------------------------------------------------------------------------------- running


class Skip(Exception):
    """A case that cannot run here (recorded as SKIPPED, with the reason)."""


class BrokenContext(Exception):
    """A CUDA error that breaks the context: nothing after it can run."""


@dataclasses.dataclass
class Shape:
    batch: int
    heads: int
    seq_len: int
    head_dim: int
    dtype: torch.dtype

    @property
    def label(self) -> str:
        n = f"{self.seq_len // 1024}k" if self.seq_len % 1024 == 0 else str(self.seq_len)
        return f"N={n} D={self.head_dim} B={self.batch} H={self.heads}"

    @property
    def flops(self) -> int:
        return 4 * self.batch * self.heads * self.seq_len * self.seq_len * self.head_dim

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "dtype": str(self.dtype).removeprefix("torch.")}


def shapes_from(args) -> list[Shape]:
    if args.smoke:
        # 12 query tiles of 128 rows: the persistent grid of 3 programs below walks 4 each.
        return [Shape(2, 3, 256, 64, torch.float16)]
    shapes = []
    for head_dim in args.head_dims:
        for seq_len in args.seq_lens:
            shapes.append(Shape(2 if seq_len <= 8192 else 1, 16 if head_dim > 64 else 32, seq_len, head_dim, torch.bfloat16))
    return shapes


class Reference:
    """Float32 SDPA on sampled query rows of fresh random inputs, and what bf16 SDPA gets wrong."""

    def __init__(self, shape: Shape, device, seed: int):
        torch.manual_seed(seed)
        size = (shape.batch, shape.heads, shape.seq_len, shape.head_dim)
        self.q, self.k, self.v = (torch.randn(size, device=device, dtype=shape.dtype) for _ in range(3))
        generator = torch.Generator().manual_seed(seed)
        n_rows = min(shape.seq_len, 1024)
        rows = torch.randperm(shape.seq_len, generator=generator)[:n_rows]
        rows[:2] = torch.tensor([0, shape.seq_len - 1])  # first and last rows always
        self.rows = rows.sort().values.to(device)
        self.lse_rows = self.rows[:: max(1, n_rows // 128)]
        q32, k32, v32 = self.q[:, :, self.rows].float(), self.k.float(), self.v.float()
        self.out = F.scaled_dot_product_attention(q32, k32, v32)
        scores = q32[:, :, :: max(1, n_rows // 128)] @ k32.transpose(-1, -2) / math.sqrt(shape.head_dim)
        self.lse = torch.logsumexp(scores, dim=-1)
        del scores, q32, k32, v32
        sdpa = F.scaled_dot_product_attention(self.q[:, :, self.rows], self.k, self.v)
        self.sdpa_error = (sdpa.float() - self.out).abs().max().item()
        self.tolerance = 2 * self.sdpa_error + 1e-3

    def check(self, out: torch.Tensor, lse: torch.Tensor | None = None) -> dict:
        """Max abs error of ``out`` (and ``lse``) on the sampled rows; ``ok`` False when over tolerance."""
        result = {"max_err": None, "tol": self.tolerance, "ok": False}
        nan_fraction = torch.isnan(out).float().mean().item()
        if nan_fraction:
            result["problem"] = f"NaN in {nan_fraction:.2%} of the output (unwritten tiles or NaN arithmetic)"
            return result
        result["max_err"] = (out[:, :, self.rows].float() - self.out).abs().max().item()
        result["ok"] = result["max_err"] <= self.tolerance
        if not result["ok"]:
            result["problem"] = f"max abs error {result['max_err']:.3g} > {self.tolerance:.3g}"
        if lse is not None:
            lse = lse.view(self.q.shape[:3])[:, :, self.lse_rows]
            result["lse_err"] = (lse - self.lse).abs().max().item() if not torch.isnan(lse).any() else float("nan")
            if not result["lse_err"] <= 1e-2:
                result["ok"] = False
                result["problem"] = f"lse error {result['lse_err']:.3g} > 1e-2"
        return result


def kernel_resources(handle) -> dict:
    """Registers, spills, shared memory and warps of a compiled kernel, where Triton says."""
    found = {}
    for key, get in (
        ("regs", lambda h: h.n_regs),
        ("spills", lambda h: h.n_spills),
        ("shared", lambda h: h.metadata.shared),
        ("warps", lambda h: h.metadata.num_warps),
    ):
        try:
            value = get(handle)
        except Exception:
            continue
        if isinstance(value, int):
            found[key] = value
    return found


def short_error(error: BaseException, captured: str = "") -> str:
    text = f"{type(error).__name__}: {error}".strip()
    lines = [line for line in text.splitlines() if line.strip()]
    text = " | ".join(lines[:6])[:600]
    if captured.strip() and "ptxas" in captured:
        text += " | stdout: " + " ".join(captured.split()[-40:])[:300]
    return text


def context_is_broken() -> bool:
    if not HAS_GPU:
        return False
    try:
        torch.cuda.synchronize()
        return False
    except Exception:
        return True


class Run:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.device = torch.device("cuda" if HAS_GPU else "cpu")
        self.num_sms = torch.cuda.get_device_properties(0).multi_processor_count if HAS_GPU else 3
        self.apis = detect_apis()
        self.records: list[dict] = []
        self.out_dir = Path(args.out)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.flex = None
        self.filter = re.compile(args.filter) if args.filter else None
        if self.apis["triton.set_allocator"] is True:
            # Device-side descriptors live in a global scratch buffer Triton asks this for.
            triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device=self.device))

    # ---- bookkeeping

    def elapsed(self) -> float:
        return time.monotonic() - SCRIPT_STARTED

    def save(self):
        document = {
            "experiment": "dense forward: Hopper levers in Triton (benchmarks/experiments/hopper_forward.py)",
            "argv": sys.argv[1:],
            "smoke": self.smoke,
            "platform": platform.platform(),
            "apis": self.apis,
            "num_sms": self.num_sms,
            "elapsed_s": round(self.elapsed(), 1),
            "results": self.records,
        }
        (self.out_dir / "hopper_forward.json").write_text(json.dumps(document, indent=1, default=str))

    def record(self, shape: Shape, label: str, family: str, config: dict, **fields) -> dict:
        entry = {"shape": shape.label, "shape_detail": shape.as_dict(), "label": label, "family": family, "config": config}
        entry.update(fields)
        self.records.append(entry)
        self.save()
        self.print_line(entry)
        return entry

    def print_line(self, e: dict):
        status = e["status"]
        parts = [f"[{self.elapsed():6.1f}s] {e['shape']:<24} {e['label']:<44} {status:<7}"]
        if e.get("max_err") is not None:
            parts.append(f"err {e['max_err']:.2e} (tol {e['tol']:.1e})")
        if e.get("ms") is not None:
            parts.append(f"{e['ms']:8.3f} ms {e['tflops']:6.1f} TFLOP/s")
        if e.get("first_call_s") is not None:
            parts.append(f"first call {e['first_call_s']:.1f}s")
        resources = e.get("resources") or {}
        if resources:
            parts.append(" ".join(f"{key} {value}" for key, value in resources.items()))
        if e.get("error"):
            parts.append(e["error"][:300])
        print("  ".join(parts), flush=True)

    # ---- one case

    def case(self, shape: Shape, ref: Reference, label: str, family: str, config: dict, build, check_lse: bool):
        """Check, then time, one implementation. ``build()`` returns ``fn(out, lse)`` that runs it
        (writing into out/lse when it can) and returns (out, lse-or-None, kernel handle-or-None)."""
        if self.filter and not self.filter.search(label):
            return
        if self.elapsed() > self.args.budget_s:
            self.record(shape, label, family, config, status="NOT RUN", error=f"budget of {self.args.budget_s:.0f}s spent")
            return
        q = ref.q
        entry = dict(status="ERROR")
        captured = io.StringIO()
        try:
            run = build()
            out = torch.full_like(q, float("nan"))
            lse = torch.full(q.shape[:3], float("nan"), device=q.device, dtype=torch.float32)
            started = time.perf_counter()
            with contextlib.redirect_stdout(captured):  # ptxas failures print the whole PTX
                result, result_lse, handle = run(out, lse)
            if HAS_GPU:
                torch.cuda.synchronize()
            entry["first_call_s"] = time.perf_counter() - started
            entry["resources"] = kernel_resources(handle) if handle is not None else {}
            if family == "tma+ws" and "warps" in entry["resources"]:
                # The compiler may ignore warp_specialize: then the kernel keeps num_warps warps.
                entry["warp_specialized"] = entry["resources"]["warps"] > config["num_warps"]
            verdict = ref.check(result, result_lse if check_lse else None)
            entry.update({key: verdict[key] for key in ("max_err", "tol", "lse_err") if key in verdict})
            if not verdict["ok"]:
                entry.update(status="WRONG", error=verdict.get("problem"))
            elif self.smoke:
                entry["status"] = "ok"
            else:
                ms = triton.testing.do_bench(lambda: run(out, lse), warmup=25, rep=100, return_mode="median")
                entry.update(status="ok", ms=ms, tflops=shape.flops / (ms * 1e-3) / 1e12)
        except Skip as why:
            entry.update(status="SKIPPED", error=str(why))
        except Exception as error:
            entry.update(status="ERROR", error=short_error(error, captured.getvalue()))
            if context_is_broken():
                self.record(shape, label, family, config, **entry)
                raise BrokenContext(entry["error"]) from error
        self.record(shape, label, family, config, **entry)

    # ---- implementations

    def sparseflash_case(self, shape, ref, label="sparseflash"):
        def build():
            def run(out, lse):
                return sparseflash.attention(ref.q, ref.k, ref.v, pattern="dense"), None, None

            return run

        self.case(shape, ref, label, "sparseflash", {}, build, check_lse=False)

    def variant_case(self, shape, ref, variant: Variant):
        def build():
            why = unavailable(variant, self.apis)
            if why:
                raise Skip(why)
            if shape.seq_len % variant.block_m or shape.seq_len % variant.block_n:
                raise Skip(f"N={shape.seq_len} is not a multiple of the {variant.block_m}x{variant.block_n} tile")

            def run(out, lse):
                handle = launch(variant, ref.q, ref.k, ref.v, out, lse, self.num_sms)
                return out, lse, handle

            return run

        config = dataclasses.asdict(variant)
        self.case(shape, ref, variant.label, variant.family, config, build, check_lse=True)

    def peer_case(self, shape, ref, name: str):
        def build():
            if not HAS_GPU:
                raise Skip("needs CUDA")
            if name == "flex":
                from torch.nn.attention.flex_attention import flex_attention

                if self.flex is None:
                    self.flex = torch.compile(flex_attention, dynamic=False)
                flex = self.flex
                return lambda out, lse: (flex(ref.q, ref.k, ref.v), None, None)
            from torch.nn.attention import SDPBackend, sdpa_kernel

            backend = {"fa2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]

            def run(out, lse):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(ref.q, ref.k, ref.v), None, None

            return run

        self.case(shape, ref, name, "peer", {}, build, check_lse=False)

    # ---- the sweep

    def shape_cases(self, shape: Shape, ref: Reference):
        peers = [p for p in self.args.peers.split(",") if p]
        self.sparseflash_case(shape, ref)
        for name in ("fa2", "cudnn"):
            if name in peers:
                self.peer_case(shape, ref, name)
        for variant in variants_for(shape.head_dim):
            self.variant_case(shape, ref, variant)
        if "flex" in peers:
            self.peer_case(shape, ref, "flex")
        if not self.smoke:
            self.sparseflash_case(shape, ref, label="sparseflash (again)")

    def run(self):
        print(f"apis: {json.dumps(self.apis, default=str)}", flush=True)
        shapes = shapes_from(self.args)
        for index, shape in enumerate(shapes):
            if self.elapsed() > self.args.budget_s:
                self.record(shape, "(shape)", "", {}, status="NOT RUN", error="budget spent")
                continue
            try:
                ref = Reference(shape, self.device, seed=1234 + index)
            except Exception as error:
                self.record(shape, "(reference)", "", {}, status="ERROR", error=short_error(error))
                continue
            print(f"--- {shape.label}: bf16 SDPA's own error {ref.sdpa_error:.2e}, tolerance {ref.tolerance:.2e}", flush=True)
            try:
                self.shape_cases(shape, ref)
            except BrokenContext as error:
                print(f"CUDA context broken ({error}); stopping.", flush=True)
                break
            del ref
            if HAS_GPU:
                torch.cuda.empty_cache()
        self.save()
        table = self.table()
        print(table, flush=True)
        (self.out_dir / "hopper_forward.txt").write_text(table + "\n")
        return self.records

    def table(self) -> str:
        lines = [f"\nDense forward, triton {triton.__version__}, torch {torch.__version__}, {self.apis['gpu'] or 'CPU (interpreter)'}"]
        header = f"{'shape':<24} {'implementation':<44} {'status':<7} {'max err':>8} {'ms':>8} {'TFLOP/s':>8} {'vs ours':>7}  regs/spills/warps"
        by_shape: dict[str, list[dict]] = {}
        for e in self.records:
            by_shape.setdefault(e["shape"], []).append(e)
        for shape, entries in by_shape.items():
            ours = next((e["ms"] for e in entries if e["label"] == "sparseflash" and e.get("ms")), None)
            lines += ["", header, "-" * len(header)]
            for e in entries:
                err = f"{e['max_err']:.1e}" if e.get("max_err") is not None else ""
                ms = f"{e['ms']:.3f}" if e.get("ms") else ""
                tflops = f"{e['tflops']:.0f}" if e.get("tflops") else ""
                ratio = f"{ours / e['ms']:.2f}x" if ours and e.get("ms") else ""
                res = e.get("resources") or {}
                regs = f"{res['regs']}/{res.get('spills', '?')}/{res.get('warps', '?')}" if "regs" in res else ""
                note = "" if e["status"] in ("ok",) else f"  {(e.get('error') or '')[:70]}"
                lines.append(f"{shape:<24} {e['label']:<44} {e['status']:<7} {err:>8} {ms:>8} {tflops:>8} {ratio:>7}  {regs}{note}")
        lines.append("\nvs ours: sparseflash's time / this time (above 1: faster than our kernel).")
        return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--budget-s", type=float, default=200.0, help="start no case after this many seconds")
    parser.add_argument(
        "--out", default=None, help="folder for hopper_forward.json/.txt (default: $OUT, else benchmarks/results; smoke: a temp folder)"
    )
    parser.add_argument("--peers", default="fa2,cudnn,flex", help="comma-separated subset of fa2,cudnn,flex")
    parser.add_argument("--filter", default=None, help="regex: run only cases whose label matches")
    parser.add_argument("--smoke", action="store_true", help="tiny correctness-only run (interpreter without a GPU)")
    args = parser.parse_args(argv)
    if not HAS_GPU and not args.smoke:
        print("No CUDA GPU: running the interpreter smoke check (--smoke).", flush=True)
        args.smoke = True
    if args.out is None:
        # Interpreter smoke results are no benchmark: keep them out of benchmarks/results.
        fallback = Path(tempfile.gettempdir()) / "hopper_forward_smoke" if args.smoke else REPO / "benchmarks" / "results"
        args.out = os.environ.get("OUT") or str(fallback)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    records = Run(args).run()
    if args.smoke:
        bad = [r for r in records if r["status"] not in ("ok", "SKIPPED")]
        print(f"\nsmoke: {len(records) - len(bad)} ok or skipped, {len(bad)} failed", flush=True)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
