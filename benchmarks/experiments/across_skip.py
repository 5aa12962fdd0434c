"""Same-run A/B: kernel tiles skipping the blocks narrow across their line (common.partial_parts)
against walking them, for the forward, dK/dV and dQ kernels.

    python benchmarks/experiments/across_skip.py     # on a GPU; writes results/across_skip.json

"without" is the same mask with every line's across part emptied into its ordinary part
(``across_*_starts`` set to ``narrow_*_starts``), which is how the kernels walked it before.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402


def without_across(mask):
    tensors = dict(mask._tensors)
    tensors["across_kv_starts"] = tensors["narrow_kv_starts"]
    tensors["across_q_starts"] = tensors["narrow_q_starts"]
    fields = ("pattern", "q_len", "kv_len", "block_m", "block_n", "allowed_pairs", "max_blocks_per_row", "max_blocks_per_col", "device", "narrow_row_blocks", "narrow_col_blocks")
    return sparseflash.BlockMask(**{f: getattr(mask, f) for f in fields}, tensors=tensors)


def main() -> None:
    rows = []
    for n, heads in ((32768, 16), (8192, 16), (32768, 4)):
        q, k, v, dout = (torch.randn(1, heads, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = 128**-0.5
        mask = sparseflash.compile_mask("local(256)+global(4)", n, device="cuda")
        variants = {"with": mask, "without": without_across(mask)}
        for repeat in range(2):
            for name, m in variants.items():
                out, lse = attention_forward(q, k, v, m, scale)
                times = kernel_times(lambda: attention_forward(q, k, v, m, scale))
                times.update(kernel_times(lambda: attention_backward(dout, q, k, v, out, lse, m, scale)))
                row = {"n": n, "heads": heads, "variant": name, "repeat": repeat, **{f"{key}_ms": t for key, t in times.items()}}
                print(f"{n // 1024}k H{heads} {name:<8} " + "  ".join(f"{key} {t:6.3f}" for key, t in times.items()), flush=True)
                rows.append(row)
    save_results("across_skip", {"pattern": "local(256)+global(4)", "rows": rows})


if __name__ == "__main__":
    main()
