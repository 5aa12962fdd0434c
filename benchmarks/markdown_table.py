"""Print a bench_attention.py JSON result as the Markdown table used in BENCHMARKS.md.

    python benchmarks/markdown_table.py benchmarks/results/h200-full.json
"""

from __future__ import annotations

import json
import sys

PEERS = ("flex", "fa2", "cudnn")


def cell(entry: dict | None) -> str:
    if not entry or "ms" not in entry:
        return "–"
    return f"{entry['ms']:.3f} ({entry['ratio']:.2f}×)"


def main(path: str) -> None:
    results = json.load(open(path))
    print("| pattern | N | D | mode | sparseflash ms | TFLOP/s computed / on blocks | FlexAttention ms (ratio) | SDPA FA2 ms (ratio) | SDPA cuDNN ms (ratio) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in results["cases"]:
        for mode, timings in case.get("modes", {}).items():
            ours = timings.get("sparseflash")
            if not ours or "ms" not in ours:
                continue
            n = f"{case['seq_len'] // 1024}k"
            peers = " | ".join(cell(timings.get(peer)) for peer in PEERS)
            print(
                f"| `{case['pattern']}` | {n} | {case['head_dim']} | {mode} | {ours['ms']:.3f} | "
                f"{ours['tflops']:.0f} / {ours['tflops_on_blocks']:.0f} | {peers} |"
            )


if __name__ == "__main__":
    main(sys.argv[1])
