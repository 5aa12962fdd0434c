"""Host microseconds per call along the paths of a forward + backward at a tiny size (N=256, one
head: the GPU work is a few microseconds, so back-to-back wall time is the host's), to find what
makes the autograd path cost more than its two launchers.

    python benchmarks/experiments/host_paths.py     # on a GPU; writes results/host_paths.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from host_overhead import host_microseconds  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402


@triton.jit
def _copy_kernel(x, y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + offs, tl.load(x + offs, mask=offs < n), mask=offs < n)


class _TritonCopy(torch.autograd.Function):
    """A trivial autograd function whose forward and backward each launch one tiny Triton kernel."""

    @staticmethod
    def forward(ctx, x):
        y = torch.empty_like(x)
        _copy_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
        return y

    @staticmethod
    def backward(ctx, dy):
        dx = torch.empty_like(dy)
        _copy_kernel[(triton.cdiv(dy.numel(), 1024),)](dy, dx, dy.numel(), BLOCK=1024)
        return dx


class _Launchers(torch.autograd.Function):
    """attention_forward / attention_backward behind a minimal autograd function (no checks, no
    mask look-up); with ``launch_backward`` False the backward returns empty gradients instead."""

    @staticmethod
    def forward(ctx, q, k, v, mask, launch_backward):
        out, lse = attention_forward(q, k, v, mask, 0.1)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.launch_backward = mask, launch_backward
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        if not ctx.launch_backward:
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None, None
        return (*attention_backward(dout, q, k, v, out, lse, ctx.mask, 0.1), None, None)


def main() -> None:
    q, k, v, dout = (torch.randn(1, 1, 256, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    pattern = "local(1k) & causal"
    mask = sparseflash.compile_mask(pattern, 256, device="cuda")
    out, lse = attention_forward(q, k, v, mask, 0.1)
    x = torch.randn(4096, device="cuda", requires_grad=True)

    def autograd_call():
        sparseflash.attention(*leaves, pattern).backward(dout)

    def autograd_grad():
        torch.autograd.grad(sparseflash.attention(*leaves, pattern), leaves, dout)

    paths = {
        "triton copy kernel (3 args)": lambda: _copy_kernel[(4,)](x, x, x.numel(), BLOCK=1024),
        "trivial autograd fn, fwd + bwd": lambda: _TritonCopy.apply(x).sum().backward(),
        "attention_forward launcher": lambda: attention_forward(q, k, v, mask, 0.1),
        "attention_backward launcher": lambda: attention_backward(dout, q, k, v, out, lse, mask, 0.1),
        "attention(text), no grad": lambda: sparseflash.attention(q, k, v, pattern),
        "attention(text), with grad, fwd only": lambda: sparseflash.attention(*leaves, pattern),
        "attention(text), fwd + .backward": autograd_call,
        "attention(text), fwd + autograd.grad": autograd_grad,
        "minimal autograd fn, fwd + .backward": lambda: _Launchers.apply(*leaves, mask, True).backward(dout),
        "minimal autograd fn, no bwd launch": lambda: _Launchers.apply(*leaves, mask, False).backward(dout),
        "attention(text), fwd + .backward, autograd on this thread": lambda: _single_threaded(autograd_call),
    }
    results = {}
    for name, fn in paths.items():
        results[name] = host_microseconds(fn)
        print(f"{name:<40} {results[name]:8.1f} us per call", flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            autograd_call()
        torch.cuda.synchronize()
    gpu = sum(e.device_time for e in prof.events() if e.device_time > 0) / 20
    print(f"GPU time of one fwd + .backward at N=256: {gpu:.1f} us")
    results["backward launcher in another thread"] = in_thread(lambda: host_microseconds(paths["attention_backward launcher"]))
    print(f"{'backward launcher in another thread':<40} {results['backward launcher in another thread']:8.1f} us per call")
    profile_autograd_backward(autograd_call)
    save_results("host_paths", {"host_us": results, "gpu_us_fwd_bwd": gpu})


def _single_threaded(fn):
    with torch.autograd.set_multithreading_enabled(False):
        fn()


def in_thread(fn):
    import threading

    result = []
    worker = threading.Thread(target=lambda: result.append(fn()))
    worker.start()
    worker.join()
    return result[0]


def profile_autograd_backward(autograd_call) -> None:
    """cProfile of the autograd backward, enabled inside it (it runs on autograd's device thread)."""
    import cProfile
    import pstats

    api = sys.modules["sparseflash.attention"]  # the module (the package exports a function of that name)

    profile = cProfile.Profile()
    original = api._BlockSparseAttention.backward

    def profiled(ctx, *grads):
        profile.enable()
        try:
            return original(ctx, *grads)
        finally:
            profile.disable()

    api._BlockSparseAttention.backward = staticmethod(profiled)
    try:
        for _ in range(50):
            autograd_call()
        torch.cuda.synchronize()
    finally:
        api._BlockSparseAttention.backward = staticmethod(original)
    pstats.Stats(profile).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
