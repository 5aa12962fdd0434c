"""Run one pass of one case a few times, for a profiler to catch (Nsight Compute, Nsight Systems).

    ncu --kernel-name regex:dkdv --launch-skip 2 --launch-count 1 --section SpeedOfLight \\
        python benchmarks/profile_once.py 'local(8192)' --seq-len 8192 --pass bwd --dkdv-walk 1

bf16, D=128, default configs; the first call compiles, so skip the first launches of the kernel
of interest. ``--dkdv-walk`` / ``--forward-walk`` set ``backward.DKDV_WALK`` / ``forward.FORWARD_WALK``
(1 forwards, 2 backwards; ``common.WALK_*``).
"""

from __future__ import annotations

import argparse

import torch

import sparseflash
import sparseflash.kernels.backward as backward
import sparseflash.kernels.forward as forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pattern")
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--pass", dest="pass_", choices=("fwd", "bwd"), default="fwd")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--dkdv-walk", type=int)
    parser.add_argument("--forward-walk", type=int)
    args = parser.parse_args()
    if args.dkdv_walk is not None:
        backward.DKDV_WALK = args.dkdv_walk
    if args.forward_walk is not None:
        forward.FORWARD_WALK = args.forward_walk
    torch.manual_seed(0)
    mask = sparseflash.compile_mask(args.pattern, args.seq_len, device="cuda")
    q, k, v, dout = (torch.randn(args.batch, args.heads, args.seq_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    scale = 128**-0.5
    out, lse = forward.attention_forward(q, k, v, mask, scale)
    for _ in range(args.calls):
        if args.pass_ == "fwd":
            forward.attention_forward(q, k, v, mask, scale)
        else:
            backward.attention_backward(dout, q, k, v, out, lse, mask, scale)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
