"""Host time per call: what a call costs the CPU before the GPU has anything to do.

    python benchmarks/host_overhead.py

At a tiny size (N=256) the GPU work is a few microseconds, so the wall time of many back-to-back
calls is the host's cost per call: argument checks, mask cache look-up, config choice, the Triton
launch. It matters for sub-millisecond cases, where ``do_bench`` counts the GPU's wait for the launch.
"""

from __future__ import annotations

import time

import torch

import sparseflash
from sparseflash.kernels.forward import attention_forward


def host_microseconds(fn, calls: int = 300) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    q, k, v = (torch.randn(1, 16, 256, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    pattern = sparseflash.parse("local(256)+global(4)")
    mask = sparseflash.compile_mask(pattern, 256, 256, device="cuda")
    rows = {
        "attention(pattern text)": lambda: sparseflash.attention(q, k, v, "local(256)+global(4)"),
        "attention(Pattern)": lambda: sparseflash.attention(q, k, v, pattern),
        "attention(BlockMask)": lambda: sparseflash.attention(q, k, v, mask),
        "attention('dense')": lambda: sparseflash.attention(q, k, v, "dense"),
        "attention_forward(mask) launcher": lambda: attention_forward(q, k, v, mask, 128**-0.5),
        "compile_mask (cached)": lambda: sparseflash.compile_mask(pattern, 256, 256, device="cuda"),
        "torch sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
    }
    for name, fn in rows.items():
        print(f"{name:<36} {host_microseconds(fn):8.1f} us per call")
    device_time_through_the_api()


def device_time_through_the_api() -> None:
    """The same kernel timed through ``attention`` and through the launcher (do_bench, L2 flushed)."""
    import triton

    n = 32768
    q, k, v = (torch.randn(1, 16, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    text = "local(256)+global(4)"
    mask = sparseflash.compile_mask(text, n, n, device="cuda")
    q_grad = q.detach().requires_grad_()
    rows = {
        "attention(text)": lambda: sparseflash.attention(q, k, v, text),
        "attention(BlockMask)": lambda: sparseflash.attention(q, k, v, mask),
        "attention(text), q requires grad": lambda: sparseflash.attention(q_grad, k, v, text),
        "attention_forward(mask)": lambda: attention_forward(q, k, v, mask, 128**-0.5),
    }
    for name, fn in rows.items():
        ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        print(f"{text} N={n}: {name:<36} {ms:.3f} ms")


if __name__ == "__main__":
    main()
