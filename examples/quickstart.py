"""sparseflash quickstart: block-sparse attention, checked against dense attention, and timed.

    python examples/quickstart.py            # a GPU if there is one, else a small CPU run
    python examples/quickstart.py --n 4096   # choose the sequence length

For each pattern it runs ``sparseflash.attention`` forward and backward on random inputs, compares
the output with dense attention on the pattern's exact mask (computed in float32 from the same
inputs), and prints the error, the mask's density and the time. On the CPU it uses the plain-PyTorch
blocked path (or Triton's interpreter when TRITON_INTERPRET=1 is set).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import sparseflash
from sparseflash import attention

PATTERNS = ("local(256)+global(4)", "dense")


def dense_reference(q, k, v, allowed, heads_per_chunk=2):
    """Dense attention in float32 on a bool (Lq, Lk) mask, a few heads at a time to bound memory."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    group = q.shape[1] // k.shape[1]
    outputs = []
    for first in range(0, q.shape[1], heads_per_chunk):
        heads = slice(first, first + heads_per_chunk)
        q_chunk = q[:, heads].float()
        kv_heads = torch.arange(q.shape[1], device=q.device)[heads] // group
        k_chunk, v_chunk = k[:, kv_heads].float(), v[:, kv_heads].float()
        scores = torch.matmul(q_chunk, k_chunk.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key give 0
        outputs.append(torch.matmul(probs, v_chunk))
    return torch.cat(outputs, dim=1)


def median_ms(fn, device, repeats):
    """Median wall time of ``fn`` in milliseconds, after one warm-up call."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, help="sequence length (default 8192 on a GPU, 1024 on the CPU)")
    parser.add_argument("--heads", type=int, help="query heads (default 16 on a GPU, 2 on the CPU)")
    parser.add_argument("--head-dim", type=int, default=None, help="head dim (default 128 on a GPU, 64 on the CPU)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    n = args.n or (8192 if on_gpu else 1024)
    heads = args.heads or (16 if on_gpu else 2)
    head_dim = args.head_dim or (128 if on_gpu else 64)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    where = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(f"sparseflash {sparseflash.__version__} on {where}: B=1, H={heads}, N={n}, D={head_dim}, {str(dtype)[6:]}")

    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (
        torch.randn(1, heads, n, head_dim, generator=gen, device=device, dtype=torch.float32).to(dtype)
        for _ in range(4)
    )
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)

    print(f"{'pattern':24s} {'density':>8s} {'blocks':>7s} {'max err':>9s} {'rel err':>9s} {'fwd ms':>9s} {'fwd+bwd ms':>11s}")
    worst = 0.0
    for pattern in PATTERNS:
        mask = sparseflash.compile_mask(pattern, n, n, device=device)
        out = attention(q, k, v, mask)
        allowed = sparseflash.parse(pattern).dense_mask(n, n, device=device)
        with torch.no_grad():
            expected = dense_reference(q, k, v, allowed)
        error = (out.float() - expected).abs().max().item()
        relative = ((out.float() - expected).norm() / expected.norm()).item()
        worst = max(worst, relative)

        def forward():
            with torch.no_grad():
                attention(q, k, v, mask)

        def forward_backward():
            q.grad = k.grad = v.grad = None
            attention(q, k, v, mask).backward(dout)

        fwd = median_ms(forward, device, repeats=3)
        fwd_bwd = median_ms(forward_backward, device, repeats=3)
        print(
            f"{pattern:24s} {mask.density():8.2%} {mask.block_density():7.2%} {error:9.2e} {relative:9.2e} "
            f"{fwd:9.3f} {fwd_bwd:11.3f}"
        )
    # bf16 products give relative errors near 1e-3 to 1e-2; float32 far less.
    limit = 2e-2 if dtype == torch.bfloat16 else 1e-4
    print("OK: matches dense attention" if worst < limit else f"MISMATCH: relative error {worst:.2e} >= {limit}")
    raise SystemExit(0 if worst < limit else 1)


if __name__ == "__main__":
    main()
