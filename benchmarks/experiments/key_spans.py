"""Same-run A/B: partial steps masked by comparing keys with each row's key spans
(``BlockMask.tile_key_spans``) against loading the uint8 tile, per kernel; and, for the forward of
masks with partial blocks, the 4-warp 128 x 64 tiles that fit two programs on an SM
(``common.SHORT_FULL_BLOCK_FORWARD``) against the default.

    python benchmarks/experiments/key_spans.py     # on a GPU; writes results/key_spans.json

"tiles" is the same mask with ``key_spans`` 0 (``BlockMask.without_key_spans``), which is how the
kernels masked every partial step before.
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
from sparseflash.kernels.common import SHORT_FULL_BLOCK_FORWARD  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

CASES = [  # (pattern, N, D, heads)
    ("local(1k) & causal", 32768, 128, 16),
    ("local(1k) & causal", 32768, 64, 32),
    ("local(256)+global(4)", 32768, 128, 16),
    ("strided(256)+local(128)", 8192, 128, 16),
]


def main() -> None:
    rows = []
    two_per_sm = SHORT_FULL_BLOCK_FORWARD[128, True]
    for pattern, n, head_dim, heads in CASES:
        q, k, v, dout = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = head_dim**-0.5
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        variants = {"tiles": (mask.without_key_spans(), None), "spans": (mask, None)}
        if head_dim == 128 and "global" not in pattern:
            variants["tiles 4w"] = (mask.without_key_spans(), two_per_sm)
            variants["spans 4w"] = (mask, two_per_sm)
        reference, _ = attention_forward(q, k, v, mask.without_key_spans(), scale)
        for repeat in range(2):
            for name, (m, config) in variants.items():
                out, lse = attention_forward(q, k, v, m, scale, config=config)
                assert torch.equal(out, reference) or (out - reference).abs().max() < 2e-2, f"{pattern} {name}: outputs differ"
                times = kernel_times(lambda: attention_forward(q, k, v, m, scale, config=config))
                if config is None:
                    times.update(kernel_times(lambda: attention_backward(dout, q, k, v, out, lse, m, scale)))
                row = {"pattern": pattern, "n": n, "head_dim": head_dim, "heads": heads, "variant": name, "repeat": repeat, "key_spans": mask.key_spans}
                row.update({f"{key}_ms": t for key, t in times.items()})
                print(f"{pattern:<24} {n // 1024}k D{head_dim} {name:<9} " + "  ".join(f"{key} {t:6.3f}" for key, t in times.items()), flush=True)
                rows.append(row)
    save_results("key_spans", {"rows": rows})


if __name__ == "__main__":
    main()
