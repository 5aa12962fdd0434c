"""A timeline of forward + ``.backward()`` through ``sparseflash.attention`` at a tiny size, to find
where the host time between the forward's launch and the backward's kernels goes (ninth session:
1.1-1.7 ms per call, 0.78 ms with autograd's backward on the calling thread).

For each variant, torch.profiler (CPU and CUDA runtime activity) over 10 calls after a warm-up:
the CPU events per thread with their total time, and the CUDA runtime calls (a host sync shows as
cudaStreamSynchronize / cudaMemcpy / cudaEventSynchronize). The Chrome trace of our autograd call
is written beside the JSON for a look in a trace viewer.

    python benchmarks/experiments/autograd_timeline.py   # on a GPU; results/autograd_timeline.json
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from results_file import save_results  # noqa: E402

CALLS = 10


def variants():
    q, k, v, dout = (torch.randn(1, 1, 256, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    pattern = sparseflash.parse("local(1k) & causal")
    x = torch.randn(4096, device="cuda", requires_grad=True)

    def ours():
        sparseflash.attention(*leaves, pattern).backward(dout)

    def ours_on_this_thread():
        with torch.autograd.set_multithreading_enabled(False):
            ours()

    def torch_op():
        (x * 2).sum().backward()

    return {"attention .backward": ours, "attention .backward, this thread": ours_on_this_thread, "torch op .backward": torch_op}


def summarize(prof) -> dict:
    """Total microseconds per (thread, event name) on the CPU, and the CUDA runtime calls."""
    per_thread = defaultdict(lambda: defaultdict(float))
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CPU:
            per_thread[str(event.thread)][event.name] += event.cpu_time_total / CALLS
    return {thread: dict(sorted(names.items(), key=lambda item: -item[1])[:25]) for thread, names in per_thread.items()}


def main() -> None:
    out_dir = Path(os.environ.get("OUT", Path(__file__).parents[1] / "results"))
    results = {}
    for name, fn in variants().items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(100):
            fn()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) / 100 * 1e6
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(CALLS):
                fn()
            torch.cuda.synchronize()
        if name == "attention .backward":
            prof.export_chrome_trace(str(out_dir / "autograd_timeline_trace.json"))
        results[name] = {"wall_us_per_call": wall_us, "cpu_us_per_call_by_thread": summarize(prof)}
        print(f"== {name}: {wall_us:.0f} us per call (unprofiled)")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
    save_results("autograd_timeline", results)


if __name__ == "__main__":
    main()
