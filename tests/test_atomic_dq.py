"""Atomic dQ (``BackwardConfig.atomic_dq``): the dK/dV kernel adds dQ with float32 atomics and the dQ
kernel is skipped. Every path of the dK/dV kernel must add exactly its share: each case below is
checked against the float64 oracle (``attention_oracle``), with every kernel output NaN-poisoned.

The switch: ``deterministic`` (and PyTorch's ``use_deterministic_algorithms`` when it is None) must
keep the dQ kernel; an explicit ``config.atomic_dq`` wins over both.
"""

from __future__ import annotations

import pytest
import torch
from attention_oracle import check_close, forward_and_grads, reference_attention

import sparseflash

pytest.importorskip("triton")  # the kernels need it; without it only the torch path is tested
import sparseflash.kernels.backward as backward  # noqa: E402
import sparseflash.kernels.common as kernels_common  # noqa: E402
from sparseflash.kernels.backward import attention_backward, use_atomic_dq  # noqa: E402
from sparseflash.kernels.common import BackwardConfig, ForwardConfig, Schedule  # noqa: E402
from sparseflash.kernels.forward import attention_forward  # noqa: E402
from sparseflash.kernels.split import split_plan  # noqa: E402

NAMES = ("out", "lse", "dq", "dk", "dv")
DTYPES = [torch.float16, torch.float32]


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(kernels_common, "POISON_OUTPUTS", True)


def make_inputs(n_q_heads, n_kv_heads, q_len, kv_len, head_dim, dtype, seed, batch=1):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    q, dout = randn(batch, n_q_heads, q_len, head_dim), randn(batch, n_q_heads, q_len, head_dim)
    k, v = randn(batch, n_kv_heads, kv_len, head_dim), randn(batch, n_kv_heads, kv_len, head_dim)
    dlse = torch.randn(batch, n_q_heads, q_len, generator=gen)
    return q, k, v, dout, dlse


def run_launchers(mask, scale, config, **backward_kwargs):
    """``fn(q, k, v) -> (out, lse)`` for ``forward_and_grads``: the forward launcher, and the
    backward launcher with ``config`` as this autograd Function's backward."""

    class Launchers(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out, lse = attention_forward(q, k, v, mask, scale, config=ForwardConfig(16, 16, 4, 1))
            ctx.save_for_backward(q, k, v, out, lse)
            return out, lse

        @staticmethod
        def backward(ctx, dout, dlse):
            q, k, v, out, lse = ctx.saved_tensors
            return attention_backward(dout, q, k, v, out, lse, mask, scale, dlse=dlse, config=config, **backward_kwargs)

    return Launchers.apply


def check_against_oracle(run, q, k, v, dout, dlse, allowed, scale):
    """All five results of ``run`` against the float64 oracle; returns them."""
    got = forward_and_grads(run, q, k, v, dout, dlse)
    oracle = forward_and_grads(lambda *t: reference_attention(*t, allowed, scale), q, k, v, dout, dlse)
    same = forward_and_grads(lambda *t: reference_attention(*t, allowed, scale, compute_dtype=q.dtype), q, k, v, dout, dlse)
    for name, g, s, o in zip(NAMES, got, same, oracle):
        check_close(name, g, s, o, q.dtype)
    return got


def atomic_config(block_m1=16, block_n1=32, **fields):
    # The dQ kernel's tiles (block_m2, block_n2) are ignored with atomic_dq: 24 would be refused.
    return BackwardConfig(block_m1, block_n1, 24, 24, 4, 1, atomic_dq=True, **fields)


# (pattern, Hq, Hkv, Lq, Lk, D). dense: query and key tiles past the end (100 = 6 * 16 + 4 rows,
# 90 = 2 * 32 + 26 keys: the last key tile reads zero rows, which must not reach dQ) and a padded
# head dim (40 -> 64 columns, masked on the atomic adds). local + global: full blocks and partial
# ones in one column, GQA (two query heads a key tile, each with its own dQ rows). causal with
# Lq > Lk: 40 rows with no key (zero dQ), Lq < Lk the other way. causal - local(10): row 0 is empty.
CASES = {
    "dense-ragged": ("dense", 2, 2, 100, 90, 40),
    "local+global-gqa": ("local(40) + global(3)", 4, 2, 150, 150, 32),
    "causal-Lq>Lk": ("causal", 2, 1, 130, 90, 32),
    "causal-Lq<Lk": ("causal", 4, 2, 70, 150, 32),
    "causal-minus-local": ("causal - local(10)", 2, 2, 97, 97, 16),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", list(CASES))
def test_atomic_dq_matches_the_oracle(case, dtype):
    pattern, n_q_heads, n_kv_heads, q_len, kv_len, head_dim = CASES[case]
    q, k, v, dout, dlse = make_inputs(n_q_heads, n_kv_heads, q_len, kv_len, head_dim, dtype, seed=len(case))
    mask = sparseflash.compile_mask(pattern, q_len, kv_len, block_m=32, block_n=32)
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    scale = head_dim**-0.5
    got = check_against_oracle(run_launchers(mask, scale, atomic_config()), q, k, v, dout, dlse, allowed, scale)
    dq = got[2]
    empty_rows = ~allowed.any(dim=1)
    assert torch.equal(dq[:, :, empty_rows], torch.zeros_like(dq[:, :, empty_rows])), "rows with no key got a dQ"


# Full blocks walked both ways (runs, and the flat block list), with and without tensor descriptors
# (the interpreter emulates them), and kernel tiles of a whole mask block (one step a block).
@pytest.mark.parametrize("full_runs, tma, block_m1", [(True, False, 16), (False, True, 16), (True, True, 32), (False, False, 32)])
def test_atomic_dq_on_every_walk(full_runs, tma, block_m1):
    pattern, q_len, kv_len = "causal", 130, 130
    q, k, v, dout, dlse = make_inputs(2, 1, q_len, kv_len, 32, torch.float16, seed=3)
    mask = sparseflash.compile_mask(pattern, q_len, kv_len, block_m=32, block_n=32)
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    config = atomic_config(block_m1=block_m1, full_runs=full_runs, tma=tma)
    check_against_oracle(run_launchers(mask, 32**-0.5, config), q, k, v, dout, dlse, allowed, 32**-0.5)


# Long columns cut into items (split.py): dK/dV partials go to slots and are merged; the dQ atomics
# of every item go straight into the buffer. The second pattern has rows with no key in split lines.
@pytest.mark.parametrize("split_blocks, schedule", [(1, Schedule(True, True)), (3, Schedule(True, False))], ids=["split1-heads", "split3-tiles"])
@pytest.mark.parametrize(
    "pattern, q_len, kv_len, kv_heads", [("local(20) + global(5)", 200, 200, 3), ("(local(30) | global(40)) & causal", 170, 120, 1)]
)
def test_atomic_dq_with_split_columns(pattern, q_len, kv_len, kv_heads, split_blocks, schedule):
    q, k, v, dout, dlse = make_inputs(3, kv_heads, q_len, kv_len, 32, torch.float32, seed=split_blocks)
    mask = sparseflash.compile_mask(pattern, q_len, kv_len, block_m=32, block_n=32)
    assert split_plan(mask, False, split_blocks) is not None, "no column is split: the test tests nothing"
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    config = atomic_config(schedule=schedule, split_blocks=split_blocks)
    check_against_oracle(run_launchers(mask, 32**-0.5, config), q, k, v, dout, dlse, allowed, 32**-0.5)


@pytest.mark.parametrize("dtype, scale", [(torch.float16, None), (torch.float32, 1.0)], ids=["float16", "float32"])
def test_keys_past_the_end_do_not_reach_dq(dtype, scale):
    """A dense walk's last key tile holds zero rows past kv_len. Their p = exp(0 - lse) is huge
    when every real score is very negative (lse -18 here; with scale 1, -120): inf in float16 (in
    float32 with scale 1), and inf * 0 in dS^T k would be NaN all along the row's dQ."""
    gen = torch.Generator().manual_seed(0)
    q_len, kv_len, head_dim = 40, 90, 32
    q = (-2 + 0.1 * torch.randn(1, 1, q_len, head_dim, generator=gen)).to(dtype)
    k = (2 + 0.1 * torch.randn(1, 1, kv_len, head_dim, generator=gen)).to(dtype)
    v, dout = (torch.randn(1, 1, n, head_dim, generator=gen).to(dtype) for n in (kv_len, q_len))
    scale = head_dim**-0.5 if scale is None else scale
    mask = sparseflash.compile_mask("dense", q_len, kv_len, block_m=32, block_n=32)
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool)
    check_against_oracle(run_launchers(mask, scale, atomic_config()), q, k, v, dout, None, allowed, scale)


# --------------------------------------------------------------------------------------- switch


class LaunchLog:
    """Stands in for a jit kernel: records each launch's keyword arguments, then launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.fixture
def launches(monkeypatch):
    """Logs of the dK/dV and dQ kernels' launches, with atomics the default when nothing decides
    otherwise: a switch that ignored ``deterministic`` would then take the atomic path."""
    monkeypatch.setattr(backward, "ATOMIC_DQ_BY_DEFAULT", True)
    logs = {name: LaunchLog(getattr(backward, kernel)) for name, kernel in (("dkdv", "_attention_backward_dkdv_kernel"), ("dq", "_attention_backward_dq_kernel"))}
    monkeypatch.setattr(backward, "_attention_backward_dkdv_kernel", logs["dkdv"])
    monkeypatch.setattr(backward, "_attention_backward_dq_kernel", logs["dq"])
    return logs


def took_atomic_path(logs) -> bool:
    (dkdv,) = logs["dkdv"].launches
    assert dkdv["ATOMIC_DQ"] == (len(logs["dq"].launches) == 0), "dQ computed twice or not at all"
    return dkdv["ATOMIC_DQ"]


@pytest.fixture
def deterministic_algorithms():
    """Turns PyTorch's determinism switch on for the test, and back to what it was."""
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


def public_case():
    q, k, v, dout, dlse = make_inputs(2, 1, 70, 70, 32, torch.float16, seed=21)
    return q, k, v, dout, dlse, sparseflash.parse("causal").dense_mask(70, 70)


def run_public(**kwargs):
    return lambda q, k, v: sparseflash.attention(q, k, v, "causal", block_m=32, block_n=32, return_lse=True, **kwargs)


@pytest.mark.parametrize("deterministic, expected", [(True, False), (False, True), (None, True)])
def test_deterministic_argument_decides(launches, deterministic, expected):
    q, k, v, dout, dlse, allowed = public_case()
    check_against_oracle(run_public(deterministic=deterministic), q, k, v, dout, dlse, allowed, None)
    assert took_atomic_path(launches) == expected


def test_torch_deterministic_algorithms_keep_the_dq_kernel(launches, deterministic_algorithms):
    q, k, v, dout, dlse, allowed = public_case()
    check_against_oracle(run_public(), q, k, v, dout, dlse, allowed, None)
    assert not took_atomic_path(launches)


def test_torch_switch_is_read_when_the_backward_runs(launches):
    """As with PyTorch's own kernels, the switch in force at backward time counts."""
    q, k, v, dout, _, _ = public_case()
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = sparseflash.attention(*leaves, "causal", block_m=32, block_n=32)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out.backward(dout)
    finally:
        torch.use_deterministic_algorithms(before)
    assert not took_atomic_path(launches)


def test_explicit_deterministic_false_wins_over_the_torch_switch(launches, deterministic_algorithms):
    q, k, v, dout, dlse, allowed = public_case()
    check_against_oracle(run_public(deterministic=False), q, k, v, dout, dlse, allowed, None)
    assert took_atomic_path(launches)


@pytest.mark.parametrize("atomic_dq", [True, False])
@pytest.mark.parametrize("deterministic", [True, False])
def test_explicit_config_wins(launches, atomic_dq, deterministic):
    q, k, v, dout, dlse, allowed = public_case()
    mask = sparseflash.compile_mask("causal", 70, 70, block_m=32, block_n=32)
    config = BackwardConfig(16, 32, 16, 16, 4, 1, atomic_dq=atomic_dq)
    run = run_launchers(mask, 32**-0.5, config, deterministic=deterministic)
    check_against_oracle(run, q, k, v, dout, dlse, allowed, 32**-0.5)
    assert took_atomic_path(launches) == atomic_dq


def test_use_atomic_dq_rule(monkeypatch):
    config = BackwardConfig(16, 16, 16, 16, 4, 1)
    for by_default in (False, True):
        monkeypatch.setattr(backward, "ATOMIC_DQ_BY_DEFAULT", by_default)
        assert use_atomic_dq(config, deterministic=True) is False
        assert use_atomic_dq(config, deterministic=False) is by_default
        for explicit in (False, True):
            for deterministic in (False, True):
                assert use_atomic_dq(BackwardConfig(16, 16, 16, 16, 4, 1, atomic_dq=explicit), deterministic) is explicit


def test_deterministic_must_be_a_bool_or_none():
    q = torch.randn(1, 1, 16, 16, dtype=torch.float16)
    with pytest.raises(TypeError, match="deterministic must be True, False or None, got str"):
        sparseflash.attention(q, q, q, deterministic="yes")
