"""The `loraplus` CLI end to end, in-process, on tiny local models: outputs, reload, merge, bad input."""

import json
from pathlib import Path

import pytest
import torch
from conftest import WORDS, write_csv

from loraplus.cli import main


def common(out, **extra):
    args = ["--output_dir", str(out), "--max_steps", "4", "--eval_steps", "2", "--logging_steps", "1",
            "--per_device_train_batch_size", "8", "--report_to", "none", "--learning_rate", "1e-3"]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, bert_dir, sentiment):
    out = tmp_path_factory.mktemp("run") / "cls"
    rc = main(["train", "--model_name_or_path", bert_dir, "--train_file", sentiment["train"],
               "--validation_file", sentiment["dev"], "--test_file", sentiment["test"],
               *common(out, loraplus_lr_ratio=8)])
    assert rc == 0
    return out


def test_train_writes_run_folder(classifier_run):
    """train writes adapter, config, metrics, summary, labels and curves."""
    names = {p.name for p in classifier_run.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.yaml", "metrics.jsonl", "summary.json",
            "labels.json", "learning_curves.png"} <= names
    assert json.loads((classifier_run / "labels.json").read_text())["label_names"] == ["negative", "positive"]


def test_metrics_log_a_and_b_lrs_at_ratio(classifier_run):
    """metrics.jsonl records lr_A and lr_B at every logged step, with lr_B = 8 lr_A."""
    rows = [json.loads(line) for line in (classifier_run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "lr_A" in r]
    assert len(logged) == 4 and all(r["lr_B"] == pytest.approx(8 * r["lr_A"]) for r in logged)
    assert all(r["lr_A"] == r["learning_rate"] for r in logged)  # the same moment as the Trainer's own
    assert any("eval_accuracy" in r for r in rows)


def test_summary_holds_final_and_best_evaluations(classifier_run):
    """summary.json has the loop's evaluation at the last step and at the best checkpoint, and says the
    top-level adapter is the best one, whose validation scores it reports."""
    s = json.loads((classifier_run / "summary.json").read_text())
    final, best = s["evaluations"]["final"], s["evaluations"]["best"]
    assert final["step"] == s["global_step"] == 4
    assert s["best_checkpoint"].endswith(f"checkpoint-{best['step']}") and s["adapter"] == "best"
    assert best["eval_accuracy"] == s["validation"]["eval_accuracy"] == s["best_metric"]


def test_model_card_names_the_base_model(classifier_run, bert_dir):
    """The adapter's model card and config name the base model: a folder by its absolute path (an alias by
    its hub id: test_demo_code_path_tiny_budget)."""
    from loraplus.train.models import base_model_name

    card = (classifier_run / "README.md").read_text()
    assert f"base_model: {Path(bert_dir).absolute()}" in card
    adapter = json.loads((classifier_run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(Path(bert_dir).absolute())
    assert base_model_name("minilm") == "sentence-transformers/all-MiniLM-L6-v2"



def test_eval_from_another_folder_needs_only_the_test_file(tmp_path, bert_dir, sentiment, monkeypatch, capsys):
    """A run trained with relative paths is scored from another folder, after its training data is gone:
    the metrics are printed and appended to evaluations.jsonl, and no folder is left in the run."""
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    for name in ("train", "dev", "test"):
        shutil.copy(sentiment[name], work / f"{name}.csv")
    monkeypatch.chdir(work)
    assert main(["train", "--model_name_or_path", bert_dir, "--train_file", "train.csv", "--validation_file",
                 "dev.csv", *common("run")]) == 0
    before = {p.name for p in (work / "run").iterdir()}
    (work / "train.csv").unlink()
    (work / "dev.csv").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(work / "run"), "--test_file", str(work / "test.csv")]) == 0
    printed = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    assert printed["split"] == "test" and 0 <= float(printed["test_accuracy"]) <= 1
    record = json.loads((work / "run" / "evaluations.jsonl").read_text().splitlines()[-1])
    assert record["data"] == str(work / "test.csv") and record["test_accuracy"] == float(printed["test_accuracy"])
    assert {p.name for p in (work / "run").iterdir()} == before | {"evaluations.jsonl"}
    assert list(elsewhere.iterdir()) == []


def test_summary_fields(classifier_run):
    """summary.json has steps, wall-clock, tokens/s, peak memory and test metrics."""
    s = json.loads((classifier_run / "summary.json").read_text())
    assert s["global_step"] == 4 and s["train_seconds"] > 0 and s["tokens_per_second"] > 0
    assert s["peak_memory_mb"] > 0 and 0 <= s["test"]["test_accuracy"] <= 1


def test_eval_reproduces_reported_accuracy(classifier_run, capsys):
    """`loraplus eval` on the run reloads the adapter and reproduces the summary's test accuracy."""
    reported = json.loads((classifier_run / "summary.json").read_text())["test"]["test_accuracy"]
    capsys.readouterr()
    assert main(["eval", str(classifier_run)]) == 0
    printed = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    assert float(printed["test_accuracy"]) == pytest.approx(reported)


def test_validation_summary_is_the_saved_models(classifier_run, sentiment, capsys):
    """The summary's validation accuracy, taken from the loop's log, is the saved (best) adapter's."""
    reported = json.loads((classifier_run / "summary.json").read_text())["validation"]["eval_accuracy"]
    capsys.readouterr()
    assert main(["eval", str(classifier_run), "--test_file", sentiment["dev"]]) == 0
    printed = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    assert float(printed["test_accuracy"]) == pytest.approx(reported)


def test_final_evaluation_not_repeated(tmp_path, bert_dir, sentiment, monkeypatch):
    """After training, the split the loop evaluated at the final weights is not evaluated again."""
    from transformers import Trainer

    passes = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: passes.append(1) or evaluate(self, *a, **k))
    assert main(["train", "--model_name_or_path", bert_dir, "--train_file", sentiment["train"],
                 "--validation_file", sentiment["dev"], "--test_file", sentiment["test"], *common(tmp_path)]) == 0
    assert len(passes) == 3  # validation at steps 2 and 4 in the loop, then test once


def test_adapter_loads_with_peft(classifier_run, bert_dir):
    """The adapter folder loads with PeftModel.from_pretrained on the base model."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, str(classifier_run))
    assert any("lora_B" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("target", [[], ["--output_dir"]], ids=["OUT_DIR", "--output_dir OUT_DIR"])
def test_merge_predicts_like_adapter(classifier_run, tmp_path, tokenizer, target):
    """merge writes a plain model whose logits equal base + adapter's, its folder given either way."""
    from transformers import AutoModelForSequenceClassification

    from loraplus.train.runs import load_run_config, load_trained

    assert main(["merge", str(classifier_run), *target, str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    adapted, _ = load_trained(str(classifier_run), *load_run_config(str(classifier_run)))
    batch = tokenizer(WORDS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, adapted(**batch).logits, atol=1e-5)
    assert merged.config.id2label == {0: "negative", 1: "positive"}


@pytest.mark.parametrize("task,extra", [
    ("causal_lm", {}),
    ("sft", {}),
    ("label_words", {"label_words": "bad,good"}),
])
def test_causal_tasks_end_to_end(tmp_path, llama_dir, task, extra):
    """causal_lm, sft and label_words train a tiny Llama and write an adapter and summary."""
    if task == "sft":
        rows = [{"prompt": f"review {i}: {WORDS[i % 6]}", "response": "positive" if i % 2 else "negative"}
                for i in range(24)]
        train = write_csv(tmp_path / "train.csv", rows, ("prompt", "response"))
    else:
        rows = [{"text": WORDS[i % 6], "label": "good" if i % 2 == 0 else "bad"} for i in range(24)]
        train = write_csv(tmp_path / "train.csv", rows)
    out = tmp_path / "out"
    assert main(["train", "--model_name_or_path", llama_dir, "--task", task, "--train_file", train,
                 "--validation_split_ratio", "0.25", *common(out, **extra)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 4 and (out / "adapter_model.safetensors").exists()
    if task == "label_words":
        assert 0 <= summary["validation"]["eval_accuracy"] <= 1


def test_train_help_lists_keys(capsys):
    """`train --help` lists every key with its default."""
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--loraplus_lr_ratio" in text and "--lora_target_modules" in text and "default" in text


def test_demo_code_path_tiny_budget(tmp_path, capsys):
    """The demo's code path on a tiny budget: both arms train, the table and the PNG appear."""
    assert main(["demo", "--output_dir", str(tmp_path), "--max_steps", "2", "--max_train_samples", "64",
                 "--max_eval_samples", "32", "--eval_steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "LoRA+" in out and "test acc" in out
    assert (tmp_path / "lora_vs_loraplus.png").stat().st_size > 0
    # the packaged MiniLM: the card names the hub model, not the package folder it loaded from
    from loraplus.train.models import resolve_model

    for card in tmp_path.glob("*/README.md"):
        text = card.read_text()
        assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in text and resolve_model("minilm") not in text
    assert len(list(tmp_path.glob("*/README.md"))) == 2


def test_feature_learning_monitor_and_diagnose(tmp_path, bert_dir, sentiment, capsys):
    """--feature_learning_steps writes feature_learning.jsonl, and `diagnose` reads it into a verdict and PNG."""
    out = tmp_path / "fl"
    assert main(["train", "--model_name_or_path", bert_dir, "--train_file", sentiment["train"],
                 *common(out, feature_learning_steps=2)]) == 0
    records = [json.loads(line) for line in (out / "feature_learning.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records} == {2, 4} and any(r["layer"] == "all" for r in records)
    capsys.readouterr()
    assert main(["diagnose", str(out)]) == 0
    assert (out / "feature_learning.png").stat().st_size > 0 and capsys.readouterr().out.strip()


@pytest.mark.parametrize("command", ["eval", "merge", "demo", "compare", "sweep"])
def test_command_help_prints_its_usage(command, capsys):
    """`loraplus COMMAND --help` prints that command's usage and exits 0 instead of reading --help as a key."""
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: loraplus {command} ") and "unknown" not in out


def test_every_loraplus_setting_reaches_the_optimizer_from_the_cli(tmp_path, bert_dir, sentiment):
    """Each LoRA+ setting of the library is a `loraplus train` key, and its value is the one the optimizer uses."""
    from loraplus.core.settings import LORAPLUS_SETTINGS

    values = {"loraplus_lr_ratio": 4, "loraplus_lr_embedding": 5e-4, "loraplus_lr_magnitude": 3e-3,
              "loraplus_lr_other": 2e-3, "loraplus_weight_decay": 0.05, "loraplus_optimizer": "loraplus"}
    assert set(values) == set(LORAPLUS_SETTINGS)  # a new setting must be added here too
    out = tmp_path / "dora"
    assert main(["train", "--model_name_or_path", bert_dir, "--train_file", sentiment["train"],
                 "--validation_file", sentiment["dev"], "--use_dora", "--weight_decay", "0.01",
                 "--lora_target_modules", "query,value,word_embeddings", "--warmup_ratio", "0",
                 *common(out, **values)]) == 0
    state = torch.load(out / "checkpoint-4" / "optimizer.pt", weights_only=False)
    groups = {g["name"]: g for g in state["param_groups"]}
    assert groups["lora_A"]["initial_lr"] == 1e-3 and groups["lora_B"]["initial_lr"] == 4e-3
    assert groups["lora_A"]["weight_decay"] == groups["lora_B"]["weight_decay"] == 0.05
    assert groups["lora_magnitude"]["initial_lr"] == 3e-3 and groups["lora_magnitude"]["weight_decay"] == 0.0
    assert groups["lora_embedding_A"]["initial_lr"] == groups["lora_embedding_B"]["initial_lr"] == 5e-4
    assert groups["other"]["initial_lr"] == 2e-3 and groups["other"]["weight_decay"] == 0.01
