"""Same-run A/B for computing the all-key rows of ``global(g)`` apart (``kernels/full_rows.py``):
the whole mask in one launch ("whole") against the rest of the pattern plus the rows over all
keys, in sequence or beside each other on two streams, with several launches for the rows. In
the forward the rows' output and lse are computed apart; with ``--backward``, their dQ.

    python benchmarks/experiments/full_rows.py               # on a GPU; writes results/full_rows.json
    python benchmarks/experiments/full_rows.py --backward    # results/full_rows_backward.json

Launcher times (``attention_forward`` or ``attention_backward``, no autograd), ``do_bench`` medians
with the variants alternating three times on the same inputs, bf16; every variant's results are
compared with the whole mask's first. Also per variant: the GPU time of its kernels
(``kernel_times``, their sum; kernels on two streams may overlap) and the host time of one call
(100 calls, no sync).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from exposed_host import host_us  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from occupancy import compiled_kernels, new_kernels  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels import forward as forward_module  # noqa: E402
from sparseflash.kernels import full_rows  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

# (pattern, N, heads, head dim)
CASES = [
    ("local(256)+global(4)", 32768, 16, 128),
    ("local(256)+global(4)", 131072, 16, 128),
    ("local(256)+global(4)", 32768, 32, 64),
    ("local(256)+global(4)", 8192, 32, 128),  # below MIN_APART_WORK: apart only as asked here
]

BASE = full_rows.FULL_ROWS_CONFIG
# name -> (apart, overlap, rows config). The thirteenth session also timed the rows fused into the
# rest's launch (commit ce40016, reverted; results/full_rows_3.json).
VARIANTS = {
    "whole": (False, False, BASE),
    "apart, in sequence": (True, False, BASE),
    "apart, beside": (True, True, BASE),
    "apart, beside, items of 16": (True, True, replace(BASE, split_blocks=16)),
}

BACKWARD_BASE = full_rows.FULL_ROWS_BACKWARD_CONFIG
# name -> (dQ apart, overlap, rows' dQ config); the forward runs apart (the default) in every one.
BACKWARD_VARIANTS = {
    "whole": (False, False, BACKWARD_BASE),
    "apart, in sequence": (True, False, BACKWARD_BASE),
    "apart, beside": (True, True, BACKWARD_BASE),
    "beside, items of 16": (True, True, replace(BACKWARD_BASE, split_blocks=16)),
    "beside, items of 4": (True, True, replace(BACKWARD_BASE, split_blocks=4)),
    "beside, 2 stages": (True, True, replace(BACKWARD_BASE, num_stages=2)),
    "beside, 128 keys, 2 stages": (True, True, replace(BACKWARD_BASE, block_n1=128, block_n2=128, num_stages=2)),
}


def use(variant) -> None:
    full_rows.FULL_ROWS_APART, full_rows.FULL_ROWS_OVERLAP, full_rows.FULL_ROWS_CONFIG = variant


def use_backward(variant) -> None:
    full_rows.FULL_ROWS_APART_BACKWARD, full_rows.FULL_ROWS_OVERLAP, full_rows.FULL_ROWS_BACKWARD_CONFIG = variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backward", action="store_true", help="time the backward's dQ variants instead")
    backward = parser.parse_args().backward
    variants, choose = (BACKWARD_VARIANTS, use_backward) if backward else (VARIANTS, use)
    rows, compiled = [], []
    defaults = (full_rows.FULL_ROWS_APART, full_rows.FULL_ROWS_OVERLAP, full_rows.FULL_ROWS_CONFIG)
    backward_default = full_rows.FULL_ROWS_APART_BACKWARD, full_rows.FULL_ROWS_BACKWARD_CONFIG
    min_work = full_rows.MIN_APART_WORK
    try:
        for pattern, seq_len, heads, head_dim in CASES:
            torch.manual_seed(0)
            mask = sparseflash.compile_mask(pattern, seq_len, device="cuda")
            q, k, v, dout = (torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            scale = head_dim**-0.5
            full_rows.MIN_APART_WORK = 0
            if backward:
                out, lse = attention_forward(q, k, v, mask, scale)
                run = lambda: attention_backward(dout, q, k, v, out, lse, mask, scale)  # noqa: E731
            else:
                run = lambda: attention_forward(q, k, v, mask, scale)  # noqa: E731
            choose(variants["whole"])
            reference = [t.float() for t in run()]
            times = {name: [] for name in variants}
            errors = {}
            for name, variant in variants.items():
                choose(variant)
                # The forward kernels each variant compiles: registers, spills, programs per SM.
                before = {forward_module._attention_forward_kernel: compiled_kernels(forward_module._attention_forward_kernel)}
                errors[name] = max((got.float() - want).abs().max().item() for got, want in zip(run(), reference))
                for kernel in new_kernels(list(before), before):
                    compiled.append(dict(pattern=pattern, seq_len=seq_len, variant=name, **kernel))
                    print(compiled[-1], flush=True)
            for _ in range(3):
                for name, variant in variants.items():
                    choose(variant)
                    times[name].append(triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median"))
            for name, variant in variants.items():
                choose(variant)
                ms = sum(times[name]) / len(times[name])
                kernels_ms = sum(kernel_times(run, calls=10).values())
                host = host_us(run, calls=100)
                rows.append(dict(pattern=pattern, seq_len=seq_len, heads=heads, head_dim=head_dim, variant=name, ms=ms,
                                 kernels_ms=kernels_ms, host_us=host, max_diff=errors[name]))  # fmt: skip
                print(
                    f"{pattern} {seq_len // 1024}k H{heads} D{head_dim}  {name:24s} {ms:7.3f} ms  kernels {kernels_ms:7.3f} ms"
                    f"  host {host:5.0f} us  max diff {errors[name]:.1e}",
                    flush=True,
                )
    finally:
        use(defaults)
        full_rows.FULL_ROWS_APART_BACKWARD, full_rows.FULL_ROWS_BACKWARD_CONFIG = backward_default
        full_rows.MIN_APART_WORK = min_work
    save_results("full_rows_backward" if backward else "full_rows", {"rows": rows, "compiled": compiled})


if __name__ == "__main__":
    main()
