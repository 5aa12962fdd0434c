"""Whether the default tiles fit GPUs with less shared memory than the H200, and with how many
pipeline stages: our kernels compiled for another GPU on a machine without one (Triton compiles
with its bundled ptxas; nothing is launched).

    python benchmarks/experiments/shared_memory_fit.py --arch 86     # RTX 30xx, A10, A40: 99 KB
    python benchmarks/experiments/shared_memory_fit.py --arch 80     # A100: 163 KB
    python benchmarks/experiments/shared_memory_fit.py --arch 86 --tuned   # the H200's tiles there

Every kernel the launchers compile (forward, preprocess, dK/dV, dQ, merges) goes through
``KernelLauncher``; a compiled kernel needing more shared memory than ``--limit`` raises Triton's
OutOfResources, as Triton's own check does on the real GPU at the first launch, so the launcher's
fallback (``launch.fewer_stages``) runs as it would there, and the launchers pick tiles for the
GPU's shared memory (``common.SMALL_SHARED_*``; ``--tuned``: the H200's). Prints, per kernel, the tuned stages and
the stages it fits with. Pointer loads: TMA needs sm_90, which a CPU tensor never gets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

sys.path.insert(0, os.path.dirname(__file__))
from sm90_resources import _CompileOnlyDriver  # noqa: E402

import sparseflash  # noqa: E402
import sparseflash.kernels.backward as backward_module  # noqa: E402
import sparseflash.kernels.forward as forward_module  # noqa: E402
import sparseflash.kernels.full_rows as full_rows  # noqa: E402
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

# Shared memory a block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin), by compute capability.
LIMITS = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 120: 101376}
PATTERNS = ["dense", "causal", "local(1k) & causal", "butterfly(128)", "local(256)+global(4)", "strided(256)+local(128)"]

COMPILED: list = []  # (kernel name, stages asked, shared bytes, fits)


def compile_against(limit: int, run):
    """JITFunction.run compiling instead of launching, refusing kernels over ``limit`` bytes of
    shared memory as Triton's first launch does on a GPU."""

    def wrapper(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        fits = kernel.metadata.shared <= limit
        COMPILED.append((kernel.metadata.name, kernel.metadata.num_stages, kernel.metadata.shared, fits))
        if not fits:
            raise triton.OutOfResources(kernel.metadata.shared, limit, "shared memory")
        return kernel

    return wrapper


def launches(compiled: list) -> list:
    """``compiled`` grouped into launches: (kernel name, [(stages, shared, fits), ...]), a launch's
    tries being one kernel's consecutive compilations after refusals."""
    groups: list = []
    for name, stages, shared, fits in compiled:
        if groups and groups[-1][0] == name and not groups[-1][1][-1][2]:
            groups[-1][1].append((stages, shared, fits))
        else:
            groups.append((name, [(stages, shared, fits)]))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=86, help="compute capability, e.g. 80, 86, 89")
    parser.add_argument("--limit", type=int, help="shared memory a block may use, bytes (default: the arch's)")
    parser.add_argument("--head-dims", default="64,128,256")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--patterns", default="|".join(PATTERNS), help="'|'-separated")
    parser.add_argument("--heads", type=int, default=16, help="B=1 and this many heads")
    parser.add_argument("--tuned", action="store_true", help="the H200's tiles, not those for the GPU's shared memory")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    limit = args.limit or LIMITS[args.arch]

    class Target(_CompileOnlyDriver):
        def get_current_target(self):
            return GPUTarget("cuda", args.arch, 32)

    driver.set_active(Target())
    full_rows.MIN_APART_WORK = 0  # the all-key rows of global(g) apart whatever the size, so their kernels compile too
    if not args.tuned:  # the launchers pick tiles for this much shared memory, as on that GPU
        for module in (forward_module, backward_module):
            module.shared_memory_per_block = lambda device: limit
    JITFunction.run = compile_against(limit, JITFunction.run)
    warnings.simplefilter("ignore")  # the fallback's warnings: the table says it
    rows = []
    tiles = "the H200's tiles" if args.tuned else "tiles for that shared memory"
    print(f"sm_{args.arch}, {limit / 1024:.0f} KB a block, {args.dtype}, N={args.seq_len}, {args.heads} heads, {tiles}")
    for pattern in args.patterns.split("|"):
        mask = sparseflash.compile_mask(pattern, args.seq_len)
        for head_dim in (int(d) for d in args.head_dims.split(",")):
            q, k, v = (torch.zeros(1, args.heads, args.seq_len, head_dim, dtype=getattr(torch, args.dtype)) for _ in range(3))
            COMPILED.clear()
            try:
                out, lse = attention_forward(q, k, v, mask, 0.1)
                attention_backward(q, q, k, v, out, lse, mask, 0.1)
            except triton.OutOfResources as error:
                print(f"{pattern:24s} D={head_dim:3d} {error}")
            for name, tries in launches(COMPILED):
                (tuned_stages, tuned_shared, _), (stages, shared, fits) = tries[0], tries[-1]
                rows.append(dict(pattern=pattern, head_dim=head_dim, kernel=name, tuned_stages=tuned_stages,
                                 tuned_shared=tuned_shared, stages=stages, shared=shared, fits=fits))  # fmt: skip
                print(
                    f"{pattern:24s} D={head_dim:3d} {name[:34]:34s} tuned {tuned_stages} stages {tuned_shared / 1024:6.1f} KB"
                    f" -> {stages} stages {shared / 1024:6.1f} KB {'fits' if fits else 'DOES NOT FIT'}"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(arch=args.arch, limit=limit, dtype=args.dtype, seq_len=args.seq_len, heads=args.heads, tuned=args.tuned,
                       triton=triton.__version__, rows=rows), f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
