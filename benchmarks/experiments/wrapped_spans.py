"""Same-run A/B for wrapped key spans (``blockmask._key_spans``): band rows beside a global or sink
column now need one key span a row instead of two. Two things follow, both timed here:

- Rows without a long row (``local(256)+sink(4)``, causal bands with a sink) now get the forward's
  two-programs-a-multiprocessor tile (``common.SHORT_SPAN_ROWS_FORWARD``: 4 warps, 128 x 64,
  spans), where they had the 8-warp 128 x 128 tile loading uint8 masks ("before").
- Kernels that keep tile loads by default (the 8-warp forward under a long row, the backward) could
  now compare one span instead: "spans" variants.

    python benchmarks/experiments/wrapped_spans.py     # on a GPU; writes results/wrapped_spans.json

Kernel times (``line_costs.kernel_times``: every kernel of the pass, merges included), bf16, D=128,
16 heads, the variants alternating twice on the same inputs; outputs compared first.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.common import FORWARD_DEFAULTS, default_backward_config, default_forward_config  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

CASES = [
    ("local(256)+sink(4)", 32768),
    ("(local(1k)+sink(4)) & causal", 32768),
    ("(local(1k)+sink(4)) & causal", 131072),
    ("local(256)+global(4)", 32768),
]


def variants(mask, dtype) -> dict:
    """(pass, name) -> config: the default, the pre-wrapping forward default, spans where tiles are loaded."""
    forward = default_forward_config(128, dtype, mask)
    backward = default_backward_config(128, dtype, mask)
    found = {("fwd", "default"): forward, ("bwd", "default"): backward, ("bwd", "spans"): replace(backward, key_spans=True)}
    before = FORWARD_DEFAULTS[128, True, "short"]
    if forward != before:
        found["fwd", "8w 128x128 tiles (before)"] = before
    if not forward.key_spans:
        found["fwd", "spans"] = replace(forward, key_spans=True)
    return found


def main() -> None:
    rows = []
    for pattern, seq_len in CASES:
        torch.manual_seed(0)
        mask = sparseflash.compile_mask(pattern, seq_len, device="cuda")
        q, k, v, dout = (torch.randn(1, 16, seq_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = 128**-0.5
        configs = variants(mask, q.dtype)
        out, lse = attention_forward(q, k, v, mask, scale)
        grads = attention_backward(dout, q, k, v, out, lse, mask, scale)
        runs = {}
        for (pass_, name), config in configs.items():
            if pass_ == "fwd":
                other = attention_forward(q, k, v, mask, scale, config=config)[0]
                error = (other.float() - out.float()).abs().max().item()
                runs[pass_, name] = lambda config=config: attention_forward(q, k, v, mask, scale, config=config)
            else:
                other = attention_backward(dout, q, k, v, out, lse, mask, scale, config=config)
                error = max((a.float() - b.float()).abs().max().item() for a, b in zip(other, grads))
                runs[pass_, name] = lambda config=config: attention_backward(dout, q, k, v, out, lse, mask, scale, config=config)
            assert error < 2e-2, f"{pattern} {pass_} {name}: differs from the default by {error}"
        print(f"{pattern} {seq_len // 1024}k: key_spans {mask.key_spans}", flush=True)
        for repeat in range(2):
            for (pass_, name), run in runs.items():
                times = kernel_times(run)
                total = sum(times.values())
                rows.append(dict(pattern=pattern, seq_len=seq_len, pass_=pass_, config=name, repeat=repeat, total_ms=total, **{f"{k}_ms": t for k, t in times.items()}))
                print(f"  {pass_} {name:28s} {total:.3f} ms", flush=True)
    save_results("wrapped_spans", {"rows": rows})


if __name__ == "__main__":
    main()
