"""How the split forward's two launches share the GPU (``kernels/full_rows.py``): the rows' output
copied over the rest's after both (the thirteenth session's code) against written in place while
the rest skips those rows, the side stream's priority, and which launch goes first.

Why: at 32k the split takes 0.63 ms against 0.533 for the rest alone (``local(256)+sink(4)``,
twelfth session); the target needs 0.618. The copies are two launches of host time and two small
kernels after the join; in place, the rows' merge writes ``out`` and ``lse`` itself and can finish
beside the rest.

Each variant is timed three ways: GPU time with every launch queued behind a 2 ms sleep (so the
host cannot delay any of them; L2 flushed first, as ``do_bench`` does), ``do_bench`` through
``attention()``, and host microseconds per call. Outputs are compared bit for bit with the copy
variant's (the same kernels, so a race would show). Then one queued call's kernel timeline per
variant (torch.profiler): start and length of each kernel, by stream.

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
# name: (FULL_ROWS_IN_PLACE, FULL_ROWS_PRIORITY, FULL_ROWS_FIRST)
VARIANTS = {
    "copies": (False, 0, False),
    "in place": (True, 0, False),
    "in place, high priority": (True, -1, False),
    "in place, rows first": (True, 0, True),
    "in place, rows first, high priority": (True, -1, True),
}
_FLUSH = None
_SLEEP_CYCLES = 4_000_000  # ~2 ms: longer than any variant's host time


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


def set_variant(in_place: bool, priority: int, first: bool) -> None:
    full_rows.FULL_ROWS_IN_PLACE, full_rows.FULL_ROWS_PRIORITY, full_rows.FULL_ROWS_FIRST = in_place, priority, first


def main() -> None:
    defaults = (full_rows.FULL_ROWS_IN_PLACE, full_rows.FULL_ROWS_PRIORITY, full_rows.FULL_ROWS_FIRST)
    rows, timelines = [], {}
    try:
        for pattern_text, n, heads, head_dim in CASES:
            q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            pattern = sparseflash.parse(pattern_text)
            call = lambda: sparseflash.attention(q, k, v, pattern)  # noqa: E731
            rest = sparseflash.parse("local(256)+sink(4)")
            rest_ms = queued_ms(lambda: sparseflash.attention(q, k, v, rest))
            print(f"{pattern_text} {n // 1024}k H{heads} D{head_dim}: the rest alone {rest_ms:.3f} ms queued", flush=True)
            set_variant(*VARIANTS["copies"])
            reference = call()
            for round_ in range(2):
                for name, settings in VARIANTS.items():
                    set_variant(*settings)
                    same = all(torch.equal(call(), reference) for _ in range(5))
                    row = dict(pattern=pattern_text, n=n, heads=heads, head_dim=head_dim, variant=name, round=round_, rest_alone_ms=rest_ms,
                               queued_ms=queued_ms(call), do_bench_ms=median_ms(call), host_us=host_us(call), bitwise_same=same)  # fmt: skip
                    rows.append(row)
                    print(f"  {name:38s} queued {row['queued_ms']:.3f} ms  do_bench {row['do_bench_ms']:.3f} ms  host {row['host_us']:.0f} us  same {same}", flush=True)
                    if round_ == 0 and n == 32768 and head_dim == 128:
                        timelines[name] = timeline(call)
        for name, lines in timelines.items():
            print(f"== {name}\n" + "\n".join(lines))
    finally:
        set_variant(*defaults)
    save_results("full_rows_streams", {"rows": rows, "timelines_32k": timelines})


if __name__ == "__main__":
    main()
