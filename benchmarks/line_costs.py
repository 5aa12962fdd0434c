"""Where masks with long lines spend their time: each kernel of the forward and the backward timed
alone, under launch variants.

    python benchmarks/line_costs.py      # on a GPU; writes results/line_costs.json (and to $OUT)

For each pattern (N=32k, D=128, 16 heads, bf16), ``torch.profiler`` sums the GPU time of every
kernel of 20 forward calls and of 20 backward calls (forward, dK/dV, dQ, merges, preprocess), with
the default configs and with each variant: the other launch order (``Schedule.heads_fastest``
flipped), the other tile source (``tma`` host descriptors, kernel-built ones, pointers) and no
split. ``local(256)`` alone prices the band; ``+sink(4)`` adds the global column, ``+global(4)``
the global row as well.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

import sparseflash
from results_file import save_results
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.common import Schedule, auto_schedule, default_backward_config, default_forward_config
from sparseflash.kernels.forward import attention_forward

PATTERNS = "local(256),local(256)+sink(4),local(256)+global(4),local(1k) & causal"
SHORT_NAMES = {
    "_attention_forward_kernel": "fwd",
    "_merge_softmax_kernel": "fwd_merge",
    "_preprocess_kernel": "preprocess",
    "_attention_backward_dkdv_kernel": "dkdv",
    "_attention_backward_dq_kernel": "dq",
    "_merge_sum_kernel": "bwd_merge",
}


def kernel_times(run, calls: int = 20) -> dict:
    """Mean GPU milliseconds per call of each of our kernels that ``run`` launches."""
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for event in prof.events():
        for kernel, short in SHORT_NAMES.items():
            if event.name.startswith(kernel):
                times[short] = times.get(short, 0.0) + event.device_time / 1e3 / calls
    return times


def variants(mask) -> dict:
    """Config overrides to time beside the defaults: name -> (forward override, backward override)."""
    row, column = auto_schedule(mask, by_rows=True), auto_schedule(mask, by_rows=False)
    flipped = Schedule(heavy_first=True, heads_fastest=not row.heads_fastest)
    return {
        "default": ({}, {}),
        f"heads_fastest={flipped.heads_fastest}": ({"schedule": flipped}, {"schedule": Schedule(True, not column.heads_fastest)}),
        "tma=host": ({"tma": "host"}, {"tma": "host"}),
        "tma=device": ({"tma": "device"}, {"tma": "device"}),
        "tma=False": ({"tma": False}, {"tma": False}),
        "split=0": ({"split_blocks": 0}, {"split_blocks": 0}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patterns", default=PATTERNS, help="comma-separated patterns")
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--variants", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--name", default="line_costs")
    args = parser.parse_args()
    n, heads, head_dim = args.seq_len, args.heads, 128
    q, k, v, dout = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    scale = head_dim**-0.5
    rows = []
    for pattern in args.patterns.split(","):
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        for name, (fwd_change, bwd_change) in variants(mask).items():
            if args.variants and name not in args.variants.split(","):
                continue
            fwd_config = replace(default_forward_config(head_dim, q.dtype, mask), **fwd_change)
            bwd_config = replace(default_backward_config(head_dim, q.dtype, mask), **bwd_change)
            out, lse = attention_forward(q, k, v, mask, scale, config=fwd_config)
            times = kernel_times(lambda: attention_forward(q, k, v, mask, scale, config=fwd_config))
            times.update(kernel_times(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale, config=bwd_config)))
            row = {"pattern": pattern, "variant": name, **{f"{kernel}_ms": t for kernel, t in times.items()}}
            print(f"{pattern:<24} {name:<20} " + "  ".join(f"{kernel} {t:6.3f}" for kernel, t in times.items()), flush=True)
            rows.append(row)
    save_results(args.name, {"seq_len": n, "heads": heads, "head_dim": head_dim, "rows": rows})


if __name__ == "__main__":
    main()
