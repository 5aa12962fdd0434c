"""Host-built against kernel-built tensor descriptors (``ForwardConfig.tma`` / ``BackwardConfig.tma``).

    python benchmarks/tma_modes.py            # on a GPU; writes results/tma_modes.json (and to $OUT)

Kernel-built descriptors (``"device"``) cost every program a global write and a proxy fence before
its first tile load; host-built ones (``"host"``, (B, H, L, D) descriptors passed as arguments) do
not, but are 4-D and reshaped in the kernel. For each case, the default configs' forward and
backward kernel times (``do_bench`` medians, the modes alternated twice, the mean of the two) with
each mode, and the ratio device / host (above 1: host descriptors faster).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
import triton

import sparseflash
from results_file import save_results
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.common import default_backward_config, default_forward_config
from sparseflash.kernels.forward import attention_forward

# (name, pattern, N, D, batch, heads)
CASES = [
    ("dense-8k-d128", "dense", 8192, 128, 2, 16),
    ("dense-8k-d64", "dense", 8192, 64, 2, 32),
    ("causal-8k-d128", "causal", 8192, 128, 2, 16),
    ("causal-32k-d128", "causal", 32768, 128, 1, 16),
    ("local256+global4-32k-d128", "local(256)+global(4)", 32768, 128, 1, 16),
    ("local1k&causal-32k-d128", "local(1k) & causal", 32768, 128, 1, 16),
    ("butterfly128-32k-d128", "butterfly(128)", 32768, 128, 1, 16),
    ("local1k&causal-32k-d64", "local(1k) & causal", 32768, 64, 1, 32),
    ("chunk128-32k-d128", "chunk(128)", 32768, 128, 1, 16),
]
MODES = ("device", "host")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="tma_modes", help="results/<name>.json")
    args = parser.parse_args()
    rows = []
    for name, pattern, n, head_dim, batch, heads in CASES:
        q, k, v, dout = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        scale = head_dim**-0.5
        times = {f"{pass_}_{mode}": [] for pass_ in ("fwd", "bwd") for mode in MODES}
        outputs = {}
        for _ in range(2):
            for mode in MODES:
                fwd_config = replace(default_forward_config(head_dim, q.dtype, mask), tma=mode)
                bwd_config = replace(default_backward_config(head_dim, q.dtype, mask), tma=mode)
                out, lse = attention_forward(q, k, v, mask, scale, config=fwd_config)
                grads = attention_backward(dout, q, k, v, out, lse, mask, scale, config=bwd_config)
                outputs[mode] = (out, lse, *grads)
                times[f"fwd_{mode}"].append(triton.testing.do_bench(lambda: attention_forward(q, k, v, mask, scale, config=fwd_config)))
                times[f"bwd_{mode}"].append(
                    triton.testing.do_bench(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale, config=bwd_config))
                )
        row = {"case": name, **{key: sum(t) / len(t) for key, t in times.items()}}
        # The two modes read the same tiles: the results must agree to the last bit or nearly so.
        row["max_difference"] = max((a.float() - b.float()).abs().max().item() for a, b in zip(outputs["device"], outputs["host"]))
        for pass_ in ("fwd", "bwd"):
            row[f"{pass_}_host_speedup"] = row[f"{pass_}_device"] / row[f"{pass_}_host"]
        print(
            f"{name:<28} fwd {row['fwd_device']:8.3f} -> {row['fwd_host']:8.3f} ms ({row['fwd_host_speedup']:.3f}x)  "
            f"bwd {row['bwd_device']:8.3f} -> {row['bwd_host']:8.3f} ms ({row['bwd_host_speedup']:.3f}x)  diff {row['max_difference']:.1e}",
            flush=True,
        )
        rows.append(row)
    save_results(args.name, {"rows": rows})


if __name__ == "__main__":
    main()
