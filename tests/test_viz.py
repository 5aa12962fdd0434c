"""Pictures, ASCII grids, statistics and explanations against the exact dense mask.

Pictures are checked on the data behind them (the array each panel draws), never on pixels.
"""

import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import sparseflash
from sparseflash import compile_mask, parse, viz

EMPTY, PARTIAL, FULL = 0, 1, 2

pytestmark = pytest.mark.filterwarnings("ignore::sparseflash.SparsityWarning")


def reference_block_classes(text: str, q_len: int, kv_len: int, block_m: int, block_n: int) -> np.ndarray:
    """Block classes straight from the element mask; padding past the sequence end makes a block partial."""
    mask = parse(text).dense_mask(q_len, kv_len).numpy()
    n_q, n_kv = -(-q_len // block_m), -(-kv_len // block_n)
    padded = np.full((n_q * block_m, n_kv * block_n), -1, dtype=np.int8)
    padded[:q_len, :kv_len] = mask
    blocks = padded.reshape(n_q, block_m, n_kv, block_n).transpose(0, 2, 1, 3).reshape(n_q, n_kv, -1)
    any_allowed, all_allowed = (blocks == 1).any(-1), (blocks == 1).all(-1)
    return np.where(all_allowed, FULL, np.where(any_allowed, PARTIAL, EMPTY)).astype(np.int8)


def strongest_per_cell(grid: np.ndarray, row_step: int, col_step: int) -> np.ndarray:
    """An independent reduction: a plain loop taking the largest class in each cell."""
    n_rows, n_cols = -(-grid.shape[0] // row_step), -(-grid.shape[1] // col_step)
    out = np.zeros((n_rows, n_cols), dtype=np.int8)
    for r in range(n_rows):
        for c in range(n_cols):
            out[r, c] = grid[r * row_step : (r + 1) * row_step, c * col_step : (c + 1) * col_step].max()
    return out


def plotted(figure, panel: int = 0) -> np.ndarray:
    """The array a panel of a figure from ``show`` draws."""
    return np.asarray(figure.axes[panel].images[0].get_array())


# ------------------------------------------------------------------------------------- ASCII snapshots

SNAPSHOTS = {
    "causal_and_local": (
        ("causal & local(128)", 1024),
        {},
        """
        causal & local(128)
        q_len = kv_len = 1k, tiles 128×128
        pairs allowed 11.8%, blocks run 23.4%
        █ full   ░ partial   (blank) empty
        rows: query blocks; columns: key blocks
        one character = one block
           key blocks →
           0 2 4 6
          ┌┬─┬─┬─┬─┐
        0 ┤░       │
        1 ┤░░      │
        2 ┤ ░░     │
        3 ┤  ░░    │
        4 ┤   ░░   │
        5 ┤    ░░  │
        6 ┤     ░░ │
        7 ┤      ░░│
          └────────┘
        """,
    ),
    "local_plus_global": (
        ("local(256)+global(4)", 1024),
        {},
        """
        global(4) + local(256)
        q_len = kv_len = 1k, tiles 128×128
        pairs allowed 44.4%, blocks run 68.8%
        █ full   ░ partial   (blank) empty
        rows: query blocks; columns: key blocks
        one character = one block
           key blocks →
           0 2 4 6
          ┌┬─┬─┬─┬─┐
        0 ┤██░░░░░░│
        1 ┤███░    │
        2 ┤░███░   │
        3 ┤░░███░  │
        4 ┤░ ░███░ │
        5 ┤░  ░███░│
        6 ┤░   ░███│
        7 ┤░    ░██│
          └────────┘
        """,
    ),
    "butterfly": (
        ("butterfly(128)", 1024),
        {},
        """
        butterfly(128)
        q_len = kv_len = 1k, tiles 128×128
        pairs allowed 50.0%, blocks run 50.0%
        █ full   ░ partial   (blank) empty
        rows: query blocks; columns: key blocks
        one character = one block
           key blocks →
           0 2 4 6
          ┌┬─┬─┬─┬─┐
        0 ┤███ █   │
        1 ┤██ █ █  │
        2 ┤█ ██  █ │
        3 ┤ ███   █│
        4 ┤█   ███ │
        5 ┤ █  ██ █│
        6 ┤  █ █ ██│
        7 ┤   █ ███│
          └────────┘
        """,
    ),
    "chunk_plus_sink_with_tail": (
        ("chunk(256) + sink(4)", 1000),
        {},
        """
        chunk(256) + sink(4)
        q_len = kv_len = 1000, tiles 128×128
        pairs allowed 25.3%, blocks run 34.4%
        █ full   ░ partial   (blank) empty
        rows: query blocks; columns: key blocks
        one character = one block
           key blocks →
           0 2 4 6
          ┌┬─┬─┬─┬─┐
        0 ┤██      │
        1 ┤██      │
        2 ┤░ ██    │
        3 ┤░ ██    │
        4 ┤░   ██  │
        5 ┤░   ██  │
        6 ┤░     █░│
        7 ┤░     ░░│
          └────────┘
        """,
    ),
    "strided_256_tiles": (
        ("strided(512)", 2048),
        {"block_m": 256, "block_n": 256},
        """
        strided(512)
        q_len = kv_len = 2k, tiles 256×256
        pairs allowed 0.20%, blocks run 50.0%
        █ full   ░ partial   (blank) empty
        rows: query blocks; columns: key blocks
        one character = one block
           key blocks →
           0 2 4 6
          ┌┬─┬─┬─┬─┐
        0 ┤░ ░ ░ ░ │
        1 ┤ ░ ░ ░ ░│
        2 ┤░ ░ ░ ░ │
        3 ┤ ░ ░ ░ ░│
        4 ┤░ ░ ░ ░ │
        5 ┤ ░ ░ ░ ░│
        6 ┤░ ░ ░ ░ │
        7 ┤ ░ ░ ░ ░│
          └────────┘
        """,
    ),
    "reduced_to_width": (
        ("local(256)+global(4)", 32768),
        {"width": 24},
        """
        global(4) + local(256)
        q_len = kv_len = 32k,
        tiles 128×128
        pairs allowed 1.6%,
        blocks run 2.7%
        █ full   ░ partial
        (blank) empty
        rows: query blocks;
        columns: key blocks
        one character = 15×15
        blocks, strongest class
        shown
             key blocks →
             0     100    200
            ┌┬─────┬──────┬────┐
          0 ┤██░░░░░░░░░░░░░░░░│
            │███               │
            │░███              │
            │░ ███             │
            │░  ███            │
            │░   ███           │
        100 ┤░    ███          │
            │░     ███         │
            │░      ███        │
            │░       ███       │
            │░        ███      │
            │░         ███     │
            │░          ███    │
        200 ┤░           ███   │
            │░            ███  │
            │░             ███ │
            │░              ███│
            │░               ██│
            └──────────────────┘
        """,
    ),
    "token_window": (
        ("local(2)", 64),
        {"tokens": ((8, 20), (0, 16))},
        """
        local(2)
        q_len = kv_len = 64, tiles 128×128
        pairs allowed 7.7%, blocks run 100.0%
        queries 8:20 × keys 0:16
        █ allowed   (blank) not allowed
        one character = one token pair
            keys →
            0    5    10   15
           ┌┬────┬────┬────┬┐
         8 ┤      █████     │
         9 ┤       █████    │
        10 ┤        █████   │
        11 ┤         █████  │
        12 ┤          █████ │
        13 ┤           █████│
        14 ┤            ████│
        15 ┤             ███│
        16 ┤              ██│
        17 ┤               █│
        18 ┤                │
        19 ┤                │
           └────────────────┘
        """,
    ),
}


@pytest.mark.parametrize("name", list(SNAPSHOTS))
def test_ascii_snapshot(name):
    args, options, expected = SNAPSHOTS[name]
    options = {"width": 40, **options}
    assert viz.render_ascii(*args, **options) == textwrap.dedent(expected).strip("\n")


def test_ascii_fits_the_width_and_agrees_with_the_mask():
    text = viz.render_ascii("butterfly(64) + sink(4)", 200_000, width=50)
    assert max(len(line) for line in text.splitlines()[3:]) <= 50
    mask = compile_mask("butterfly(64) + sink(4)", 200_000)
    row_step, col_step = map(int, re.search(r"one character = (\d+)×(\d+) blocks", text).groups())
    expected = strongest_per_cell(mask.to_dense().numpy(), row_step, col_step)
    glyphs = {" ": EMPTY, "░": PARTIAL, "█": FULL}
    lines = text.splitlines()
    top = next(k for k, line in enumerate(lines) if "┌" in line)
    left = lines[top].index("┌")
    body = [line[left + 1 : -1] for line in lines[top + 1 : -1]]
    drawn = np.array([[glyphs[ch] for ch in row] for row in body], dtype=np.int8)
    assert np.array_equal(drawn, expected)


# ------------------------------------------------------------------------------------- data behind the pictures

CASES = [
    ("global(4) + local(256)", 2048, 2048, 128, 128),
    ("butterfly(64)", 1000, 1000, 64, 64),
    ("chunk(100) + sink(3)", 777, 1000, 32, 64),
    ("(local(40) - sink(5)) & ~strided(3)", 300, 200, 16, 32),
    ("causal - local(10)", 1, 500, 16, 16),
]


@pytest.mark.parametrize("text, q_len, kv_len, block_m, block_n", CASES, ids=[c[0] for c in CASES])
def test_plotted_array_is_the_block_mask(text, q_len, kv_len, block_m, block_n):
    figure = viz.show(text, q_len, kv_len, block_m=block_m, block_n=block_n)
    expected = reference_block_classes(text, q_len, kv_len, block_m, block_n)
    assert np.array_equal(plotted(figure), expected)
    mask = compile_mask(text, q_len, kv_len, block_m=block_m, block_n=block_n)
    assert np.array_equal(plotted(figure), mask.to_dense().numpy())
    assert str(parse(text)) in figure.axes[0].get_title()


def test_several_patterns_are_drawn_side_by_side():
    texts = ["local(256)+global(4)", "butterfly(64)", "local(512) & causal"]
    figure = viz.show(texts, 4096)
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 3
    for panel, text in zip(panels, texts):
        assert panel.get_title().startswith(str(parse(text)))
        expected = compile_mask(text, 4096).to_dense().numpy()
        assert np.array_equal(np.asarray(panel.images[0].get_array()), expected)
    assert panels[0].get_position().x0 < panels[1].get_position().x0 < panels[2].get_position().x0


def test_reduced_grid_keeps_the_strongest_class():
    text, length = "local(256) + global(4) + strided(20000)", 1 << 19  # 4096 x 4096 blocks
    mask = compile_mask(text, length)
    dense_grid = mask.to_dense().numpy()
    figure = viz.show(text, length, max_cells=100)
    row_step, col_step = viz.grid_steps(mask.n_q_blocks, mask.n_kv_blocks, 100, 100)
    assert (row_step, col_step) == (41, 41)
    expected = strongest_per_cell(dense_grid, row_step, col_step)
    assert np.array_equal(plotted(figure), expected)
    # All three classes survive the reduction: a one-block-wide partial band is not lost.
    assert set(np.unique(expected)) == {EMPTY, PARTIAL, FULL}
    assert "41×41 blocks" in figure.axes[0].get_title()


@pytest.mark.parametrize("max_rows, max_cols", [(7, 5), (64, 64), (1000, 3), (None, None)])
def test_block_classes_from_the_lists_match_a_plain_reduction(max_rows, max_cols):
    mask = compile_mask("butterfly(32) + sink(7)", 3000, 2000, block_m=32, block_n=16)
    row_step, col_step = viz.grid_steps(mask.n_q_blocks, mask.n_kv_blocks, max_rows, max_cols)
    expected = strongest_per_cell(mask.to_dense().numpy(), row_step, col_step)
    assert np.array_equal(viz.block_classes(mask, max_rows, max_cols), expected)


def test_token_window_is_the_exact_mask():
    text, q_len, kv_len = "local(3) + strided(8) - sink(2)", 300, 400
    window = ((40, 90), (120, 200))
    figure = viz.show(text, q_len, kv_len, tokens=window, block_m=16, block_n=16)
    exact = parse(text).dense_mask(q_len, kv_len).numpy()[40:90, 120:200]
    assert np.array_equal(plotted(figure).astype(bool), exact)
    assert np.array_equal(viz.token_window(text, q_len, kv_len, window), exact)


def test_large_token_window_is_reduced_with_any():
    text = "strided(64)"
    figure = viz.show(text, 4096, tokens=((0, 2048), (0, 2048)), max_cells=256)
    exact = parse(text).dense_mask(2048, 2048).numpy().astype(np.int8)
    assert np.array_equal(plotted(figure), strongest_per_cell(exact, 8, 8))


def test_token_window_out_of_range_says_which_bound():
    with pytest.raises(ValueError, match=r"key range 0:65 .* kv_len = 64"):
        viz.show("local(3)", 64, tokens=((0, 8), (0, 65)))
    with pytest.raises(ValueError, match="too large"):
        viz.show("local(3)", 1 << 20, tokens=((0, 8192), (0, 8192)))


def test_one_million_tokens_draws_in_seconds(tmp_path):
    start = time.perf_counter()
    figure = viz.show(["local(256)+global(4)", "chunk(1k) + sink(4)"], 1 << 20)
    viz.save(figure, str(tmp_path / "big.png"))
    assert time.perf_counter() - start < 15
    assert plotted(figure).shape == (256, 256)
    assert (tmp_path / "big.png").read_bytes()[:4] == b"\x89PNG"


def test_show_draws_into_given_axes():
    from matplotlib.figure import Figure

    figure = Figure()
    axes = figure.subplots(1, 2)
    assert viz.show(["causal", "local(64)"], 512, ax=list(axes)) is figure
    assert np.array_equal(np.asarray(axes[1].images[0].get_array()), compile_mask("local(64)", 512).to_dense().numpy())
    with pytest.raises(ValueError, match="2 pattern"):
        viz.show(["causal", "local(64)"], 512, ax=axes[0])


def test_missing_matplotlib_names_the_viz_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"sparseflash\[viz\]"):
        viz.show("causal", 256)


def test_importing_and_text_tools_do_not_import_matplotlib():
    code = (
        "import sys, sparseflash\n"
        "sparseflash.stats('causal', 512); sparseflash.explain('causal', 512, block=(1, 0))\n"
        "sparseflash.viz.render_ascii('causal', 512, width=40)\n"
        "print(sorted(m for m in ('matplotlib', 'triton') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_safe_file_names():
    assert viz.safe_file_name(["local(256)+global(4)"]) == "global_4+local_256"
    assert viz.safe_file_name(["local(512) & causal", "~causal - sink(4)"]) == "causal_and_local_512__vs__not_causal_minus_sink_4"
    assert len(viz.safe_file_name(["local(1)+" * 40 + "causal"])) <= 120


# ------------------------------------------------------------------------------------- stats


@pytest.mark.parametrize("text, q_len, kv_len", [("global(4) + local(256)", 2048, 2048), ("chunk(100)", 500, 700), ("dense - dense", 256, 256)])
def test_stats_match_the_dense_mask(text, q_len, kv_len):
    numbers = sparseflash.stats(text, q_len, kv_len, block_m=64, block_n=32, head_dim=80)
    exact = parse(text).dense_mask(q_len, kv_len)
    classes = reference_block_classes(text, q_len, kv_len, 64, 32)
    assert numbers["pattern"] == str(parse(text))
    assert numbers["allowed_pairs"] == int(exact.sum())
    assert numbers["density"] == pytest.approx(exact.float().mean().item())
    assert numbers["blocks"] == {
        "full": int((classes == FULL).sum()), "partial": int((classes == PARTIAL).sum()),
        "empty": int((classes == EMPTY).sum()), "total": classes.size,
    }  # fmt: skip
    assert numbers["flops_dense"] == 4 * q_len * kv_len * 80
    assert numbers["flops_exact"] == 4 * int(exact.sum()) * 80
    block_density = (classes != EMPTY).mean()
    assert numbers["block_density"] == pytest.approx(block_density)
    assert numbers["speedup_bound"] == (pytest.approx(1 / block_density) if block_density else None)
    assert numbers["mask_bytes"] == compile_mask(text, q_len, kv_len, block_m=64, block_n=32).nbytes
    assert numbers["build_seconds"] > 0
    assert "speed-up" in viz.stats_text(numbers)


# ------------------------------------------------------------------------------------- explain

EXPLAIN_CASES = [
    ("global(4) + local(256)", 1000, 1000, 64, 64),
    ("(local(40) - sink(5)) & ~strided(3)", 300, 200, 16, 32),
    ("~causal & local(40)", 200, 130, 32, 16),
    ("butterfly(16) + chunk(50) - causal", 97, 113, 16, 16),
]


@pytest.mark.parametrize("text, q_len, kv_len, block_m, block_n", EXPLAIN_CASES, ids=[c[0] for c in EXPLAIN_CASES])
def test_explained_class_is_the_block_mask_class_everywhere(text, q_len, kv_len, block_m, block_n):
    expected = reference_block_classes(text, q_len, kv_len, block_m, block_n)
    names = {EMPTY: "empty", PARTIAL: "partial", FULL: "full"}
    for row in range(expected.shape[0]):
        for col in range(expected.shape[1]):
            explanation = viz.explain(text, q_len, kv_len, block=(row, col), block_m=block_m, block_n=block_n)
            assert explanation.block_class == names[expected[row, col]], (row, col)
            assert bool(explanation.live_because) == (expected[row, col] != EMPTY)


def test_explain_names_the_parts_that_make_a_block_live():
    # Block (0, 5): the global rows reach it, the local band does not.
    explanation = sparseflash.explain("local(256)+global(4)", 4096, block=(0, 5))
    assert explanation.block_class == "partial"
    assert explanation.live_because == ("global(4)",)
    classes = {node.text: node.block_class for node in explanation.nodes}
    assert classes == {"global(4) + local(256)": "partial", "global(4)": "partial", "local(256)": "empty"}
    # On the diagonal the band alone fills the block.
    assert sparseflash.explain("local(256)+global(4)", 4096, block=(5, 5)).live_because == ("local(256)",)
    # A removed part never makes a block live; a complement is named whole.
    explanation = sparseflash.explain("~causal & local(300) - sink(4)", 1024, block=(0, 1))
    assert explanation.live_because == ("local(300)", "~causal")
    roles = {node.text: node.role for node in explanation.nodes}
    assert roles["sink(4)"] == "removed" and roles["causal"] == "negated"
    text = str(explanation)
    assert "block (0, 1) of" in text and "live because of: local(300), ~causal" in text and "└─ (removed) sink(4)" in text


def test_explain_empty_block_and_out_of_range():
    explanation = sparseflash.explain("local(3)", 1024, block=(0, 7))
    assert explanation.block_class == "empty" and explanation.live_because == ()
    assert "the kernels skip this block" in str(explanation)
    with pytest.raises(ValueError, match=r"rows 0\.\.7, columns 0\.\.7"):
        sparseflash.explain("local(3)", 1024, block=(8, 0))


def test_explain_padded_full_block_is_partial():
    explanation = sparseflash.explain("dense", 100, block=(0, 0))
    assert explanation.block_class == "partial" and explanation.allowed_pairs == explanation.valid_pairs == 10_000
    assert "past the sequence end" in str(explanation)
