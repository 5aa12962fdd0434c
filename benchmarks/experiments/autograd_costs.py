"""Where a forward + backward through ``sparseflash.attention`` (autograd, as bench_attention.py
times it) spends its GPU time: every CUDA kernel of 20 calls, by name, beside the do_bench median.

    python benchmarks/experiments/autograd_costs.py     # on a GPU; writes results/autograd_costs.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from host_overhead import host_microseconds  # noqa: E402
from results_file import save_results  # noqa: E402

CASES = [  # (pattern, N, batch, heads, D)
    ("butterfly(128)", 2048, 8, 16, 128),
    ("butterfly(128)", 2048, 8, 32, 64),
    ("local(1k) & causal", 2048, 8, 16, 128),
]


def host_costs() -> dict:
    """Host microseconds per forward + backward call at a tiny size (the GPU work is negligible), and
    where a cProfile of 50 such calls spends them."""
    import cProfile
    import pstats

    q, k, v, dout = (torch.randn(1, 1, 256, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    costs = {}
    for pattern in ("butterfly(128)", "local(1k) & causal", "dense"):
        def call():
            for t in leaves:
                t.grad = None
            sparseflash.attention(*leaves, pattern).backward(dout)

        costs[pattern] = host_microseconds(call, calls=200)
        print(f"host: {pattern:<20} {costs[pattern]:7.1f} us per forward + backward", flush=True)
    from sparseflash.kernels.backward import attention_backward
    from sparseflash.kernels.forward import attention_forward

    mask = sparseflash.compile_mask(pattern, 256, device="cuda")
    out, lse = attention_forward(q, k, v, mask, 0.1)
    parts = {
        "attention_forward launcher": lambda: attention_forward(q, k, v, mask, 0.1),
        "attention_backward launcher": lambda: attention_backward(dout, q, k, v, out, lse, mask, 0.1),
        "attention, no grad": lambda: sparseflash.attention(q, k, v, pattern),
    }
    for name, fn in parts.items():
        costs[name] = host_microseconds(fn, calls=200)
        print(f"host: {name:<28} {costs[name]:7.1f} us per call", flush=True)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(50):
        call()
    torch.cuda.synchronize()
    profile.disable()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    return costs


def main() -> None:
    rows = []
    host = host_costs()
    for pattern, n, batch, heads, head_dim in CASES:
        q, k, v, dout = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]

        def closure():
            sparseflash.attention(*leaves, pattern).backward(dout)

        closure()
        median = triton.testing.do_bench(closure, grad_to_none=leaves, warmup=25, rep=100)
        with torch.autograd.set_multithreading_enabled(False):  # the backward on this thread
            same_thread = triton.testing.do_bench(closure, grad_to_none=leaves, warmup=25, rep=100)
        print(f"{pattern} {n} B{batch} H{heads} D{head_dim}: do_bench with autograd on the calling thread {same_thread:.3f} ms")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                for t in leaves:
                    t.grad = None
                closure()
            torch.cuda.synchronize()
        kernels: dict[str, float] = {}
        for event in prof.events():
            if event.device_time > 0:
                kernels[event.name[:60]] = kernels.get(event.name[:60], 0.0) + event.device_time / 1e3 / 20
        print(f"{pattern} {n} B{batch} H{heads} D{head_dim}: do_bench {median:.3f} ms, kernels {sum(kernels.values()):.3f} ms")
        for name, ms in sorted(kernels.items(), key=lambda item: -item[1]):
            print(f"    {ms:7.3f}  {name}")
        rows.append({"pattern": pattern, "n": n, "batch": batch, "heads": heads, "head_dim": head_dim, "do_bench_ms": median, "do_bench_same_thread_ms": same_thread, "kernels_ms": kernels})
    save_results("autograd_costs", {"rows": rows, "host_us_per_fwdbwd_256": host})


if __name__ == "__main__":
    main()
