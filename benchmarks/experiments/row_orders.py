"""Same-run A/B of the order in which programs take a balanced mask's lines (``q_block_order`` for
the forward and dQ, ``kv_block_order`` for dK/dV), to test whether L2 reuse is what makes
``butterfly(128)``'s backward grow faster than its work from 32k to 128k (tenth session).

    python benchmarks/experiments/row_orders.py     # on a GPU; writes results/row_orders.json

Butterfly partners lie 2^k blocks apart, so at 128k (1,024 blocks a head, K+V 64 MB) the programs
running together need more K/V (Q/dO) than L2 holds. The orders, per head (lines are ranked
the same in every head):
  natural      0, 1, 2, ...            (the default: every line is equally long)
  gray         four quarters of the lines in the order 0, 1, 3, 2 (consecutive quarters are
               partners, so the previous quarter is reused)
  top-bit      the top bit varies fastest: 0, n/2, 1, n/2+1, ... (a line and its farthest partner together)
  bitrev       bit-reversed line numbers
For each: ``torch.profiler`` kernel times (``line_costs.kernel_times``) of the forward, dK/dV and
dQ, default configs, bf16, D=128, 16 heads; the outputs must match the natural order's exactly.
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
from sparseflash.kernels.forward import attention_forward  # noqa: E402
from sparseflash.kernels.launch import clear_prepared_launches  # noqa: E402

CASES = [("butterfly(128)", 32768), ("butterfly(128)", 131072), ("local(1k) & causal", 131072)]


def line_order(name: str, n: int) -> torch.Tensor:
    bits = n.bit_length() - 1
    assert 1 << bits == n, "orders defined for a power-of-two number of lines"
    i = torch.arange(n)
    if name == "natural":
        return i
    if name == "gray":
        quarter = n // 4
        return torch.cat([torch.arange(q * quarter, (q + 1) * quarter) for q in (0, 1, 3, 2)])
    if name == "top-bit":
        return (i >> 1) | ((i & 1) << (bits - 1))
    if name == "bitrev":
        return torch.tensor([int(format(x, f"0{bits}b")[::-1], 2) for x in range(n)])
    raise ValueError(name)


def main() -> None:
    rows = []
    for pattern, seq_len in CASES:
        torch.manual_seed(0)
        mask = sparseflash.compile_mask(pattern, seq_len, device="cuda")
        q, k, v, dout = (torch.randn(1, 16, seq_len, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = 128**-0.5
        saved = {name: mask._tensors[name] for name in ("q_block_order", "kv_block_order")}
        reference = None
        for order_name in ("natural", "gray", "top-bit", "bitrev", "natural"):
            for name, tensor in saved.items():
                mask._tensors[name] = line_order(order_name, tensor.numel()).to(torch.int32).cuda()
            clear_prepared_launches()
            out, lse = attention_forward(q, k, v, mask, scale)
            grads = attention_backward(dout, q, k, v, out, lse, mask, scale)
            results = (out, lse, *grads)
            if reference is None:
                reference = [t.clone() for t in results]
            same = all(torch.equal(a, b) for a, b in zip(results, reference))
            times = kernel_times(lambda: attention_forward(q, k, v, mask, scale))
            times.update(kernel_times(lambda: attention_backward(dout, q, k, v, out, lse, mask, scale)))
            row = dict(pattern=pattern, seq_len=seq_len, order=order_name, same_output=same, **times)
            rows.append(row)
            print(f"{pattern} {seq_len // 1024}k {order_name:8s} same={same} " + " ".join(f"{k} {v:.3f}" for k, v in times.items()), flush=True)
        for name, tensor in saved.items():
            mask._tensors[name] = tensor
        clear_prepared_launches()
    save_results("row_orders", {"rows": rows})


if __name__ == "__main__":
    main()
