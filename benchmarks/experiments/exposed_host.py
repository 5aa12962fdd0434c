"""How much host time ``do_bench`` counts in a forward: the same forward timed through
``attention()``, through the launcher, and as a CUDA graph replay (GPU time alone), with the host
microseconds of each call, then a profile of where ``attention()``'s host time goes.

Why: ``do_bench`` clears L2 with a 256 MB memset before each timed call and records the start event
right after it; whatever the call spends on the host beyond that memset's ~80 us the GPU spends idle
inside the timed interval. A 2.8 ms kernel read 2.93 ms in bench_attention.py (ninth session).

    python benchmarks/experiments/exposed_host.py     # on a GPU; writes results/exposed_host.json
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels import forward as forward_module  # noqa: E402

CASES = [  # (pattern, N, batch, heads, D)
    ("local(1k) & causal", 131072, 1, 16, 128),
    ("local(1k) & causal", 32768, 1, 16, 128),
    ("local(256)+global(4)", 32768, 1, 16, 128),
    ("butterfly(128)", 32768, 1, 16, 128),
    ("dense", 8192, 2, 16, 128),
]


def host_us(fn, calls: int = 30) -> float:
    """Host microseconds per call, back to back, the GPU lagging behind (not waited for)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def median_ms(fn) -> float:
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def graph_of(fn):
    """A CUDA graph of one call of ``fn`` (after a warm-up on a side stream, as PyTorch asks)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


class RecordingKernel:
    """Stands in for the forward kernel once, to capture the exact launch (grid, args, kwargs)."""

    def __init__(self, kernel):
        self.kernel, self.launch = kernel, None

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.launch = (grid, args, kwargs)
            return self.kernel[grid](*args, **kwargs)

        return run


def raw_launch(pattern, q, k, v, mask, scale):
    """A closure that launches the forward kernel with the captured arguments: Triton's own cost."""
    recorder = RecordingKernel(forward_module._attention_forward_kernel)
    forward_module._attention_forward_kernel = recorder
    try:
        forward_module.attention_forward(q, k, v, mask, scale)
    finally:
        forward_module._attention_forward_kernel = recorder.kernel
    grid, args, kwargs = recorder.launch
    kernel = recorder.kernel
    return lambda: kernel[grid](*args, **kwargs)


def profile_text(fn, calls: int = 300) -> str:
    """cProfile of ``calls`` calls, each on an idle GPU (synchronised outside the profile)."""
    profile = cProfile.Profile()
    for _ in range(calls):
        torch.cuda.synchronize()
        profile.enable()
        fn()
        profile.disable()
    torch.cuda.synchronize()
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("tottime").print_stats(30)
    return stream.getvalue()


def main() -> None:
    rows = []
    for pattern_text, n, batch, heads, head_dim in CASES:
        q, k, v = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        pattern = sparseflash.parse(pattern_text)
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        scale = head_dim**-0.5
        paths = {
            "attention(Pattern)": lambda: sparseflash.attention(q, k, v, pattern),
            "attention(BlockMask)": lambda: sparseflash.attention(q, k, v, mask),
            "launcher": lambda: forward_module.attention_forward(q, k, v, mask, scale),
            "raw kernel launch": raw_launch(pattern, q, k, v, mask, scale),
        }
        row = {"pattern": pattern_text, "n": n, "batch": batch, "heads": heads, "head_dim": head_dim}
        for name, fn in paths.items():
            row[name] = {"do_bench_ms": median_ms(fn), "host_us": host_us(fn)}
        graph = graph_of(paths["launcher"])
        row["graph replay"] = {"do_bench_ms": median_ms(graph.replay), "host_us": host_us(graph.replay)}
        rows.append(row)
        cells = "  ".join(f"{name}: {row[name]['do_bench_ms']:.3f} ms / {row[name]['host_us']:.0f} us" for name in (*paths, "graph replay"))
        print(f"{pattern_text} {n} D{head_dim}: {cells}", flush=True)
        del q, k, v
    q, k, v = (torch.randn(1, 16, 32768, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    pattern = sparseflash.parse("local(1k) & causal")
    profile = profile_text(lambda: sparseflash.attention(q, k, v, pattern))
    print(profile)
    save_results("exposed_host", {"rows": rows, "profile_attention_lc_32k": profile})


if __name__ == "__main__":
    main()
