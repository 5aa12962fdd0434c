"""Launch schedules (which program runs which row) must not change a result: each against the oracle."""

import pytest
import torch
from attention_oracle import check_close, reference_attention

import sparseflash

kernels = pytest.importorskip("sparseflash.kernels.common")
from sparseflash.kernels.backward import attention_backward  # noqa: E402
from sparseflash.kernels.common import BackwardConfig, ForwardConfig, Schedule, auto_schedule  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402

SCHEDULES = [Schedule(heavy, heads) for heavy in (False, True) for heads in (False, True)]


# local + global at 150: the global row is the longest, so heavy-first reorders the rows. causal at
# 100 = 3 * 32 + 4: the last block is the longest and starts first, and its second tile lies past the
# end; that once cost the real tile at the grid's end its program (GPU dQ rows never written).
@pytest.mark.parametrize("pattern, length", [("local(20) + global(5)", 150), ("causal", 100)])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"heavy{int(s.heavy_first)}-heads{int(s.heads_fastest)}")
def test_every_schedule_matches_the_oracle(schedule, pattern, length, monkeypatch):
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    gen = torch.Generator().manual_seed(7)
    q, k, v, dout = (torch.randn(2, 3, length, 32, generator=gen) for _ in range(4))
    mask = sparseflash.compile_mask(pattern, length, length, block_m=32, block_n=32)
    allowed = sparseflash.parse(pattern).dense_mask(length, length)
    check_kernels_against_oracle(q, k, v, dout, mask, allowed, schedule, full_runs=None)


# Both ways of walking full blocks: as runs of consecutive blocks, and one listed block at a time.
@pytest.mark.parametrize("full_runs", [False, True], ids=["block-list", "runs"])
@pytest.mark.parametrize("pattern", ["causal", "chunk(48) + sink(3) - local(2)"])
def test_full_block_walks_match_the_oracle(pattern, full_runs, monkeypatch):
    monkeypatch.setattr(kernels, "POISON_OUTPUTS", True)
    gen = torch.Generator().manual_seed(11)
    q, k, v, dout = (torch.randn(1, 2, 130, 32, generator=gen) for _ in range(4))
    mask = sparseflash.compile_mask(pattern, 130, 130, block_m=16, block_n=16)
    allowed = sparseflash.parse(pattern).dense_mask(130, 130)
    check_kernels_against_oracle(q, k, v, dout, mask, allowed, Schedule(), full_runs=full_runs)


def check_kernels_against_oracle(q, k, v, dout, mask, allowed, schedule, full_runs):
    scale = q.shape[-1] ** -0.5
    out, lse = attention_forward(q, k, v, mask, scale, config=ForwardConfig(16, 16, 4, 1, schedule, full_runs))
    dq, dk, dv = attention_backward(
        dout, q, k, v, out, lse, mask, scale, config=BackwardConfig(16, 16, 16, 16, 4, 1, schedule, full_runs)
    )
    leaves = [t.clone().double().requires_grad_(True) for t in (q, k, v)]
    ref_out, ref_lse = reference_attention(*leaves, allowed)
    ref_grads = torch.autograd.grad((ref_out * dout.double()).sum(), leaves)
    same = [t.clone().requires_grad_(True) for t in (q, k, v)]
    same_out, same_lse = reference_attention(*same, allowed, compute_dtype=torch.float32)
    same_grads = torch.autograd.grad((same_out * dout).sum(), same)
    for name, got, same_result, oracle in zip(
        ("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), (same_out, same_lse, *same_grads), (ref_out, ref_lse, *ref_grads)
    ):
        check_close(name, got, same_result.detach(), oracle.detach(), torch.float32)


def test_auto_schedule_puts_heads_fastest_only_for_uneven_rows():
    uneven = sparseflash.compile_mask("local(256) + global(4)", 8192)
    even = sparseflash.compile_mask("local(8192)", 8192)  # every block listed as full
    assert auto_schedule(uneven, by_rows=True).heads_fastest
    assert auto_schedule(uneven, by_rows=False).heads_fastest
    assert not auto_schedule(even, by_rows=True).heads_fastest
    assert not auto_schedule(sparseflash.compile_mask("local(256)", 8192), by_rows=True).heads_fastest
