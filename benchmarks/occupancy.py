"""Programs per multiprocessor: what each short-row kernel config costs in registers and shared
memory, how many of its programs fit on one SM together, and how fast it runs.

    python benchmarks/occupancy.py                     # on a GPU; writes results/occupancy.json
    python benchmarks/occupancy.py --name occupancy_2 --passes fwd --patterns 'butterfly(128)'

Why: a short row (a band of 5-10 blocks) spends about as long in its prologue and epilogue (list
reads, the Q load, the O store) as in its tiles (``row_costs.py``). With one program per SM
nothing else runs in that time; with two, one program's fixed costs overlap the other's tiles.
Which configs fit two depends on registers (65536 per SM) and shared memory (228 KB per SM), read
here from the compiled kernels.

Every variant's outputs are compared with the default config's first: a config that computes
something else is reported WRONG and not timed. Kernel times are ``do_bench`` medians of the
launchers (no autograd), bf16, B=1.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton

import sparseflash
from results_file import save_results
from sparseflash.kernels import backward as backward_module
from sparseflash.kernels import forward as forward_module
from sparseflash.kernels.backward import attention_backward
from sparseflash.kernels.common import BackwardConfig, ForwardConfig, default_backward_config, default_forward_config
from sparseflash.kernels.forward import attention_forward

# (pattern, N, head dim, heads): the short-row cases, and the band of local(256)+global(4)
# without its global tokens.
CASES = [
    ("local(1k) & causal", 32768, 128, 16),
    ("butterfly(128)", 32768, 128, 16),
    ("local(256)+global(4)", 32768, 128, 16),
    ("local(256)", 32768, 128, 16),
    ("local(1k) & causal", 131072, 128, 16),
    ("butterfly(128)", 131072, 128, 16),
    ("local(1k) & causal", 32768, 64, 32),
    ("butterfly(128)", 32768, 64, 32),
]

# Forward variants per head dim: (block_m, block_n, warps, stages, list_slots, split_blocks).
FORWARD_VARIANTS = {
    128: [
        (128, 64, 4, 2, 16, None),
        (128, 64, 4, 3, 16, None),  # the same tile with a third stage: one program per SM (shared memory)
        (128, 32, 4, 2, 16, None),
        (64, 64, 4, 2, 16, None),
        (64, 128, 4, 2, 16, None),
        (128, 64, 4, 2, 16, 16),  # long lines cut into items of 16 blocks (split.py)
        (128, 128, 8, 2, 16, 16),
    ],
    64: [
        (128, 64, 4, 2, 16, None),
        (128, 64, 8, 3, 16, None),
        (128, 32, 4, 3, 16, None),
        (64, 64, 4, 3, 16, None),
        (128, 128, 4, 2, 16, None),
    ],
}

# Backward variants per head dim: (block_m1, block_n1, block_m2, block_n2, warps, stages).
BACKWARD_VARIANTS = {
    128: [
        (64, 64, 64, 64, 4, 3),
        (32, 64, 64, 32, 4, 2),
        (32, 64, 64, 32, 4, 3),
        (64, 128, 128, 64, 8, 2),
        (64, 128, 128, 64, 8, 3),
        (64, 64, 128, 64, 4, 2),
    ],
    64: [
        (64, 64, 64, 64, 4, 2),
        (32, 64, 64, 32, 4, 3),
        (64, 128, 128, 64, 8, 3),
        (64, 128, 128, 64, 4, 3),
    ],
}

SM_REGISTERS = 65536
SM_SHARED_BYTES = 228 * 1024
SHARED_RESERVED_PER_PROGRAM = 1024  # the driver keeps 1 KB of shared memory per resident block
SM_MAX_WARPS = 64


def compiled_kernels(jit_function) -> dict:
    """Every compiled kernel of ``jit_function`` so far, by identity (Triton 3.6 and 3.9 keep them
    in ``device_caches[device]``, a tuple whose first dict maps cache keys to kernels)."""
    found = {}
    for entry in jit_function.device_caches.values():
        for part in entry if isinstance(entry, tuple) else (entry,):
            if isinstance(part, dict):
                for kernel in part.values():
                    if hasattr(kernel, "metadata"):
                        found[id(kernel)] = kernel
    return found


def programs_per_sm(kernel) -> dict:
    """Registers, spills and shared memory of a compiled kernel, and how many of its programs one
    SM holds at once (registers are allocated per warp in units of 256)."""
    kernel._init_handles()
    warps = kernel.metadata.num_warps
    shared = kernel.metadata.shared
    per_warp = -(-kernel.n_regs * 32 // 256) * 256
    by_registers = SM_REGISTERS // (per_warp * warps)
    by_shared = SM_SHARED_BYTES // (shared + SHARED_RESERVED_PER_PROGRAM)
    return dict(
        kernel=kernel.metadata.name, regs=kernel.n_regs, spills=kernel.n_spills, shared_kb=round(shared / 1024, 1),
        per_sm=min(by_registers, by_shared, SM_MAX_WARPS // warps), per_sm_by_regs=by_registers, per_sm_by_shared=by_shared,
    )  # fmt: skip


def new_kernels(jit_functions, before: dict) -> list:
    rows = []
    for function in jit_functions:
        for key, kernel in compiled_kernels(function).items():
            if key not in before.get(function, {}):
                rows.append(programs_per_sm(kernel))
    return rows


def time_variant(run, reference, jit_functions, row):
    """Run once (compiling), compare with ``reference``, read the new kernels' resources, time."""
    before = {f: compiled_kernels(f) for f in jit_functions}
    try:
        result = run()
        row["kernels"] = new_kernels(jit_functions, before)
        if reference is not None:
            error = max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item() for a, b in zip(result, reference))
            row["rel_error_vs_default"] = error
            if not error < 1e-2:
                row["status"] = "WRONG"
                return result
        row["ms"] = triton.testing.do_bench(run, warmup=25, rep=150, return_mode="median")
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a config the GPU cannot run (shared memory) is reported, not fatal
        row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        result = None
    return result


def forward_rows(pattern, seq_len, head_dim, heads, q, k, v, mask, scale):
    default = default_forward_config(head_dim, q.dtype, mask)
    variants = [("default", default)] + [
        (f"{m}x{n} w{w} s{s} slots{slots}" + (f" split{split}" if split else ""), ForwardConfig(m, n, w, s, list_slots=slots, split_blocks=split))
        for m, n, w, s, slots, split in FORWARD_VARIANTS[head_dim]
    ]  # fmt: skip
    rows, reference = [], None
    for label, config in variants:
        row = dict(pattern=pattern, seq_len=seq_len, head_dim=head_dim, heads=heads, pass_="fwd", variant=label, config=repr(config))
        result = time_variant(lambda: tuple(t.clone() for t in attention_forward(q, k, v, mask, scale, config=config)), reference,
                              [forward_module._attention_forward_kernel], row)  # fmt: skip
        reference = result if reference is None else reference
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def backward_rows(pattern, seq_len, head_dim, heads, q, k, v, mask, scale):
    out, lse = attention_forward(q, k, v, mask, scale)
    dout = torch.randn_like(q)
    default = default_backward_config(head_dim, q.dtype, mask)
    variants = [("default", default)] + [
        (f"{m1}x{n1}/{m2}x{n2} w{w} s{s}", BackwardConfig(m1, n1, m2, n2, w, s)) for m1, n1, m2, n2, w, s in BACKWARD_VARIANTS[head_dim]
    ]
    kernels = [backward_module._attention_backward_dkdv_kernel, backward_module._attention_backward_dq_kernel]
    rows, reference = [], None
    for label, config in variants:
        row = dict(pattern=pattern, seq_len=seq_len, head_dim=head_dim, heads=heads, pass_="bwd", variant=label, config=repr(config))
        result = time_variant(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale, config=config), reference, kernels, row)
        reference = result if reference is None else reference
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row) -> str:
    case = f"{row['pattern']} {row['seq_len'] // 1024}k D{row['head_dim']} {row['pass_']}"
    resources = "; ".join(f"{k['regs']} regs {k['spills']} spills {k['shared_kb']} KB -> {k['per_sm']}/SM" for k in row.get("kernels", []))
    return f"{case:36s} {row['variant']:30s} {row.get('ms', float('nan')):7.3f} ms  {row['status'][:60]:8s} {resources}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="occupancy", help="results/<name>.json")
    parser.add_argument("--passes", default="fwd,bwd")
    parser.add_argument("--patterns", help="comma-separated patterns to keep (default: all cases)")
    args = parser.parse_args()
    passes = args.passes.split(",")
    keep = set(args.patterns.split(",")) if args.patterns else None
    rows = []
    for pattern, seq_len, head_dim, heads in CASES:
        if keep and pattern not in keep:
            continue
        torch.manual_seed(0)
        mask = sparseflash.compile_mask(pattern, seq_len, device="cuda")
        q, k, v = (torch.randn(1, heads, seq_len, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        scale = head_dim**-0.5
        if "fwd" in passes:
            rows += forward_rows(pattern, seq_len, head_dim, heads, q, k, v, mask, scale)
        if "bwd" in passes:
            rows += backward_rows(pattern, seq_len, head_dim, heads, q, k, v, mask, scale)
        save_results(args.name, {"rows": rows})  # after every case: a run cut short keeps what it timed
    print("\nfastest per case and pass (default time / fastest):")
    for key in dict.fromkeys((r["pattern"], r["seq_len"], r["head_dim"], r["pass_"]) for r in rows):
        timed = [r for r in rows if (r["pattern"], r["seq_len"], r["head_dim"], r["pass_"]) == key and "ms" in r]
        if timed:
            best = min(timed, key=lambda r: r["ms"])
            print(f"{key[0]:22s} {key[1] // 1024}k D{key[2]} {key[3]}  {timed[0]['ms']:.3f} -> {best['ms']:.3f} ms ({timed[0]['ms'] / best['ms']:.2f}x)  {best['variant']}")
    print(json.dumps({"cases": len(rows)}))


if __name__ == "__main__":
    main()
