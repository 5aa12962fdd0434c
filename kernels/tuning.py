"""Tiles tuned on the GPU at hand, cached per GPU, Triton and sparseflash version.

The tables in :mod:`.common` were measured on an H200; another GPU may want other tiles, warps or
stages. ``sparseflash tune`` (:func:`tune`) runs a problem once to see which table entries it uses
(say ``forward D128 16-bit dense``), times candidates around each entry on this GPU, checks each
candidate's results against the entry's own, and keeps the fastest in a JSON file:
``$SPARSEFLASH_TUNED_FILE``, by default ``~/.cache/sparseflash/tuned.json``, keyed by the GPU's
name and the Triton and sparseflash versions. Launches on that GPU then take the kept tiles for that entry
(:func:`choice`, read once a process). Entries the file lacks keep the tables. Nothing on the CPU
reads it, so the interpreter's tests stay pinned to the tables.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
import time
from pathlib import Path

import torch
import triton

from .common import ForwardConfig, Schedule

TUNED_FILE_VARIABLE = "SPARSEFLASH_TUNED_FILE"
# A candidate replaces the table's entry only when this much faster (do_bench medians vary by ~1%).
MIN_GAIN = 0.02

class TunedFileError(RuntimeError):
    """The tuned file cannot be read (not JSON, or tiles this version does not know)."""


_lock = threading.Lock()
_file_choices: dict | None = None  # the file's {GPU key: {entry: config fields}}, read once
_trial: dict = {}  # (GPU key, entry) -> config: what tune() is timing
_seen: list | None = None  # entries asked for while tune() watches: [(entry, table config)]


def tuned_file() -> Path:
    """Where tuned tiles are kept."""
    return Path(os.environ.get(TUNED_FILE_VARIABLE) or Path.home() / ".cache" / "sparseflash" / "tuned.json")


@functools.lru_cache(maxsize=None)
def _gpu_key(index: int) -> str:
    from sparseflash import __version__

    return f"{torch.cuda.get_device_name(index)} | triton {triton.__version__} | sparseflash {__version__}"


def gpu_key(device: torch.device) -> str:
    """The GPU's name and the Triton and sparseflash versions: what a tuned choice holds for."""
    return _gpu_key(torch.cuda.current_device() if device.index is None else device.index)


def choice(entry: str, table_config, device: torch.device | None):
    """The config for table entry ``entry`` on ``device``: the one tuned for this GPU if any, else
    ``table_config``."""
    if _seen is not None:
        _seen.append((entry, table_config))
    if device is None or device.type != "cuda":
        return table_config
    key = gpu_key(device)
    trial = _trial.get((key, entry))
    if trial is not None:
        return trial
    fields = _read_choices().get(key, {}).get(entry)
    if fields is None:
        return table_config
    try:
        return config_from_fields(type(table_config), fields)
    except (TypeError, ValueError) as error:
        raise TunedFileError(f"sparseflash: {tuned_file()} holds tiles for {entry!r} that this version cannot read ({error}); "
                           "run sparseflash tune again or delete the file") from error  # fmt: skip


def forget_file_choices() -> None:
    """Read the tuned file again at the next launch prepared (after it changed)."""
    global _file_choices
    _file_choices = None


def _read_choices() -> dict:
    global _file_choices
    if _file_choices is None:
        path = tuned_file()
        try:
            _file_choices = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError) as error:
            raise TunedFileError(f"sparseflash: cannot read the tuned tiles in {path} ({error}); fix or delete it, or set {TUNED_FILE_VARIABLE}") from error
    return _file_choices


def config_fields(config) -> dict:
    """A config as JSON-ready fields (a schedule, if set, as its own fields)."""
    return dataclasses.asdict(config)


def config_from_fields(kind: type, fields: dict):
    """The inverse of :func:`config_fields`; unknown fields (a newer file) are an error."""
    fields = dict(fields)
    if fields.get("schedule") is not None:
        fields["schedule"] = Schedule(**fields["schedule"])
    return kind(**fields)


# ------------------------------------------------------------------------------------------ tuning


def candidates(table_config, mask) -> list:
    """Configs around ``table_config`` to time: one pipeline stage more and fewer, the other warp
    count, and the streamed and held tiles halved and doubled (within the mask's blocks, 16 to
    128). The table's own comes first."""
    out = [table_config]

    def add(**change):
        config = dataclasses.replace(table_config, **change)
        if config not in out:
            out.append(config)

    for stages in (table_config.num_stages - 1, table_config.num_stages + 1):
        if 1 <= stages <= 4:
            add(num_stages=stages)
    add(num_warps=4 if table_config.num_warps == 8 else 8)

    def sizes(tile: int, mask_block: int) -> list:
        return [t for t in (tile // 2, tile * 2) if 16 <= t <= min(128, mask_block)]

    if isinstance(table_config, ForwardConfig):
        for block_n in sizes(table_config.block_n, mask.block_n):
            add(block_n=block_n)
        for block_m in sizes(table_config.block_m, mask.block_m):
            add(block_m=block_m)
    else:  # dK/dV streams block_m1 queries and holds block_n1 keys; dQ the other way round
        for streamed in sizes(table_config.block_m1, min(mask.block_m, mask.block_n)):
            add(block_m1=streamed, block_n2=streamed)
        for held in sizes(table_config.block_n1, min(mask.block_m, mask.block_n)):
            add(block_n1=held, block_m2=held)
    return out


def describe(config) -> str:
    """A config's fields that differ from their defaults (the tiles, warps and stages always)."""
    return " ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config) if getattr(config, f.name) != f.default)


def _difference(got, reference) -> float:
    """Largest difference relative to the largest value, over outputs; the reference's infinities
    (lse -inf: rows with no key) must be matched exactly, and a NaN is an infinite difference."""
    worst = 0.0
    for g, r in zip(got, reference):
        g, r = g.float(), r.float()
        finite = torch.isfinite(r)
        if not torch.equal(finite, torch.isfinite(g)) or not torch.equal(g[~finite], r[~finite]):
            return float("inf")
        if finite.any():
            worst = max(worst, ((g - r)[finite].abs().max() / r[finite].abs().max().clamp_min(1e-30)).item())
    return worst


def tune(q, k, v, pattern, scale: float | None = None, *, backward: bool = True, max_candidates: int | None = None, save: bool = True, report=print) -> dict:
    """Tune the table entries that ``sparseflash.attention(q, k, v, pattern, scale=scale)`` uses,
    on the inputs' GPU.

    ``pattern``: as for ``attention`` (a string, a Pattern or a BlockMask; a pattern gets the mask
    blocks ``attention`` picks), checked like ``attention``'s inputs. For each entry (forward, and
    backward if ``backward``), times :func:`candidates` (at most ``max_candidates`` of them)
    through the launchers as they run (``do_bench`` medians), skipping candidates that do not
    compile or fit and refusing any whose results differ from the entry's by more than rounding (2%
    of the largest value in 16-bit, 1e-4 in float32). Keeps the fastest if at least MIN_GAIN
    faster than the table, else the table's, and with ``save`` writes the choices into
    :func:`tuned_file`. Returns {entry: {"config", "ms", "table_ms"}}.
    """
    from sparseflash.attention import _block_mask_for, _check_kernel_mask, _check_scale, _check_tensors

    from .backward import attention_backward
    from .forward import attention_forward

    global _seen
    _check_tensors(q, k, v)
    if not q.is_cuda:
        raise ValueError(f"tune: the inputs must be on a CUDA GPU, got {q.device}")
    scale = _check_scale(scale, q.shape[-1])
    mask = _block_mask_for(pattern, q.shape[2], k.shape[2], None, None, q.device)
    _check_kernel_mask(mask)
    key = gpu_key(q.device)
    tolerance = 2e-2 if q.dtype in (torch.float16, torch.bfloat16) else 1e-4
    dout = torch.randn_like(q)
    out, lse = attention_forward(q, k, v, mask, scale)
    passes = {"forward": lambda: attention_forward(q, k, v, mask, scale)}
    if backward:
        passes["backward"] = lambda: attention_backward(dout, q, k, v, out, lse, mask, scale)
    results = {}
    with _lock:
        for kind, run in passes.items():
            _clear_prepared_launches()
            _seen = []
            try:
                reference = run()
                entries = dict(_seen)
            finally:
                _seen = None
            for entry, table_config in entries.items():
                if not entry.startswith(kind):
                    continue
                results[entry] = _tune_entry(key, entry, table_config, mask, run, reference, tolerance, max_candidates, report)
        _clear_prepared_launches()
        if save:
            _save(key, {entry: result["config"] for entry, result in results.items()})
    return results


def _clear_prepared_launches() -> None:
    from .launch import clear_prepared_launches

    clear_prepared_launches()


def _tune_entry(key: str, entry: str, table_config, mask, run, reference, tolerance: float, max_candidates, report) -> dict:
    from . import launch

    timed = []
    start = time.monotonic()
    for config in candidates(table_config, mask)[:max_candidates]:
        _trial[key, entry] = config
        launch.clear_prepared_launches()  # prepared launches are keyed without the tiles tried
        launch.STAGE_FALLBACK = False  # a config over the shared memory is refused, not run with fewer stages
        try:
            difference = _difference(run(), reference)
            if difference > tolerance:
                report(f"{entry}: {describe(config)} differs from the table's results by {difference:.1e}: refused")
                continue
            ms = triton.testing.do_bench(run, warmup=25, rep=100)
        except (triton.OutOfResources, triton.CompilationError) as error:
            report(f"{entry}: {describe(config)} does not run here ({str(error).splitlines()[0][:160]})")
            continue
        finally:
            _trial.pop((key, entry), None)
            launch.STAGE_FALLBACK = True
        timed.append((ms, config))
        report(f"{entry}: {ms:.3f} ms  {describe(config)}")
    if not timed:
        report(f"{entry}: no candidate ran; keeping the table's {describe(table_config)}")
        return {"config": table_config, "ms": None, "table_ms": None}
    ms, best = min(timed, key=lambda pair: pair[0])
    table_ms = timed[0][0] if timed[0][1] == table_config else float("inf")
    if best != table_config and table_ms < float("inf"):
        # The table's config was timed first, right after compiling; time it and the best again,
        # alternating, so neither wins by the order (small problems showed 2x on the first timing).
        for _ in range(2):
            table_ms = min(table_ms, _time(key, entry, table_config, run))
            ms = min(ms, _time(key, entry, best, run))
        report(f"{entry}: again, alternating: the table's {table_ms:.3f} ms, {describe(best)} {ms:.3f} ms")
    if ms > table_ms * (1 - MIN_GAIN):
        ms, best = table_ms, table_config
    report(f"{entry}: keeping {describe(best)} ({ms:.3f} ms; the table's {table_ms:.3f} ms), {time.monotonic() - start:.0f} s")
    return {"config": best, "ms": ms, "table_ms": table_ms}


def _time(key: str, entry: str, config, run) -> float:
    """``do_bench`` ms of ``run`` with ``config`` for ``entry`` (already compiled and checked)."""
    from . import launch

    _trial[key, entry] = config
    launch.clear_prepared_launches()
    try:
        return triton.testing.do_bench(run, warmup=25, rep=100)
    finally:
        _trial.pop((key, entry), None)


def _save(key: str, choices: dict) -> None:
    path = tuned_file()
    forget_file_choices()
    existing = _read_choices()  # a broken file is named, not overwritten
    existing.setdefault(key, {}).update({entry: config_fields(config) for entry, config in choices.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing, indent=1, sort_keys=True))
    forget_file_choices()
