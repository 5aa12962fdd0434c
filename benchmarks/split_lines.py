"""What splitting long mask lines across programs (kernels/split.py) changes, on and off.

    python benchmarks/split_lines.py            # on a GPU; writes split_lines.json (and to $OUT)

For ``local(256)+global(4)`` (one row and one column hold every block) at N=32k, D=128, bf16, for a
few head counts: forward and backward kernel times (``do_bench`` medians) with the automatic split
and with ``split_blocks=0`` (every line one program). Few heads leave the GPU idle behind the long
lines; many heads hide them.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import torch
import triton

import sparseflash
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.common import default_backward_config, default_forward_config
from sparseflash.kernels.forward import attention_forward

PATTERN = "local(256)+global(4)"


def main() -> None:
    rows = []
    seq_len, head_dim = 32768, 128
    mask = sparseflash.compile_mask(PATTERN, seq_len, device="cuda")
    for heads in (1, 4, 16):
        q, k, v, dout = (torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = head_dim**-0.5
        row = {"pattern": PATTERN, "seq_len": seq_len, "head_dim": head_dim, "heads": heads}
        for label, split in (("auto", None), ("off", 0)):
            fwd_config = replace(default_forward_config(head_dim, q.dtype, mask), split_blocks=split)
            bwd_config = replace(default_backward_config(head_dim, q.dtype, mask), split_blocks=split)
            out, lse = attention_forward(q, k, v, mask, scale, config=fwd_config)
            row[f"fwd_ms_{label}"] = triton.testing.do_bench(lambda: attention_forward(q, k, v, mask, scale, config=fwd_config))
            row[f"bwd_ms_{label}"] = triton.testing.do_bench(
                lambda: attention_backward(dout, q, k, v, out, lse, mask, scale, config=bwd_config)
            )
        row["fwd_speedup"] = row["fwd_ms_off"] / row["fwd_ms_auto"]
        row["bwd_speedup"] = row["bwd_ms_off"] / row["bwd_ms_auto"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    text = json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1)
    Path(__file__).parent.joinpath("results", "split_lines.json").write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "split_lines.json").write_text(text)


if __name__ == "__main__":
    main()
