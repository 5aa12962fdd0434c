"""What splitting long mask lines across programs (kernels/split.py) changes, on and off.

    python benchmarks/split_lines.py            # on a GPU; writes split_lines.json (and to $OUT)
    python benchmarks/split_lines.py --heads 16 --splits auto,0,16,32,64 --patterns 'local(256)+global(4),local(256)' --name split_lines_16h

For ``local(256)+global(4)`` (one row and one column hold every block) at N=32k, D=128, bf16, for a
few head counts: forward and backward kernel times (``do_bench`` medians) with the automatic split
and with ``split_blocks=0`` (every line one program), or with the item lengths given. Few heads
leave the GPU idle behind the long lines; many heads hide them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch
import triton

import sparseflash
from results_file import save_results
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.common import default_backward_config, default_forward_config
from sparseflash.kernels.forward import attention_forward

PATTERN = "local(256)+global(4)"


def parse_split(text: str) -> int | None:
    return None if text == "auto" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", default="1,4,16", help="comma-separated head counts")
    parser.add_argument("--splits", default="auto,0", help="item lengths in blocks: 'auto' (the launchers' rule), 0 (never), or a number")
    parser.add_argument("--patterns", default=PATTERN, help="comma-separated patterns")
    parser.add_argument("--name", default="split_lines", help="results/<name>.json")
    args = parser.parse_args()
    rows = []
    seq_len, head_dim = 32768, 128
    for pattern in args.patterns.split(","):
        mask = sparseflash.compile_mask(pattern, seq_len, device="cuda")
        for heads in map(int, args.heads.split(",")):
            q, k, v, dout = (torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            scale = head_dim**-0.5
            row = {"pattern": pattern, "seq_len": seq_len, "head_dim": head_dim, "heads": heads}
            for label in args.splits.split(","):
                split = parse_split(label)
                fwd_config = replace(default_forward_config(head_dim, q.dtype, mask), split_blocks=split)
                bwd_config = replace(default_backward_config(head_dim, q.dtype, mask), split_blocks=split)
                out, lse = attention_forward(q, k, v, mask, scale, config=fwd_config)
                row[f"fwd_ms_{label}"] = triton.testing.do_bench(lambda: attention_forward(q, k, v, mask, scale, config=fwd_config))
                row[f"bwd_ms_{label}"] = triton.testing.do_bench(
                    lambda: attention_backward(dout, q, k, v, out, lse, mask, scale, config=bwd_config)
                )
            if {"auto", "0"} <= set(args.splits.split(",")):
                row["fwd_speedup"] = row["fwd_ms_0"] / row["fwd_ms_auto"]
                row["bwd_speedup"] = row["bwd_ms_0"] / row["bwd_ms_auto"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    save_results(args.name, {"rows": rows})


if __name__ == "__main__":
    main()
