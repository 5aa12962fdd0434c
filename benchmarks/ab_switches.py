"""Same-run A/B of kernel switches: module constants that choose between two ways of doing one
thing (``forward.FORWARD_WALK``, ``backward.DKDV_WALK``, or a boolean added for an experiment).

    python benchmarks/ab_switches.py --switch forward.FORWARD_WALK=1,2 --switch backward.DKDV_WALK=1,2
    python benchmarks/ab_switches.py --switch common.SOME_FLAG --patterns 'local(256)+global(4)' --name ab_2

``module.CONSTANT=a,b`` compares values a and b (integers); a bare ``module.CONSTANT`` compares
False and True. For each case and switch, the forward and the backward launchers are timed
(``do_bench`` medians, bf16, D=128) with the two values alternating ``--rounds`` times, every other
switch at its default; the outputs of the two settings are compared first (a switch that changes
the result is reported, not timed). Prints mean times and the ratio a/b (> 1: b is faster); writes
results/<name>.json ("off" is a, "on" is b). Sixth session: ``results/ab_switches.json`` compared
two switches that were removed again afterwards (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import importlib

import torch
import triton

import sparseflash
from results_file import save_results
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.launch import clear_prepared_launches
from sparseflash.kernels.forward import attention_forward

# (pattern, N, batch, heads), D=128.
CASES = [
    ("dense", 8192, 2, 16),
    ("causal", 8192, 2, 16),
    ("dense", 32768, 1, 16),
    ("causal", 32768, 1, 16),
    ("local(1k) & causal", 32768, 1, 16),
    ("butterfly(128)", 32768, 1, 16),
    ("local(1k) & causal", 131072, 1, 16),
    ("butterfly(128)", 131072, 1, 16),
    ("local(1k) & causal", 16384, 1, 16),  # with 32k and 128k: a trend in N, if any
    ("local(1k) & causal", 65536, 1, 16),
    ("local(256)+global(4)", 32768, 1, 16),
    ("local(256)", 32768, 1, 16),
    ("local(256)+sink(4)", 32768, 1, 16),
    ("strided(256)+local(128)", 8192, 2, 16),
]


def set_switch(module, constant: str, value) -> None:
    """Set a kernel module constant; launches prepared under the old value are dropped, since
    not every constant is part of their key (launch.prepared_launch)."""
    setattr(module, constant, value)
    clear_prepared_launches()


def switch_target(spec: str):
    """(module, constant, (value a, value b)) from ``module.CONSTANT[=a,b]``."""
    name, _, values = spec.partition("=")
    module_name, constant = name.rsplit(".", 1)
    settings = tuple(int(v) for v in values.split(",")) if values else (False, True)
    if len(settings) != 2:
        raise SystemExit(f"--switch {spec}: give two values, as module.CONSTANT=a,b")
    return importlib.import_module(f"sparseflash.kernels.{module_name}"), constant, settings


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switch", action="append", required=True, help="module.CONSTANT[=a,b] under sparseflash.kernels (repeatable)")
    parser.add_argument("--patterns", help="comma-separated patterns to keep (default: all cases)")
    parser.add_argument("--seq-lens", help="comma-separated sequence lengths to keep (default: all)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="ab_switches")
    args = parser.parse_args()
    keep = set(args.patterns.split(",")) if args.patterns else None
    lengths = {int(n) for n in args.seq_lens.split(",")} if args.seq_lens else None
    rows = []
    for pattern, seq_len, batch, heads in CASES:
        if (keep and pattern not in keep) or (lengths and seq_len not in lengths):
            continue
        torch.manual_seed(0)
        mask = sparseflash.compile_mask(pattern, seq_len, device="cuda")
        q, k, v, dout = (torch.randn(batch, heads, seq_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = 128**-0.5
        out, lse = attention_forward(q, k, v, mask, scale)
        passes = {
            "fwd": lambda: attention_forward(q, k, v, mask, scale),
            "bwd": lambda: attention_backward(dout, q, k, v, out, lse, mask, scale),
        }
        for switch in args.switch:
            module, constant, settings = switch_target(switch)
            default = getattr(module, constant)
            try:
                for pass_name, run in passes.items():
                    row = dict(pattern=pattern, seq_len=seq_len, batch=batch, heads=heads, switch=switch, pass_=pass_name, default=default)
                    results = {}
                    for setting in settings:
                        set_switch(module, constant, setting)
                        results[setting] = [t.clone() for t in run()]
                    row["rel_diff"] = max(relative_error(a, b) for a, b in zip(*results.values()))
                    if row["rel_diff"] > 1e-2:
                        row["status"] = "DIFFERENT"
                    else:
                        times = {setting: [] for setting in settings}
                        for _ in range(args.rounds):
                            for setting in settings:
                                set_switch(module, constant, setting)
                                times[setting].append(triton.testing.do_bench(run, warmup=25, rep=150, return_mode="median"))
                        row["off_ms"], row["on_ms"] = (sum(times[s]) / len(times[s]) for s in settings)
                        row["off_over_on"] = row["off_ms"] / row["on_ms"]
                        row["status"] = "ok"
                    rows.append(row)
                    print(format_row(row), flush=True)
            finally:
                set_switch(module, constant, default)
        save_results(args.name, {"rounds": args.rounds, "rows": rows})


def format_row(row) -> str:
    case = f"{row['pattern']} {row['seq_len'] // 1024}k {row['pass_']}"
    if row["status"] != "ok":
        return f"{case:34s} {row['switch']:34s} {row['status']} (rel diff {row['rel_diff']:.1e})"
    return f"{case:34s} {row['switch']:34s} a {row['off_ms']:7.3f}  b {row['on_ms']:7.3f} ms  a/b {row['off_over_on']:.3f}"


if __name__ == "__main__":
    main()
