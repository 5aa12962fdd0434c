"""How much a launch's last, partly filled wave costs: dense kernels timed per head as the head
count crosses a wave boundary.

A dense launch at D=128 runs one program per multiprocessor (132 on the H200) and every program
does the same work. At 32k tokens a head is 256 query (or key) tiles, so 16 heads are 4096
programs: 31 full waves and a 32nd holding 4. If the last wave costs as much as a full one, time
per head is 32/16 = 2.00 waves at 16 heads, 30/15 = 2.00 at 15 and 33/17 = 1.94 at 17; if programs
balanced perfectly it would be 1.94 everywhere. At 8k (B=1, 64 tiles a head) 32 heads are 15.5
waves (16 paid) and 33 heads exactly 16.

    python benchmarks/experiments/wave_tails.py      # on a GPU; writes results/wave_tails.json
    python benchmarks/experiments/wave_tails.py --seq-len 8192 --heads 30,31,32,33,34 --name wave_tails_8k

Kernel times (``line_costs.kernel_times``), bf16, D=128, B=1: forward, and the backward's dK/dV and
dQ kernels, each divided by the head count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

# (N, head counts around a wave boundary)
CASES = [(32768, (15, 16, 17)), (8192, (31, 32, 33))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, help="one sequence length (default: the CASES)")
    parser.add_argument("--heads", help="comma-separated head counts, with --seq-len")
    parser.add_argument("--name", default="wave_tails")
    args = parser.parse_args()
    cases = [(args.seq_len, tuple(int(h) for h in args.heads.split(",")))] if args.seq_len else CASES
    rows = []
    for seq_len, head_counts in cases:
        mask = sparseflash.compile_mask("dense", seq_len, device="cuda")
        for heads in head_counts:
            torch.manual_seed(0)
            q, k, v, dout = (torch.randn(1, heads, seq_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            scale = 128**-0.5
            out, lse = attention_forward(q, k, v, mask, scale)
            times = kernel_times(lambda: attention_forward(q, k, v, mask, scale), calls=10)
            times.update(kernel_times(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale), calls=5))
            per_head = {name: ms / heads for name, ms in times.items()}
            rows.append(dict(seq_len=seq_len, heads=heads, ms=times, ms_per_head=per_head))
            print(f"{seq_len // 1024}k {heads:3d} heads  " + "  ".join(f"{n} {t * 1e3:8.2f} us/head" for n, t in per_head.items()), flush=True)
    save_results(args.name, {"rows": rows})


if __name__ == "__main__":
    main()
