"""Same-run A/B: delta = rowsum(O * dO) computed by the dQ kernel, which then runs before dK/dV
(``backward.DELTA_IN_DQ``), against a preprocess pass before both. Kernel times summed per backward
call, and the whole backward's time.

    python benchmarks/experiments/delta_in_dq.py     # on a GPU; writes results/delta_in_dq.json
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
from sparseflash.kernels.forward import attention_forward  # noqa: E402

CASES = [  # (pattern, N, batch, heads); D = 128
    ("local(1k) & causal", 32768, 1, 16),
    ("local(256)+global(4)", 32768, 1, 16),
    ("butterfly(128)", 32768, 1, 16),
    ("causal", 8192, 2, 16),
    ("dense", 8192, 2, 16),
]


def main() -> None:
    rows = []
    for pattern, n, batch, heads in CASES:
        q, k, v, dout = (torch.randn(batch, heads, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = 128**-0.5
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        out, lse = attention_forward(q, k, v, mask, scale)
        results = {}
        for repeat in range(2):
            for delta_in_dq in (False, True):
                backward_kernels.DELTA_IN_DQ = delta_in_dq
                grads = attention_backward(dout, q, k, v, out, lse, mask, scale)
                results.setdefault(delta_in_dq, grads)
                times = kernel_times(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale))
                whole = triton.testing.do_bench(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale), warmup=50, rep=300)
                name = "delta in dQ" if delta_in_dq else "preprocess"
                row = {"pattern": pattern, "n": n, "batch": batch, "heads": heads, "variant": name, "repeat": repeat, "backward_ms": whole}
                row.update({f"{key}_ms": t for key, t in times.items()})
                print(f"{pattern:<22} {n // 1024}k {name:<12} backward {whole:7.3f}  " + "  ".join(f"{key} {t:6.3f}" for key, t in times.items()), flush=True)
                rows.append(row)
        for a, b in zip(results[False], results[True]):
            assert torch.equal(a, b), f"{pattern}: gradients differ between the two ways"
    backward_kernels.DELTA_IN_DQ = True
    save_results("delta_in_dq", {"rows": rows})


if __name__ == "__main__":
    main()
