"""Tiles tuned on the user's GPU (kernels/tuning.py, ``sparseflash tune``): which table entry a
mask takes, the tuned file read for its GPU only, the candidates timed, and how results are
compared. Timing needs a GPU: the GPU tier runs ``tune`` itself (test_attention_gpu.py)."""

import json
from dataclasses import replace

import pytest
import torch

import sparseflash
from sparseflash.cli import main as cli_main
from sparseflash.kernels import common, tuning
from sparseflash.kernels.common import BackwardConfig, ForwardConfig, Schedule

BF16 = torch.bfloat16


@pytest.mark.parametrize(
    "pattern, forward_rule, backward_rule",
    [("dense", "dense", "dense"), ("causal", "long", "long"), ("butterfly(128)", "two_per_sm", "short"),
     ("local(1k) & causal", "short_spans", "short"), ("strided(256)+local(128)", "partial_spans", "partial_spans"),
     ("local(256)+global(4)", "short", "short")],
)  # fmt: skip
def test_each_mask_takes_a_named_table_entry(pattern, forward_rule, backward_rule):
    mask = sparseflash.compile_mask(pattern, 32768)
    entry, config = common.forward_table_entry(128, BF16, mask)
    assert entry == f"forward D128 16-bit {forward_rule}"
    assert config == replace(common.default_forward_config(128, BF16, mask), block_m=config.block_m, block_n=config.block_n)
    entry, _ = common.backward_table_entry(128, BF16, mask)
    assert entry == f"backward D128 16-bit {backward_rule}"
    assert common.forward_table_entry(128, BF16, mask, 99 * 1024)[0] == "forward D128 16-bit small_shared"
    assert common.backward_table_entry(64, torch.float32, mask)[0].startswith("backward D64 float32 ")
    assert common.backward_table_entry(64, BF16, sparseflash.compile_mask("butterfly(128)", 32768))[0] == "backward D64 16-bit even_rows"


@pytest.fixture
def tuned_file(tmp_path, monkeypatch):
    """A tuned file of our own, GPU 0 named "GPU A", read afresh."""
    path = tmp_path / "tuned.json"
    monkeypatch.setenv(tuning.TUNED_FILE_VARIABLE, str(path))
    monkeypatch.setattr(tuning, "_gpu_key", lambda index: ["GPU A", "GPU B"][index])
    tuning.forget_file_choices()
    yield path
    tuning.forget_file_choices()


def test_a_tuned_file_replaces_its_entries_on_its_gpu_only(tuned_file):
    tuned = ForwardConfig(64, 32, num_warps=4, num_stages=2, schedule=Schedule(heavy_first=False, heads_fastest=True))
    tuned_file.write_text(json.dumps({"GPU A": {"forward D128 16-bit dense": tuning.config_fields(tuned)}}))
    mask = sparseflash.compile_mask("dense", 4096)
    table = common.default_forward_config(128, BF16, mask)
    assert table != tuned
    assert common.default_forward_config(128, BF16, mask, device=torch.device("cuda", 0)) == tuned
    assert common.default_forward_config(128, BF16, mask, device=torch.device("cuda", 1)) == table  # another GPU
    assert common.default_forward_config(128, BF16, mask, device=torch.device("cpu")) == table  # the interpreter
    assert common.default_forward_config(64, BF16, mask, device=torch.device("cuda", 0)) == common.default_forward_config(64, BF16, mask)
    # Clamped to the mask's blocks like the table's.
    small = sparseflash.compile_mask("dense", 4096, block_m=32, block_n=16)
    assert common.default_forward_config(128, BF16, small, device=torch.device("cuda", 0)) == replace(tuned, block_m=32, block_n=16)


def test_a_broken_tuned_file_is_named_in_the_error(tuned_file):
    tuned_file.write_text("{not json")
    with pytest.raises(RuntimeError, match="cannot read the tuned tiles in .*tuned.json"):
        common.default_forward_config(128, BF16, sparseflash.compile_mask("dense", 1024), device=torch.device("cuda", 0))


def test_configs_survive_the_file():
    for config in (ForwardConfig(128, 64, 4, 2, list_slots=16, key_spans=True), BackwardConfig(32, 128, 128, 32, 8, 2, tma="host", dq_num_stages=3),
                   ForwardConfig(64, 64, 8, 3, schedule=Schedule(heavy_first=True, heads_fastest=False))):  # fmt: skip
        fields = json.loads(json.dumps(tuning.config_fields(config)))
        assert tuning.config_from_fields(type(config), fields) == config


@pytest.mark.parametrize("pattern, head_dim", [("dense", 128), ("butterfly(128)", 128), ("local(1k) & causal", 64)])
def test_candidates_stay_around_the_table_entry_and_within_the_blocks(pattern, head_dim):
    mask = sparseflash.compile_mask(pattern, 8192, block_m=128, block_n=64)
    for entry in (common.forward_table_entry, common.backward_table_entry):
        _, table = entry(head_dim, BF16, mask)
        found = tuning.candidates(table, mask)
        assert found[0] == table and len(set(found)) == len(found) >= 4
        for config in found:
            assert 1 <= config.num_stages <= 4 and config.num_warps in (4, 8)
            changed = [f for f in ("block_m", "block_n", "block_m1", "block_n1", "block_m2", "block_n2") if getattr(config, f, None) != getattr(table, f, None)]
            for field in changed:  # queries within the mask's query block, keys within its key block
                assert 16 <= getattr(config, field) <= min(128, mask.block_m if "_m" in field else mask.block_n), (field, config)
            assert replace(config, **{f: getattr(table, f) for f in ("num_stages", "num_warps", *changed)}) == table


def test_results_must_match_to_rounding_and_infinities_exactly():
    out, lse = torch.randn(2, 8), torch.tensor([float("-inf"), 1.0])
    assert tuning._difference((out, lse), (out, lse)) == 0.0
    assert tuning._difference((out * 1.01, lse), (out, lse)) == pytest.approx(0.01, rel=1e-3)
    assert tuning._difference((out, torch.tensor([0.0, 1.0])), (out, lse)) == float("inf")  # a row with no key lost its -inf
    assert tuning._difference((torch.full_like(out, float("nan")), lse), (out, lse)) == float("inf")


def test_tune_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli_main(["tune", "dense", "--len", "1k"]) == 2
    assert "sparseflash tune: error: needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be on a CUDA GPU, got cpu"):
        tuning.tune(*(torch.zeros(1, 1, 16, 16) for _ in range(3)), "dense")


def test_tune_checks_its_inputs_as_attention_does():
    q = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="k must have 4 dimensions"):
        tuning.tune(q, torch.zeros(1, 16, 16), q, "dense")
    with pytest.raises(ValueError, match="same dtype"):
        tuning.tune(q, q.half(), q, "dense")


def test_reports_name_only_what_differs_from_the_defaults():
    assert tuning.describe(ForwardConfig(128, 64, 4, 2, key_spans=True)) == "block_m=128 block_n=64 num_warps=4 num_stages=2 key_spans=True"
    assert tuning.describe(BackwardConfig(64, 128, 128, 64, 8, 3)) == "block_m1=64 block_n1=128 block_m2=128 block_n2=64 num_warps=8 num_stages=3"


def test_tiles_this_version_cannot_read_are_named_in_the_error(tuned_file):
    tuned_file.write_text(json.dumps({"GPU A": {"forward D128 16-bit dense": {"block_m": 64, "tiles_of_the_future": 3}}}))
    with pytest.raises(RuntimeError, match="holds tiles for 'forward D128 16-bit dense' that this version cannot read"):
        common.default_forward_config(128, BF16, sparseflash.compile_mask("dense", 1024), device=torch.device("cuda", 0))
