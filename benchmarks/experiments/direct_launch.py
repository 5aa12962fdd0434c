"""Host time with and without direct launches (kernels/launch.py KernelLauncher), same machine,
same process, alternating rounds: launch.DIRECT_LAUNCH off (every launch through Triton's
``kernel[grid]``) and on (after the first, through the compiled kernel).

Two measures:
- host microseconds per call at N=256, one head (the GPU work is a few microseconds, so back-to-back
  calls measure the host): each launcher, ``attention()``, and forward + ``.backward()``;
- ``do_bench`` medians of cases whose GPU time is near their host time: the split forward of
  ``local(256)+global(4)`` at 32k (three launches and two copies), and 2k forward + backward.

    python benchmarks/experiments/direct_launch.py     # on a GPU; writes results/direct_launch.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparseflash  # noqa: E402
from host_overhead import host_microseconds  # noqa: E402
from results_file import save_results  # noqa: E402
from sparseflash.kernels import launch  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

TIMED = [  # (pattern, N, batch, heads, D, mode)
    ("local(256)+global(4)", 32768, 1, 16, 128, "fwd"),
    ("local(256)+global(4)", 32768, 1, 16, 128, "fwdbwd"),
    ("butterfly(128)", 2048, 8, 16, 128, "fwd"),
    ("butterfly(128)", 2048, 8, 16, 128, "fwdbwd"),
    ("local(1k) & causal", 2048, 8, 16, 128, "fwdbwd"),
    ("dense", 2048, 8, 16, 128, "fwdbwd"),
]


def host_paths() -> dict:
    q, k, v, dout = (torch.randn(1, 1, 256, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    paths = {}
    for pattern in ("dense", "local(1k) & causal", "local(20)+global(2)"):
        mask = sparseflash.compile_mask(pattern, 256, device="cuda")
        out, lse = attention_forward(q, k, v, mask, 0.1)

        def fwd_bwd(pattern=pattern):
            for t in leaves:
                t.grad = None
            sparseflash.attention(*leaves, pattern).backward(dout)

        paths[f"{pattern}: forward launcher"] = lambda mask=mask: attention_forward(q, k, v, mask, 0.1)
        paths[f"{pattern}: backward launcher"] = lambda mask=mask, out=out, lse=lse: attention_backward(dout, q, k, v, out, lse, mask, 0.1)
        paths[f"{pattern}: attention(), no grad"] = lambda pattern=pattern: sparseflash.attention(q, k, v, pattern)
        paths[f"{pattern}: forward + .backward()"] = fwd_bwd
    return paths


def timed_call(pattern, n, batch, heads, head_dim, mode):
    gen = torch.Generator(device="cuda").manual_seed(n + heads)
    q, k, v, dout = (torch.randn(batch, heads, n, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    if mode == "fwd":
        return lambda: sparseflash.attention(q, k, v, pattern)
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        sparseflash.attention(*leaves, pattern).backward(dout)

    return fwd_bwd


def main() -> None:
    paths = host_paths()
    calls = {case: timed_call(*case) for case in TIMED}
    results = {"host_us": {}, "ms": {}}
    # The host's speed drifts within a call by up to 2x (BENCHMARKS.md), so the two settings
    # alternate for every measurement, and the host figure kept is each setting's fastest round.
    for name, fn in paths.items():
        for _ in range(5):
            for direct in (False, True):
                launch.DIRECT_LAUNCH = direct
                results["host_us"].setdefault(name, {}).setdefault("direct" if direct else "triton", []).append(host_microseconds(fn))
        print(name, {side: round(min(v), 1) for side, v in results["host_us"][name].items()}, flush=True)
    for case, fn in calls.items():
        key = f"{case[0]} {case[1] // 1024}k B={case[2]} H={case[3]} D={case[4]} {case[5]}"
        for _ in range(3):
            for direct in (False, True):
                launch.DIRECT_LAUNCH = direct
                ms = float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
                results["ms"].setdefault(key, {}).setdefault("direct" if direct else "triton", []).append(ms)
        print(key, results["ms"][key], flush=True)
    launch.DIRECT_LAUNCH = True
    print("\nhost us: fastest of 5 rounds; ms: median of 3 do_bench medians (triton -> direct):")
    for kind, unit, pick in (("host_us", "us", min), ("ms", "ms", lambda xs: sorted(xs)[len(xs) // 2])):
        for name, sides in results[kind].items():
            before, after = pick(sides["triton"]), pick(sides["direct"])
            print(f"{name:<56} {before:9.3f} -> {after:9.3f} {unit} ({before / after:.2f}x)")
    save_results("direct_launch", results)


if __name__ == "__main__":
    main()
