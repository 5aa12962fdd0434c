"""What one long line costs: the global row and the global column of ``global(4)`` timed alone and
inside ``local(256)+global(4)``, under each way of walking the blocks narrow across them.

    python benchmarks/experiments/long_line.py     # on a GPU; writes results/long_line_2.json

Patterns (N=32k, D=128, 16 heads, bf16): ``global(4) - sink(4)`` is the global row alone (every
other row is empty, so the forward and dQ times are the row's programs' times), ``sink(4)`` the
global column alone (the dK/dV time is the column's), and the whole ``local(256)+global(4)``.
Variants: kernel tiles that miss a line's across window walking or skipping its blocks narrow
across it (the ``*_SKIP_ACROSS`` switches, set for all three kernels), lines split (default) or
whole (``split_blocks=0``) or cut in items of 16, 32 or 64 blocks. Kernel times from ``torch.profiler``
(line_costs.kernel_times).

results/long_line.json came from commit 9232794, whose kernels could also walk those blocks with
the window's 16 rows (keys) alone ("steps" variants, since removed: no gain, BENCHMARKS.md).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
import sparseflash.kernels.backward as backward  # noqa: E402
import sparseflash.kernels.forward as forward  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.common import default_backward_config, default_forward_config  # noqa: E402

PATTERNS = ("global(4) - sink(4)", "sink(4)", "local(256)+global(4)")
# name: (skip the across blocks where a tile misses the window, split_blocks override or None)
VARIANTS = {
    "walk": (False, None),
    "skip": (True, None),
    "walk,whole": (False, 0),
    "skip,whole": (True, 0),
    "walk,split16": (False, 16),
    "walk,split32": (False, 32),
    "walk,split64": (False, 64),
}


def set_skip(skip: bool) -> None:
    forward.FORWARD_SKIP_ACROSS = backward.DKDV_SKIP_ACROSS = backward.DQ_SKIP_ACROSS = skip


def main() -> None:
    n, heads, d = 32768, 16, 128
    q, k, v, dout = (torch.randn(1, heads, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    scale = d**-0.5
    default = forward.FORWARD_SKIP_ACROSS, backward.DKDV_SKIP_ACROSS, backward.DQ_SKIP_ACROSS
    rows = []
    for pattern in PATTERNS:
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        fwd_config = default_forward_config(d, q.dtype, mask)
        bwd_config = default_backward_config(d, q.dtype, mask)
        for name, (skip, split_blocks) in VARIANTS.items():
            set_skip(skip)
            fc = fwd_config if split_blocks is None else replace(fwd_config, split_blocks=split_blocks)
            bc = bwd_config if split_blocks is None else replace(bwd_config, split_blocks=split_blocks)
            out, lse = forward.attention_forward(q, k, v, mask, scale, config=fc)
            times = kernel_times(lambda: forward.attention_forward(q, k, v, mask, scale, config=fc))
            times.update(kernel_times(lambda: backward.attention_backward(dout, q, k, v, out, lse, mask, scale, config=bc)))
            rows.append({"pattern": pattern, "variant": name, **{f"{key}_ms": t for key, t in times.items()}})
            print(f"{pattern:<22} {name:<20} " + "  ".join(f"{key} {t:6.3f}" for key, t in times.items()), flush=True)
    forward.FORWARD_SKIP_ACROSS, backward.DKDV_SKIP_ACROSS, backward.DQ_SKIP_ACROSS = default
    save_results("long_line_2", {"seq_len": n, "heads": heads, "head_dim": d, "rows": rows})


if __name__ == "__main__":
    main()
