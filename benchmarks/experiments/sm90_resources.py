"""Registers, spills and shared memory of our kernels compiled for the H100/H200 (sm_90a), on a
machine without a GPU: Triton compiles with its bundled ptxas, nothing is launched.

    python benchmarks/experiments/sm90_resources.py 'local(1k) & causal' 128,64,4,2,16
    python benchmarks/experiments/sm90_resources.py 'butterfly(128)' 128,128,8,2,16 --bwd 64,64,64,64,4,2

Arguments: a pattern, a forward config ``block_m,block_n,warps,stages[,list_slots]`` and optionally
a backward config. The kernels are compiled as the launchers would launch them at 32k tokens with
host-built tensor descriptors, by this machine's Triton (the GPU machine may run another version:
treat the numbers as a guide and confirm with ``benchmarks/occupancy.py`` there).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

import sparseflash
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.common import BackwardConfig, ForwardConfig
from sparseflash.kernels.forward import attention_forward


class _CompileOnlyDriver:
    """Just enough of a Triton driver for ``JITFunction.run(warmup=True)``: compile, never launch."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


COMPILED = []


def _compile_instead_of_launch(run):
    def wrapper(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        COMPILED.append(kernel)
        return kernel

    return wrapper


def resources(kernel) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    warps = kernel.metadata.num_warps
    regs = int(fields.get("REG", 0))
    per_sm_regs = 65536 // (-(-regs * 32 // 256) * 256 * warps) if regs else 0
    shared = kernel.metadata.shared
    per_sm_shared = 228 * 1024 // (shared + 1024)
    return (
        f"{kernel.metadata.name[:40]:40s} warps {warps}  regs {regs:3d}  stack {fields.get('STACK')} local {fields.get('LOCAL')}"
        f"  shared {shared / 1024:.1f} KB  -> {min(per_sm_regs, per_sm_shared)} per SM"
    )


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pattern")
    parser.add_argument("fwd", help="block_m,block_n,warps,stages[,list_slots]")
    parser.add_argument("--bwd", help="block_m1,block_n1,block_m2,block_n2,warps,stages")
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dump", help="write each kernel's TTGIR and PTX into this folder")
    args = parser.parse_args()
    driver.set_active(_CompileOnlyDriver())
    JITFunction.run = _compile_instead_of_launch(JITFunction.run)
    mask = sparseflash.compile_mask(args.pattern, args.seq_len)
    q, k, v = (torch.zeros(1, 1, args.seq_len, args.head_dim, dtype=torch.bfloat16) for _ in range(3))
    m, n, w, s, *slots = (int(x) for x in args.fwd.split(","))
    config = ForwardConfig(m, n, w, s, tma="host", list_slots=slots[0] if slots else None, split_blocks=0)
    out, lse = attention_forward(q, k, v, mask, 0.1, config=config)
    if args.bwd:
        m1, n1, m2, n2, w, s = (int(x) for x in args.bwd.split(","))
        attention_backward(q, q, k, v, out, lse, mask, 0.1, config=BackwardConfig(m1, n1, m2, n2, w, s, tma="host", split_blocks=0))
    for number, kernel in enumerate(COMPILED):
        print(resources(kernel))
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            for stage in ("ttgir", "ptx"):
                with open(os.path.join(args.dump, f"{number}_{kernel.metadata.name}.{stage}"), "w") as f:
                    f.write(kernel.asm[stage])


if __name__ == "__main__":
    main()
