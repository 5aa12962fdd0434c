"""Whether host time shows in the forward of ``local(256)+global(4)`` at 32k with the all-key rows
apart (``kernels/full_rows.py``): the whole mask and the split, each timed through ``attention()``,
through the launcher and as a CUDA graph replay (GPU time alone), with the host microseconds of
one call, then a profile of where the split's host time goes.

Why: the thirteenth session's ``targets17`` read 0.77-0.82 ms for a forward whose kernels take
0.63 ms (``targets16``: 0.633 ms): the split issues three Triton launches and two copies, ~430 us
of host time at the launcher (``results/full_rows_2.json``), which ``do_bench`` counts when the
host falls behind the GPU (``exposed_host.py``).

    python benchmarks/experiments/full_rows_host.py     # on a GPU; writes results/full_rows_host.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from exposed_host import graph_of, host_us, median_ms, profile_text  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels import forward as forward_module  # noqa: E402
from sparseflash.kernels import full_rows  # noqa: E402

CASES = [("local(256)+global(4)", 32768, 16, 128), ("local(256)+global(4)", 32768, 32, 64), ("local(256)+global(4)", 131072, 16, 128)]


def main() -> None:
    rows = []
    default = full_rows.FULL_ROWS_APART
    try:
        for pattern_text, n, heads, head_dim in CASES:
            q, k, v = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            pattern = sparseflash.parse(pattern_text)
            mask = sparseflash.compile_mask(pattern, n, device="cuda")
            scale = head_dim**-0.5
            paths = {
                "attention()": lambda: sparseflash.attention(q, k, v, pattern),
                "launcher": lambda: forward_module.attention_forward(q, k, v, mask, scale),
            }
            for _ in range(2):  # alternating, twice
                for apart in (False, True):
                    full_rows.FULL_ROWS_APART = apart
                    row = dict(pattern=pattern_text, n=n, heads=heads, head_dim=head_dim, apart=apart)
                    for name, fn in paths.items():
                        row[name] = {"do_bench_ms": median_ms(fn), "host_us": host_us(fn)}
                    graph = graph_of(paths["launcher"])  # the split's side stream forks and joins inside
                    row["graph replay"] = {"do_bench_ms": median_ms(graph.replay), "host_us": host_us(graph.replay)}
                    rows.append(row)
                    cells = "  ".join(f"{name}: {row[name]['do_bench_ms']:.3f} ms / {row[name]['host_us']:.0f} us" for name in (*paths, "graph replay"))
                    print(f"{pattern_text} {n // 1024}k H{heads} D{head_dim} {'apart' if apart else 'whole'}: {cells}", flush=True)
            del q, k, v
        full_rows.FULL_ROWS_APART = True
        q, k, v = (torch.randn(1, 16, 32768, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        pattern = sparseflash.parse("local(256)+global(4)")
        profile = profile_text(lambda: sparseflash.attention(q, k, v, pattern))
        print(profile)
    finally:
        full_rows.FULL_ROWS_APART = default
    save_results("full_rows_host", {"rows": rows, "profile_attention_apart_32k": profile})


if __name__ == "__main__":
    main()
