"""Direct launches (kernels/launch.py KernelLauncher): after a first launch through Triton's
``kernel[grid]``, later ones call the compiled kernel straight, but only where Triton would
specialise their arguments the same way. On the CPU the kernels run in Triton's interpreter, which
has no compiled kernel, so the launcher is tested here against a stand-in kernel that records how
it was called, and the real kernels' signatures are checked against the real call sites. The GPU
tier (test_attention_gpu.py) checks that direct launches happen and give the same bits."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

import sparseflash

triton = pytest.importorskip("triton")
from triton.runtime.jit import JITFunction  # noqa: E402

import sparseflash.kernels.launch as launch  # noqa: E402
from sparseflash.kernels.launch import KernelLauncher  # noqa: E402


class StandInKernel:
    """Records launches the way a Triton JIT kernel takes them: ``kernel[grid](*args, **constexprs)``,
    returning a compiled kernel whose ``run`` records the direct launches."""

    def __init__(self, params):
        self.params = [SimpleNamespace(name=name, is_constexpr=constexpr) for name, constexpr in params]
        self.jit_launches, self.direct_launches = [], []

    def __getitem__(self, grid):
        def launch_through_jit(*args, **constants):
            self.jit_launches.append((grid, args, constants))
            return SimpleNamespace(run=self._run, function="function", packed_metadata="metadata", launch_metadata=self._launch_metadata)

        return launch_through_jit

    def _run(self, *launch_args):
        self.direct_launches.append(launch_args)

    @staticmethod
    def _launch_metadata(grid, stream, *args):
        return ("launch metadata", grid, stream, len(args))


PARAMS = [("X", False), ("Y", False), ("n", False), ("scale", False), ("BLOCK", True), ("FLAG", True)]
CONSTANTS = {"BLOCK": 64, "FLAG": False, "num_warps": 4, "num_stages": 2}


@pytest.fixture
def runtime(monkeypatch):
    """Triton's runtime as the launcher sees it: current device 0, stream 1234, no launch hooks."""
    state = SimpleNamespace(device=0, knobs=SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None))
    monkeypatch.setattr(launch, "_RUNTIME", (lambda: state.device, lambda device: 1234 + device, state.knobs))
    monkeypatch.setattr(launch, "DIRECT_LAUNCH", True)
    return state


def arguments(n=96, scale=0.5, offset=0, dtype=torch.float16):
    x = torch.zeros(64, dtype=dtype)[offset:]
    return x, torch.zeros(8, dtype=torch.int32), n, scale


def test_later_launches_call_the_compiled_kernel_with_the_signature_order(runtime):
    kernel = StandInKernel(PARAMS)
    launcher = KernelLauncher(kernel, (5, 2), CONSTANTS)
    first, second = arguments(), arguments(scale=0.25)  # floats are not specialised
    launcher(*first)
    launcher(*second)
    assert len(kernel.jit_launches) == 1 and kernel.jit_launches[0][2] == CONSTANTS
    (direct,) = kernel.direct_launches
    # grid padded to three, the stream of the current device, function, metadata, launch metadata
    # and hooks, then every parameter in signature order, constexprs included (as Triton passes them).
    assert direct[:9] == (5, 2, 1, 1234, "function", "metadata", ("launch metadata", (5, 2), 1234, 6), None, None)
    assert direct[9:] == (*second, 64, False)


@pytest.mark.parametrize(
    "changed",
    [
        dict(offset=1),  # a tensor no longer 16-byte aligned
        dict(dtype=torch.float32),  # another dtype
        dict(n=97),  # an integer Triton specialises (divisibility by 16)
        dict(n=1),  # and its value 1
    ],
    ids=["alignment", "dtype", "integer", "integer-one"],
)
def test_a_launch_triton_would_specialise_otherwise_goes_through_triton(runtime, changed):
    kernel = StandInKernel(PARAMS)
    launcher = KernelLauncher(kernel, (5,), CONSTANTS)
    launcher(*arguments())
    launcher(*arguments(**changed))
    assert len(kernel.jit_launches) == 2 and not kernel.direct_launches
    launcher(*arguments(**changed))  # the new specialisation is now the one compared against
    assert len(kernel.direct_launches) == 1
    launcher(*arguments())
    assert len(kernel.jit_launches) == 3


def test_launch_hooks_are_passed_on(runtime):
    """A profiler's hooks (Proton's; Triton 3.6 always has hook chains) get what Triton's own
    launch gives them."""
    kernel = StandInKernel(PARAMS)
    launcher = KernelLauncher(kernel, (5,), CONSTANTS)
    launcher(*arguments())
    runtime.knobs.launch_enter_hook, runtime.knobs.launch_exit_hook = print, repr
    launcher(*arguments())
    (direct,) = kernel.direct_launches
    assert direct[7:9] == (print, repr)


def test_another_device_and_the_switch_keep_launches_in_triton(runtime, monkeypatch):
    kernel = StandInKernel(PARAMS)
    launcher = KernelLauncher(kernel, (5,), CONSTANTS)
    launcher(*arguments())
    runtime.device = 1  # the compiled kernel was loaded on device 0
    launcher(*arguments())
    runtime.device = 0
    monkeypatch.setattr(launch, "DIRECT_LAUNCH", False)
    launcher(*arguments())
    assert len(kernel.jit_launches) == 3 and not kernel.direct_launches


def test_no_direct_launch_without_a_compiled_kernel_or_a_known_signature(runtime):
    # The interpreter returns no compiled kernel.
    class Interpreted(StandInKernel):
        def __getitem__(self, grid):
            return lambda *args, **constants: self.jit_launches.append(args)

    kernel = Interpreted(PARAMS)
    launcher = KernelLauncher(kernel, (5,), CONSTANTS)
    launcher(*arguments())
    launcher(*arguments())
    assert len(kernel.jit_launches) == 2
    # A parameter after the positional arguments that is not a given constexpr (a default value).
    odd = StandInKernel([*PARAMS, ("extra", False)])
    launcher = KernelLauncher(odd, (5,), CONSTANTS)
    launcher(*arguments())
    launcher(*arguments())
    assert len(odd.jit_launches) == 2 and not odd.direct_launches


class OversizedKernel(StandInKernel):
    """A stand-in whose compiled kernel needs ``per_stage`` bytes of ``resource`` a pipeline
    stage, refused at its first launch above ``limit`` as Triton refuses it on a GPU."""

    def __init__(self, params, per_stage, limit, resource="shared memory"):
        super().__init__(params)
        self.per_stage, self.limit, self.resource, self.refused = per_stage, limit, resource, []

    def __getitem__(self, grid):
        launch_through_jit = super().__getitem__(grid)

        def launch_or_refuse(*args, **constants):
            need = self.per_stage * constants["num_stages"]
            if need > self.limit:
                self.refused.append(constants["num_stages"])
                raise triton.OutOfResources(need, self.limit, self.resource)
            return launch_through_jit(*args, **constants)

        return launch_or_refuse


def test_a_kernel_over_the_gpus_shared_memory_runs_with_fewer_stages(runtime):
    """Tiles tuned on the H200 (227 KB a block) need fewer stages on a GPU with 99 KB."""
    kernel = OversizedKernel(PARAMS, per_stage=40 * 1024, limit=99 * 1024)
    launcher = KernelLauncher(kernel, (5,), {**CONSTANTS, "num_stages": 4})
    with pytest.warns(UserWarning) as warned:
        launcher(*arguments())
    assert [str(w.message).split(": ", 1)[1] for w in warned] == [
        "kernel needs 160 KB of shared memory with 4 pipeline stages, more than this GPU's 99 KB; trying 3 (correct, slower than the tuned tiles)",
        "kernel needs 120 KB of shared memory with 3 pipeline stages, more than this GPU's 99 KB; trying 2 (correct, slower than the tuned tiles)",
    ]
    assert kernel.refused == [4, 3]
    assert [constants["num_stages"] for _, _, constants in kernel.jit_launches] == [2]
    assert launcher.constants == {**CONSTANTS, "num_stages": 2}
    launcher(*arguments())  # later launches are direct, with the stages that fit
    assert len(kernel.jit_launches) == 1 and len(kernel.direct_launches) == 1 and kernel.refused == [4, 3]


def test_tuning_times_only_configs_that_fit_as_they_are(runtime, monkeypatch):
    """With launch.STAGE_FALLBACK off (tuning.tune), a config over the shared memory is refused,
    so a timing never belongs to fewer stages than the config it is reported for."""
    monkeypatch.setattr(launch, "STAGE_FALLBACK", False)
    kernel = OversizedKernel(PARAMS, per_stage=40 * 1024, limit=99 * 1024)
    with pytest.raises(triton.OutOfResources, match="num_stages=3\\)"):
        KernelLauncher(kernel, (5,), {**CONSTANTS, "num_stages": 3})(*arguments())
    assert kernel.refused == [3] and not kernel.jit_launches


@pytest.mark.parametrize("resource, refused", [("shared memory", [2, 1]), ("threads", [2])])
def test_a_kernel_that_does_not_fit_raises_naming_its_tiles(runtime, resource, refused):
    """One stage too large, or a resource stages do not change: Triton's error, with the kernel's
    tiles and launch settings added."""
    kernel = OversizedKernel(PARAMS, per_stage=200 * 1024, limit=99 * 1024, resource=resource)
    launcher = KernelLauncher(kernel, (5,), CONSTANTS)
    with pytest.warns(UserWarning) if len(refused) > 1 else contextlib.nullcontext():
        with pytest.raises(triton.OutOfResources, match=f"{resource} \\(sparseflash: kernel with BLOCK=64, num_warps=4, num_stages={refused[-1]};"):
            launcher(*arguments())
    assert kernel.refused == refused and not kernel.jit_launches


def test_the_real_kernels_take_every_parameter_from_their_call_sites(monkeypatch):
    """Each launch of the real kernels (forward, preprocess, dK/dV, dQ, both merges) passes its
    runtime arguments positionally and its constexprs by name, the layout a direct launch needs;
    otherwise the GPU would silently keep going through Triton's binder."""
    seen = {}
    real_call = KernelLauncher.__call__

    def recording_call(self, *args):
        seen[self.kernel.fn.__name__] = launch._constexpr_tail(JITFunction(self.kernel.fn), self.constants, len(args))
        return real_call(self, *args)

    monkeypatch.setattr(KernelLauncher, "__call__", recording_call)
    import sparseflash.kernels.backward as backward_kernels
    from sparseflash.kernels.common import BackwardConfig, ForwardConfig
    from sparseflash.kernels.forward import attention_forward

    gen = torch.Generator().manual_seed(3)
    q, k, v, dout = (torch.randn(1, 2, 80, 16, generator=gen) for _ in range(4))
    mask = sparseflash.compile_mask("local(8) + global(2)", 80, 80, block_m=16, block_n=16, cache=False)
    out, lse = attention_forward(q, k, v, mask, 0.25, config=ForwardConfig(16, 16, 4, 1, split_blocks=1))
    monkeypatch.setattr(backward_kernels, "DELTA_IN_DQ", False)  # the preprocess kernel computes delta
    backward_kernels.attention_backward(dout, q, k, v, out, lse, mask, 0.25, config=BackwardConfig(16, 16, 16, 16, 4, 1, split_blocks=1))
    names = {
        "_attention_forward_kernel",
        "_merge_softmax_kernel",
        "_preprocess_kernel",
        "_attention_backward_dkdv_kernel",
        "_attention_backward_dq_kernel",
        "_merge_sum_kernel",
    }
    assert set(seen) == names
    assert all(tail is not None for tail in seen.values()), seen


def test_the_dq_kernel_may_take_its_own_warps_and_stages():
    """BackwardConfig.dq_num_warps / dq_num_stages reach the dQ launch only; unset, both kernels
    share num_warps / num_stages."""
    from sparseflash.kernels import backward
    from sparseflash.kernels.common import BackwardConfig

    q, k, v, dout = (torch.zeros(1, 2, 64, 16) for _ in range(4))
    mask = sparseflash.compile_mask("causal", 64, block_m=16, block_n=16, cache=False)
    for config, dkdv, dq in (
        (BackwardConfig(16, 16, 16, 16, 8, 3, dq_num_warps=4, dq_num_stages=2), (8, 3), (4, 2)),
        (BackwardConfig(16, 16, 16, 16, 8, 3), (8, 3), (8, 3)),
    ):
        prepared = backward._prepare_backward(q, k, v, dout, mask, False, config, has_dlse=False)
        assert (prepared.dkdv.constants["num_warps"], prepared.dkdv.constants["num_stages"]) == dkdv
        assert (prepared.dq.constants["num_warps"], prepared.dq.constants["num_stages"]) == dq
