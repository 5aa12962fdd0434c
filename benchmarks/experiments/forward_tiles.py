"""Short-row forward tiles: whether smaller query tiles, which fit three programs a
multiprocessor instead of two, hide more latency (the short-row forwards are latency bound: an
eligible warp in 30-38% of cycles, results/ncu/ncu_fwd_*.txt).

    python benchmarks/experiments/forward_tiles.py   # on a GPU; writes results/forward_tiles.json

GPU milliseconds per call of the forward kernel (torch.profiler, 20 calls), bf16, D=128, B=1, 16 heads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.common import ForwardConfig  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

CASES = [("local(1k) & causal", 32768), ("butterfly(128)", 32768), ("local(256)", 32768), ("local(1k) & causal", 131072)]
CONFIGS = {  # BLOCK_M queries x BLOCK_N keys a step
    "128x64, 4 warps, 2 stages, spans (default)": ForwardConfig(128, 64, num_warps=4, num_stages=2, key_spans=True),
    "128x128, 8 warps, 2 stages, 16 slots": ForwardConfig(128, 128, num_warps=8, num_stages=2, list_slots=16),
    "64x64, 4 warps, 2 stages, spans": ForwardConfig(64, 64, num_warps=4, num_stages=2, key_spans=True),
    "64x64, 4 warps, 3 stages, spans": ForwardConfig(64, 64, num_warps=4, num_stages=3, key_spans=True),
    "64x128, 4 warps, 2 stages, spans": ForwardConfig(64, 128, num_warps=4, num_stages=2, key_spans=True),
    "64x128, 4 warps, 3 stages, spans": ForwardConfig(64, 128, num_warps=4, num_stages=3, key_spans=True),
    "128x32, 4 warps, 3 stages, spans": ForwardConfig(128, 32, num_warps=4, num_stages=3, key_spans=True),
}


def main() -> None:
    rows = []
    for pattern, n in CASES:
        q, k, v = (torch.randn(1, 16, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        scale = 128**-0.5
        for name, config in CONFIGS.items():
            try:
                times = kernel_times(lambda: attention_forward(q, k, v, mask, scale, config=config))
            except Exception as error:  # noqa: BLE001 - a config that does not compile is a result too
                times = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            rows.append({"pattern": pattern, "n": n, "config": name, **times})
            cells = "  ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in times.items())
            print(f"{pattern:<20} {n:>6}  {name:<46} {cells}", flush=True)
        del q, k, v
    save_results("forward_tiles", {"rows": rows})


if __name__ == "__main__":
    main()
