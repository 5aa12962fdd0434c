"""Where the backward's time goes: each of its three kernels timed alone, per mask block.

    python benchmarks/backward_kernels.py     # on a GPU; writes results/backward_kernels.json (and to $OUT)

For each case, ``torch.profiler`` sums the GPU time of the preprocess, dK/dV and dQ kernels over
20 calls of the backward with the default configs (bf16, D=128), and divides the dK/dV and dQ times
by the non-empty mask blocks of all heads. ``below-diagonal`` is causal's blocks without the
diagonal ones, all full (``mask_from_dense`` of ``i // 128 > j // 128``): set beside ``causal``, it
prices the partial diagonal blocks; beside ``dense``, what shorter and uneven lines cost per block.
``listed`` is ``local(N)``: every pair allowed, every block listed as full. ``--patterns`` times
the given patterns instead.

``--walks`` repeats each case with other ways of walking runs of full blocks
(``backward.DKDV_WALK``/``DQ_WALK``: 1 forwards, 2 backwards; ``common.WALK_*``), given as dK/dV
walk, dQ walk pairs such as ``1:1,2:1``. (Before commit 0382786 there was a third, 0: a loop over
runs around a loop over tiles; results/backward_walks*.json have it.) ``--forward-walks`` times
the forward kernel with each of the given walks (``forward.FORWARD_WALK``) too.
"""

from __future__ import annotations

import argparse

import torch
import triton

import sparseflash
import line_costs
from results_file import save_results
import sparseflash.kernels.backward as backward
from sparseflash.kernels.backward import attention_backward
import sparseflash.kernels.forward as forward
from sparseflash.kernels.forward import attention_forward

KERNELS = {"_preprocess_kernel": "preprocess", "_attention_backward_dkdv_kernel": "dkdv", "_attention_backward_dq_kernel": "dq"}


def below_diagonal(n: int, device) -> sparseflash.BlockMask:
    rows = torch.arange(n, device=device) // 128
    return sparseflash.mask_from_dense(rows[:, None] > rows[None, :], device=device)


def masks(n: int) -> dict:
    return {
        "dense": sparseflash.compile_mask("dense", n, device="cuda"),
        "causal": sparseflash.compile_mask("causal", n, device="cuda"),
        "below-diagonal": below_diagonal(n, "cuda"),
        "listed": sparseflash.compile_mask(f"local({n})", n, device="cuda"),
    }


def kernel_times(run, calls: int = 20) -> dict:
    """Mean GPU milliseconds per call of each backward kernel (0 for one that did not run)."""
    times = line_costs.kernel_times(run, calls)
    return {short: times.get(short, 0.0) for short in KERNELS.values()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", default="8192,32768")
    parser.add_argument("--name", default="backward_kernels")
    parser.add_argument("--walks", default="2:1", help="comma-separated dK/dV:dQ walk pairs for the sparse cases")
    parser.add_argument("--patterns", default="", help="comma-separated patterns instead of dense, causal, below-diagonal, listed")
    parser.add_argument("--forward-walks", default="", help="comma-separated forward walks to time as well")
    args = parser.parse_args()
    rows = []
    default_forward_walk = forward.FORWARD_WALK
    for n in (int(x) for x in args.seq_lens.split(",")):
        batch, heads, head_dim = (2, 16, 128) if n <= 8192 else (1, 16, 128)
        q, k, v, dout = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = head_dim**-0.5
        all_masks = {p: sparseflash.compile_mask(p, n, device="cuda") for p in args.patterns.split(",")} if args.patterns else masks(n)
        for (name, mask), walks in ((item, walks) for item in all_masks.items() for walks in args.walks.split(",") if walks):
            backward.DKDV_WALK, backward.DQ_WALK = (int(w) for w in walks.split(":"))
            out, lse = attention_forward(q, k, v, mask, scale)
            times = kernel_times(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale))
            total = triton.testing.do_bench(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale))
            blocks = (mask.n_q_blocks * mask.n_kv_blocks if mask.is_dense else mask.n_full + mask.n_partial) * batch * heads
            case = f"{name} {n // 1024}k walk {walks}"
            row = {"case": case, "blocks": blocks, "do_bench_ms": total, **{f"{k}_ms": t for k, t in times.items()}}
            for kernel in ("dkdv", "dq"):
                row[f"{kernel}_us_per_1k_blocks"] = times[kernel] * 1e6 / blocks
            print(
                f"{row['case']:<30} blocks {blocks:>8}  total {total:7.3f} ms  preprocess {times['preprocess']:6.3f}"
                f"  dkdv {times['dkdv']:7.3f} ({row['dkdv_us_per_1k_blocks']:6.2f} us/1k blocks)"
                f"  dq {times['dq']:7.3f} ({row['dq_us_per_1k_blocks']:6.2f})",
                flush=True,
            )
            rows.append(row)
        for name, mask in all_masks.items():
            for walk in (int(w) for w in args.forward_walks.split(",") if w):
                forward.FORWARD_WALK = walk
                fwd = triton.testing.do_bench(lambda: attention_forward(q, k, v, mask, scale))
                print(f"{name} {n // 1024}k forward walk {walk}: {fwd:7.3f} ms", flush=True)
                rows.append({"case": f"{name} {n // 1024}k forward walk {walk}", "fwd_ms": fwd})
            forward.FORWARD_WALK = default_forward_walk
    save_results(args.name, {"rows": rows})


if __name__ == "__main__":
    main()
