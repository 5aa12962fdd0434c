"""Same-run A/B of the ways kernel tiles walk the blocks narrow across their line (common.ACROSS_*:
walk them in whole tiles, skip them where the tile misses the line's window, or step through the
window alone), for the forward, dK/dV and dQ kernels.

    python benchmarks/experiments/across_skip.py     # on a GPU; writes results/across_skip.json

Each mode is set for all three kernels at once (forward.FORWARD_ACROSS, backward.DKDV_ACROSS,
backward.DQ_ACROSS); each kernel's time comes from ``torch.profiler`` (line_costs.kernel_times).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
import sparseflash.kernels.backward as backward  # noqa: E402
import sparseflash.kernels.forward as forward  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.common import ACROSS_SKIP, ACROSS_STEPS, ACROSS_WALK  # noqa: E402

MODES = {"walk": ACROSS_WALK.value, "skip": ACROSS_SKIP.value, "steps": ACROSS_STEPS.value}


def set_mode(mode: int) -> None:
    forward.FORWARD_ACROSS = backward.DKDV_ACROSS = backward.DQ_ACROSS = mode


def main() -> None:
    rows = []
    default = forward.FORWARD_ACROSS, backward.DKDV_ACROSS, backward.DQ_ACROSS
    for n, heads in ((32768, 16), (8192, 16), (32768, 4)):
        q, k, v, dout = (torch.randn(1, heads, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = 128**-0.5
        mask = sparseflash.compile_mask("local(256)+global(4)", n, device="cuda")
        for repeat in range(2):
            for name, mode in MODES.items():
                set_mode(mode)
                out, lse = forward.attention_forward(q, k, v, mask, scale)
                times = kernel_times(lambda: forward.attention_forward(q, k, v, mask, scale))
                times.update(kernel_times(lambda: backward.attention_backward(dout, q, k, v, out, lse, mask, scale)))
                row = {"n": n, "heads": heads, "variant": name, "repeat": repeat, **{f"{key}_ms": t for key, t in times.items()}}
                print(f"{n // 1024}k H{heads} {name:<6} " + "  ".join(f"{key} {t:6.3f}" for key, t in times.items()), flush=True)
                rows.append(row)
    forward.FORWARD_ACROSS, backward.DKDV_ACROSS, backward.DQ_ACROSS = default
    save_results("across_skip_2", {"pattern": "local(256)+global(4)", "modes": MODES, "rows": rows})


if __name__ == "__main__":
    main()
