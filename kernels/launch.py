"""Preparing kernel launches: what a launch takes besides its tensors' values, derived once.

A launcher's choices (config, schedule, split plan, grid, block-list arguments, descriptor kind,
constexprs) depend only on the mask and the inputs' layout. :func:`line_launch` derives them for
one kernel walking a mask's rows (forward, dQ) or columns (dK/dV); :func:`prepared_launch` keeps
what a launcher built from them per mask, so later calls only allocate outputs, build host
descriptors and launch.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field, replace
from operator import itemgetter

import torch
import triton

from .common import (
    auto_schedule,
    column_list_arguments,
    launch_grid,
    prefer_host_descriptors,
    row_list_arguments,
    schedule_constants,
    tma_mode,
    walk_full_blocks_as_runs,
)
from .split import SplitPlan, item_arguments, plan_for

# Per mask: launches prepared by the launchers, keyed by everything they were derived from.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Entries kept per mask; past it the mask's entries are dropped (varying batch sizes, say).
PREPARED_PER_MASK = 32


def prepared_launch(mask, key: tuple, prepare):
    """``prepare()``'s result for ``mask`` and ``key``, computed once and then reused.

    A launcher's choices (config, schedule, split plan, grid, block lists, descriptor kind,
    constexprs) depend only on the mask and the inputs' layout, not on their values, so they are
    made on the first call and looked up after that: on the H200's host they cost 100-300 us a
    call, against ~50 us for Triton's own launch (benchmarks/experiments/exposed_host.py), and small
    problems wait on the host (BENCHMARKS.md, tenth session). ``key`` must hold everything
    ``prepare`` reads besides the mask (see :func:`layout_key`), including the module switches
    tests and benchmarks flip; code that changes other module constants between calls calls
    :func:`clear_prepared_launches`.
    """
    entries = _prepared.get(mask)
    if entries is None:
        entries = _prepared.setdefault(mask, {})
    launch = entries.get(key)
    if launch is None:
        if len(entries) >= PREPARED_PER_MASK:
            entries.clear()
        launch = entries[key] = prepare()
    return launch


def clear_prepared_launches() -> None:
    """Forget every prepared launch (after changing a module constant the keys do not hold)."""
    _prepared.clear()


def layout_key(*tensors: torch.Tensor) -> tuple:
    """What a launch's choices read from its tensors: shapes, strides, dtype, device, and whether
    each base address is 16-byte aligned (TMA needs it: :func:`common.tma_supported`)."""
    return tuple((t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0) for t in tensors)


@dataclass(frozen=True)
class LineLaunch:
    """One kernel's launch over a mask's rows or columns, apart from the tensors' values."""

    grid: tuple
    plan: SplitPlan | None  # split lines, or None
    use_tma: int  # common.tma_mode, for the tiles the kernel streams
    streamed_rows: int  # rows of those tiles (their host descriptors' boxes)
    lists: tuple  # the mask's lists and the launch's items, in the kernels' argument order
    constants: dict  # constexprs and launch settings
    # Per kernel (and extra key), its KernelLauncher: see :meth:`launcher`.
    launchers: dict = field(default_factory=dict, compare=False, repr=False)

    def launcher(self, kernel, key=None, grid=None, constants=None) -> KernelLauncher:
        """The :class:`KernelLauncher` of ``kernel`` for this launch: its grid and constants, or
        ``grid`` and ``constants`` for a helper kernel of the launch (a merge), told apart by ``key``."""
        launcher = self.launchers.get((kernel, key))
        if launcher is None:
            launcher = self.launchers[kernel, key] = KernelLauncher(
                kernel, self.grid if grid is None else grid, self.constants if constants is None else constants
            )
        return launcher


def line_launch(
    config, mask, streamed: tuple, *, by_rows: bool, backward: bool, n_batch_heads: int, tile: int, streamed_rows: int, constants: dict
) -> LineLaunch:
    """The launch of a kernel with ``tile``-line programs over ``mask``'s rows (``by_rows``: forward,
    dQ) or columns (dK/dV): schedule, split plan, grid, list arguments, and the descriptor kind for
    the ``streamed`` tensors (all (B, H, L, D) inputs, for :func:`common.tma_mode`). ``constants``
    are the kernel's own; the schedule, full-run, split and TMA ones are added here."""
    device = streamed[0].device
    schedule = config.schedule or auto_schedule(mask, by_rows=by_rows, backward=backward)
    plan = plan_for(config, mask, schedule, n_batch_heads, device, by_rows=by_rows)
    if plan is None and config.schedule is None and not schedule.heavy_first:
        # Split items are dispatched through the heavy-first order (split.program_item), so a
        # balanced launch whose lines want splitting keeps it: the all-key rows' launch
        # (full_rows.py) is one 256-block line a head, which unsplit took 0.61 -> 1.09 ms at 32k.
        ordered = replace(schedule, heavy_first=True)
        plan = plan_for(config, mask, ordered, n_batch_heads, device, by_rows=by_rows)
        schedule = ordered if plan is not None else schedule
    lists = (row_list_arguments if by_rows else column_list_arguments)(mask, device)
    use_tma = tma_mode(config.tma, *streamed, prefer_host=prefer_host_descriptors(mask, by_rows=by_rows, backward=backward))
    length, mask_block = (mask.q_len, mask.block_m) if by_rows else (mask.kv_len, mask.block_n)
    return LineLaunch(
        grid=launch_grid(length, tile, mask_block, n_batch_heads, schedule, mask.is_dense, plan),
        plan=plan,
        use_tma=use_tma,
        streamed_rows=streamed_rows,
        lists=(*lists[:-1], *item_arguments(plan, lists[-1])),
        constants=dict(
            **schedule_constants(schedule, mask.is_dense),
            FULL_RUNS=plan is None and walk_full_blocks_as_runs(config, mask),
            SPLIT=plan is not None,
            USE_TMA=use_tma,
            **constants,
        ),
    )


# ----------------------------------------------------------------------------- direct launches

# Launch prepared kernels through their compiled handle after the first call (KernelLauncher).
# False: every launch goes through Triton's ``kernel[grid](...)``. Benchmarks flip it for A/B runs.
DIRECT_LAUNCH = True
# Whether a kernel over the GPU's shared memory is launched again with fewer stages (fewer_stages);
# False: Triton's OutOfResources is raised (tuning.tune, which must time the config it names).
STAGE_FALLBACK = True


def _triton_runtime():
    """Triton's current-device and current-stream functions and its runtime knobs (launch hooks),
    or None where this Triton lacks them (then every launch goes through ``kernel[grid]``)."""
    try:
        from triton import knobs
        from triton.runtime import driver

        active = driver.active
        return active.get_current_device, active.get_current_stream, knobs.runtime
    except Exception:  # noqa: BLE001 - any missing piece means: no direct launches
        return None


_RUNTIME: tuple | None = None


class KernelLauncher:
    """Launches of one Triton kernel with one grid and one set of constexprs (a prepared launch's).

    Triton's ``kernel[grid](*args, **constexprs)`` binds and specialises every argument on every
    call: ~50 us of host time for our kernels' ~60 arguments on the H200's host, against ~12 us
    for a 3-argument kernel (BENCHMARKS.md, tenth session), and small problems and the split
    forward's three launches wait on that. What it specialises on is each argument's type, a
    tensor's dtype and 16-byte alignment, an integer's value (i32 or i64, equal to 1, divisible by
    16) and a descriptor's block shape. The first launch goes through ``kernel[grid]``, which
    compiles and returns the compiled kernel; later launches whose arguments agree with that one
    on all of it (:class:`_Specialisation`; integers and other non-float values compared exactly)
    call the compiled kernel straight, with the arguments in the order Triton passes them (the
    signature's, constexprs included, with Triton's launch hooks and their metadata). Any other
    launch goes through ``kernel[grid]`` again and becomes the one compared against. So do
    launches under Triton's interpreter (CPU tests) and on another device. H200, N=256: a forward
    launcher's host time 143 -> 65 us, a backward's 518 -> 229 us (BENCHMARKS.md, sixteenth session).
    """

    def __init__(self, kernel, grid: tuple, constants: dict):
        self.kernel = kernel
        self.grid = tuple(grid)
        self.constants = constants
        self._direct: _DirectLaunch | None = None  # replaced whole, so threads see all of it or none

    def __call__(self, *args) -> None:
        direct = self._direct
        if direct is not None and DIRECT_LAUNCH and direct.launch(args):
            return
        compiled = self._launch_through_triton(args)
        self._direct = _DirectLaunch.of(self.kernel, compiled, self.grid, self.constants, args)

    def _launch_through_triton(self, args: tuple):
        """``kernel[grid](*args, **constants)``, with fewer pipeline stages while the compiled
        kernel needs more shared memory than the GPU has (see :func:`fewer_stages`)."""
        while True:
            try:
                return self.kernel[self.grid](*args, **self.constants)
            except triton.OutOfResources as error:
                self.constants = fewer_stages(self.kernel, self.constants, error)


def fewer_stages(kernel, constants: dict, error) -> dict:
    """``constants`` with one pipeline stage fewer, after ``error`` (Triton's OutOfResources)
    refused a kernel compiled with them; re-raises it, naming the tiles, when one stage did not fit
    or the fallback is off (STAGE_FALLBACK).

    Triton checks a kernel's shared memory against the GPU only when it first launches. The tiles
    are picked for the GPU's shared memory (common.SMALL_SHARED_*), so this is the safety net for
    what that did not foresee: a GPU not cross-compiled for, a config given by hand or kept by
    ``sparseflash tune`` on another GPU. Stages multiply the shared memory of the tiles a loop
    streams: with the H200's tiles on a 99 KB GPU (sm_86), the D=128 dense forward needs 160 KB at
    three stages and fits at two (benchmarks/experiments/shared_memory_fit.py --tuned).
    """
    stages = constants.get("num_stages", 3)
    name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "kernel")
    if getattr(error, "name", None) != "shared memory" or stages <= 1 or not STAGE_FALLBACK:
        tiles = ", ".join(f"{key}={value}" for key, value in constants.items() if key.startswith("BLOCK") or key.startswith("num_"))
        raise triton.OutOfResources(
            error.required, error.limit, f"{error.name} (sparseflash: {name} with {tiles}{'; no fewer stages to try' if STAGE_FALLBACK else ''})"
        ) from error
    fewer = {**constants, "num_stages": stages - 1}
    warnings.warn(
        f"sparseflash: {name} needs {error.required / 1024:.0f} KB of shared memory with {stages} pipeline stages, "
        f"more than this GPU's {error.limit / 1024:.0f} KB; trying {stages - 1} (correct, slower than the tuned tiles)",
        stacklevel=4,
    )
    return fewer


class _DirectLaunch:
    """A compiled kernel, how it was specialised, and how to launch it without Triton's binder."""

    def __init__(self, compiled, grid: tuple, tail: tuple, specialisation: _Specialisation, device: int):
        self.compiled, self.run, self.tail = compiled, compiled.run, tail
        self.grid, self.grid_xyz = grid, (*grid, 1, 1)[:3]
        self.specialisation, self.device = specialisation, device

    @staticmethod
    def of(kernel, compiled, grid: tuple, constants: dict, args: tuple) -> _DirectLaunch | None:
        """The direct launch of ``compiled``, which ``kernel[grid](*args, **constants)`` returned,
        or None where it cannot be launched directly."""
        global _RUNTIME
        if _RUNTIME is None:
            _RUNTIME = _triton_runtime() or ()
        if not _RUNTIME or not all(hasattr(compiled, name) for name in ("run", "function", "packed_metadata", "launch_metadata")):
            return None  # the interpreter, or a Triton this module does not know
        tail = _constexpr_tail(kernel, constants, len(args))
        if tail is None:
            return None
        return _DirectLaunch(compiled, grid, tail, _Specialisation(args), _RUNTIME[0]())

    def refusal(self, args: tuple, device: int) -> str | None:
        """Why this compiled kernel must not be launched with ``args`` on ``device`` (None: it may)."""
        if device != self.device:
            return f"current device {device}, compiled on {self.device}"
        kinds = tuple(map(type, args))
        if kinds != self.specialisation.kinds:
            return f"argument types {kinds} != {self.specialisation.kinds}"
        for name, now, then in zip(("tensors", "descriptors", "values"), self.specialisation.traits_of(args), self.specialisation.traits):
            if now != then:
                return f"{name}: {now} != {then}"
        return None

    def launch(self, args: tuple) -> bool:
        """Launch with ``args`` and return True, or return False (nothing launched) where Triton
        might specialise them differently or the current device is another."""
        get_device, get_stream, knobs = _RUNTIME
        device = get_device()
        if self.refusal(args, device) is not None:
            return False
        stream = get_stream(device)
        compiled, everything = self.compiled, (*args, *self.tail)
        # Launch metadata and hooks as Triton's own launch passes them (profilers such as Proton;
        # Triton 3.6 keeps its hooks in chains that are never None).
        metadata = compiled.launch_metadata(self.grid, stream, *everything)
        x, y, z = self.grid_xyz
        self.run(x, y, z, stream, compiled.function, compiled.packed_metadata, metadata, knobs.launch_enter_hook, knobs.launch_exit_hook, *everything)
        return True


def _constexpr_tail(kernel, constants: dict, n_args: int) -> tuple | None:
    """The values of ``kernel``'s parameters after its first ``n_args``, if all are constexprs
    given in ``constants``; else None (a signature laid out otherwise)."""
    params = getattr(kernel, "params", None)
    if params is None or len(params) < n_args:
        return None
    tail = []
    for param in params[n_args:]:
        if not getattr(param, "is_constexpr", False) or param.name not in constants:
            return None
        tail.append(constants[param.name])
    return tuple(tail)


class _Specialisation:
    """What Triton specialises a launch's positional arguments on, kept from one launch for
    comparing others: every argument's type; each tensor's dtype and 16-byte alignment; each
    tensor descriptor's base, shape, strides and block shape; every other non-float value exactly
    (integers, bools, None). Floats are not specialised."""

    def __init__(self, args: tuple):
        self.kinds = tuple(map(type, args))
        tensors = [i for i, arg in enumerate(args) if isinstance(arg, torch.Tensor)]
        descriptors = [i for i, arg in enumerate(args) if _is_descriptor(arg)]
        exact = [i for i, kind in enumerate(self.kinds) if kind is not float and i not in tensors and i not in descriptors]
        self.tensors, self.descriptors, self.exact = _getter(tensors), _getter(descriptors), _getter(exact)
        self.traits = self.traits_of(args)

    def traits_of(self, args: tuple) -> tuple:
        """(tensors' traits, descriptors' traits, exact values) of ``args``, laid out as the kept launch's."""
        tensors = tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in self.tensors(args)])
        descriptors = tuple(
            [
                (d.base.dtype, d.base.data_ptr() % 16 == 0, tuple(d.shape), tuple(d.strides), tuple(d.block_shape), getattr(d, "padding", None))
                for d in self.descriptors(args)
            ]
        )
        return tensors, descriptors, self.exact(args)


def _is_descriptor(arg) -> bool:
    return type(arg).__name__ == "TensorDescriptor"


def _getter(positions: list):
    """A function of an argument tuple giving the arguments at ``positions``, as a tuple."""
    if not positions:
        return lambda args: ()
    if len(positions) == 1:
        only = positions[0]
        return lambda args: (args[only],)
    return itemgetter(*positions)
