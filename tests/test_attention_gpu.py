"""GPU tier: the Triton kernels at real sizes against the float64 oracle, and against FlexAttention.

Run on a CUDA machine (through the device tool): ``pytest -m gpu tests/test_attention_gpu.py -s``.
Skipped elsewhere (conftest). Each case prints one summary line (with ``-s``): the kernel's error
and the same-precision reference's error for out, lse, dq, dk, dv.

The oracle is dense attention in float64 on the GPU on ``pattern.dense_mask``; the rule is DESIGN.md's
(error <= 2x the same-precision reference's error + a rounding floor). Sparse patterns are also run
through FlexAttention with a ``mask_mod`` built from the pattern's exact predicate: an independent
implementation of the same mask, which must pass the same rule.
"""

from __future__ import annotations

import math

import pytest
import torch
from attention_oracle import check_close, forward_and_grads, max_error, reference_attention

import sparseflash
from sparseflash import attention

pytestmark = pytest.mark.gpu
NAMES = ("out", "lse", "dq", "dk", "dv")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    import sparseflash.kernels.common as common
    monkeypatch.setattr(common, "POISON_OUTPUTS", True)


def make_inputs(batch, n_q_heads, n_kv_heads, q_len, kv_len, head_dim, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float32).to(dtype)

    q = randn(batch, n_q_heads, q_len, head_dim)
    k = randn(batch, n_kv_heads, kv_len, head_dim)
    v = randn(batch, n_kv_heads, kv_len, head_dim)
    return q, k, v, randn(batch, n_q_heads, q_len, head_dim), randn(batch, n_q_heads, q_len).float()


def summarize(case_id, got, same, oracle):
    cells = [f"{name} {max_error(g, o):.1e}/{max_error(s, o):.1e}" for name, g, s, o in zip(NAMES, got, same, oracle)]
    print(f"\n[gpu] {case_id:44s} kernel/ref: " + "  ".join(cells))


def check_case(case_id, run, q, k, v, dout, dlse, allowed):
    got = forward_and_grads(run, q, k, v, dout, dlse)
    oracle = forward_and_grads(lambda *t: reference_attention(*t, allowed), q, k, v, dout, dlse)
    same = forward_and_grads(lambda *t: reference_attention(*t, allowed, compute_dtype=q.dtype), q, k, v, dout, dlse)
    summarize(case_id, got, same, oracle)
    for name, g, s, o in zip(NAMES, got, same, oracle):
        check_close(name, g, s, o, q.dtype)
    return got, same, oracle


# (pattern, batch, Hq, Hkv, Lq, Lk, D, dtype): a cross-section rather than a product, to stay
# within a few minutes including Triton's compilation of each (dtype, D, dense) variant.
CASES = [
    ("dense", 2, 4, 2, 1024, 1024, 64, torch.bfloat16),
    ("dense", 1, 2, 2, 4096, 3000, 128, torch.float16),
    ("causal", 1, 2, 1, 16384, 16384, 128, torch.bfloat16),
    ("causal", 1, 2, 2, 3000, 2048, 64, torch.float16),  # Lq > Lk: 952 rows with no key
    ("causal", 1, 2, 1, 6000, 6000, 64, torch.bfloat16),  # long rows at D=64: the 64 x 128 forward tile
    ("local(256)+global(4)", 1, 4, 2, 8192, 8192, 128, torch.bfloat16),
    ("local(256)+global(4)", 2, 4, 1, 1000, 1000, 64, torch.float16),
    ("local(256)+global(4)", 1, 8, 1, 1, 16384, 128, torch.bfloat16),  # decoding, MQA
    ("local(1k) & causal", 1, 2, 2, 16384, 16384, 64, torch.bfloat16),
    ("butterfly(128)", 1, 2, 2, 4096, 4096, 64, torch.bfloat16),
    ("butterfly(128)", 1, 4, 2, 4096, 4096, 128, torch.bfloat16),  # full blocks only: the 2-per-SM forward
    ("local(256)+sink(4)", 1, 16, 16, 4096, 4096, 128, torch.bfloat16),  # 16 heads: the sink column is split
    ("strided(256) + local(128)", 1, 2, 2, 2048, 2048, 128, torch.float16),  # partial-span rows: 4 warps, key spans
    ("strided(256) + local(128)", 1, 2, 2, 3000, 3000, 64, torch.bfloat16),  # the same at D=64: 32-query dK/dV steps
    ("local(1k) & causal", 1, 4, 2, 5000, 5000, 64, torch.bfloat16),  # D=64 short rows: 64 x 64 forward with spans
    ("causal - local(64)", 1, 2, 2, 2048, 2048, 80, torch.bfloat16),  # head dim padded 80 -> 128
    ("chunk(512) + sink(4)", 1, 2, 1, 4096, 4096, 256, torch.bfloat16),
    ("causal", 1, 2, 2, 1024, 1024, 64, torch.float32),  # exact (ieee) float32 products
]


def _case_id(case):
    pattern, batch, n_q, n_kv, q_len, kv_len, head_dim, dtype = case
    return f"{pattern.replace(' ', '')}-B{batch}-H{n_q}/{n_kv}-{q_len}x{kv_len}-D{head_dim}-{str(dtype)[6:]}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_against_oracle(case):
    pattern, batch, n_q, n_kv, q_len, kv_len, head_dim, dtype = case
    q, k, v, dout, dlse = make_inputs(batch, n_q, n_kv, q_len, kv_len, head_dim, dtype, seed=q_len + head_dim)
    allowed = sparseflash.parse(pattern).dense_mask(q_len, kv_len, device="cuda")
    run = lambda *t: attention(*t, pattern, return_lse=True)  # noqa: E731
    check_case(_case_id(case), run, q, k, v, dout, dlse, allowed)


FLEX_CASES = [
    ("local(256)+global(4)", 1, 4, 2, 4096, 4096, 128, torch.bfloat16),
    ("butterfly(128)", 1, 2, 2, 2048, 2048, 64, torch.float16),
    ("causal", 1, 2, 2, 1500, 1000, 64, torch.bfloat16),
]


@pytest.mark.parametrize("case", FLEX_CASES, ids=[_case_id(c) for c in FLEX_CASES])
def test_against_flex_attention(case):
    """FlexAttention with a mask_mod from the exact predicate passes the same rule, and so do we."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    pattern, batch, n_q, n_kv, q_len, kv_len, head_dim, dtype = case
    parsed = sparseflash.parse(pattern)
    offset = kv_len - q_len  # queries aligned to the end of the keys, as in sparseflash

    def mask_mod(b, h, q_idx, kv_idx):
        return parsed.allowed(q_idx + offset, kv_idx)

    block_mask = flex.create_block_mask(mask_mod, None, None, q_len, kv_len, device="cuda")

    def run_flex(q, k, v):
        # Eager FlexAttention (unfused): slower, but no compile time, and the numbers are what we check.
        out, lse = flex.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=n_q != n_kv, return_lse=True)
        return out, lse.float()

    q, k, v, dout, dlse = make_inputs(batch, n_q, n_kv, q_len, kv_len, head_dim, dtype, seed=5)
    allowed = parsed.dense_mask(q_len, kv_len, device="cuda")
    ours, same, oracle = check_case(_case_id(case) + " ours", lambda *t: attention(*t, pattern, return_lse=True), q, k, v, dout, None, allowed)
    theirs = forward_and_grads(run_flex, q, k, v, dout, None)
    summarize(_case_id(case) + " flex", theirs, same, oracle)
    for name, g, s, o in zip(NAMES, theirs, same, oracle):
        if name == "lse":
            # Flex marks rows with no key by its own convention; compare where both are finite.
            finite = torch.isfinite(o)
            assert max_error(g[finite], o[finite]) <= 2 * max_error(s, o) + 1e-3, "flex lse"
            continue
        check_close("flex " + name, g, s, o, dtype)


@pytest.mark.parametrize("pattern", ["local(256)", "dense"])
def test_launchers_in_a_fresh_thread(pattern):
    """The launchers in a thread whose first CUDA work is theirs, against the float64 oracle,
    with launches prepared in the main thread (``launch.prepared_launch``), as autograd's device
    thread runs a backward prepared by an earlier call on the main thread, or the other way round.

    Per-thread state a launch needs must be set per call, not when it is prepared:
    - Kernel-built descriptors (the dense backward's) need Triton's allocator, which is per
      context: once prepared launches skipped setting it, a backward first run by autograd's
      thread then failed on the main thread ("no allocator was set", H200,
      benchmarks/experiments/autograd_costs.py).
    - Host-built descriptors need a current CUDA context at launch; once (in
      benchmarks/experiments/host_paths.py, after a profiled run) a fresh thread had none and the
      launch failed with "invalid device context", hence ``common.bind_cuda_context``. That
      failure was not reproduced with the binding removed (H200, three variants)."""
    import threading

    from sparseflash.kernels.backward import attention_backward
    from sparseflash.kernels.forward import attention_forward

    scale = 128**-0.5
    q, k, v, dout, _ = make_inputs(1, 2, 2, 1024, 1024, 128, torch.bfloat16, seed=3)
    mask = sparseflash.compile_mask(pattern, 1024, device="cuda")

    def forward_backward():
        out, lse = attention_forward(q, k, v, mask, scale)
        grads = attention_backward(dout, q, k, v, out, lse, mask, scale)
        return out, lse, *grads

    # Compiled and run once here, then freed: the thread's allocations come from PyTorch's cache,
    # without a runtime call that would bind a context for it.
    forward_backward()
    torch.cuda.synchronize()
    results, errors = [], []

    def in_thread():
        try:
            results.append(forward_backward())
            torch.cuda.synchronize()
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert not errors, f"the launchers failed in a fresh thread: {errors[0]!r}"
    allowed = sparseflash.parse(pattern).dense_mask(1024, 1024, device="cuda")
    oracle = forward_and_grads(lambda *t: reference_attention(*t, allowed, scale), q, k, v, dout)
    same = forward_and_grads(lambda *t: reference_attention(*t, allowed, scale, compute_dtype=q.dtype), q, k, v, dout)
    for name, got, s, o in zip(NAMES, results[0], same, oracle):
        check_close(name, got, s, o, q.dtype)


def test_int64_offsets():
    """Inputs and output whose second batch starts past element 2**31: offsets must be int64."""
    from sparseflash.kernels.forward import attention_forward

    batch, heads, length, head_dim = 2, 1, 512, 64
    batch_stride = 2**31 + 1024

    def huge_view():
        storage = torch.empty(batch_stride + heads * length * head_dim, dtype=torch.bfloat16, device="cuda")
        return storage.as_strided((batch, heads, length, head_dim), (batch_stride, length * head_dim, head_dim, 1))

    q, k, v, out = huge_view(), huge_view(), huge_view(), huge_view()
    gen = torch.Generator(device="cuda").manual_seed(0)
    for t in (q, k, v):
        t.copy_(torch.randn(t.shape, generator=gen, device="cuda"))
    out.fill_(float("nan"))
    mask = sparseflash.compile_mask("local(64)+global(4)", length, length, device="cuda")
    attention_forward(q, k, v, mask, 1 / math.sqrt(head_dim), out=out)
    allowed = sparseflash.parse("local(64)+global(4)").dense_mask(length, length, device="cuda")
    expected, _ = reference_attention(q, k, v, allowed)
    same, _ = reference_attention(q, k, v, allowed, compute_dtype=torch.bfloat16)
    check_close("out", out, same, expected, torch.bfloat16)

    # The backward reads the same huge views (leaves themselves: a clone would be contiguous).
    dout = torch.randn(q.shape, generator=gen, device="cuda").to(torch.bfloat16)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    got_out, got_lse = attention(*leaves, mask, return_lse=True)
    got = (got_out.detach(), got_lse.detach(), *torch.autograd.grad(got_out, leaves, dout))
    inputs = [t.detach() for t in leaves]
    oracle = forward_and_grads(lambda *t: reference_attention(*t, allowed), *inputs, dout)
    same = forward_and_grads(lambda *t: reference_attention(*t, allowed, compute_dtype=torch.bfloat16), *inputs, dout)
    for name, g, s, o in zip(NAMES, got, same, oracle):
        check_close(name, g, s, o, torch.bfloat16)


def test_full_rows_apart_on_gpu(monkeypatch):
    """The forward with the global rows computed apart and the backward with their dQ apart
    (kernels/full_rows.py), each on two streams, in bf16: allowed at this size only by lowering
    MIN_APART_WORK (the benchmarks' 32k is too big for the float64 oracle)."""
    from sparseflash.kernels import full_rows

    monkeypatch.setattr(full_rows, "MIN_APART_WORK", 0)
    case = ("local(256)+global(4)", 1, 8, 2, 8192, 8192, 128, torch.bfloat16)
    mask = sparseflash.compile_mask(case[0], 8192, device="cuda")
    assert full_rows.full_rows_apart(mask, (8, 128)) is not None and full_rows.FULL_ROWS_OVERLAP and full_rows.FULL_ROWS_APART_BACKWARD
    q, k, v, dout, dlse = make_inputs(*case[1:], seed=11)
    allowed = sparseflash.parse(case[0]).dense_mask(8192, 8192, device="cuda")
    check_case(_case_id(case) + " apart", lambda *t: attention(*t, mask, return_lse=True), q, k, v, dout, dlse, allowed)


@pytest.fixture
def fresh_launches():
    """Launches prepared anew and forgotten after the test, for tests that change what they read
    besides the mask and the layout (the tables, the GPU's shared memory)."""
    from sparseflash.kernels.launch import clear_prepared_launches

    clear_prepared_launches()
    yield
    clear_prepared_launches()


@pytest.mark.parametrize("case", [("causal", 1, 2, 1, 3000, 3000, 128, torch.bfloat16), ("chunk(512) + sink(4)", 1, 2, 2, 2048, 2048, 256, torch.bfloat16)], ids=_case_id)
def test_tiles_for_gpus_with_less_shared_memory(case, monkeypatch, fresh_launches):
    """common.SMALL_SHARED_* (for 99 KB GPUs, fitted by cross-compiling for sm_86) run here as the
    launchers pick them there, against the oracle."""
    import sparseflash.kernels.backward as backward_kernels
    import sparseflash.kernels.forward as forward_kernels

    for module in (forward_kernels, backward_kernels):
        monkeypatch.setattr(module, "shared_memory_per_block", lambda device: 99 * 1024)
    q, k, v, dout, dlse = make_inputs(*case[1:], seed=17)
    allowed = sparseflash.parse(case[0]).dense_mask(case[4], case[5], device="cuda")
    check_case(_case_id(case) + " 99KB tiles", lambda *t: attention(*t, case[0], return_lse=True), q, k, v, dout, dlse, allowed)


def test_tiles_over_the_gpus_shared_memory_run_with_fewer_stages(monkeypatch, fresh_launches):
    """A default config needing more shared memory than this GPU has (here: 5 and 8 stages of the
    dense D=128 tiles, over the H200's 227 KB) gets fewer stages at its first launch, with a
    warning, and the right results (launch.fewer_stages)."""
    from dataclasses import replace

    from sparseflash.kernels import common

    key = (128, True, "dense")
    monkeypatch.setitem(common.FORWARD_DEFAULTS, key, replace(common.FORWARD_DEFAULTS[key], num_stages=5))
    monkeypatch.setitem(common.BACKWARD_DEFAULTS, key, replace(common.BACKWARD_DEFAULTS[key], num_stages=8))
    case = ("dense", 1, 2, 2, 2000, 2000, 128, torch.bfloat16)
    q, k, v, dout, dlse = make_inputs(*case[1:], seed=19)
    allowed = sparseflash.parse("dense").dense_mask(2000, 2000, device="cuda")
    with pytest.warns(UserWarning, match="shared memory with [58] pipeline stages") as warned:
        check_case(_case_id(case) + " too many stages", lambda *t: attention(*t, "dense", return_lse=True), q, k, v, dout, dlse, allowed)
    messages = [str(w.message) for w in warned]
    assert any("_attention_forward_kernel" in m for m in messages) and any("_attention_backward_dkdv_kernel" in m for m in messages), messages


def test_tune_keeps_tiles_that_later_launches_take(tmp_path, monkeypatch, fresh_launches):
    """``sparseflash tune`` on this GPU (kernels/tuning.py) times candidates for the table entries
    a problem uses and writes its choices; launches then take a tuned file's tiles, and are right."""
    import json
    from dataclasses import replace

    from sparseflash.kernels import common, tuning

    path = tmp_path / "tuned.json"
    monkeypatch.setenv(tuning.TUNED_FILE_VARIABLE, str(path))
    tuning.forget_file_choices()
    try:
        case = ("causal", 1, 4, 2, 2048, 2048, 64, torch.bfloat16)
        q, k, v, dout, dlse = make_inputs(*case[1:], seed=23)
        mask = sparseflash.compile_mask("causal", 2048, device="cuda")
        lines = []
        results = tuning.tune(q, k, v, "causal", max_candidates=3, report=lines.append)
        print("\n".join(lines))
        kept = json.loads(path.read_text())[tuning.gpu_key(q.device)]
        assert set(kept) == set(results) and {entry.split()[0] for entry in kept} == {"forward", "backward"}, kept
        assert all(result["ms"] <= result["table_ms"] for result in results.values()), results
        # Tiles from a tuned file are what launches take.
        entry, table = common.forward_table_entry(64, torch.bfloat16, mask, common.shared_memory_per_block(q.device))
        other = replace(table, block_n=32, num_stages=2)
        assert other != table
        path.write_text(json.dumps({tuning.gpu_key(q.device): {entry: tuning.config_fields(other)}}))
        tuning.forget_file_choices()
        assert common.default_forward_config(64, torch.bfloat16, mask, common.shared_memory_per_block(q.device), q.device) == other
        allowed = sparseflash.parse("causal").dense_mask(2048, 2048, device="cuda")
        check_case(_case_id(case) + " tuned file", lambda *t: attention(*t, mask, return_lse=True), q, k, v, dout, dlse, allowed)
    finally:
        tuning.forget_file_choices()


def test_deterministic_backward_on_gpu():
    q, k, v, dout, dlse = make_inputs(1, 8, 2, 4096, 4096, 128, torch.bfloat16, seed=3)
    run = lambda *t: attention(*t, "local(256)+global(4)", return_lse=True)  # noqa: E731
    first = forward_and_grads(run, q, k, v, dout, dlse)
    second = forward_and_grads(run, q, k, v, dout, dlse)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), f"{name} differs between two runs"


def test_long_lines_are_split_on_gpu():
    """The cases above with ``local(256)+global(4)`` at 8k and 4 heads run split rows and columns
    (kernels/split.py): their global row and column are cut into items and merged. (At this size the
    forward keeps the whole mask: full_rows.MIN_APART_WORK.)"""
    from sparseflash.kernels.common import Schedule, default_backward_config, default_forward_config
    from sparseflash.kernels.split import plan_for

    mask = sparseflash.compile_mask("local(256)+global(4)", 8192, device="cuda")
    forward_plan = plan_for(default_forward_config(128, torch.bfloat16, mask), mask, Schedule(), 4, mask.device, by_rows=True)
    backward_config = default_backward_config(128, torch.bfloat16, mask)
    assert forward_plan is not None and forward_plan.n_split_lines >= 1
    for by_rows in (True, False):
        assert plan_for(backward_config, mask, Schedule(), 4, mask.device, by_rows) is not None


@pytest.mark.parametrize("pattern, heads, full_rows_apart", [("local(256)+global(4)", 4, False), ("local(256)+global(4)", 8, True), ("causal", 4, False)])
def test_direct_launches_give_the_bits_of_launches_through_triton(pattern, heads, full_rows_apart, monkeypatch):
    """After a kernel's first launch the launchers call the compiled kernel straight, skipping
    Triton's binder (launch.KernelLauncher). Forward and backward through ``kernel[grid]`` and then
    directly give the same bits (the kernels are deterministic), and the direct path is taken: with
    the split rows and columns and their merges (4 heads), the all-key rows apart on side streams
    (8 heads), the preprocess kernel and dQ beside dK/dV (causal)."""
    from sparseflash.kernels import full_rows, launch

    if full_rows_apart:
        monkeypatch.setattr(full_rows, "MIN_APART_WORK", 0)
    direct = []
    real_launch = launch._DirectLaunch.launch
    refusals = []

    def counted_launch(self, args):
        done = real_launch(self, args)
        direct.append(done)
        if not done:
            refusals.append(self.refusal(args, torch.cuda.current_device()))
        return done

    monkeypatch.setattr(launch._DirectLaunch, "launch", counted_launch)
    launches = []
    real_call = launch.KernelLauncher.__call__

    def counted_call(self, *args):
        launches.append(self.kernel)
        return real_call(self, *args)

    monkeypatch.setattr(launch.KernelLauncher, "__call__", counted_call)
    q, k, v, dout, dlse = make_inputs(1, heads, 2, 8192, 8192, 128, torch.bfloat16, seed=5)
    mask = sparseflash.compile_mask(pattern, 8192, device="cuda", cache=False)
    run = lambda *t: attention(*t, mask, return_lse=True)  # noqa: E731
    monkeypatch.setattr(launch, "DIRECT_LAUNCH", False)
    through_triton = forward_and_grads(run, q, k, v, dout, dlse)
    assert not direct
    per_call = len(launches)
    monkeypatch.setattr(launch, "DIRECT_LAUNCH", True)
    for _ in range(2):
        for name, a, b in zip(NAMES, through_triton, forward_and_grads(run, q, k, v, dout, dlse)):
            assert torch.equal(a, b), f"{name}: a direct launch gave other bits"
    # Every launch of both calls was direct: forward, backward, merges, side streams alike.
    assert per_call >= 3 and len(launches) == 3 * per_call and direct == [True] * (2 * per_call), (per_call, direct, refusals[:3])


def test_cuda_graph_replays_direct_launches():
    """A forward captured in a CUDA graph after warm-up (so its launches are direct) replays with
    new inputs copied in place and gives the eager bits, for a split pattern and for dense."""
    for pattern in ("local(256)+global(4)", "dense"):
        q, k, v, _, _ = make_inputs(1, 4, 2, 4096, 4096, 128, torch.bfloat16, seed=7)
        for _ in range(2):  # compile, then launch directly
            attention(q, k, v, pattern)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            attention(q, k, v, pattern)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = attention(q, k, v, pattern)
        fresh = make_inputs(1, 4, 2, 4096, 4096, 128, torch.bfloat16, seed=8)[:3]
        for static, new in zip((q, k, v), fresh):
            static.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, attention(*fresh, pattern)), pattern
