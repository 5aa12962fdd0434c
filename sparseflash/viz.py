"""Look at a pattern: block pictures, token windows, ASCII grids, statistics and per-block explanations.

These are the Python faces of ``sparseflash show``, ``sparseflash stats`` and ``sparseflash explain``:

- :func:`show` draws the block classes of one or more patterns (a matplotlib ``Figure``), or the
  token-level mask of a window with ``tokens=``;
- :func:`render_ascii` is the same picture as text (█ full, ░ partial, blank empty);
- :func:`stats` returns density, block counts, FLOPs against dense, memory and build time as a dict;
- :func:`explain` says what class one block has and which parts of the pattern make it live.

Nothing here builds a ``q_len x kv_len`` mask. Block pictures are read from the ``BlockMask``'s CSR
lists straight into a grid of at most ``max_cells x max_cells`` cells, each showing the strongest
class (full > partial > empty) of the blocks it covers, so a thin band never disappears when blocks
outnumber pixels. Token windows evaluate ``pattern.allowed`` on the window's index ranges only.

matplotlib is imported inside the drawing functions only (``pip install sparseflash[viz]``).
"""

from __future__ import annotations

import math
import re
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .blockmask import BlockMask, _check_sizes, ascii_grid, compile_mask, grid_steps, reduce_grid
from .parsing import parse
from .pattern import EMPTY, FULL, PARTIAL, Complement, Difference, Pattern, TileGeometry

CLASS_NAMES = {EMPTY: "empty", PARTIAL: "partial", FULL: "full"}
# Okabe-Ito blue and orange (colour-blind safe) on a light grey that stays visible on white paper.
CLASS_COLOURS = {EMPTY: "#f0f0f0", PARTIAL: "#e69f00", FULL: "#0b4f8a"}
# Cells per axis of a drawn block grid: about two pixels per cell on a 4-inch axes at 130 dpi, so
# nearest-neighbour drawing never drops a cell and a one-block band stays visible.
DEFAULT_MAX_CELLS = 256
# Largest token window drawn (pairs): the window is evaluated exactly, element by element.
MAX_WINDOW_PAIRS = 1 << 24

Window = tuple[tuple[int, int], tuple[int, int]]


# ------------------------------------------------------------------------------------- data


def block_classes(mask: BlockMask, max_rows: int | None = None, max_cols: int | None = None) -> np.ndarray:
    """int8 numpy grid of block classes, reduced as :meth:`BlockMask.to_dense` does."""
    return mask.to_dense(max_rows, max_cols).numpy()


def token_window(pattern: str | Pattern, q_len: int, kv_len: int | None, window: Window) -> np.ndarray:
    """bool ``(i1 - i0, j1 - j0)``: the exact mask of queries ``[i0, i1)`` by keys ``[j0, j1)``."""
    pattern = parse(pattern)
    kv_len = q_len if kv_len is None else kv_len
    (i0, i1), (j0, j1) = check_window(window, q_len, kv_len)
    p = np.arange(i0, i1, dtype=np.int64)[:, None] + (kv_len - q_len)
    j = np.arange(j0, j1, dtype=np.int64)[None, :]
    return np.broadcast_to(np.asarray(pattern.allowed(p, j), dtype=bool), (i1 - i0, j1 - j0)).copy()


def check_window(window: Window, q_len: int, kv_len: int) -> Window:
    """The window as ints, or a ValueError saying which bound is wrong and what would be right."""
    (i0, i1), (j0, j1) = ((int(a), int(b)) for a, b in window)
    if not 0 <= i0 < i1 <= q_len:
        raise ValueError(f"query range {i0}:{i1} must satisfy 0 <= start < stop <= q_len = {q_len}")
    if not 0 <= j0 < j1 <= kv_len:
        raise ValueError(f"key range {j0}:{j1} must satisfy 0 <= start < stop <= kv_len = {kv_len}")
    if (i1 - i0) * (j1 - j0) > MAX_WINDOW_PAIRS:
        raise ValueError(
            f"a window of {i1 - i0} x {j1 - j0} tokens is too large to draw token by token "
            f"(at most {MAX_WINDOW_PAIRS:,} pairs, e.g. 4096 x 4096); the block picture covers the whole mask"
        )
    return (i0, i1), (j0, j1)


# ------------------------------------------------------------------------------------- text


def tokens_text(n: float) -> str:
    """``4096 -> '4k'``, ``1048576 -> '1M'``, ``1000 -> '1000'``: sizes as people write them."""
    n = int(n)
    for unit, suffix in ((1 << 20, "M"), (1 << 10, "k")):
        if n and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def _sizes_text(mask: BlockMask) -> str:
    lengths = (
        f"q_len = kv_len = {tokens_text(mask.q_len)}"
        if mask.q_len == mask.kv_len
        else f"q_len = {tokens_text(mask.q_len)}, kv_len = {tokens_text(mask.kv_len)}"
    )
    return f"{lengths}, tiles {mask.block_m}×{mask.block_n}"


def _percent(fraction: float) -> str:
    """A percentage with enough digits to tell small densities apart (never '0.0%' for non-zero)."""
    value = 100 * fraction
    if value == 0 or value >= 10:
        return f"{value:.1f}%"
    digits = max(1, 1 - math.floor(math.log10(value)))
    return f"{value:.{min(digits, 6)}f}%"


def safe_file_name(patterns, suffix: str = "") -> str:
    """A shell-friendly file stem from canonical pattern texts: ``global(4) + local(256)`` ->
    ``global_4+local_256``; several patterns are joined with ``__vs__``."""
    stems = []
    for pattern in patterns:
        text = str(parse(pattern))
        text = text.replace("&", " and ").replace(" - ", " minus ").replace("~", " not ")
        text = text.replace(")", "").replace(" + ", "+")
        stem = re.sub(r"[^A-Za-z0-9+]+", "_", text).strip("_")
        stems.append(stem)
    stem = "__vs__".join(stems) + suffix
    if len(stem) > 120:
        import hashlib

        stem = stem[:100] + "_" + hashlib.sha1(stem.encode()).hexdigest()[:10]
    return stem


def _round_numbers():
    """1, 2, 5, 10, 20, 50, 100, ..."""
    scale = 1
    while True:
        yield from (scale, 2 * scale, 5 * scale)
        scale *= 10


def _marks(n_cells: int, step: int, start: int, min_gap: int) -> dict[int, int]:
    """Axis marks ``{cell: value}`` at round values (multiples of 1, 2, 5, 10, 20, ...) at least
    ``min_gap`` cells apart; cell ``c`` covers values ``[start + c*step, start + (c+1)*step)``."""
    spacing = next(s for s in _round_numbers() if s >= step * min_gap)
    first = -(-start // spacing) * spacing
    return {(value - start) // step: value for value in range(first, start + n_cells * step, spacing)}


def _framed(body: str, n_rows: int, n_cols: int, row_marks: dict, col_marks: dict, col_title: str) -> list[str]:
    """Frame a text grid: column marks on top (``┬`` at each mark), row marks on the left (``┤``)."""
    margin = max((len(str(v)) for v in row_marks.values()), default=1) + 1
    labels = [" "] * (n_cols + 16)
    for cell, value in col_marks.items():
        labels[cell : cell + len(str(value))] = str(value)
    top = "".join("┬" if c in col_marks else "─" for c in range(n_cols))
    pad = " " * (margin + 1)
    lines = [pad + col_title, pad + "".join(labels).rstrip(), " " * margin + "┌" + top + "┐"]
    rows = body.split("\n")
    for r in range(n_rows):
        text = rows[r] if r < len(rows) else ""
        label = str(row_marks.get(r, ""))
        lines.append(f"{label:>{margin - 1}} {'┤' if r in row_marks else '│'}{text:<{n_cols}}│")
    lines.append(" " * margin + "└" + "─" * n_cols + "┘")
    return lines


def _grid_marks(shape, steps, starts) -> tuple[dict, dict]:
    (n_rows, n_cols), (row_step, col_step), (row_start, col_start) = shape, steps, starts
    col_width = len(str(col_start + n_cols * col_step - 1))
    row_marks = _marks(n_rows, row_step, row_start, 1 if n_rows <= 12 else 5)
    return row_marks, _marks(n_cols, col_step, col_start, col_width + 1)


def render_ascii(
    pattern: str | Pattern,
    q_len: int,
    kv_len: int | None = None,
    *,
    block_m: int = 128,
    block_n: int = 128,
    width: int | None = None,
    max_rows: int | None = None,
    tokens: Window | None = None,
) -> str:
    """The block grid as text, framed with row and column marks and no wider than ``width``
    characters (default: the terminal's width). With ``tokens=((i0, i1), (j0, j1))``, the
    token-level mask of that window instead (█ allowed, blank not).

    Rows are query blocks, columns key blocks, numbered as ``explain`` numbers them; when the grid
    is wider than the terminal, one character stands for several blocks and shows the strongest.
    """
    pattern = parse(pattern)
    kv_len = q_len if kv_len is None else kv_len
    width = width or shutil.get_terminal_size((80, 24)).columns
    mask = compile_mask(pattern, q_len, kv_len, block_m=block_m, block_n=block_n)
    header = [str(pattern), _sizes_text(mask),
              f"pairs allowed {_percent(mask.density())}, blocks run {_percent(mask.block_density())}"]  # fmt: skip
    if tokens is not None:
        return "\n".join(_wrapped(header, width) + _ascii_tokens(pattern, q_len, kv_len, tokens, width, max_rows))
    n_q, n_kv = mask.n_q_blocks, mask.n_kv_blocks
    margin = len(str(n_q - 1)) + 1
    max_cols = max(width - margin - 2, 8)
    max_rows = max_rows or max_cols
    row_step, col_step = grid_steps(n_q, n_kv, max_rows, max_cols)
    grid = block_classes(mask, max_rows, max_cols)
    scale = "one character = one block" if row_step == col_step == 1 else (
        f"one character = {row_step}×{col_step} blocks, strongest class shown")
    legend = ["█ full   ░ partial   (blank) empty", "rows: query blocks; columns: key blocks", scale]
    body = ascii_grid(torch.from_numpy(grid), *grid.shape)
    framed = _framed(body, *grid.shape, *_grid_marks(grid.shape, (row_step, col_step), (0, 0)), "key blocks →")
    return "\n".join(_wrapped(header + legend, width) + framed)


def _wrapped(lines: list[str], width: int) -> list[str]:
    """Lines folded at spaces to ``width`` characters (a long pattern stays whole if it has to)."""
    import textwrap

    return [part for line in lines for part in (textwrap.wrap(line, width, break_long_words=False) or [""])]


def _ascii_tokens(pattern, q_len, kv_len, window, width, max_rows) -> list[str]:
    (i0, i1), (j0, j1) = check_window(window, q_len, kv_len)
    allowed = token_window(pattern, q_len, kv_len, window)
    margin = len(str(i1 - 1)) + 1
    max_cols = max(width - margin - 2, 8)
    max_rows = max_rows or max_cols
    row_step, col_step = grid_steps(*allowed.shape, max_rows, max_cols)
    # Allowed pairs take the "full" glyph; a reduced cell is marked when any of its pairs is allowed.
    grid = reduce_grid(torch.from_numpy(allowed.astype(np.int8) * FULL), max_rows, max_cols)
    scale = "one character = one token pair" if row_step == col_step == 1 else (
        f"one character = {row_step}×{col_step} tokens, marked if any pair is allowed")
    legend = [f"queries {i0}:{i1} × keys {j0}:{j1}", "█ allowed   (blank) not allowed", scale]
    body = ascii_grid(grid, *grid.shape)
    framed = _framed(body, *grid.shape, *_grid_marks(grid.shape, (row_step, col_step), (i0, j0)), "keys →")
    return _wrapped(legend, width) + framed


# ------------------------------------------------------------------------------------- pictures


def _import_matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "sparseflash.show draws with matplotlib, which is not installed: pip install 'sparseflash[viz]' "
            "(or pip install matplotlib). `sparseflash show --ascii` needs no matplotlib."
        ) from error
    return Figure


def show(
    pattern,
    q_len: int,
    kv_len: int | None = None,
    *,
    block_m: int = 128,
    block_n: int = 128,
    ax=None,
    tokens: Window | None = None,
    max_cells: int = DEFAULT_MAX_CELLS,
):
    """Draw the block classes of a pattern — full, partial, empty — and return the matplotlib Figure.

    ``pattern`` is a pattern (text or tree) or a list of them, drawn side by side for comparison.
    Each panel is titled with the canonical pattern, the sizes, the token density and the fraction
    of blocks that are not empty; its legend counts the blocks of each class. Axes are in tokens.
    Grids larger than ``max_cells`` per side are reduced, each cell showing the strongest class of
    the blocks it covers (so 1M tokens draws in about a second, with no N×N mask anywhere).

    ``tokens=((i0, i1), (j0, j1))`` draws the exact token-level mask of queries ``[i0, i1)`` by keys
    ``[j0, j1)`` instead, with the tile boundaries dashed: what ``local(3)`` or ``strided(4)`` allow.

    ``ax`` (an Axes, or a list of them for several patterns) draws into an existing figure. The
    array drawn in each panel is ``ax.images[0].get_array()``: block classes (0 empty, 1 partial,
    2 full) equal to ``compile_mask(...).to_dense()`` when no reduction was needed.
    """
    Figure = _import_matplotlib()
    patterns = [pattern] if isinstance(pattern, (str, Pattern)) else list(pattern)
    if not patterns:
        raise ValueError("show: give at least one pattern")
    patterns = [parse(p) for p in patterns]
    kv_len = q_len if kv_len is None else kv_len
    if tokens is not None:
        check_window(tokens, q_len, kv_len)
    if ax is None:
        panel_width, panel_height = _panel_size(q_len, kv_len, tokens)
        figure = Figure(figsize=(panel_width * len(patterns), panel_height), layout="constrained")
        axes = figure.subplots(1, len(patterns), squeeze=False)[0]
    else:
        axes = [ax] if not isinstance(ax, (list, tuple, np.ndarray)) else list(ax)
        if len(axes) != len(patterns):
            raise ValueError(f"show: {len(patterns)} pattern(s) but {len(axes)} axes")
        figure = axes[0].figure
    for pattern, axes_item in zip(patterns, axes):
        if tokens is None:
            _draw_blocks(axes_item, pattern, q_len, kv_len, block_m, block_n, max_cells)
        else:
            _draw_tokens(axes_item, pattern, q_len, kv_len, block_m, block_n, tokens, max_cells)
    return figure


def _panel_size(q_len: int, kv_len: int, tokens: Window | None) -> tuple[float, float]:
    rows, cols = (q_len, kv_len) if tokens is None else (tokens[0][1] - tokens[0][0], tokens[1][1] - tokens[1][0])
    aspect = min(max(rows / cols, 0.35), 1.0)
    return 4.6, 2.1 + 3.6 * aspect


def _tick_step(length: float) -> int:
    """A power of two that puts 3 to 6 ticks on an axis ``length`` tokens long (4k, 8k, ... reads well)."""
    step = 1
    while length / step > 6:
        step *= 2
    return step


def _style_axes(ax, extent: tuple[float, float, float, float]):
    """Token axes on top and left with power-of-two ticks, and a small margin so that a class on the
    mask's edge (``sink`` column, ``global`` row) is not hidden under the frame."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    left, right, bottom, top = extent
    for axis, low, high in ((ax.xaxis, left, right), (ax.yaxis, top, bottom)):
        axis.set_major_locator(MultipleLocator(_tick_step(high - low)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: tokens_text(value) if value == int(value) else ""))
    pad_x, pad_y = 0.015 * (right - left), 0.015 * (bottom - top)
    ax.set_xlim(left - pad_x, right + pad_x)
    ax.set_ylim(bottom + pad_y, top - pad_y)
    rows, cols = bottom - top, right - left
    ax.set_aspect("equal" if 1 / 3 <= rows / cols <= 3 else "auto")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    ax.tick_params(labelsize=8)
    for spine in ax.spines.values():
        spine.set_color("#aaaaaa")


def _draw_blocks(ax, pattern, q_len, kv_len, block_m, block_n, max_cells):
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch, Rectangle

    mask = compile_mask(pattern, q_len, kv_len, block_m=block_m, block_n=block_n)
    grid = block_classes(mask, max_cells, max_cells)
    row_step, col_step = grid_steps(mask.n_q_blocks, mask.n_kv_blocks, max_cells, max_cells)
    cmap = ListedColormap([CLASS_COLOURS[EMPTY], CLASS_COLOURS[PARTIAL], CLASS_COLOURS[FULL]])
    norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5], cmap.N)
    # Extent in tokens: the grid's cells cover whole blocks, the last ones reaching past the end.
    extent = (0, grid.shape[1] * col_step * block_n, grid.shape[0] * row_step * block_m, 0)
    image = ax.imshow(grid, cmap=cmap, norm=norm, interpolation="nearest", extent=extent)
    # The last blocks reach past the sequence end: clip their padding off the picture.
    image.set_clip_path(Rectangle((0, 0), kv_len, q_len, transform=ax.transData))
    _style_axes(ax, (0, kv_len, q_len, 0))
    ax.set_xlabel(f"key position j  (tiles of {block_n})", fontsize=8)
    ax.set_ylabel(f"query position i  (tiles of {block_m})", fontsize=8)
    scale = "" if row_step == col_step == 1 else f"\neach cell: {row_step}×{col_step} blocks, strongest class shown"
    ax.set_title(
        f"{pattern}\n{_sizes_text(mask)}\ndensity {_percent(mask.density())} of pairs, "
        f"{_percent(mask.block_density())} of blocks run{scale}",
        fontsize=9,
    )
    n_empty = mask.n_q_blocks * mask.n_kv_blocks - mask.n_full - mask.n_partial
    handles = [
        Patch(facecolor=CLASS_COLOURS[FULL], edgecolor="#555555", label=f"full: no mask ({mask.n_full:,})"),
        Patch(facecolor=CLASS_COLOURS[PARTIAL], edgecolor="#555555", label=f"partial: masked ({mask.n_partial:,})"),
        Patch(facecolor=CLASS_COLOURS[EMPTY], edgecolor="#555555", label=f"empty: skipped ({n_empty:,})"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=1, fontsize=8, frameon=False,
              title="blocks (count)", title_fontsize=8)  # fmt: skip


def _draw_tokens(ax, pattern, q_len, kv_len, block_m, block_n, window, max_cells):
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    (i0, i1), (j0, j1) = check_window(window, q_len, kv_len)
    allowed = token_window(pattern, q_len, kv_len, window)
    row_step, col_step = grid_steps(*allowed.shape, max_cells, max_cells)
    grid = reduce_grid(torch.from_numpy(allowed.astype(np.int8)), max_cells, max_cells).numpy()
    cmap = ListedColormap([CLASS_COLOURS[EMPTY], CLASS_COLOURS[FULL]])
    norm = BoundaryNorm([-0.5, 0.5, 1.5], cmap.N)
    # Cell (r, c) is centred on token (i0 + r, j0 + c) when not reduced.
    extent = (j0 - 0.5, j0 - 0.5 + grid.shape[1] * col_step, i0 - 0.5 + grid.shape[0] * row_step, i0 - 0.5)
    ax.imshow(grid, cmap=cmap, norm=norm, interpolation="nearest", extent=extent)
    handles = [
        Patch(facecolor=CLASS_COLOURS[FULL], edgecolor="#555555", label="allowed"),
        Patch(facecolor=CLASS_COLOURS[EMPTY], edgecolor="#555555", label="not allowed"),
    ]
    # Boundaries strictly inside the window (its own edges are the frame).
    row_lines = range((i0 // block_m + 1) * block_m, i1, block_m)
    col_lines = range((j0 // block_n + 1) * block_n, j1, block_n)
    if 0 < len(row_lines) + len(col_lines) <= 64:
        for i in row_lines:
            ax.axhline(i - 0.5, color="#d62728", linewidth=0.8, linestyle="--")
        for j in col_lines:
            ax.axvline(j - 0.5, color="#d62728", linewidth=0.8, linestyle="--")
        handles.append(Line2D([], [], color="#d62728", linewidth=0.8, linestyle="--",
                              label=f"tile boundary ({block_m}×{block_n})"))  # fmt: skip
    _style_axes(ax, (j0 - 0.5, j1 - 0.5, i1 - 0.5, i0 - 0.5))
    ax.set_xlabel("key position j", fontsize=8)
    ax.set_ylabel("query position i", fontsize=8)
    lengths = f"q_len = kv_len = {tokens_text(q_len)}" if q_len == kv_len else (
        f"q_len = {tokens_text(q_len)}, kv_len = {tokens_text(kv_len)}")
    scale = "" if row_step == col_step == 1 else f"\neach cell: {row_step}×{col_step} tokens, any allowed"
    ax.set_title(
        f"{pattern}\nqueries {i0}:{i1} × keys {j0}:{j1} of {lengths}\n"
        f"{_percent(allowed.mean())} of the window allowed{scale}",
        fontsize=9,
    )
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=1, fontsize=8, frameon=False)


def save(figure, path: str, dpi: int = 130) -> str:
    """Write a figure to ``path`` (the suffix picks PNG, SVG or PDF) and return the path."""
    figure.savefig(path, dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.15)
    return path


# ------------------------------------------------------------------------------------- numbers


def stats(
    pattern: str | Pattern,
    q_len: int,
    kv_len: int | None = None,
    *,
    block_m: int = 128,
    block_n: int = 128,
    head_dim: int = 128,
) -> dict:
    """The numbers behind the picture, as a JSON-ready dict.

    - ``density``: fraction of (query, key) pairs allowed; ``blocks``: full / partial / empty counts;
      ``block_density``: fraction of blocks the kernels run (full + partial).
    - FLOPs per head for the forward pass (two matmuls: ``4 * Lq * Lk * head_dim`` for dense):
      ``flops_dense``; ``flops_block_sparse``, what the kernels run (the dense count times the
      block density); ``flops_exact``, the allowed pairs alone (``4 * allowed * head_dim``).
    - ``speedup_bound``: ``1 / block_density``, the most that skipping empty blocks can give
      (``None`` when every block is empty); masking partial blocks costs a little on top.
    - ``mask_bytes``: the BlockMask's memory; ``distinct_tiles``: partial tile masks stored;
      ``build_seconds``: time to compile the mask, measured on a fresh build (not the cache).
    """
    pattern = parse(pattern)
    kv_len = q_len if kv_len is None else kv_len
    _check_sizes(q_len, kv_len, block_m, block_n)
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"stats: head_dim must be a positive integer, got {head_dim!r}")
    start = time.perf_counter()
    mask = compile_mask(pattern, q_len, kv_len, block_m=block_m, block_n=block_n, cache=False)
    build_seconds = time.perf_counter() - start
    total = mask.n_q_blocks * mask.n_kv_blocks
    block_density = mask.block_density()
    flops_dense = 4 * q_len * kv_len * head_dim
    return {
        "pattern": str(pattern),
        "q_len": q_len,
        "kv_len": kv_len,
        "block_m": block_m,
        "block_n": block_n,
        "head_dim": head_dim,
        "density": mask.density(),
        "allowed_pairs": mask.allowed_pairs,
        "blocks": {"full": mask.n_full, "partial": mask.n_partial, "empty": total - mask.n_full - mask.n_partial,
                   "total": total},  # fmt: skip
        "block_density": block_density,
        "flops_dense": flops_dense,
        "flops_block_sparse": round(flops_dense * block_density),
        "flops_exact": 4 * mask.allowed_pairs * head_dim,
        "speedup_bound": (1 / block_density) if block_density > 0 else None,
        "mask_bytes": mask.nbytes,
        "distinct_tiles": mask.n_tiles,
        "build_seconds": build_seconds,
    }


def _bytes_text(n: int) -> str:
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit:
            return f"{n / unit:.1f} {name}"
    return f"{n} B"


def stats_text(numbers: dict) -> str:
    """:func:`stats`' dict as the aligned lines ``sparseflash stats`` prints."""
    blocks = numbers["blocks"]
    lengths = (
        f"q_len = kv_len = {numbers['q_len']:,}"
        if numbers["q_len"] == numbers["kv_len"]
        else f"q_len = {numbers['q_len']:,}, kv_len = {numbers['kv_len']:,}"
    )
    bound = numbers["speedup_bound"]
    rows = [
        ("pattern", numbers["pattern"]),
        ("sizes", f"{lengths}, tiles {numbers['block_m']}×{numbers['block_n']}, head dim {numbers['head_dim']}"),
        ("density", f"{_percent(numbers['density'])} of pairs allowed "
                    f"({numbers['allowed_pairs']:,} of {numbers['q_len'] * numbers['kv_len']:,})"),
        ("blocks", f"{blocks['full']:,} full, {blocks['partial']:,} partial, {blocks['empty']:,} empty "
                   f"of {blocks['total']:,} ({_percent(numbers['block_density'])} run)"),
        ("FLOPs/head", f"dense {numbers['flops_dense']:.3g}, block-sparse {numbers['flops_block_sparse']:.3g}, "
                       f"exact {numbers['flops_exact']:.3g}  (forward, 4·Lq·Lk·D for dense)"),
        ("speed-up", "no work at all: every block is empty" if bound is None
                     else f"at most {bound:.3g}× against dense (1 / block density)"),
        ("mask memory", f"{_bytes_text(numbers['mask_bytes'])} ({numbers['distinct_tiles']:,} distinct partial tiles)"),
        ("build time", f"{numbers['build_seconds'] * 1e3:.1f} ms"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# ------------------------------------------------------------------------------------- explain


@dataclass(frozen=True)
class NodeOnBlock:
    """One sub-expression of the pattern evaluated exactly on one block's tile."""

    depth: int
    text: str
    role: str  # "", "removed" (right side of a difference) or "negated" (inside a complement)
    block_class: str
    allowed_pairs: int
    contributes: bool  # some pair it allows is allowed by the whole pattern in this block


@dataclass(frozen=True)
class BlockExplanation:
    """What :func:`explain` finds about block ``(row, col)``; ``str()`` gives the report."""

    pattern: str
    q_len: int
    kv_len: int
    block_m: int
    block_n: int
    row: int
    col: int
    queries: tuple[int, int]
    keys: tuple[int, int]
    block_class: str
    allowed_pairs: int
    valid_pairs: int
    padded: bool
    nodes: tuple[NodeOnBlock, ...]
    live_because: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lengths = (
            f"q_len = kv_len = {self.q_len:,}" if self.q_len == self.kv_len
            else f"q_len = {self.q_len:,}, kv_len = {self.kv_len:,}"
        )  # fmt: skip
        offset = self.kv_len - self.q_len
        positions = "" if offset == 0 else f" (positions {self.queries[0] + offset}–{self.queries[1] - 1 + offset})"
        share = self.allowed_pairs / self.valid_pairs
        lines = [
            f"block ({self.row}, {self.col}) of {self.pattern}  [{lengths}, tiles {self.block_m}×{self.block_n}]",
            f"  queries {self.queries[0]}–{self.queries[1] - 1}{positions} × keys {self.keys[0]}–{self.keys[1] - 1}",
            f"  class: {self.block_class} — {self.allowed_pairs:,} of {self.valid_pairs:,} pairs allowed "
            f"({_percent(share)})",
        ]
        if self.padded and self.block_class == "partial" and self.allowed_pairs == self.valid_pairs:
            lines.append("  (every pair is allowed, but the tile reaches past the sequence end: the kernel masks the padding)")
        lines.append("")
        class_width = max(len(n.block_class) for n in self.nodes)
        for index, node in enumerate(self.nodes):
            tree = _tree_prefix(self.nodes, index)
            role = f"({node.role}) " if node.role else ""
            share = node.allowed_pairs / self.valid_pairs
            lines.append(f"  {node.block_class:<{class_width}} {_percent(share):>7}  {tree}{role}{node.text}")
        lines.append("")
        if self.live_because:
            lines.append(f"  live because of: {', '.join(self.live_because)}")
        else:
            lines.append("  empty: no part of the pattern allows a pair here; the kernels skip this block")
        return "\n".join(lines)


def _tree_prefix(nodes, index: int) -> str:
    """Box-drawing prefix of node ``index`` in a pre-order list with depths."""
    depth = nodes[index].depth
    if depth == 0:
        return ""

    def is_last_at(position: int, level: int) -> bool:
        # No later sibling at `level` before the subtree at `level - 1` ends.
        for later in nodes[position + 1 :]:
            if later.depth < level:
                return True
            if later.depth == level:
                return False
        return True

    parts = []
    for level in range(1, depth):
        ancestor = max(k for k in range(index) if nodes[k].depth == level)
        parts.append("   " if is_last_at(ancestor, level) else "│  ")
    parts.append("└─ " if is_last_at(index, depth) else "├─ ")
    return "".join(parts)


def _walk(node: Pattern, depth: int = 0, role: str = ""):
    yield depth, node, role
    children = node.children
    for position, child in enumerate(children):
        if isinstance(node, Complement):
            child_role = "negated"
        elif isinstance(node, Difference) and position == 1:
            child_role = "removed"
        else:
            child_role = ""
        yield from _walk(child, depth + 1, child_role)


def _class_of(count: int, valid: int) -> int:
    return EMPTY if count == 0 else FULL if count == valid else PARTIAL


def explain(
    pattern: str | Pattern,
    q_len: int,
    kv_len: int | None = None,
    *,
    block: tuple[int, int],
    block_m: int = 128,
    block_n: int = 128,
) -> BlockExplanation:
    """Explain block ``(row, col)`` (query block, key block): its class and which parts of the
    pattern make it live.

    Every sub-expression is evaluated exactly on that one tile (``allowed`` on its index ranges);
    a sub-expression *makes the block live* when some pair it allows survives in the whole pattern.
    The leaves (and complements) that do so are listed in ``live_because``. The class is the one
    ``compile_mask`` gives the block: a tile that reaches past the sequence end is never full.
    """
    pattern = parse(pattern)
    kv_len = q_len if kv_len is None else kv_len
    _check_sizes(q_len, kv_len, block_m, block_n)
    geometry = TileGeometry(q_len, kv_len, block_m, block_n)
    row, col = (int(v) for v in block)
    if not (0 <= row < geometry.n_q_blocks and 0 <= col < geometry.n_kv_blocks):
        raise ValueError(
            f"block ({row}, {col}) is outside the grid: rows 0..{geometry.n_q_blocks - 1}, "
            f"columns 0..{geometry.n_kv_blocks - 1} for q_len={q_len}, kv_len={kv_len}, tiles {block_m}×{block_n}"
        )
    queries = (row * block_m, min((row + 1) * block_m, q_len))
    keys = (col * block_n, min((col + 1) * block_n, kv_len))
    p = np.arange(*queries, dtype=np.int64)[:, None] + geometry.offset
    j = np.arange(*keys, dtype=np.int64)[None, :]
    shape = (queries[1] - queries[0], keys[1] - keys[0])
    valid = shape[0] * shape[1]
    final = np.broadcast_to(np.asarray(pattern.allowed(p, j), dtype=bool), shape)
    padded = shape != (block_m, block_n)
    nodes = []
    for depth, node, role in _walk(pattern):
        allowed = np.broadcast_to(np.asarray(node.allowed(p, j), dtype=bool), shape)
        count = int(allowed.sum())
        contributes = bool((allowed & final).any())
        nodes.append(NodeOnBlock(depth, str(node), role, CLASS_NAMES[_class_of(count, valid)], count, contributes))
    live = _live_parts(pattern, p, j, final)
    total = int(final.sum())
    final_class = _class_of(total, valid)
    if final_class == FULL and padded:
        final_class = PARTIAL
    return BlockExplanation(
        pattern=str(pattern), q_len=q_len, kv_len=kv_len, block_m=block_m, block_n=block_n, row=row, col=col,
        queries=queries, keys=keys, block_class=CLASS_NAMES[final_class], allowed_pairs=total, valid_pairs=valid,
        padded=padded, nodes=tuple(nodes), live_because=tuple(live),
    )  # fmt: skip


def _live_parts(node: Pattern, p, j, final) -> list[str]:
    """Leaves (and whole complements, which are not looked into) whose allowed pairs overlap ``final``."""
    if not final.any():
        return []
    if node.children and not isinstance(node, Complement):
        parts = []
        for child in node.children:
            for text in _live_parts(child, p, j, final):
                if text not in parts:
                    parts.append(text)
        return parts
    overlap = np.asarray(node.allowed(p, j), dtype=bool) & final
    return [str(node)] if overlap.any() else []
