"""Sweep kernel tiles, warps, stages and launch schedules on the GPU; print the fastest per case.

    python benchmarks/tune_kernels.py                  # the default sweep (about 5 minutes on an H200)
    python benchmarks/tune_kernels.py --only fwd --cases dense-8k-d128

Times the launchers directly (``attention_forward`` / ``attention_backward`` with an explicit
config), so the numbers are kernel time plus launch, no autograd. Every config's output is compared
with the first config's before it is timed: a config that computes something else is reported as
WRONG, not as fast. What it finds goes into ``kernels/common.py``'s default tables by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

import torch
import triton

import sparseflash
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.common import BackwardConfig, ForwardConfig, Schedule
from sparseflash.kernels.forward import attention_forward

ROUND = 1  # set from --round

# (name, pattern, N, head dim, batch, heads)
CASES = [
    ("dense-8k-d128", "dense", 8192, 128, 2, 16),
    ("fullmask-8k-d128", "local(8192)", 8192, 128, 2, 16),
    ("local256+global4-32k-d128", "local(256)+global(4)", 32768, 128, 1, 16),
    ("local1k&causal-32k-d128", "local(1k) & causal", 32768, 128, 1, 16),
    ("dense-8k-d64", "dense", 8192, 64, 2, 32),
    ("local256+global4-32k-d64", "local(256)+global(4)", 32768, 64, 1, 32),
    # Diagnostics: short rows of full blocks only, and a band without the global tokens.
    ("chunk768-32k-d128", "chunk(768)", 32768, 128, 1, 16),
    ("local256-32k-d128", "local(256)", 32768, 128, 1, 16),
]

FORWARD_CONFIGS = {
    128: [
        ForwardConfig(128, 64, 8, 3),
        ForwardConfig(128, 128, 8, 3),
        ForwardConfig(128, 128, 8, 2),
        ForwardConfig(128, 64, 4, 3),
        ForwardConfig(128, 128, 4, 3),
        ForwardConfig(64, 64, 4, 3),
    ],
    64: [
        ForwardConfig(128, 64, 4, 3),
        ForwardConfig(128, 128, 8, 3),
        ForwardConfig(128, 128, 4, 3),
        ForwardConfig(128, 64, 8, 3),
        ForwardConfig(64, 64, 4, 3),
    ],
}

BACKWARD_CONFIGS = {
    128: [
        BackwardConfig(32, 64, 64, 32, 4, 2),
        BackwardConfig(32, 128, 128, 32, 8, 2),
        BackwardConfig(64, 64, 64, 64, 4, 2),
        BackwardConfig(64, 128, 128, 64, 8, 2),
        BackwardConfig(32, 128, 128, 32, 4, 3),
        BackwardConfig(32, 64, 64, 32, 4, 3),
        BackwardConfig(64, 128, 128, 64, 8, 3),
    ],
    64: [
        BackwardConfig(32, 128, 128, 32, 4, 3),
        BackwardConfig(64, 128, 128, 64, 8, 3),
        BackwardConfig(32, 64, 64, 32, 4, 3),
        BackwardConfig(64, 64, 64, 64, 4, 3),
        BackwardConfig(32, 128, 128, 32, 8, 2),
    ],
}

SCHEDULES = [Schedule(True, True), Schedule(False, False), Schedule(True, False)]

# Round 2: short rows: 64x64 mask blocks against 128x128, around round 1's winners.
# (name, pattern, N, head dim, batch, heads[, mask block])
ROUND2_CASES = [
    ("local256+global4-32k-d128-mask64", "local(256)+global(4)", 32768, 128, 1, 16, 64),
    ("local256+global4-32k-d128", "local(256)+global(4)", 32768, 128, 1, 16),
    ("local1k&causal-32k-d128-mask64", "local(1k) & causal", 32768, 128, 1, 16, 64),
    ("butterfly128-32k-d128", "butterfly(128)", 32768, 128, 1, 16),
]
ROUND2_FORWARD = [
    ForwardConfig(64, 64, 4, 3),
    ForwardConfig(64, 64, 4, 4),
    ForwardConfig(64, 64, 4, 2),
    ForwardConfig(64, 32, 4, 3),
]
ROUND2_BACKWARD = [
    BackwardConfig(64, 64, 64, 64, 4, 2),
    BackwardConfig(64, 64, 64, 64, 4, 3),
    BackwardConfig(32, 64, 64, 32, 4, 2),
    BackwardConfig(32, 32, 32, 32, 4, 2),
]


# Round 3: the default tiles, full blocks walked as runs and as a block list.
ROUND3_CASES = [
    ("fullmask-8k-d128", "local(8192)", 8192, 128, 2, 16),
    ("causal-8k-d128", "causal", 8192, 128, 2, 16),
    ("causal-32k-d128", "causal", 32768, 128, 1, 16),
    ("local256+global4-32k-d128", "local(256)+global(4)", 32768, 128, 1, 16),
    ("local1k&causal-32k-d128", "local(1k) & causal", 32768, 128, 1, 16),
    ("butterfly128-32k-d128", "butterfly(128)", 32768, 128, 1, 16),
]


# Round 5: head dim 64 with long rows (causal ran at 0.77x FlexAttention there).
ROUND5_CASES = [
    ("causal-8k-d64", "causal", 8192, 64, 2, 32),
    ("dense-8k-d64", "dense", 8192, 64, 2, 32),
]
ROUND5_FORWARD = [
    ForwardConfig(128, 64, 8, 3, full_runs=True),
    ForwardConfig(128, 64, 8, 3, full_runs=False),
    ForwardConfig(128, 64, 4, 3, full_runs=True),
    ForwardConfig(128, 128, 8, 3, full_runs=True),
    ForwardConfig(128, 128, 4, 3, full_runs=True),
    ForwardConfig(64, 64, 4, 3, full_runs=True),
    ForwardConfig(128, 64, 4, 4, full_runs=True),
]
ROUND5_BACKWARD = [
    BackwardConfig(64, 64, 64, 64, 4, 3, full_runs=True),
    BackwardConfig(64, 64, 64, 64, 4, 3, full_runs=False),
    BackwardConfig(64, 128, 128, 64, 8, 3, full_runs=True),
    BackwardConfig(32, 128, 128, 32, 4, 3, full_runs=True),
    BackwardConfig(64, 128, 128, 64, 4, 3, full_runs=True),
]


# Round 6: short rows on 64x64 mask blocks against 128x128, the default kernel configs.
ROUND6_CASES = [
    (f"{name}-mask{block}", pattern, n, d, b, h, block)
    for name, pattern, n, d, b, h in [
        ("local256+global4-32k-d128", "local(256)+global(4)", 32768, 128, 1, 16),
        ("local1k&causal-32k-d128", "local(1k) & causal", 32768, 128, 1, 16),
        ("butterfly128-32k-d128", "butterfly(128)", 32768, 128, 1, 16),
        ("local256+global4-32k-d64", "local(256)+global(4)", 32768, 64, 1, 32),
    ]
    for block in (128, 64)
]


def default_config(mask, forward: bool, head_dim: int = 128):
    from sparseflash.kernels.common import default_backward_config, default_forward_config

    return (default_forward_config if forward else default_backward_config)(head_dim, torch.bfloat16, mask)


def round3_configs(mask, forward: bool) -> list:
    default = default_config(mask, forward)
    return [with_field(default, "full_runs", False), with_field(default, "full_runs", True)]


def with_field(config, name, value):
    return replace(config, **{name: value})  # not asdict: it would turn the Schedule into a dict


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def with_schedule(config, schedule):
    return with_field(config, "schedule", schedule)


def tune_case(name, pattern, n, head_dim, batch, heads, only, rows, deadline, mask_block=128):
    torch.manual_seed(0)
    q, k, v, dout = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    mask = sparseflash.compile_mask(pattern, n, n, block_m=mask_block, block_n=mask_block, device="cuda")
    scale = head_dim**-0.5
    flops = 4 * batch * heads * n * n * head_dim * mask.density()
    # Launch order matters where rows differ in length (global tokens); elsewhere keep the default.
    schedules = SCHEDULES if "global" in pattern else SCHEDULES[:1]
    if ROUND >= 2:
        schedules = [None]  # the launchers' own choice (auto_schedule)
    reference = None
    if only in ("fwd", "both"):
        for config in {1: FORWARD_CONFIGS[head_dim], 2: ROUND2_FORWARD, 3: round3_configs(mask, True), 4: [default_config(mask, True)], 5: ROUND5_FORWARD, 6: [default_config(mask, True, head_dim)]}[ROUND]:
            for schedule in schedules:
                if time.monotonic() > deadline:
                    return
                config_s = with_schedule(config, schedule)
                try:
                    out, _ = attention_forward(q, k, v, mask, scale, config=config_s)
                    reference = out if reference is None else reference
                    error = relative_error(out, reference)
                    ms = bench(lambda: attention_forward(q, k, v, mask, scale, config=config_s))
                    row = dict(case=name, pass_="fwd", config=repr(config_s), ms=ms, tflops=flops / ms * 1e-9, error=error)
                except Exception as exc:  # noqa: BLE001 - a config may not compile (shared memory)
                    row = dict(case=name, pass_="fwd", config=repr(config_s), error_text=str(exc).splitlines()[0][:120])
                rows.append(row)
                print(format_row(row), flush=True)
    if only in ("bwd", "both"):
        out, lse = attention_forward(q, k, v, mask, scale)
        reference = None
        for config in {1: BACKWARD_CONFIGS[head_dim], 2: ROUND2_BACKWARD, 3: round3_configs(mask, False), 4: [default_config(mask, False)], 5: ROUND5_BACKWARD, 6: [default_config(mask, False, head_dim)]}[ROUND]:
            for schedule in schedules[:2]:
                if time.monotonic() > deadline:
                    return
                config_s = with_schedule(config, schedule)
                try:
                    grads = attention_backward(dout, q, k, v, out, lse, mask, scale, config=config_s)
                    reference = grads if reference is None else reference
                    error = max(relative_error(g, r) for g, r in zip(grads, reference))
                    ms = bench(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale, config=config_s))
                    row = dict(case=name, pass_="bwd", config=repr(config_s), ms=ms, tflops=2.5 * flops / ms * 1e-9, error=error)
                except Exception as exc:  # noqa: BLE001
                    row = dict(case=name, pass_="bwd", config=repr(config_s), error_text=str(exc).splitlines()[0][:120])
                rows.append(row)
                print(format_row(row), flush=True)


def format_row(row) -> str:
    if "error_text" in row:
        return f"{row['case']:<28} {row['pass_']}  FAILED  {row['config']}: {row['error_text']}"
    flag = "WRONG " if row["error"] > 2e-2 else ""
    return f"{row['case']:<28} {row['pass_']}  {row['ms']:8.3f} ms  {row['tflops']:6.1f} TF/s  {flag}{row['config']}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["fwd", "bwd", "both"], default="both")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--round", type=int, choices=[1, 2, 3, 4, 5, 6], default=1, help="1: broad sweep; 2: around round 1's winners; 3: full blocks as runs or as a list; 4: the defaults alone; 5: head dim 64, long rows; 6: short rows on 64x64 mask blocks")
    parser.add_argument("--budget-s", type=float, default=480, help="stop timing after this many seconds")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    global ROUND
    ROUND = args.round
    chosen = set(args.cases.split(",")) if args.cases else None
    rows = []
    for case in {1: CASES, 2: ROUND2_CASES, 3: ROUND3_CASES, 4: ROUND3_CASES, 5: ROUND5_CASES, 6: ROUND6_CASES}[ROUND]:
        if chosen is None or case[0] in chosen:
            tune_case(*case[:6], args.only, rows, deadline, *case[6:])
    print("\nfastest per case and pass:")
    for key in sorted({(r["case"], r["pass_"]) for r in rows}):
        timed = [r for r in rows if (r["case"], r["pass_"]) == key and "ms" in r and r["error"] <= 2e-2]
        if timed:
            best = min(timed, key=lambda r: r["ms"])
            first = timed[0]
            print(f"{key[0]:<28} {key[1]}  {best['ms']:8.3f} ms ({first['ms'] / best['ms']:.2f}x the first)  {best['config']}")
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "tune.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
