"""Same-run A/B: partial steps masked by comparing keys with each row's key spans
(``BlockMask.tile_key_spans``, the configs' ``key_spans=True``) against loading the uint8 tile, per
kernel, with the default tiles and with others.

    python benchmarks/experiments/key_spans.py     # on a GPU; writes results/key_spans.json

Runs: ``results/key_spans_1.json`` came from this script as of commit 0680036 (every kernel with
spans against tiles at the default tiles, and the 4-warp 128 x 64 forward, for local(1k) & causal
at D=128 and 64, local(256)+global(4) and strided(256)+local(128));
``results/key_spans_2.json`` from it as of commit 5ff669a (forward and backward tiles around the
chosen ones); ``results/key_spans.json`` from this version (adds butterfly(128) and
local(256)+global(4) forward cases). ``git show 0680036:benchmarks/experiments/key_spans.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from line_costs import kernel_times  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.common import BackwardConfig, ForwardConfig, default_backward_config, default_forward_config  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

CASES = [  # (pattern, N, D, heads, forward variants, backward variants); None: all
    ("local(1k) & causal", 32768, 128, 16, None, None),
    ("local(1k) & causal", 131072, 128, 16, None, None),
    ("local(256)", 32768, 128, 16, None, None),
    ("butterfly(128)", 32768, 128, 16, ("4w 128x64 spans", "4w 128x64 spans noslots"), ()),
    ("butterfly(128)", 131072, 128, 16, ("4w 128x64 spans", "4w 128x64 spans noslots"), ()),
    ("local(256)+global(4)", 32768, 128, 16, ("8w 128x128 tiles", "4w 128x64 spans", "4w 128x64 spans noslots"), ()),
]
FORWARD = {
    "8w 128x128 tiles": ForwardConfig(128, 128, 8, 2, list_slots=16),
    "8w 128x128 spans": ForwardConfig(128, 128, 8, 2, list_slots=16, key_spans=True),
    "4w 128x64 tiles": ForwardConfig(128, 64, 4, 2, list_slots=16),
    "4w 128x64 spans": ForwardConfig(128, 64, 4, 2, list_slots=16, key_spans=True),
    "4w 128x64 spans 3st": ForwardConfig(128, 64, 4, 3, list_slots=16, key_spans=True),
    "4w 128x64 spans noslots": ForwardConfig(128, 64, 4, 2, key_spans=True),
    "4w 64x64 spans": ForwardConfig(64, 64, 4, 2, list_slots=16, key_spans=True),
}
BACKWARD = {
    "4w 64/64 tiles": BackwardConfig(64, 64, 64, 64, 4, 2),
    "4w 64/64 spans": BackwardConfig(64, 64, 64, 64, 4, 2, key_spans=True),
    "8w 64x128/128x64 tiles": BackwardConfig(64, 128, 128, 64, 8, 2),
    "8w 64x128/128x64 spans": BackwardConfig(64, 128, 128, 64, 8, 2, key_spans=True),
    "4w 64/64 3st tiles": BackwardConfig(64, 64, 64, 64, 4, 3),
}


def main() -> None:
    rows = []
    for pattern, n, head_dim, heads, forward_names, backward_names in CASES:
        q, k, v, dout = (torch.randn(1, heads, n, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = head_dim**-0.5
        mask = sparseflash.compile_mask(pattern, n, device="cuda")
        print(f"{pattern} {n // 1024}k: key_spans {mask.key_spans}, default forward {default_forward_config(head_dim, q.dtype, mask)}, backward {default_backward_config(head_dim, q.dtype, mask)}")
        reference, lse = attention_forward(q, k, v, mask, scale, config=FORWARD["8w 128x128 tiles"])
        for repeat in range(2):
            for kernel, configs, names in (("forward", FORWARD, forward_names), ("backward", BACKWARD, backward_names)):
                for name, config in configs.items():
                    if names is not None and name not in names:
                        continue
                    if kernel == "forward":
                        out, _ = attention_forward(q, k, v, mask, scale, config=config)
                        assert (out.float() - reference.float()).abs().max() < 2e-2, f"{pattern} {name}: outputs differ"
                        times = kernel_times(lambda: attention_forward(q, k, v, mask, scale, config=config))
                    else:
                        times = kernel_times(lambda: attention_backward(dout, q, k, v, reference, lse, mask, scale, config=config))
                    row = {"pattern": pattern, "n": n, "head_dim": head_dim, "heads": heads, "kernel": kernel, "variant": name, "repeat": repeat}
                    row.update({f"{key}_ms": t for key, t in times.items()})
                    print(f"{pattern:<20} {n // 1024}k {name:<26} " + "  ".join(f"{key} {t:6.3f}" for key, t in times.items()), flush=True)
                    rows.append(row)
    save_results("key_spans", {"rows": rows})


if __name__ == "__main__":
    main()
