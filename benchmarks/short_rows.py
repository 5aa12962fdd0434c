"""Forward launch settings for short rows (bands, butterflies): tiles, stages, and block lists read
into registers (``ForwardConfig.list_slots``) or walked as runs, against the default config.

    python benchmarks/short_rows.py [pattern ...]   # on a GPU; writes results/short_rows.json (and to $OUT)

For each case, bf16: the forward kernel time (``do_bench`` median) of the default config and of
each variant. Every variant's output is compared with the default's first: a variant that computes
something else is reported WRONG, not timed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import torch
import triton

import sparseflash
from results_file import save_results
from sparseflash.kernels.common import ForwardConfig, default_forward_config
from sparseflash.kernels.forward import attention_forward

# (pattern, N, head dim, heads)
CASES = [
    ("local(1k) & causal", 32768, 128, 16),
    ("butterfly(128)", 32768, 128, 16),
    ("local(256)+global(4)", 32768, 128, 16),
    ("local(1k) & causal", 32768, 64, 32),
    ("butterfly(128)", 32768, 64, 32),
]
TILES = {
    128: [(64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 2)],
    64: [(64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 4, 2), (128, 128, 8, 3), (64, 64, 4, 2)],
}
LIST_SLOTS = (16,)


def main() -> None:
    only = sys.argv[1:]
    rows = []
    for pattern, seq_len, head_dim, heads in CASES:
        if only and pattern not in only:
            continue
        mask = sparseflash.compile_mask(pattern, seq_len, device="cuda")
        q, k, v = (torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        scale = head_dim**-0.5
        default = default_forward_config(head_dim, q.dtype, mask)
        ref_out, ref_lse = attention_forward(q, k, v, mask, scale, config=default)
        ref_out, ref_lse = ref_out.clone(), ref_lse.clone()
        variants = [("default", default), ("default, runs", replace(default, full_runs=True))]
        variants += [(f"{m}x{n} w{w} s{st}", ForwardConfig(m, n, w, st)) for (m, n, w, st) in TILES[head_dim]]
        variants += [
            (f"{m}x{n} w{w} s{st} slots{slots}", ForwardConfig(m, n, w, st, list_slots=slots))
            for (m, n, w, st) in TILES[head_dim]
            for slots in LIST_SLOTS
        ]
        base_ms = None
        for label, config in variants:
            row = {"pattern": pattern, "seq_len": seq_len, "head_dim": head_dim, "heads": heads, "variant": label}
            try:
                out, lse = attention_forward(q, k, v, mask, scale, config=config)
                error = max((out.float() - ref_out.float()).abs().max().item(), (lse - ref_lse).abs().max().item())
                row["max_diff_vs_default"] = error
                if not error < 0.05:
                    row["status"] = "WRONG"
                else:
                    row["ms"] = triton.testing.do_bench(lambda: attention_forward(q, k, v, mask, scale, config=config))
                    base_ms = row["ms"] if label == "default" else base_ms
                    row["speedup_vs_default"] = base_ms / row["ms"]
                    row["status"] = "ok"
            except Exception as exc:  # a config the GPU cannot run (shared memory) is reported, not fatal
                row["status"] = f"error: {type(exc).__name__}: {str(exc)[:120]}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    save_results("short_rows", {"rows": rows})
    print("\ncase                                   variant                       ms      vs default")
    for row in rows:
        case = f"{row['pattern']} {row['seq_len'] // 1024}k D{row['head_dim']}"
        print(f"{case:38s} {row['variant']:28s} {row.get('ms', float('nan')):7.3f}  {row.get('speedup_vs_default', float('nan')):5.2f}  {row['status'][:40]}")


if __name__ == "__main__":
    main()
