"""Short-row backward tiles, each kernel timed apart: which dK/dV and which dQ tile (and warps,
stages) is fastest on its own, to see whether a pair the shared ``BackwardConfig.num_warps`` /
``num_stages`` cannot express would beat the default.

    python benchmarks/experiments/backward_tiles.py   # on a GPU; writes results/backward_tiles.json

GPU milliseconds per call of the dK/dV and dQ kernels (torch.profiler, 20 calls; with the short-row
default the dQ kernel also computes delta), bf16, D=128, B=1, 16 heads.
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
from sparseflash.kernels.common import BackwardConfig  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

CASES = [("local(1k) & causal", 32768), ("butterfly(128)", 32768), ("local(1k) & causal", 131072)]
CONFIGS = {  # dK/dV: block_m1 queries a step x block_n1 keys; dQ: block_m2 queries x block_n2 keys a step
    "64x64 / 64x64, 4 warps, 2 stages (default)": BackwardConfig(64, 64, 64, 64, num_warps=4, num_stages=2),
    "64x64 / 64x64, 4 warps, 2 stages, spans": BackwardConfig(64, 64, 64, 64, num_warps=4, num_stages=2, key_spans=True),
    "64x64 / 64x64, 8 warps, 2 stages": BackwardConfig(64, 64, 64, 64, num_warps=8, num_stages=2),
    "64x128 / 128x64, 8 warps, 2 stages": BackwardConfig(64, 128, 128, 64, num_warps=8, num_stages=2),
    "64x128 / 128x64, 8 warps, 3 stages": BackwardConfig(64, 128, 128, 64, num_warps=8, num_stages=3),
    "32x128 / 128x32, 8 warps, 2 stages": BackwardConfig(32, 128, 128, 32, num_warps=8, num_stages=2),
    "128x64 / 64x128, 8 warps, 2 stages": BackwardConfig(128, 64, 64, 128, num_warps=8, num_stages=2),
    "32x64 / 64x32, 4 warps, 2 stages": BackwardConfig(32, 64, 64, 32, num_warps=4, num_stages=2),
}


def main() -> None:
    rows = []
    for pattern, n in CASES:
        q, k, v, dout = (torch.randn(1, 16, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        scale = 128**-0.5
        out, lse = attention_forward(q, k, v, mask, scale)
        for name, config in CONFIGS.items():
            try:
                times = kernel_times(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale, config=config))
            except Exception as error:  # noqa: BLE001 - a config that does not compile is a result too
                times = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            rows.append({"pattern": pattern, "n": n, "config": name, **times})
            cells = "  ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in times.items())
            print(f"{pattern:<20} {n:>6}  {name:<46} {cells}", flush=True)
        del q, k, v, dout, out, lse
    save_results("backward_tiles", {"rows": rows})


if __name__ == "__main__":
    main()
