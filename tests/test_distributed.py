"""`loraplus train` under torchrun (2 CPU processes, DDP over gloo) trains like one process with the same global
batch; gradient accumulation likewise; the FSDP / DeepSpeed example configs and the settings refused up front."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import save_tiny_bert, write_sentiment_csvs
from safetensors.torch import load_file

from loraplus.cli import main
from loraplus.config import parse_train_args, training_arguments_kwargs
from loraplus.reliability import check_engine_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny BERT without dropout (so batches, not random masks, decide the gradients) and sentiment CSVs."""
    from loraplus.models import load_tokenizer, resolve_model

    root = tmp_path_factory.mktemp("distributed")
    tokenizer = load_tokenizer(resolve_model("minilm"))
    save_tiny_bert(root / "bert", tokenizer, dropout=0.0)
    write_sentiment_csvs(root)
    return root


def train_args(root, out, per_device, *extra):
    """8 steps (2 epochs) of a global batch 8; no dropout; no length grouping (see the DDP test)."""
    return ["--model_name_or_path", str(root / "bert"), "--train_file", str(root / "train.csv"),
            "--validation_file", str(root / "dev.csv"), "--output_dir", str(out), "--max_steps", "8",
            "--eval_steps", "4", "--logging_steps", "1", "--per_device_train_batch_size", str(per_device),
            "--learning_rate", "1e-2", "--lora_dropout", "0", "--group_by_length", "false",
            "--load_best_model_at_end", "false", "--report_to", "none",
            # micro-batches (not packing), cut at every padding saving: the path with per-process no_sync
            "--packed_sequences", "false", "--length_micro_batch_cost", "0", *extra]


def max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def single(setup):
    """One process, per-device batch 8."""
    out = setup / "single"
    assert main(["train", *train_args(setup, out, 8)]) == 0
    return out


def test_torchrun_two_processes_match_one(setup, single):
    """torchrun x2 (batch 4 each) writes one run folder, once, whose adapter matches 1 process x batch 8.

    Length grouping is off: its megabatches depend on the per-device batch (4 vs 8), so the two runs
    would see other batches. With the plain shuffle, accelerate seeds one permutation on every rank and
    deals per-device batches round-robin, so each global step sees the same 8 examples as one process.
    """
    out = setup / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "loraplus.cli", "train", *train_args(setup, out, 4)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=setup)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert {p.name for p in (out / "checkpoint-8").glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert losses(out) == pytest.approx(losses(single), rel=1e-5)  # one record per step: written once
    for name in ("adapter_model.safetensors", "checkpoint-8/adapter_model.safetensors"):
        assert max_diff(single / name, out / name) <= 1e-5  # measured: 8.0e-7 (weights up to 0.57)


def test_gradient_accumulation_matches_full_batch(setup, single):
    """Batch 4 x 2 accumulation steps trains like batch 8: the classifier loss is not scaled by 2."""
    out = setup / "accumulated"
    assert main(["train", *train_args(setup, out, 4, "--gradient_accumulation_steps", "2")]) == 0
    assert losses(out) == pytest.approx(losses(single), rel=1e-5)
    assert max_diff(single / "adapter_model.safetensors", out / "adapter_model.safetensors") <= 1e-5  # 8.0e-7


EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("train_*.yaml")))
def test_example_train_configs_parse_and_keep_groups(name):
    """Each example train config names its command first, parses, and passes the FSDP / DeepSpeed checks."""
    path = EXAMPLES / name
    assert path.read_text().splitlines()[0].startswith(("# torchrun ", "# accelerate launch "))
    kwargs = training_arguments_kwargs(parse_train_args([str(path)]))
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)  # the configs name examples/... relative to the repository
        check_engine_settings(kwargs)
    finally:
        os.chdir(cwd)
    assert kwargs.get("fsdp") or kwargs.get("deepspeed")


@pytest.mark.parametrize("name", ["deepspeed_zero2.json", "deepspeed_zero3.json"])
def test_deepspeed_examples_leave_optimizer_to_trainer(name):
    """The DeepSpeed examples are ZeRO-2 / ZeRO-3 configs without an optimizer or scheduler section."""
    conf = json.loads((EXAMPLES / name).read_text())
    assert conf["zero_optimization"]["stage"] == int(name[-6])
    assert not {"optimizer", "scheduler"} & conf.keys()


def test_accelerate_fsdp_example_keeps_original_params():
    """The accelerate FSDP example names its command first and keeps the original parameters."""
    text = (EXAMPLES / "accelerate_fsdp.yaml").read_text()
    assert text.startswith("# accelerate launch --config_file examples/accelerate_fsdp.yaml")
    fsdp = yaml.safe_load(text)["fsdp_config"]
    assert fsdp["fsdp_use_orig_params"] is True or fsdp["fsdp_version"] == 2


@pytest.mark.parametrize("extra,needle", [
    (["--deepspeed", '{"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 2}}'], "'optimizer' section"),
    (["--deepspeed", '{"scheduler": {"type": "WarmupLR"}, "zero_optimization": {"stage": 2}}'], "'scheduler' section"),
    (["--fsdp", "full_shard", "--fsdp_config", '{"version": 1, "use_orig_params": false}'], "use_orig_params"),
])
def test_engine_settings_that_erase_the_ratio_exit_2(setup, tmp_path, capsys, extra, needle):
    """DeepSpeed optimizer/scheduler sections and flattened FSDP are refused in one line, before anything is written."""
    out = tmp_path / "out"
    assert main(["train", *train_args(setup, out, 8, *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and not out.exists()


def test_accelerate_fsdp1_without_orig_params_refused(monkeypatch):
    """`accelerate launch` with FSDP1 and fsdp_use_orig_params false (its default) is refused up front."""
    from loraplus.errors import LoraPlusError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.delenv("FSDP_USE_ORIG_PARAMS", raising=False)
    with pytest.raises(LoraPlusError, match="use_orig_params"):
        check_engine_settings({})
    monkeypatch.setenv("FSDP_USE_ORIG_PARAMS", "true")
    check_engine_settings({})
