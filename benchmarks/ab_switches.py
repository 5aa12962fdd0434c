"""Same-run A/B of kernel switches: module constants that choose between two ways of doing one
thing (``forward.FORWARD_ROWS_BY_TMA``, ``common.TILE_MASKS_BY_TMA``, ...).

    python benchmarks/ab_switches.py --switch forward.FORWARD_ROWS_BY_TMA --switch common.TILE_MASKS_BY_TMA
    python benchmarks/ab_switches.py --switch common.TILE_MASKS_BY_TMA --patterns 'local(256)+global(4)' --name ab_2

For each case and switch, the forward and the backward launchers are timed (``do_bench`` medians,
bf16, D=128) with the switch off and on, alternating off/on ``--rounds`` times, every other switch
at its default; the outputs of the two settings are compared first (a switch that changes the
result is reported, not timed). Prints the mean times and off/on ratios (> 1: on is faster);
writes results/<name>.json.
"""

from __future__ import annotations

import argparse
import importlib

import torch
import triton

import sparseflash
from results_file import save_results
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.forward import attention_forward

# (pattern, N, batch, heads), D=128.
CASES = [
    ("dense", 8192, 2, 16),
    ("causal", 8192, 2, 16),
    ("local(1k) & causal", 32768, 1, 16),
    ("butterfly(128)", 32768, 1, 16),
    ("local(256)+global(4)", 32768, 1, 16),
    ("local(256)", 32768, 1, 16),
    ("strided(256)+local(128)", 8192, 2, 16),
]


def switch_target(name: str):
    module_name, constant = name.rsplit(".", 1)
    return importlib.import_module(f"sparseflash.kernels.{module_name}"), constant


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switch", action="append", required=True, help="module.CONSTANT under sparseflash.kernels (repeatable)")
    parser.add_argument("--patterns", help="comma-separated patterns to keep (default: all cases)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="ab_switches")
    args = parser.parse_args()
    keep = set(args.patterns.split(",")) if args.patterns else None
    rows = []
    for pattern, seq_len, batch, heads in CASES:
        if keep and pattern not in keep:
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
            module, constant = switch_target(switch)
            default = getattr(module, constant)
            try:
                for pass_name, run in passes.items():
                    row = dict(pattern=pattern, seq_len=seq_len, batch=batch, heads=heads, switch=switch, pass_=pass_name, default=default)
                    results = {}
                    for setting in (False, True):
                        setattr(module, constant, setting)
                        results[setting] = [t.clone() for t in run()]
                    row["rel_diff"] = max(relative_error(a, b) for a, b in zip(results[False], results[True]))
                    if row["rel_diff"] > 1e-2:
                        row["status"] = "DIFFERENT"
                    else:
                        times = {False: [], True: []}
                        for _ in range(args.rounds):
                            for setting in (False, True):
                                setattr(module, constant, setting)
                                times[setting].append(triton.testing.do_bench(run, warmup=25, rep=150, return_mode="median"))
                        row["off_ms"], row["on_ms"] = (sum(times[s]) / len(times[s]) for s in (False, True))
                        row["off_over_on"] = row["off_ms"] / row["on_ms"]
                        row["status"] = "ok"
                    rows.append(row)
                    print(format_row(row), flush=True)
            finally:
                setattr(module, constant, default)
        save_results(args.name, {"rounds": args.rounds, "rows": rows})


def format_row(row) -> str:
    case = f"{row['pattern']} {row['seq_len'] // 1024}k {row['pass_']}"
    if row["status"] != "ok":
        return f"{case:34s} {row['switch']:34s} {row['status']} (rel diff {row['rel_diff']:.1e})"
    return f"{case:34s} {row['switch']:34s} off {row['off_ms']:7.3f}  on {row['on_ms']:7.3f} ms  off/on {row['off_over_on']:.3f}"


if __name__ == "__main__":
    main()
