"""Where the host time of a call goes: ``cProfile`` over 200 calls, printed by cumulative and by
own time (the GPU is left to catch up, so the host's own time is what is profiled).

    python benchmarks/experiments/host_profile.py 'local(256)+global(4)' 32768             # forward launcher
    python benchmarks/experiments/host_profile.py 'local(256)+global(4)' 32768 --backward  # attention() forward + backward
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import sparseflash
from sparseflash.kernels.forward import attention_forward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pattern")
    parser.add_argument("seq_len", type=int)
    parser.add_argument("--backward", action="store_true", help="forward + backward through attention() and autograd")
    parser.add_argument("--lines", type=int, default=30)
    args = parser.parse_args()
    q, k, v, dout = (torch.randn(1, 16, args.seq_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    if args.backward:
        pattern = sparseflash.parse(args.pattern)
        leaves = [t.requires_grad_(True) for t in (q, k, v)]

        def call():
            torch.autograd.grad(sparseflash.attention(*leaves, pattern), leaves, dout)
    else:
        mask = sparseflash.compile_mask(args.pattern, args.seq_len, device="cuda")

        def call():
            attention_forward(q, k, v, mask, 0.1)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(30):
        call()
    print(f"host time per call, unprofiled: {(time.perf_counter() - start) / 30 * 1e6:.0f} us")
    torch.cuda.synchronize()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(200):
        call()
    profile.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(profile)
    stats.sort_stats("cumulative").print_stats(args.lines)
    stats.sort_stats("tottime").print_stats(args.lines)


if __name__ == "__main__":
    main()
