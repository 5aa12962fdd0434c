"""Build time and peak memory of the block mask, against FlexAttention's create_block_mask.

    python benchmarks/bench_blockmask.py                       # CPU, and the GPU when there is one
    python benchmarks/bench_blockmask.py --json out.json

For each N: sparseflash.compile_mask (uncached: the cache is cleared before every build) on the CPU
and on the GPU (host compiler + one copy to the device, synchronised), and on the GPU
FlexAttention's create_block_mask on the same mask, as it comes and under torch.compile.
Medians of several builds; first calls (compilation) reported apart.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

import torch

import sparseflash
from sparseflash.blockmask import _CACHE

PATTERN = "local(256)+global(4)"
BLOCK = 128


def median_seconds(fn, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_sparseflash(n: int, device: str, repeats: int) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def build():
        _CACHE.clear()
        return sparseflash.compile_mask(PATTERN, n, block_m=BLOCK, block_n=BLOCK, device=device)

    build()  # first call: parser and numpy warm-up
    seconds = median_seconds(build, repeats, sync)
    cached = median_seconds(lambda: sparseflash.compile_mask(PATTERN, n, block_m=BLOCK, block_n=BLOCK, device=device), repeats, sync)
    _CACHE.clear()
    tracemalloc.start()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    mask = build()
    sync()
    _, host_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    row = {
        "impl": "sparseflash.compile_mask",
        "device": device,
        "N": n,
        "ms": seconds * 1e3,
        "cached_ms": cached * 1e3,
        "host_peak_MB": host_peak / 2**20,
        "mask_MB": mask.nbytes / 2**20,
        "blocks": mask.n_full + mask.n_partial,
    }
    if device == "cuda":
        row["device_peak_MB"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return row


def bench_flex(n: int, compiled: bool, repeats: int) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask

    pattern = sparseflash.parse(PATTERN)

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.allowed(q_idx, kv_idx)

    build_fn = torch.compile(create_block_mask) if compiled else create_block_mask
    row = {"impl": "flex.create_block_mask" + (" (torch.compile)" if compiled else ""), "device": "cuda", "N": n}

    def build():
        return build_fn(mask_mod, None, None, n, n, device="cuda", BLOCK_SIZE=BLOCK)

    try:
        torch.cuda.synchronize()
        start = time.perf_counter()
        build()
        torch.cuda.synchronize()
        row["first_call_ms"] = (time.perf_counter() - start) * 1e3
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        row["ms"] = median_seconds(build, repeats, torch.cuda.synchronize) * 1e3
        row["device_peak_MB"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    except Exception as error:  # noqa: BLE001 - out of memory is the expected failure at large N
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="32768,131072,1048576", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    parser.add_argument("--json", help="write the rows here as JSON")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    rows = []
    for n in sizes:
        rows.append(bench_sparseflash(n, "cpu", args.repeats))
        if torch.cuda.is_available():
            rows.append(bench_sparseflash(n, "cuda", args.repeats))
            if not args.no_flex:
                rows.append(bench_flex(n, compiled=False, repeats=min(args.repeats, 5)))
                rows.append(bench_flex(n, compiled=True, repeats=min(args.repeats, 5)))
        for row in rows[-4:]:
            if row["N"] == n:
                print(format_row(row), flush=True)

    meta = {
        "pattern": PATTERN,
        "block": BLOCK,
        "date": datetime.date.today().isoformat(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['impl']:<40} {row['device']:<5} N={row['N']:>8}  FAILED {row['error']}"
    parts = [f"{row['impl']:<40} {row['device']:<5} N={row['N']:>8}  {row['ms']:9.3f} ms"]
    if "first_call_ms" in row:
        parts.append(f"first call {row['first_call_ms']:9.1f} ms")
    if "cached_ms" in row:
        parts.append(f"cached {row['cached_ms'] * 1e3:6.1f} us")
    if "host_peak_MB" in row:
        parts.append(f"host peak {row['host_peak_MB']:7.1f} MB")
    if "device_peak_MB" in row:
        parts.append(f"device peak {row['device_peak_MB']:8.1f} MB")
    return "  ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
