"""How the split forward's two launches share the GPU (``kernels/full_rows.py``), and the rows'
dQ in the backward: the side stream's priority.

Why: at 32k the split took 0.63 ms against 0.533 for the rest alone (``local(256)+sink(4)``,
twelfth session); the target needs 0.618. The first run (``results/full_rows_streams_1.json``,
the code of commit a6107b7) measured five forward variants: the rows' output copied over the
rest's after both (the thirteenth session's code) or written in place while the rest skips those
rows (kept), at default or high priority, launched before or after the rest. Its kernel timelines
showed the rows' programs starting only when the rest's grid drained; high priority starts them
first and took 0.63 -> 0.605 ms. The second run (``results/full_rows_streams.json``, commit babcc05)
compared the priority for the forward and for the rows' dQ apart; both now take FULL_ROWS_PRIORITY,
which this script sets: default (0) against high (-1).

Each variant is timed three ways: GPU time with every launch queued behind a 4 ms sleep (so the
host cannot delay any of them; L2 flushed first, as ``do_bench`` does), ``do_bench`` through
``attention()``, and host microseconds per call. Outputs (and gradients) are compared bit for bit
with the first variant's (the same kernels, so a race would show). Then one queued forward's
kernel timeline per variant (torch.profiler): start and length of each kernel, by stream.

    python benchmarks/experiments/full_rows_streams.py     # on a GPU; writes results/full_rows_streams.json
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from exposed_host import host_us, median_ms  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels import full_rows  # noqa: E402

CASES = [("local(256)+global(4)", 32768, 16, 128), ("local(256)+global(4)", 131072, 16, 128), ("local(256)+global(4)", 32768, 32, 64)]
# name: FULL_ROWS_PRIORITY
VARIANTS = {"default priority": 0, "high priority": -1}
_FLUSH = None
_SLEEP_CYCLES = 8_000_000  # ~4 ms: longer than any variant's host time


def queued_ms(fn, calls: int = 30) -> float:
    """Median GPU time of one call whose launches all wait behind a 2 ms sleep (L2 flushed first)."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    times = []
    for _ in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(_SLEEP_CYCLES)
        _FLUSH.zero_()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timeline(fn) -> list[str]:
    """One queued call's kernels from a torch.profiler trace: stream, start (us after the first),
    length (us), name."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.cuda._sleep(_SLEEP_CYCLES)
        fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") == "kernel" and "sleep" not in e["name"]), key=lambda e: e["ts"])
    first = kernels[0]["ts"]
    return [f"stream {e['args'].get('stream', e.get('tid'))}  +{e['ts'] - first:7.1f}  {e['dur']:7.1f} us  {e['name'][:70]}" for e in kernels]


def set_variant(priority: int) -> None:
    full_rows.FULL_ROWS_PRIORITY = priority


def main() -> None:
    default = full_rows.FULL_ROWS_PRIORITY
    rows, timelines = [], {}
    try:
        for pattern_text, n, heads, head_dim in CASES:
            q, k, v, dout = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            pattern = sparseflash.parse(pattern_text)
            forward = lambda: sparseflash.attention(q, k, v, pattern)  # noqa: E731

            def forward_backward():
                return (*torch.autograd.grad(sparseflash.attention(*leaves, pattern), leaves, dout),)

            rest = sparseflash.parse("local(256)+sink(4)")
            rest_ms = queued_ms(lambda: sparseflash.attention(q, k, v, rest))
            print(f"{pattern_text} {n // 1024}k H{heads} D{head_dim}: the rest alone {rest_ms:.3f} ms queued", flush=True)
            set_variant(next(iter(VARIANTS.values())))
            reference = (forward(), forward_backward())
            for round_ in range(2):
                for name, settings in VARIANTS.items():
                    set_variant(settings)
                    same = all(torch.equal(forward(), reference[0]) for _ in range(3))
                    same = same and all(all(map(torch.equal, forward_backward(), reference[1])) for _ in range(3))
                    row = dict(pattern=pattern_text, n=n, heads=heads, head_dim=head_dim, variant=name, round=round_, rest_alone_ms=rest_ms, bitwise_same=same)
                    for mode, fn in (("fwd", forward), ("fwdbwd", forward_backward)):
                        row[mode] = dict(queued_ms=queued_ms(fn), do_bench_ms=median_ms(fn), host_us=host_us(fn))
                    rows.append(row)
                    cells = "  ".join(f"{mode}: queued {row[mode]['queued_ms']:.3f} do_bench {row[mode]['do_bench_ms']:.3f} ms host {row[mode]['host_us']:.0f} us" for mode in ("fwd", "fwdbwd"))
                    print(f"  {name:24s} {cells}  same {same}", flush=True)
                    if round_ == 0 and n == 32768 and head_dim == 128:
                        timelines[name] = timeline(forward)
        for name, lines in timelines.items():
            print(f"== {name}\n" + "\n".join(lines))
    finally:
        set_variant(default)
    save_results("full_rows_streams", {"rows": rows, "timelines_32k": timelines})


if __name__ == "__main__":
    main()
