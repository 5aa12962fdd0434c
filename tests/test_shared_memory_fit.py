"""The real kernels compiled for a GPU with 99 KB of shared memory a block (sm_86: RTX 30xx, A10,
A40; the RTX 40xx, L4 and L40 have as much), on this machine without one: Triton cross-compiles
with its bundled ptxas (benchmarks/experiments/shared_memory_fit.py, in a process of its own since
the tests run Triton's interpreter). The tiles the launchers pick for such a GPU
(common.SMALL_SHARED_*) must fit at their own stage counts; the H200's must not, which is why
those tiles exist and shows the check refuses what does not fit."""

import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "experiments", "shared_memory_fit.py")
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_for_sm86(tmp_path, *options) -> list:
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    result = tmp_path / "fit.json"
    command = [sys.executable, SCRIPT, "--arch", "86", "--patterns", "causal", "--head-dims", "128,256", "--seq-len", "2048", "--heads", "2"]
    done = subprocess.run([*command, *options, "--json", str(result)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text())["rows"]


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="this Triton has no bundled ptxas to compile for a GPU")
def test_the_kernels_fit_a_99kb_gpu_with_the_tiles_picked_for_it(tmp_path):
    rows = compile_for_sm86(tmp_path)
    assert {row["kernel"] for row in rows} >= {"_attention_forward_kernel", "_attention_backward_dkdv_kernel", "_attention_backward_dq_kernel"}
    assert {row["head_dim"] for row in rows} == {128, 256}
    too_big = [row for row in rows if not row["fits"] or row["stages"] != row["tuned_stages"] or row["shared"] > 101376]
    assert not too_big, too_big
    # The H200's tiles at D=256: the dK/dV kernel needs 112 KB with its one stage.
    tuned = compile_for_sm86(tmp_path, "--tuned")
    assert any(not row["fits"] and row["head_dim"] == 256 and row["kernel"] == "_attention_backward_dkdv_kernel" for row in tuned), tuned
