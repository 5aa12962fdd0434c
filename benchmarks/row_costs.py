"""Where short rows spend their time: a fixed cost per program against a cost per block.

    python benchmarks/row_costs.py            # on a GPU; writes results/row_costs.json (and to $OUT)
    python benchmarks/row_costs.py --forward-configs "ForwardConfig(128, 64, 8, 2, list_slots=16)" --name row_costs_b

``chunk(c)`` with c a multiple of 128 gives every query tile exactly c/128 full blocks and no
partial ones, so timing the forward and backward over c = 128 ... 2048 (N=32k, D=128, bf16, 16
heads, the default configs) and fitting ``time = programs * (fixed + per_block * blocks)`` per
multiprocessor wave separates the per-program cost (prologue, epilogue, launch) from the per-block
cost. ``local(256)`` (3 full + 2 partial blocks a row) against ``chunk(640)`` (5 full) prices the
partial blocks; ``local(256)+global(4)`` adds a partial global column and a full global row.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import triton

import sparseflash
from results_file import save_results
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.common import ForwardConfig  # noqa: F401 (for --forward-configs)
from sparseflash.kernels.forward import attention_forward

SEQ_LEN, HEAD_DIM, HEADS = 32768, 128, 16
CHUNKS = [128, 256, 384, 512, 640, 1024, 2048]
OTHERS = ["local(256)", "local(256)+global(4)", "local(1k) & causal", "butterfly(128)"]


def time_pattern(pattern: str, q, k, v, dout, forward_config, with_backward: bool) -> dict:
    mask = sparseflash.compile_mask(pattern, SEQ_LEN, device="cuda")
    scale = HEAD_DIM**-0.5
    out, lse = attention_forward(q, k, v, mask, scale, config=forward_config)
    row = {
        "pattern": pattern,
        "blocks": (mask.n_full + mask.n_partial) * HEADS,
        "partial_blocks": mask.n_partial * HEADS,
        "fwd_ms": triton.testing.do_bench(lambda: attention_forward(q, k, v, mask, scale, config=forward_config)),
    }
    if with_backward:
        row["bwd_ms"] = triton.testing.do_bench(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale))
    return row


def fit_costs(chunk_rows: list, passes) -> dict:
    """Per multiprocessor, n_programs / n_sm programs run one after another, each costing
    fixed + per_block * blocks_per_row: a straight line through the chunk rows."""
    n_programs = SEQ_LEN // 128 * HEADS
    n_sm = torch.cuda.get_device_properties(0).multi_processor_count
    blocks_per_row = np.array([r["blocks"] / n_programs for r in chunk_rows])
    fit = {}
    for pass_ in passes:
        us_per_program = np.array([r[f"{pass_}_ms"] for r in chunk_rows]) * 1e3 / (n_programs / n_sm)
        per_block, fixed = np.polyfit(blocks_per_row, us_per_program, 1)
        fit[pass_] = {"fixed_us_per_program": fixed, "us_per_block": per_block}
    return fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forward-configs", default="None", help="';'-separated ForwardConfig(...) expressions (None: the default); the backward runs with the first only")
    parser.add_argument("--name", default="row_costs", help="results/<name>.json")
    args = parser.parse_args()
    q, k, v, dout = (torch.randn(1, HEADS, SEQ_LEN, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    results = []
    for index, text in enumerate(args.forward_configs.split(";")):
        config = eval(text)  # a ForwardConfig expression from the command line
        with_backward = index == 0
        rows = [time_pattern(f"chunk({c})", q, k, v, dout, config, with_backward) for c in CHUNKS]
        rows += [time_pattern(p, q, k, v, dout, config, with_backward) for p in OTHERS]
        fit = fit_costs(rows[: len(CHUNKS)], ("fwd", "bwd") if with_backward else ("fwd",))
        print(f"== forward config {text}: " + json.dumps(fit))
        for r in rows:
            bwd = f"  bwd {r['bwd_ms']:7.3f} ms" if "bwd_ms" in r else ""
            print(f"{r['pattern']:<24} blocks {r['blocks']:>8}  partial {r['partial_blocks']:>7}  fwd {r['fwd_ms']:7.3f} ms{bwd}", flush=True)
        results.append({"forward_config": text, "rows": rows, "fit_per_sm": fit})
    save_results(args.name, {"results": results})


if __name__ == "__main__":
    main()
