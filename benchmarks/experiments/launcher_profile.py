"""Where a launcher's host time goes with direct launches: ``cProfile`` of the forward and the
backward launchers at N=256, one head (the GPU work is negligible), by own time.

    python benchmarks/experiments/launcher_profile.py [pattern ...]     # on a GPU; prints only
"""

from __future__ import annotations

import cProfile
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from host_overhead import host_microseconds  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402


def profile(name: str, fn, calls: int = 500, lines: int = 22) -> None:
    print(f"\n== {name}: {host_microseconds(fn, calls):.1f} us per call unprofiled")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(lines)


def main() -> None:
    q, k, v, dout = (torch.randn(1, 1, 256, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for pattern in sys.argv[1:] or ["dense", "local(1k) & causal"]:
        mask = sparseflash.compile_mask(pattern, 256, device="cuda")
        out, lse = attention_forward(q, k, v, mask, 0.1)
        profile(f"{pattern}: forward launcher", lambda: attention_forward(q, k, v, mask, 0.1))
        profile(f"{pattern}: backward launcher", lambda: attention_backward(dout, q, k, v, out, lse, mask, 0.1))


if __name__ == "__main__":
    main()
