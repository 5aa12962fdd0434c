"""Where the host time of one forward launcher call goes: ``cProfile`` over 200 calls, printed by
cumulative time (the GPU is left to catch up, so the host's own time is what is profiled).

    python benchmarks/experiments/host_profile.py 'local(256)+global(4)' 32768    # on a GPU
"""

from __future__ import annotations

import cProfile
import pstats
import sys

import torch

import sparseflash
from sparseflash.kernels.forward import attention_forward


def main() -> None:
    pattern, seq_len = sys.argv[1], int(sys.argv[2])
    mask = sparseflash.compile_mask(pattern, seq_len, device="cuda")
    q, k, v = (torch.randn(1, 16, seq_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for _ in range(3):
        attention_forward(q, k, v, mask, 0.1)
    torch.cuda.synchronize()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        attention_forward(q, k, v, mask, 0.1)
    profile.disable()
    torch.cuda.synchronize()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
