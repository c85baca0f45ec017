"""Bad input ends in one line on stderr, exit code 2, no traceback, and nothing written."""

import csv
from pathlib import Path

import pytest
import torch

from loraplus.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny local classifier, good data files, and an existing run folder."""
    from transformers import BertConfig, BertForSequenceClassification

    from loraplus.models import load_tokenizer, resolve_model

    root = tmp_path_factory.mktemp("bad-input")
    tokenizer = load_tokenizer(resolve_model("minilm"))
    torch.manual_seed(0)
    model_dir = root / "tiny-bert"
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    def write(name, rows, fields=("text", "label")):
        with open(root / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        return str(root / name)

    good = [{"text": f"example {i}", "label": ["pos", "neg"][i % 2]} for i in range(20)]
    files = {
        "train": write("train.csv", good),
        "unseen": write("unseen.csv", [{"text": "x", "label": "maybe"}]),
        "empty": write("empty.csv", []),
        "sentence": write("sentence.csv", [{"sentence": "a", "label": "pos"}], ("sentence", "label")),
        "yaml_bad": str(root / "bad.yaml"),
        "yaml_list": str(root / "list.yaml"),
        "txt": str(root / "data.txt"),
        "broken_json": str(root / "broken.jsonl"),
        "existing": root / "existing-run",
        "nonempty": root / "nonempty",
    }
    Path(files["yaml_bad"]).write_text("learning_rate: [1e-3\nlora_r: 8\n")
    Path(files["yaml_list"]).write_text("- a\n- b\n")
    Path(files["txt"]).write_text("hello\n")
    Path(files["broken_json"]).write_text('{"text": "a", "label": "pos"}\n{"text": broken\n')
    files["existing"].mkdir()
    (files["existing"] / "summary.json").write_text("{}")
    files["nonempty"].mkdir()
    (files["nonempty"] / "keep.txt").write_text("mine")
    return root, str(model_dir), files


def cases(root, model, f):
    out = str(root / "never-written")
    base = ["train", "--model_name_or_path", model, "--train_file", f["train"], "--output_dir", out]
    return {
        "missing model folder": (["train", "--model_name_or_path", "./no/such/model", "--output_dir", out],
                                 "does not exist"),
        "unknown alias offline": (["train", "--model_name_or_path", "minilm-xl", "--output_dir", out], "offline"),
        "hub id offline": (["train", "--model_name_or_path", "someorg/somemodel", "--output_dir", out], "offline"),
        "unknown key": ([*base, "--learning_rat", "1e-3"], "did you mean 'learning_rate'"),
        "yaml does not parse": (["train", f["yaml_bad"], "--output_dir", out], "line"),
        "yaml not a mapping": (["train", f["yaml_list"], "--output_dir", out], "mapping"),
        "yaml missing": (["train", str(root / "nope.yaml"), "--output_dir", out], "nope.yaml"),
        "missing train file": (["train", "--model_name_or_path", model, "--train_file", str(root / "no.csv"),
                                "--output_dir", out], "does not exist"),
        "unsupported extension": (["train", "--model_name_or_path", model, "--train_file", f["txt"],
                                   "--output_dir", out], "extension"),
        "empty dataset": (["train", "--model_name_or_path", model, "--train_file", f["empty"], "--output_dir", out],
                          "empty"),
        "missing column": ([*base, "--text_column", "sentence"], "text, label"),
        "label not in train": ([*base, "--validation_file", f["unseen"]], "maybe"),
        "targets match nothing": ([*base, "--lora_target_modules", "q_proj"], "query"),
        "ratio zero": ([*base, "--loraplus_lr_ratio", "0"], "loraplus_lr_ratio"),
        "negative lr": ([*base, "--learning_rate", "-1e-3"], "learning_rate"),
        "nan lr": ([*base, "--learning_rate", "nan"], "learning_rate must be a number > 0"),
        "infinite ratio": ([*base, "--loraplus_lr_ratio", "inf"], "loraplus_lr_ratio"),
        "json that does not parse": ([*base, "--validation_file", f["broken_json"]], "json parse error"),
        "trainer refuses a setting": ([*base, "--eval_strategy", "sometimes"], "sometimes"),
        "unknown task": ([*base, "--task", "translation"], "classification"),
        "causal task on an encoder": ([*base, "--task", "label_words"], "needs a causal language model"),
        "bad int": ([*base, "--max_steps", "ten"], "max_steps"),
        "flag without value": ([*base, "--learning_rate"], "learning_rate"),
        "dropout out of range": ([*base, "--lora_dropout", "1.5"], "lora_dropout"),
        "unknown optimizer": ([*base, "--optim", "adamw_turbo"], "adamw_torch"),
        "unknown scheduler": ([*base, "--lr_scheduler_type", "zigzag"], "cosine"),
        "resume from nothing": ([*base, "--resume_from_checkpoint", str(root / "ckpt-9")], "does not exist"),
        "resume latest without checkpoint": ([*base, "--resume_from_checkpoint", "latest"], "no checkpoint"),
        "label words per class": ([*base, "--task", "label_words", "--label_words", "a,b,c"], "label words"),
        "eval of a non-run": (["eval", str(root)], "not a finished loraplus run"),
        "merge usage": (["merge", str(root)], "usage"),
        "unknown command": (["trian"], "unknown command"),
        "demo bad flag": (["demo", "--epochs", "3"], "demo takes"),
        "sweep without lr grid": (["sweep", "--model_name_or_path", model, "--output_dir", out], "--lr"),
        "compare bad seeds": (["compare", "--model_name_or_path", model, "--seeds", "one", "--output_dir", out],
                              "--seeds"),
        "compare bad lr grid": (["compare", "--model_name_or_path", model, "--lrs", "0,1e-3", "--output_dir", out],
                                "--lrs"),
    }


CASE_NAMES = list(cases(Path("/x"), "m", {k: "" for k in ("train", "unseen", "empty", "sentence", "yaml_bad",
                                                          "yaml_list", "txt", "broken_json")}))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_exits_2_with_one_line(env, capsys, name):
    """Each bad input: exit 2, a single stderr line naming the problem, no traceback, nothing written."""
    root, model, files = env
    argv, needle = cases(root, model, files)[name]
    before = sorted(p.name for p in root.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert needle.lower() in err[0].lower(), err[0]
    assert sorted(p.name for p in root.iterdir()) == before  # no run folder created


def test_existing_run_is_not_clobbered(env, capsys):
    """An output_dir holding another run is refused and left exactly as it was."""
    _, model, files = env
    argv = ["train", "--model_name_or_path", model, "--train_file", files["train"], "--output_dir",
            str(files["existing"])]
    assert main(argv) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert [p.name for p in files["existing"].iterdir()] == ["summary.json"]
    assert (files["existing"] / "summary.json").read_text() == "{}"


def test_merge_refuses_nonempty_target(env, capsys):
    """merge into a folder that holds files is refused before anything loads."""
    tmp, _, files = env
    run = tmp / "fake-run"
    run.mkdir(exist_ok=True)
    (run / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text("lora_r: 8\n")
    assert main(["merge", str(run), str(files["nonempty"])]) == 2
    assert (files["nonempty"] / "keep.txt").read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_bf16_without_gpu_is_refused_before_loading(env, capsys):
    """bf16 true on a CPU-only machine ends in one line that names the fix, before any model loads."""
    root, model, files = env
    argv = ["train", "--model_name_or_path", model, "--train_file", files["train"], "--output_dir",
            str(root / "never-written"), "--bf16", "true"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--use_cpu true" in err[0]
    assert not (root / "never-written").exists()
