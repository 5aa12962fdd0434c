"""Whether the all-key rows of ``global(g)`` should run apart (kernels/full_rows.py) at smaller
sizes now that launches are direct: ``local(256)+global(4)`` through ``sparseflash.attention``,
forward and forward + backward, with ``full_rows.MIN_APART_WORK`` at its default (whole below it)
and at 0 (always apart), alternating, same process.

Why: the threshold (20000 x 128 blocks x heads x head dim) was set when the split forward's three
launches cost 400-800 us of host time, which at 2k and 8k the GPU work could not hide (fourteenth
session). Direct launches (sixteenth session) cut each launcher's host time about in half.

    python benchmarks/experiments/apart_threshold.py     # on a GPU; writes results/apart_threshold.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels import full_rows  # noqa: E402
from sparseflash.kernels.launch import clear_prepared_launches  # noqa: E402

PATTERN = "local(256)+global(4)"
CASES = [  # (N, batch, heads, D): the benchmark's shapes, B*N = 16k tokens
    (2048, 8, 16, 128),
    (2048, 8, 32, 64),
    (8192, 2, 16, 128),
    (8192, 2, 32, 64),
    (16384, 1, 16, 128),
    (32768, 1, 16, 128),
]
SETTINGS = {"whole below the threshold": full_rows.MIN_APART_WORK, "always apart": 0}


def calls(n, batch, heads, head_dim):
    gen = torch.Generator(device="cuda").manual_seed(n + heads)
    q, k, v, dout = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        sparseflash.attention(*leaves, PATTERN).backward(dout)

    return {"fwd": lambda: sparseflash.attention(q, k, v, PATTERN), "fwdbwd": fwd_bwd}


def main() -> None:
    results = []
    for case in CASES:
        timed = calls(*case)
        outputs = {}
        for name, threshold in SETTINGS.items():
            full_rows.MIN_APART_WORK = threshold
            clear_prepared_launches()
            outputs[name] = timed["fwd"]().float()
        difference = (outputs["always apart"] - outputs["whole below the threshold"]).abs().max().item()
        row = {"n": case[0], "batch": case[1], "heads": case[2], "head_dim": case[3], "max_difference": difference}
        for mode, fn in timed.items():
            samples = {name: [] for name in SETTINGS}
            for _ in range(3):
                for name, threshold in SETTINGS.items():
                    full_rows.MIN_APART_WORK = threshold
                    clear_prepared_launches()
                    samples[name].append(float(do_bench(fn, warmup=25, rep=200, return_mode="median")))
            row[mode] = samples
            whole, apart = (sorted(samples[name])[1] for name in SETTINGS)
            print(f"N={case[0]} B={case[1]} H={case[2]} D={case[3]} {mode:6}: whole {whole:.3f} ms, apart {apart:.3f} ms "
                  f"({whole / apart:.2f}x; outputs differ by {difference:.1e})", flush=True)
        results.append(row)
    full_rows.MIN_APART_WORK = SETTINGS["whole below the threshold"]
    save_results("apart_threshold", {"pattern": PATTERN, "rows": results})


if __name__ == "__main__":
    main()
