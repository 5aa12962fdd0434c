"""sparseflash.attention against the float64 dense oracle (CPU tier).

Without a GPU the Triton kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), in
float16 and float32 only: the interpreter's bfloat16 products are wrong. Sizes are small and odd on
purpose, and block sizes of 16 to 64 give several blocks of every class. Every kernel output is
NaN-filled before the kernels run (``POISON_OUTPUTS``), so an unwritten element cannot pass.

Each case checks out, lse, dq, dk and dv by DESIGN.md's rule (``attention_oracle.check_close``):
error against the float64 oracle at most 2x the same-precision reference's error plus a rounding
floor. The loss also weighs lse, so the lse gradient path is checked too.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from attention_oracle import check_close, forward_and_grads, reference_attention

import sparseflash
from sparseflash import attention

pytest.importorskip("triton")  # the kernels need it; without it only the torch path is tested
import sparseflash.kernels.common as kernels_common  # noqa: E402
NAMES = ("out", "lse", "dq", "dk", "dv")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(kernels_common, "POISON_OUTPUTS", True)


def make_inputs(batch, n_q_heads, n_kv_heads, q_len, kv_len, head_dim, dtype, seed, layout="contiguous"):
    """Fresh random q, k, v, dout, dlse. ``layout`` makes q, k, v non-contiguous on purpose:
    ``"bshd"`` stores them (B, L, H, D) and transposes; ``"packed"`` slices k and v out of one
    (B, Hkv, Lk, 2, D + 8) buffer, so neither the row nor the head-dim stride is the natural one."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype)

    if layout == "contiguous":
        q = randn(batch, n_q_heads, q_len, head_dim)
        k = randn(batch, n_kv_heads, kv_len, head_dim)
        v = randn(batch, n_kv_heads, kv_len, head_dim)
    elif layout == "bshd":
        q = randn(batch, q_len, n_q_heads, head_dim).transpose(1, 2)
        k = randn(batch, kv_len, n_kv_heads, head_dim).transpose(1, 2)
        v = randn(batch, kv_len, n_kv_heads, head_dim).transpose(1, 2)
    elif layout == "packed":
        q = randn(batch, n_q_heads, q_len, head_dim + 8)[..., 4 : 4 + head_dim]
        kv = randn(batch, n_kv_heads, kv_len, 2, head_dim + 8)
        k, v = kv[:, :, :, 0, :head_dim], kv[:, :, :, 1, 8:]
    else:
        raise ValueError(layout)
    dout = randn(batch, n_q_heads, q_len, head_dim)
    dlse = randn(batch, n_q_heads, q_len).float()
    return q, k, v, dout, dlse


def check_against_oracle(run, q, k, v, dout, dlse, allowed, scale=None):
    """Run ``run(q, k, v) -> (out, lse)`` forward and backward and check all five results."""
    got = forward_and_grads(run, q, k, v, dout, dlse)
    oracle = forward_and_grads(lambda *t: reference_attention(*t, allowed, scale), q, k, v, dout, dlse)
    same = forward_and_grads(
        lambda *t: reference_attention(*t, allowed, scale, compute_dtype=q.dtype), q, k, v, dout, dlse
    )
    for name, g, s, o in zip(NAMES, got, same, oracle):
        check_close(name, g, s, o, q.dtype)
    return got


def run_attention(pattern, **kwargs):
    return lambda q, k, v: attention(q, k, v, pattern, return_lse=True, **kwargs)


# ------------------------------------------------------------------------------------- patterns

# (pattern, q_len, kv_len, block_m, block_n): every primitive and several combinations, at odd
# lengths, with blocks small enough that rows hold empty, partial and (mostly) full blocks.
PATTERN_CASES = [
    ("dense", 97, 83, 32, 32),
    ("causal", 113, 113, 32, 32),
    ("local(9)", 97, 97, 16, 32),
    ("local(40, 3)", 113, 113, 16, 16),
    ("global(5)", 97, 97, 32, 32),
    ("sink(7)", 97, 113, 32, 32),
    ("strided(16)", 97, 97, 32, 32),
    ("butterfly(16)", 113, 113, 32, 32),
    ("butterfly(16, 2)", 128, 128, 32, 32),
    ("chunk(24)", 97, 97, 16, 16),
    ("local(40)+global(4)", 113, 113, 16, 32),
    ("causal & local(30)", 113, 113, 32, 16),
    ("causal - local(10)", 97, 97, 32, 32),
    ("~chunk(32) & causal", 113, 113, 32, 32),
    ("strided(8) + sink(3)", 97, 97, 32, 32),
    ("(butterfly(16) | sink(2)) & ~local(5)", 113, 113, 32, 32),
    # 64-blocks: the global column's and row's blocks are narrow (walked in 16-key/-query steps)
    ("local(50)+global(3)", 190, 201, 64, 64),
]


@pytest.mark.filterwarnings("ignore:strided.*leaves no empty")
@pytest.mark.parametrize(
    "pattern, q_len, kv_len, block_m, block_n", PATTERN_CASES, ids=[c[0].replace(" ", "") for c in PATTERN_CASES]
)
def test_pattern_fp16(pattern, q_len, kv_len, block_m, block_n):
    q, k, v, dout, dlse = make_inputs(1, 2, 1, q_len, kv_len, 40, torch.float16, seed=q_len + kv_len)
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    check_against_oracle(run_attention(pattern, block_m=block_m, block_n=block_n), q, k, v, dout, dlse, allowed)


@pytest.mark.parametrize(
    "pattern, q_len, kv_len",
    [("dense", 70, 101), ("causal", 101, 70), ("local(20)+global(4)", 90, 90), ("causal - local(10)", 64, 80)],
    ids=["dense", "causal-Lq>Lk", "local+global", "masked-rows"],
)
def test_pattern_fp32(pattern, q_len, kv_len):
    """float32 through exact (ieee) products: errors near 1e-7, far under tf32's 1e-3."""
    q, k, v, dout, dlse = make_inputs(2, 2, 2, q_len, kv_len, 64, torch.float32, seed=7)
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    out = check_against_oracle(run_attention(pattern, block_m=32, block_n=64), q, k, v, dout, dlse, allowed)[0]
    reference = reference_attention(q, k, v, allowed)[0]
    assert (out.double() - reference).abs().max().item() < 1e-5


# delta = rowsum(O * dO) - dlse computed by the dQ kernel (the default) or by a preprocess pass,
# with fully masked rows (their delta is 0) and split rows (several dQ programs store it).
@pytest.mark.parametrize("delta_in_dq", [True, False], ids=["delta-in-dq", "preprocess"])
@pytest.mark.parametrize("pattern", ["causal - local(10)", "local(20)+global(4)"])
def test_delta_passes(pattern, delta_in_dq, monkeypatch):
    import sparseflash.kernels.backward as backward_kernels
    from sparseflash.kernels.common import BackwardConfig, ForwardConfig

    monkeypatch.setattr(backward_kernels, "DELTA_IN_DQ", delta_in_dq)
    mask = sparseflash.compile_mask(pattern, 90, 90, block_m=32, block_n=32)
    q, k, v, dout, dlse = make_inputs(1, 2, 1, 90, 90, 32, torch.float16, seed=11)
    run = tiled_attention(mask, ForwardConfig(16, 16, 4, 1), BackwardConfig(16, 16, 16, 16, 4, 1, split_blocks=1))
    check_against_oracle(run, q, k, v, dout, dlse, sparseflash.parse(pattern).dense_mask(90, 90))


# ---------------------------------------------------------------------------------------- shapes

SHAPE_CASES = {
    # id: (pattern, batch, Hq, Hkv, Lq, Lk, D, dtype, block_m, block_n, layout)
    "Lq<Lk-causal": ("causal", 1, 2, 2, 40, 100, 64, torch.float16, 16, 32, "contiguous"),
    "Lq>Lk-causal-masked-rows": ("causal", 1, 2, 2, 100, 40, 64, torch.float16, 32, 16, "contiguous"),
    "Lq>Lk-local": ("local(12)", 1, 2, 1, 90, 50, 40, torch.float16, 32, 32, "contiguous"),
    "decode-dense": ("dense", 2, 4, 2, 1, 97, 64, torch.float16, 16, 32, "contiguous"),
    "decode-local+global": ("local(16)+global(4)", 2, 4, 1, 1, 113, 64, torch.float32, 16, 32, "contiguous"),
    "gqa-4-2": ("local(20)+global(4)", 2, 4, 2, 80, 80, 64, torch.float16, 32, 32, "contiguous"),
    "mqa-3-1": ("causal", 1, 3, 1, 80, 80, 40, torch.float16, 32, 32, "contiguous"),
    "head-dim-16": ("causal", 1, 2, 1, 64, 64, 16, torch.float16, 32, 32, "contiguous"),
    "head-dim-96-fp32": ("local(10)", 1, 2, 2, 48, 48, 96, torch.float32, 16, 16, "contiguous"),
    "head-dim-256": ("causal", 1, 1, 1, 40, 40, 256, torch.float16, 16, 16, "contiguous"),
    "head-dim-80": ("sink(4)+local(8)", 1, 2, 1, 64, 64, 80, torch.float16, 32, 32, "contiguous"),
    "noncontiguous-bshd": ("local(20)+global(4)", 2, 4, 2, 75, 75, 40, torch.float16, 32, 32, "bshd"),
    "noncontiguous-packed": ("causal", 1, 2, 2, 64, 90, 40, torch.float32, 32, 32, "packed"),
    "noncontiguous-dense": ("dense", 1, 2, 2, 50, 70, 64, torch.float16, 32, 32, "bshd"),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES), ids=list(SHAPE_CASES))
def test_shapes(case):
    pattern, batch, n_q, n_kv, q_len, kv_len, head_dim, dtype, block_m, block_n, layout = SHAPE_CASES[case]
    q, k, v, dout, dlse = make_inputs(batch, n_q, n_kv, q_len, kv_len, head_dim, dtype, seed=11, layout=layout)
    if layout != "contiguous":
        assert not q.is_contiguous() and not k.is_contiguous()
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    check_against_oracle(run_attention(pattern, block_m=block_m, block_n=block_n), q, k, v, dout, dlse, allowed)


def test_gradient_with_zero_strides():
    """``out.sum().backward()`` hands the backward an expanded dO whose strides are all 0."""
    q, k, v, _, _ = make_inputs(1, 2, 1, 70, 70, 32, torch.float16, seed=14)
    dout = torch.ones(1, 1, 1, 1, dtype=torch.float16).expand(1, 2, 70, 32)
    allowed = sparseflash.parse("local(20)+global(4)").dense_mask(70, 70)
    check_against_oracle(run_attention("local(20)+global(4)", block_m=32, block_n=32), q, k, v, dout, None, allowed)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    attention(*leaves, "local(20)+global(4)", block_m=32, block_n=32).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_default_blocks_and_scale():
    """No block overrides (the mask picks 128 x 128, shrunk to the lengths) and a custom scale."""
    q, k, v, dout, dlse = make_inputs(1, 2, 1, 150, 150, 64, torch.float16, seed=3)
    allowed = sparseflash.parse("local(30)+global(4)").dense_mask(150, 150)
    run = lambda *t: attention(*t, "local(30)+global(4)", scale=0.3, return_lse=True)  # noqa: E731
    check_against_oracle(run, q, k, v, dout, dlse, allowed, scale=0.3)


@pytest.mark.parametrize("scale", [-0.4, 0.0])
def test_negative_and_zero_scales(scale):
    """The forward kernel scales row maxima (needs scale > 0); other scales take another route to
    the same result. Lq > Lk under causal adds rows with no key."""
    q, k, v, dout, dlse = make_inputs(1, 2, 1, 90, 70, 32, torch.float16, seed=21)
    allowed = sparseflash.parse("causal").dense_mask(90, 70)
    run = lambda *t: attention(*t, "causal", scale=scale, block_m=32, block_n=32, return_lse=True)  # noqa: E731
    check_against_oracle(run, q, k, v, dout, dlse, allowed, scale=scale)


def test_fully_masked_rows_are_zero_with_zero_gradients():
    """Rows with no allowed key: out 0, lse -inf, and no gradient reaches q from them."""
    q, k, v, dout, dlse = make_inputs(1, 2, 1, 100, 40, 64, torch.float16, seed=5)
    got = forward_and_grads(run_attention("causal", block_m=32, block_n=16), q, k, v, dout, dlse)
    out, lse, dq = got[0], got[1], got[2]
    masked = slice(0, 60)  # p = i + 40 - 100 < 0
    assert torch.all(out[:, :, masked] == 0)
    assert torch.all(lse[:, :, masked] == float("-inf"))
    assert torch.all(dq[:, :, masked] == 0)
    assert torch.isfinite(lse[:, :, 60:]).all()
    assert not any(torch.isnan(t).any() for t in got)


def test_every_row_masked():
    """A pattern that allows nothing at all: no block is visited, outputs are still written."""
    q, k, v, dout, dlse = make_inputs(1, 2, 2, 50, 50, 32, torch.float16, seed=9)
    out, lse, dq, dk, dv = forward_and_grads(run_attention("causal - causal", block_m=16, block_n=16), q, k, v, dout, dlse)
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))
    assert torch.all(dq == 0) and torch.all(dk == 0) and torch.all(dv == 0)


def test_only_lse_used():
    """The gradient of lse alone (out unused) goes through the kernels' dlse path."""
    q, k, v, _, dlse = make_inputs(1, 2, 1, 64, 64, 32, torch.float32, seed=2)
    allowed = sparseflash.parse("causal").dense_mask(64, 64)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    _, lse = attention(*leaves, "causal", return_lse=True, block_m=32, block_n=32)
    got = torch.autograd.grad((lse * dlse).sum(), leaves)
    leaves = [t.clone().double().requires_grad_(True) for t in (q, k, v)]
    _, lse_ref = reference_attention(*leaves, allowed)
    expected = torch.autograd.grad((lse_ref * dlse.double()).sum(), leaves, allow_unused=True)
    expected = (expected[0], expected[1], torch.zeros_like(leaves[2]))  # lse does not depend on v
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, atol=1e-5, rtol=1e-5)


def test_explicit_block_mask():
    """A BlockMask built from an arbitrary dense mask, passed instead of a pattern."""
    gen = torch.Generator().manual_seed(4)
    allowed = torch.rand(90, 70, generator=gen) < 0.3
    allowed[:10] = False  # some rows with no key
    mask = sparseflash.mask_from_dense(allowed, block_m=32, block_n=32)
    q, k, v, dout, dlse = make_inputs(1, 2, 1, 90, 70, 40, torch.float16, seed=4)
    check_against_oracle(lambda *t: attention(*t, mask, return_lse=True), q, k, v, dout, dlse, allowed)


# -------------------------------------------------------------------------------- kernel tiling


def test_kernel_tiles_smaller_than_mask_blocks():
    """Kernel tiles of 16 stepping through 64 x 32 mask blocks (sub-tiling), via the launchers."""
    from sparseflash.kernels.common import BackwardConfig, ForwardConfig

    pattern, q_len, kv_len = "local(20)+global(4)", 100, 120
    mask = sparseflash.compile_mask(pattern, q_len, kv_len, block_m=64, block_n=32)
    q, k, v, dout, dlse = make_inputs(1, 2, 1, q_len, kv_len, 40, torch.float16, seed=8)
    run = tiled_attention(mask, ForwardConfig(16, 16, 4, 1), BackwardConfig(16, 16, 32, 16, 4, 1))
    check_against_oracle(run, q, k, v, dout, dlse, sparseflash.parse(pattern).dense_mask(q_len, kv_len))


def tiled_attention(mask, forward_config, backward_config):
    """``(q, k, v) -> (out, lse)`` through the kernel launchers with the given configs, differentiable."""
    from sparseflash.kernels.backward import attention_backward
    from sparseflash.kernels.forward import attention_forward

    class Tiled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            ctx.scale = 1 / math.sqrt(q.shape[-1])
            out, lse = attention_forward(q, k, v, mask, ctx.scale, config=forward_config)
            ctx.save_for_backward(q, k, v, out, lse)
            return out, lse

        @staticmethod
        def backward(ctx, dout, dlse):
            return attention_backward(dout, *ctx.saved_tensors, mask, ctx.scale, dlse=dlse, config=backward_config)

    return lambda *t: Tiled.apply(*t)


def test_tile_that_does_not_divide_the_mask_block_is_refused():
    from sparseflash.kernels.common import ForwardConfig
    from sparseflash.kernels.forward import attention_forward

    mask = sparseflash.compile_mask("causal", 64, 64, block_m=32, block_n=32)
    q = torch.randn(1, 1, 64, 32, dtype=torch.float16)
    with pytest.raises(ValueError, match="block_n=64 must divide the mask's block of 32"):
        attention_forward(q, q, q, mask, 1.0, config=ForwardConfig(32, 64, 4, 1))


def test_backward_is_deterministic():
    """dK/dV has no atomics: two backward passes give the same bits."""
    q, k, v, dout, dlse = make_inputs(1, 4, 1, 96, 96, 32, torch.float16, seed=12)
    first = forward_and_grads(run_attention("local(20)+global(4)", block_m=32, block_n=32), q, k, v, dout, dlse)
    second = forward_and_grads(run_attention("local(20)+global(4)", block_m=32, block_n=32), q, k, v, dout, dlse)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_dense_reads_no_lists(backend):
    """``dense`` is exact FlashAttention: neither path builds the mask's block lists."""
    mask = sparseflash.compile_mask("dense", 70, 90, block_m=32, block_n=32, cache=False)
    q, k, v, dout, _ = make_inputs(1, 2, 1, 70, 90, 32, torch.float16, seed=15)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    attention(*leaves, mask, backend=backend).backward(dout)
    assert mask.nbytes == 0, "the dense mask's lists were built"


def test_kernels_really_run(monkeypatch):
    """Under the interpreter the CPU path is the Triton kernels, not the PyTorch fallback."""
    from sparseflash import blocked_reference

    def refuse(*args, **kwargs):
        raise AssertionError("the blocked PyTorch path ran instead of the kernels")

    monkeypatch.setattr(blocked_reference, "blocked_attention", refuse)
    q = torch.randn(1, 1, 32, 16, dtype=torch.float16)
    attention(q, q, q, "causal")


# ---------------------------------------------------------------------------- prepared launches


def _prepared_launches(mask) -> dict:
    from sparseflash.kernels.launch import _prepared

    return _prepared.get(mask, {})


def test_prepared_launches_follow_sizes_and_layouts():
    """The launchers derive grid, lists and constexprs once per (mask, inputs' layout) and reuse
    them (launch.prepared_launch). One mask, calls that change what a launch depends on: batch,
    heads (GQA), strides, the dlse gradient; each checked against the oracle, then the first call
    repeated reuses its launches instead of preparing new ones."""
    pattern = "local(20)+global(4)"
    mask = sparseflash.compile_mask(pattern, 90, 90, block_m=32, block_n=32, cache=False)
    allowed = sparseflash.parse(pattern).dense_mask(90, 90)
    calls = [  # (batch, q heads, kv heads, layout, seed)
        (1, 2, 1, "contiguous", 21),
        (3, 2, 1, "contiguous", 22),  # more programs along batch * heads
        (1, 4, 2, "contiguous", 23),  # other heads and groups
        (2, 2, 2, "bshd", 24),  # other strides
        (1, 2, 1, "bshd", 25),
    ]
    for batch, n_q_heads, n_kv_heads, layout, seed in calls:
        q, k, v, dout, dlse = make_inputs(batch, n_q_heads, n_kv_heads, 90, 90, 32, torch.float16, seed, layout)
        check_against_oracle(lambda *t: attention(*t, mask, return_lse=True), q, k, v, dout, dlse, allowed)
    prepared = len(_prepared_launches(mask))
    assert prepared == 2 * len(calls)  # a forward and a backward launch for each
    q, k, v, dout, dlse = make_inputs(1, 2, 1, 90, 90, 32, torch.float16, 26)
    check_against_oracle(lambda *t: attention(*t, mask, return_lse=True), q, k, v, dout, dlse, allowed)
    assert len(_prepared_launches(mask)) == prepared


def test_prepared_launches_follow_the_module_switches(monkeypatch):
    """Switches that tests and benchmarks flip (here backward.DELTA_IN_DQ) are part of the key: a
    launch prepared under one setting is not reused under the other."""
    import sparseflash.kernels.backward as backward_kernels

    mask = sparseflash.compile_mask("causal - local(10)", 70, 70, block_m=32, block_n=32, cache=False)
    q, k, v, dout, dlse = make_inputs(1, 2, 1, 70, 70, 32, torch.float16, seed=27)
    allowed = sparseflash.parse("causal - local(10)").dense_mask(70, 70)
    for setting in (True, False):
        monkeypatch.setattr(backward_kernels, "DELTA_IN_DQ", setting)
        check_against_oracle(lambda *t: attention(*t, mask, return_lse=True), q, k, v, dout, dlse, allowed)
    used = {launch.delta_in_dq for launch in _prepared_launches(mask).values() if hasattr(launch, "delta_in_dq")}
    assert used == {True, False}
    # Constants outside the key: whoever changes one clears the prepared launches (ab_switches.py).
    from sparseflash.kernels.launch import clear_prepared_launches

    clear_prepared_launches()
    assert not _prepared_launches(mask)


def test_pattern_calls_reuse_the_compiled_mask():
    """attention() with pattern text looks the mask up under its arguments as given; other lengths
    or blocks get their own mask, and bad text raises on every call (never cached)."""
    q = torch.randn(1, 1, 48, 16, dtype=torch.float16)
    first = attention(q, q, q, "local(7) + sink(2)", block_m=16, block_n=16)
    again = attention(q, q, q, "local(7) + sink(2)", block_m=16, block_n=16)
    assert torch.equal(first, again)
    key = ("as given", "local(7) + sink(2)", 48, 48, 16, 16, q.device)
    mask = sparseflash.blockmask.MASK_CACHE.get_or_build(key, lambda: None)
    assert mask is sparseflash.compile_mask("sink(2) | local(7)", 48, block_m=16, block_n=16)
    shorter = q[:, :, :40]
    allowed = sparseflash.parse("local(7) + sink(2)").dense_mask(40, 40)
    out = attention(shorter, shorter, shorter, "local(7) + sink(2)", block_m=16, block_n=16)
    assert torch.allclose(out.double(), reference_attention(shorter, shorter, shorter, allowed)[0], atol=2e-3)
    for _ in range(2):
        with pytest.raises(sparseflash.PatternError):
            attention(q, q, q, "local(7) + ")


# ------------------------------------------------------------------------------- dense vs SDPA


@pytest.mark.parametrize("q_len, kv_len, n_kv", [(77, 77, 2), (1, 90, 1), (60, 100, 2)], ids=["square", "decode-mqa", "Lq<Lk"])
def test_dense_matches_sdpa(q_len, kv_len, n_kv):
    """``dense`` is exact FlashAttention: the same function as PyTorch's SDPA with no mask."""
    q, k, v, dout, _ = make_inputs(2, 2, n_kv, q_len, kv_len, 64, torch.float32, seed=13)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = attention(*leaves, "dense", block_m=32, block_n=32)
    grads = torch.autograd.grad(out, leaves, dout)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    expected = F.scaled_dot_product_attention(*leaves, enable_gqa=n_kv != 2)
    expected_grads = torch.autograd.grad(expected, leaves, dout)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- blocked CPU path


BLOCKED_CASES = {
    "local+global-fp32": ("local(20)+global(4)", 1, 4, 2, 113, 113, 40, torch.float32, 32, 32),
    "causal-Lq>Lk-bf16": ("causal", 2, 2, 1, 90, 50, 64, torch.bfloat16, 32, 16),
    "masked-rows-fp16": ("causal - local(10)", 1, 2, 2, 97, 97, 32, torch.float16, 16, 32),
    "dense-odd-bf16": ("dense", 1, 2, 1, 70, 101, 40, torch.bfloat16, 32, 32),
    "strided-fp32": ("strided(8) + sink(3)", 1, 2, 1, 97, 97, 40, torch.float32, 32, 32),
    "decode-fp32": ("local(16)", 2, 2, 2, 1, 80, 64, torch.float32, 16, 32),
}


@pytest.mark.filterwarnings("ignore:strided.*leaves no empty")
@pytest.mark.parametrize("case", list(BLOCKED_CASES), ids=list(BLOCKED_CASES))
def test_blocked_pytorch_path(case):
    pattern, batch, n_q, n_kv, q_len, kv_len, head_dim, dtype, block_m, block_n = BLOCKED_CASES[case]
    q, k, v, dout, dlse = make_inputs(batch, n_q, n_kv, q_len, kv_len, head_dim, dtype, seed=21)
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len)
    run = run_attention(pattern, block_m=block_m, block_n=block_n, backend="torch")
    check_against_oracle(run, q, k, v, dout, dlse, allowed)


def test_blocked_path_memory_follows_the_blocks(monkeypatch):
    """The blocked path's score tensors cover a query block's non-empty blocks, never all keys."""
    from sparseflash import blocked_reference

    widths = []
    real = blocked_reference._masked_softmax_attention

    def spy(scores, values):
        widths.append(scores.shape[-1])
        return real(scores, values)

    monkeypatch.setattr(blocked_reference, "_masked_softmax_attention", spy)
    q = torch.randn(1, 1, 1024, 16)
    attention(q, q, q, "local(16)", block_m=32, block_n=32, backend="torch")
    assert len(widths) == 32 and max(widths) <= 3 * 32


def test_bf16_on_cpu_goes_through_the_blocked_path():
    """The interpreter's bf16 products are wrong, so auto dispatch avoids them."""
    q, k, v, dout, dlse = make_inputs(1, 2, 1, 64, 64, 32, torch.bfloat16, seed=1)
    allowed = sparseflash.parse("causal").dense_mask(64, 64)
    check_against_oracle(run_attention("causal", block_m=32, block_n=32), q, k, v, dout, dlse, allowed)
    with pytest.raises(ValueError, match="bfloat16"):
        attention(q, k, v, "causal", backend="triton")


# ------------------------------------------------------------------------------ the check itself


def test_the_check_catches_a_small_error():
    """The 2x rule is tight enough to fail on a 1% wrong scale (a test that cannot fail is a defect)."""
    q, k, v, dout, dlse = make_inputs(1, 2, 1, 64, 64, 32, torch.float16, seed=6)
    allowed = sparseflash.parse("causal").dense_mask(64, 64)
    wrong = lambda *t: attention(*t, "causal", scale=1.01 / math.sqrt(32), return_lse=True, block_m=32, block_n=32)  # noqa: E731
    with pytest.raises(AssertionError, match="out: error"):
        check_against_oracle(wrong, q, k, v, dout, dlse, allowed)


# ------------------------------------------------------------------------------------ bad input


def _tensors(q_shape=(1, 2, 16, 32), kv_shape=(1, 2, 16, 32), dtype=torch.float16):
    return torch.randn(q_shape).to(dtype), torch.randn(kv_shape).to(dtype), torch.randn(kv_shape).to(dtype)


BAD_INPUTS = {
    "rank": (lambda: (torch.randn(2, 16, 32).half(), *_tensors()[1:]), {}, ValueError, r"q must have 4 dimensions \(B, Hq, Lq, D\), got 3"),
    "batch-mismatch": (lambda: _tensors((2, 2, 16, 32)), {}, ValueError, "batch sizes differ: q has 2, k and v have 1"),
    "head-dim-mismatch": (lambda: _tensors((1, 2, 16, 32), (1, 2, 16, 64)), {}, ValueError, "head dims differ: q has D=32, k and v have D=64"),
    "k-v-mismatch": (lambda: (*_tensors()[:2], torch.randn(1, 2, 20, 32).half()), {}, ValueError, "k and v must have the same shape"),
    "heads-not-multiple": (lambda: _tensors((1, 3, 16, 32), (1, 2, 16, 32)), {}, ValueError, r"query heads \(3\) must be a multiple of the number of key/value heads \(2\)"),
    "mixed-dtypes": (lambda: (_tensors()[0].float(), *_tensors()[1:]), {}, ValueError, "same dtype, got torch.float32, torch.float16, torch.float16"),
    "unsupported-dtype": (lambda: _tensors(dtype=torch.float64), {}, ValueError, "dtype torch.float64 is not supported; use one of float16, bfloat16, float32"),
    "head-dim-too-small": (lambda: _tensors((1, 2, 16, 8), (1, 2, 16, 8)), {}, ValueError, "head dim D=8 is not supported; it must be from 16 to 256"),
    "head-dim-too-large": (lambda: _tensors((1, 1, 4, 320), (1, 1, 4, 320)), {}, ValueError, "head dim D=320 is not supported"),
    "bad-pattern": (_tensors, {"pattern": "local(4) +* causal"}, sparseflash.PatternError, r"\^"),
    "unknown-name": (_tensors, {"pattern": "lokal(4)"}, sparseflash.PatternError, "causal"),
    "pattern-type": (_tensors, {"pattern": 42}, TypeError, "pattern must be a string, a Pattern or a BlockMask, got int"),
    "mask-lengths": (_tensors, {"pattern": "mask(15, 16)"}, ValueError, r"BlockMask was built for q_len=15, kv_len=16, but q has Lq=16 and k has Lk=16"),
    "block-size": (_tensors, {"block_m": 24}, ValueError, "block_m must be a power of two from 16 to 256, got 24"),
    "scale": (_tensors, {"scale": float("nan")}, ValueError, "scale must be a finite number"),
    "backend": (_tensors, {"backend": "cuda"}, ValueError, "backend must be one of"),
    "not-a-tensor": (lambda: (None, *_tensors()[1:]), {}, TypeError, "q must be a torch.Tensor, got NoneType"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_refused(case, monkeypatch):
    make, kwargs, error, message = BAD_INPUTS[case]
    kwargs = dict(kwargs)
    if kwargs.get("pattern") == "mask(15, 16)":
        kwargs["pattern"] = sparseflash.compile_mask("causal", 15, 16, block_m=16, block_n=16)
    from sparseflash.kernels import backward, forward

    def refuse(*args, **kw):
        raise AssertionError("a kernel was launched for bad input")

    monkeypatch.setattr(forward, "attention_forward", refuse)
    monkeypatch.setattr(backward, "attention_backward", refuse)
    with pytest.raises(error, match=message):
        attention(*make(), **kwargs)


def test_mixed_devices_are_refused():
    q, k, v = _tensors()
    meta = torch.empty(1, 2, 16, 32, dtype=torch.float16, device="meta")
    with pytest.raises(ValueError, match="same device, got cpu, meta, cpu"):
        attention(q, meta, v)


# ------------------------------------------------------------------------------------- packaging


def test_attention_module_does_not_import_triton():
    """``sparseflash.attention`` imports triton only when a kernel runs."""
    import subprocess
    import sys

    code = "import sys, sparseflash.attention; assert 'triton' not in sys.modules, 'triton was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_attribute_is_the_function():
    """``sparseflash.attention`` stays callable after the submodule has been imported."""
    import subprocess
    import sys

    code = (
        "import sparseflash, sparseflash.attention\n"
        "from sparseflash import attention\n"
        "assert callable(sparseflash.attention) and callable(attention), type(sparseflash.attention)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
