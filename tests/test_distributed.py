"""`loraplus train` under torchrun (2 CPU processes, DDP over gloo) trains like one process with the same global
batch; gradient accumulation likewise; the FSDP / DeepSpeed example configs and the settings refused up front."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import save_tiny_bert, write_csv, write_sentiment_csvs
from safetensors.torch import load_file

from loraplus.cli import main
from loraplus.train.config import parse_train_args, training_arguments_kwargs
from loraplus.train.distributed import check_engine_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny BERT without dropout (so batches, not random masks, decide the gradients) and sentiment CSVs."""
    from loraplus.train.models import load_tokenizer, resolve_model

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


SEEDS = range(8)
WORDS = ["good", "bad", "film", "plot", "acting", "dull", "great", "fun", "awful", "the", "and", "a", "of", "boring"]


def write_varied_rows(path, seed: int, rows: int = 64) -> str:
    """`rows` texts of 1 to 40 words (lengths drawn per seed) with random labels."""
    rng = random.Random(seed)
    data = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))),
             "label": rng.choice(["negative", "positive"])} for _ in range(rows)]
    return write_csv(path, data)


@pytest.fixture(scope="module")
def models(setup):
    """A tiny BERT (runs packed) and a tiny Llama (runs as micro-batches), both without dropout."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraplus.train.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model("minilm"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id, attention_dropout=0.0)
    LlamaForCausalLM(cfg).save_pretrained(setup / "llama")
    tokenizer.save_pretrained(setup / "llama")
    for seed in SEEDS:
        write_varied_rows(setup / f"varied{seed}.csv", seed)
    return {"encoder": ("classification", setup / "bert"), "causal_lm": ("causal_lm", setup / "llama")}


def varied_args(root, model, task, seed, out, per_device, *extra):
    """16 steps (two epochs of 64 rows at a global batch of 8), logging every step, no dropout anywhere."""
    return ["--model_name_or_path", str(model), "--task", task, "--train_file", str(root / f"varied{seed}.csv"),
            "--validation_file", str(root / "dev.csv"), "--eval_strategy", "no", "--save_strategy", "no",
            "--output_dir", str(out), "--max_steps", "16", "--logging_steps", "1", "--seed", str(seed),
            "--per_device_train_batch_size", str(per_device), "--learning_rate", "1e-2", "--lora_dropout", "0",
            "--load_best_model_at_end", "false", "--report_to", "none", "--length_micro_batch_cost", "0", *extra]


@pytest.fixture(scope="module")
def varied_runs(setup, models, tmp_path_factory):
    """Every model x seed trained as 1 process x 8, 1 x 4 with accumulation 2 (here), and torchrun 2 x 4."""
    root = tmp_path_factory.mktemp("varied")
    runs = {}
    ddp = []
    for kind, (task, model) in models.items():
        for seed in SEEDS:
            for layout, per_device, extra in (("1x8", 8, ()), ("1x4ga2", 4, ("--gradient_accumulation_steps", "2")),
                                              ("2x4", 4, ())):
                out = root / f"{kind}-{seed}-{layout}"
                argv = varied_args(setup, model, task, seed, out, per_device, *extra)
                if layout == "2x4":
                    ddp.append(argv)
                else:
                    assert main(["train", *argv]) == 0
                runs[kind, seed, layout] = out
    spec = root / "ddp.json"
    spec.write_text(json.dumps(ddp))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "distributed_worker.py"), str(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return runs


@pytest.mark.parametrize("kind", ["encoder", "causal_lm"])
@pytest.mark.parametrize("layout", ["2x4", "1x4ga2"])
def test_every_logged_loss_is_that_of_one_process_with_the_same_global_batch(varied_runs, kind, layout):
    """torchrun 2 x 4 and 1 x 4 with accumulation 2 log the losses of 1 x 8 at every step, for 8 seeds.

    The sampler builds blocks of the global batch and accelerate deals them out, so each optimizer step
    trains on the same examples whatever the layout; an encoder runs packed, a causal LM as micro-batches.
    """
    for seed in SEEDS:
        reference = losses(varied_runs[kind, seed, "1x8"])
        assert len(reference) == 16
        assert losses(varied_runs[kind, seed, layout]) == pytest.approx(reference, rel=1e-5), f"seed {seed}"


def test_torchrun_writes_one_run_folder_once(varied_runs):
    """Under torchrun the run folder is written once: one record per step, one adapter, one summary."""
    out = varied_runs["encoder", 0, "2x4"]
    assert len(losses(out)) == 16
    assert max_diff(varied_runs["encoder", 0, "1x8"] / "adapter_model.safetensors",
                    out / "adapter_model.safetensors") <= 1e-5
    assert json.loads((out / "summary.json").read_text())["global_step"] == 16


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
    from loraplus.core.errors import LoraPlusError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.delenv("FSDP_USE_ORIG_PARAMS", raising=False)
    with pytest.raises(LoraPlusError, match="use_orig_params"):
        check_engine_settings({})
    monkeypatch.setenv("FSDP_USE_ORIG_PARAMS", "true")
    check_engine_settings({})
