"""What one long line costs: the global row and the global column of ``global(4)`` timed alone and
inside ``local(256)+global(4)``, under each way of walking the blocks narrow across them.

    python benchmarks/experiments/long_line.py     # on a GPU; writes results/long_line.json

Patterns (N=32k, D=128, 16 heads, bf16): ``global(4) - sink(4)`` is the global row alone (every
other row is empty, so the forward and dQ times are the row's programs' times), ``sink(4)`` the
global column alone (the dK/dV time is the column's), and the whole ``local(256)+global(4)``.
Variants: ``common.ACROSS_*`` for all three kernels, window steps reading the block list per step
or 16 entries at a time (``ACROSS_SLOTS``), lines split (default) or whole (``split_blocks=0``).
Kernel times from ``torch.profiler`` (line_costs.kernel_times).
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
from sparseflash.kernels.common import ACROSS_STEPS, ACROSS_WALK, default_backward_config, default_forward_config  # noqa: E402

PATTERNS = ("global(4) - sink(4)", "sink(4)", "local(256)+global(4)")
# name: (ACROSS mode, ACROSS_SLOTS, split_blocks override or None for the default)
VARIANTS = {
    "walk": (ACROSS_WALK.value, 0, None),
    "steps": (ACROSS_STEPS.value, 0, None),
    "steps+slots": (ACROSS_STEPS.value, 16, None),
    "walk,whole": (ACROSS_WALK.value, 0, 0),
    "steps+slots,whole": (ACROSS_STEPS.value, 16, 0),
    "steps+slots,split32": (ACROSS_STEPS.value, 16, 32),
}


def set_variant(mode: int, slots: int) -> None:
    forward.FORWARD_ACROSS = backward.DKDV_ACROSS = backward.DQ_ACROSS = mode
    forward.ACROSS_SLOTS = backward.ACROSS_SLOTS = slots


def main() -> None:
    n, heads, d = 32768, 16, 128
    q, k, v, dout = (torch.randn(1, heads, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    scale = d**-0.5
    default = forward.FORWARD_ACROSS, backward.DKDV_ACROSS, backward.DQ_ACROSS, forward.ACROSS_SLOTS
    rows = []
    for pattern in PATTERNS:
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        fwd_config = default_forward_config(d, q.dtype, mask)
        bwd_config = default_backward_config(d, q.dtype, mask)
        for name, (mode, slots, split_blocks) in VARIANTS.items():
            set_variant(mode, slots)
            fc = fwd_config if split_blocks is None else replace(fwd_config, split_blocks=split_blocks)
            bc = bwd_config if split_blocks is None else replace(bwd_config, split_blocks=split_blocks)
            out, lse = forward.attention_forward(q, k, v, mask, scale, config=fc)
            times = kernel_times(lambda: forward.attention_forward(q, k, v, mask, scale, config=fc))
            times.update(kernel_times(lambda: backward.attention_backward(dout, q, k, v, out, lse, mask, scale, config=bc)))
            rows.append({"pattern": pattern, "variant": name, **{f"{key}_ms": t for key, t in times.items()}})
            print(f"{pattern:<22} {name:<20} " + "  ".join(f"{key} {t:6.3f}" for key, t in times.items()), flush=True)
    forward.FORWARD_ACROSS, backward.DKDV_ACROSS, backward.DQ_ACROSS, forward.ACROSS_SLOTS = default
    backward.ACROSS_SLOTS = default[3]
    save_results("long_line", {"seq_len": n, "heads": heads, "head_dim": d, "rows": rows})


if __name__ == "__main__":
    main()
