"""The `sparseflash` command, in-process through `main(argv)` and once as `python -m sparseflash`."""

import json
import subprocess
import sys

import pytest

from sparseflash import cli, viz

pytestmark = pytest.mark.filterwarnings("ignore::sparseflash.SparsityWarning")


def run(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_show_ascii_prints_the_grid(capsys):
    status, out, err = run(capsys, "show", "local(256)+global(4)", "--len", "1k", "--ascii", "--width", "40")
    assert status == 0 and err == ""
    assert out.rstrip("\n") == viz.render_ascii("local(256)+global(4)", 1024, width=40)


def test_show_ascii_several_patterns_and_terminal_width(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    status, out, _ = run(capsys, "show", "causal", "butterfly(64)", "--len", "64k", "--ascii")
    assert status == 0
    assert "causal\n" in out and "butterfly(64)\n" in out
    assert max(len(line) for line in out.splitlines()) <= 30


def test_show_writes_canonical_png_in_the_current_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(capsys, "show", "local(256)+global(4)", "--len", "32k")
    assert status == 0
    assert out.strip() == "global_4+local_256.png"
    assert (tmp_path / "global_4+local_256.png").read_bytes()[:4] == b"\x89PNG"


def test_show_tokens_and_output_file(capsys, tmp_path):
    target = tmp_path / "window.svg"
    status, out, _ = run(capsys, "show", "local(3)", "strided(4)", "--len", "256", "--tokens", "0:32,0:32",
                         "--block", "16", "-o", str(target))  # fmt: skip
    assert status == 0 and out.strip() == str(target)
    assert b"<svg" in target.read_bytes()[:500]


def test_show_tokens_default_name_says_window(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(capsys, "show", "local(3)", "--len", "64", "--tokens", "8:24,0:32")
    assert status == 0 and out.strip() == "local_3__tokens_8-24_0-32.png"


def test_stats_json(capsys):
    status, out, _ = run(capsys, "stats", "chunk(1k) + sink(4)", "--len", "16k", "--block-m", "64", "--block-n", "128",
                         "--head-dim", "64", "--json")  # fmt: skip
    assert status == 0
    numbers = json.loads(out)
    expected = viz.stats("chunk(1k) + sink(4)", 16384, block_m=64, block_n=128, head_dim=64)
    numbers.pop("build_seconds"), expected.pop("build_seconds")
    assert numbers == expected


def test_stats_text(capsys):
    status, out, _ = run(capsys, "stats", "local(256)+global(4)", "--len", "32k", "--kv-len", "40000")
    assert status == 0
    assert out.startswith("pattern      global(4) + local(256)\n")
    for label in ("density", "blocks", "FLOPs/head", "speed-up", "mask memory", "build time"):
        assert f"\n{label}" in out


def test_explain(capsys):
    status, out, _ = run(capsys, "explain", "local(256)+global(4)", "--len", "4k", "--block", "0,5")
    assert status == 0
    assert "class: partial" in out and "live because of: global(4)" in out
    status, out, _ = run(capsys, "explain", "local(256)+global(4)", "--len", "4k", "--block", "5,5", "--tile", "64",
                         "--json")  # fmt: skip
    assert status == 0 and json.loads(out)["live_because"] == ["local(256)"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "local(256)+glbal(4)", "--len", "1k"], "did you mean 'global'"),
        (["stats", "local(-1)", "--len", "1k"], "local: window must be >= 0"),
        (["explain", "local(3", "--len", "1k", "--block", "0,0"], "ends too early"),
    ],
    ids=["unknown-name", "bad-argument", "syntax"],
)
def test_bad_pattern_exits_2_with_the_caret_message(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert message in err
    caret_line = err.rstrip("\n").splitlines()[-1]
    assert caret_line.strip() == "^"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "causal", "--len", "3x"], "argument --len: expected a whole number of tokens"),
        (["show", "causal", "--len", "0"], "argument --len: must be at least 1"),
        (["stats", "causal", "--len", "1k", "--block", "-8"], "argument --block/--tile: expected a positive"),
        (["stats", "causal", "--len", "1k", "--head-dim", "x"], "argument --head-dim"),
        (["stats", "causal", "--len", "1k", "--block", "64", "--block-m", "32"], "either --block B or --block-m"),
        (["show", "causal", "--len", "64", "--tokens", "0:8"], "argument --tokens: expected I0:I1,J0:J1"),
        (["show", "causal", "--len", "64", "--tokens", "0:80,0:8"], "--tokens: query range 0:80"),
        (["show", "causal", "--len", "64", "-o", "mask.jpg"], "-o/--output: 'mask.jpg' must end in .png, .svg or .pdf"),
        (["explain", "causal", "--len", "1k", "--block", "64"], "argument --block: expected a block index I,J"),
        (["explain", "causal", "--len", "1k", "--block", "9,0"], "--block: block (9, 0) is outside the grid"),
        (["explain", "causal", "--len", "1k"], "the following arguments are required: --block"),
        (["frobnicate"], "invalid choice"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_bad_options_exit_2_naming_the_option(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == ""
    assert message in err


def test_help_exits_0(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "show" in out and "stats" in out and "explain" in out


def test_warnings_are_printed_plainly(capsys):
    # A size no other test uses: the compiler warns when it builds a mask, not on a cache hit.
    status, out, err = run(capsys, "show", "strided(3)", "--len", "1003", "--block", "16", "--ascii", "--width", "40")
    assert status == 0 and out.startswith("strided(3)\n")
    assert err.startswith("sparseflash show: warning: strided(3) leaves no empty 16x16 block")


def test_missing_matplotlib_exits_1(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, _, err = run(capsys, "show", "causal", "--len", "256", "-o", str(tmp_path / "x.png"))
    assert status == 1 and "pip install 'sparseflash[viz]'" in err and "--ascii" in err


def test_python_dash_m_runs_the_command():
    ok = subprocess.run(
        [sys.executable, "-m", "sparseflash", "stats", "local(3)", "--len", "64", "--block", "16", "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["pattern"] == "local(3)"
    bad = subprocess.run([sys.executable, "-m", "sparseflash", "stats", "locl(3)", "--len", "64"], capture_output=True, text=True)
    assert bad.returncode == 2 and "^" in bad.stderr and bad.stdout == ""
