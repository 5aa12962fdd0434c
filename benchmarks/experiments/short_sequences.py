"""Why butterfly(128) at 2k (B=8) ran slower in ``results/h200-full-2.json`` than in the second
session's table: same-run forward tiles (the two-per-SM default against the former defaults) and
backward delta passes (in dQ against a preprocess pass), kernel times and whole-call times.

    python benchmarks/experiments/short_sequences.py     # on a GPU; writes results/short_sequences.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
import sparseflash.kernels.backward as backward_kernels  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.common import ForwardConfig  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

CASES = [  # (pattern, N, batch, heads, D)
    ("butterfly(128)", 2048, 8, 16, 128),
    ("butterfly(128)", 2048, 8, 32, 64),
    ("local(1k) & causal", 2048, 8, 16, 128),
    ("butterfly(128)", 8192, 2, 16, 128),
]
FORWARD = {  # None: the default for the mask
    "default": None,
    "8w 128x128 slots": ForwardConfig(128, 128, 8, 2, list_slots=16),
    "4w 64x64 3st": ForwardConfig(64, 64, 4, 3),
}


def main() -> None:
    rows = []
    for pattern, n, batch, heads, head_dim in CASES:
        q, k, v, dout = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = head_dim**-0.5
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        out, lse = attention_forward(q, k, v, mask, scale)
        for repeat in range(2):
            for name, config in FORWARD.items():
                if head_dim == 64 and config is not None and config.block_n == 128:
                    continue
                run = lambda: attention_forward(q, k, v, mask, scale, config=config)  # noqa: E731
                times = {"whole": triton.testing.do_bench(run, warmup=50, rep=300), **kernel_times(run)}
                rows.append({"pattern": pattern, "n": n, "batch": batch, "heads": heads, "head_dim": head_dim, "pass": "forward", "variant": name, "repeat": repeat, **times})
                print(f"{pattern:<20} {n // 1024}k D{head_dim} forward  {name:<18} " + "  ".join(f"{key} {t:6.3f}" for key, t in times.items()), flush=True)
            for delta_in_dq in (False, True):
                backward_kernels.DELTA_IN_DQ = delta_in_dq
                run = lambda: attention_backward(dout, q, k, v, out, lse, mask, scale)  # noqa: E731
                times = {"whole": triton.testing.do_bench(run, warmup=50, rep=300), **kernel_times(run)}
                name = "delta in dQ" if delta_in_dq else "preprocess"
                rows.append({"pattern": pattern, "n": n, "batch": batch, "heads": heads, "head_dim": head_dim, "pass": "backward", "variant": name, "repeat": repeat, **times})
                print(f"{pattern:<20} {n // 1024}k D{head_dim} backward {name:<18} " + "  ".join(f"{key} {t:6.3f}" for key, t in times.items()), flush=True)
            backward_kernels.DELTA_IN_DQ = None
    save_results("short_sequences", {"rows": rows})


if __name__ == "__main__":
    main()
