"""The installed package, not the source tree: grammar and kernels ship inside it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path, extra_path: Path | None = None) -> str:
    env = {"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_plain_install_ships_grammar_and_kernels(tmp_path):
    target = tmp_path / "site"
    # Built from a copy, so that setuptools' build/ folder lands there and not in the source tree.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "sparseflash" / "grammar" / "pattern.lark").is_file()
    assert (target / "sparseflash" / "kernels" / "__init__.py").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_python(
        "import sparseflash, sparseflash.kernels;"
        "print(sparseflash.__file__);"
        "print(sparseflash.compile_mask('local(3) + global(1)', 40, block_m=16, block_n=16).n_partial)",
        cwd=elsewhere,
        extra_path=target,
    )
    module_file, n_partial = out.split()
    assert Path(module_file).is_relative_to(target)
    assert int(n_partial) > 0


def test_import_is_light(tmp_path):
    out = run_python(
        "import sys, sparseflash; sparseflash.parse('causal'); sparseflash.compile_mask('causal', 64);"
        "print(sorted(m for m in ('triton', 'matplotlib') if m in sys.modules))",
        cwd=tmp_path,
    )
    assert out.strip() == "[]"
