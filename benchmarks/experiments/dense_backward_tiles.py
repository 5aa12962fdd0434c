"""Dense and causal backward at D=128, each kernel's tile, warps and stages chosen apart.

    python benchmarks/experiments/dense_backward_tiles.py   # on a GPU; writes results/dense_backward_tiles.json

Why: at 32k the dK/dV kernel spends 475 us a head per block product against dQ's 406
(wave_tails.json: 1898 us for 4 products, 1219 us for 3), and the first session's sweep that chose
the shared ``BackwardConfig(64, 128, 128, 64, 8 warps, 3 stages)`` ran before TMA, the backwards
walk and dQ beside dK/dV. ``BackwardConfig.dq_num_warps`` / ``dq_num_stages`` let the two kernels
differ.

1. Each dK/dV candidate with the default dQ, and each dQ candidate with the default dK/dV: GPU ms
   per call of each kernel (torch.profiler, 20 calls), run one after the other
   (``backward.BACKWARD_OVERLAP = False``), gradients compared with the default's.
2. The fastest dK/dV and the fastest dQ together against the default: the whole backward as it
   runs (dQ beside dK/dV), ``do_bench`` medians, alternating, 3 rounds.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
import sparseflash.kernels.backward as backward  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.common import BackwardConfig, default_backward_config  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

CASES = [("dense", 8192, 2), ("causal", 32768, 1)]  # (pattern, N, batch); 16 heads of 128, bf16
# (block_m1 queries a step, block_n1 keys, warps, stages)
DKDV = [(64, 128, 8, 2), (64, 128, 8, 4), (32, 128, 8, 3), (32, 128, 8, 4), (64, 64, 4, 2), (128, 128, 8, 2)]
# (block_m2 queries, block_n2 keys a step, warps, stages)
DQ = [(128, 64, 8, 2), (128, 64, 8, 4), (128, 128, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2), (128, 64, 4, 3)]
DEADLINE_S = 360


def with_dkdv(base: BackwardConfig, m1, n1, warps, stages) -> BackwardConfig:
    return replace(base, block_m1=m1, block_n1=n1, num_warps=warps, num_stages=stages, dq_num_warps=base.num_warps, dq_num_stages=base.num_stages)


def with_dq(base: BackwardConfig, m2, n2, warps, stages) -> BackwardConfig:
    return replace(base, block_m2=m2, block_n2=n2, dq_num_warps=warps, dq_num_stages=stages)


def relative_difference(grads, reference) -> float:
    return max(((g.float() - r.float()).abs().max() / r.float().abs().max()).item() for g, r in zip(grads, reference))


def run_case(pattern: str, n: int, batch: int, start: float, rows: list) -> dict:
    """Steps 1 and 2 for one case; appends step 1's rows to ``rows`` and returns step 2's."""
    q, k, v, dout = (torch.randn(batch, 16, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    mask = sparseflash.compile_mask(pattern, n, device="cuda")
    scale = 128**-0.5
    out, lse = attention_forward(q, k, v, mask, scale)
    default = default_backward_config(128, torch.bfloat16, mask)
    candidates = {"default": default}
    candidates.update({f"dkdv {c}": with_dkdv(default, *c) for c in DKDV})
    candidates.update({f"dq {c}": with_dq(default, *c) for c in DQ})
    backward.BACKWARD_OVERLAP = False
    reference = attention_backward(dout, q, k, v, out, lse, mask, scale, config=default)
    timed = {}
    for name, config in candidates.items():
        if time.monotonic() - start > DEADLINE_S:
            print("deadline: stopping the sweep", flush=True)
            break
        run = lambda config=config: attention_backward(dout, q, k, v, out, lse, mask, scale, config=config)  # noqa: E731
        try:
            difference = relative_difference(run(), reference)
            times = kernel_times(run)
        except Exception as error:  # noqa: BLE001 - a config that does not compile is a result too
            times, difference = {"error": f"{type(error).__name__}: {str(error)[:160]}"}, None
        timed[name] = times
        rows.append({"pattern": pattern, "n": n, "candidate": name, "difference": difference, **times})
        cells = "  ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in times.items())
        print(f"{pattern:<8} {n:>6} {name:<28} diff {difference if difference is None else f'{difference:.1e}'}  {cells}", flush=True)
    backward.BACKWARD_OVERLAP = None
    # 2. The fastest of each kernel together, the whole backward as it runs.
    ok = {name: t for name, t in timed.items() if "error" not in t}
    best_dkdv = min((name for name in ok if not name.startswith("dq ")), key=lambda name: ok[name]["dkdv"])
    best_dq = min((name for name in ok if not name.startswith("dkdv ")), key=lambda name: ok[name]["dq"])
    dq = candidates[best_dq]
    combined = replace(candidates[best_dkdv], block_m2=dq.block_m2, block_n2=dq.block_n2,
                       dq_num_warps=dq.dq_num_warps or dq.num_warps, dq_num_stages=dq.dq_num_stages or dq.num_stages)  # fmt: skip
    whole = {"default": [], "combined": []}
    for _ in range(3):
        for name, config in (("default", default), ("combined", combined)):
            whole[name].append(triton.testing.do_bench(lambda config=config: attention_backward(dout, q, k, v, out, lse, mask, scale, config=config), warmup=50, rep=300))
    print(f"{pattern:<8} {n:>6} whole backward: default {whole['default']} ms, {best_dkdv} + {best_dq}: {whole['combined']} ms", flush=True)
    return {"pattern": pattern, "n": n, "best_dkdv": best_dkdv, "best_dq": best_dq, "combined": repr(combined), **whole}


def main() -> None:
    start = time.monotonic()
    rows: list = []
    finals = [run_case(pattern, n, batch, start, rows) for pattern, n, batch in CASES]
    save_results("dense_backward_tiles", {"rows": rows, "whole": finals})


if __name__ == "__main__":
    main()
