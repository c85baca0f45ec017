"""Bad input ends in one line on stderr, exit code 2, no traceback, and nothing written."""

import csv
from pathlib import Path

import pytest
import torch

from conftest import write_csv

from loraplus.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny local classifier, good data files, and an existing run folder."""
    from transformers import BertConfig, BertForSequenceClassification

    from loraplus.train.models import load_tokenizer, resolve_model

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


# Inputs that used to train the wrong thing without a word: each is refused in one line before the run
# folder exists. One folder per kind, made here; the conftest's tiny BERT and Llama are the good models.

def _jsonl(path: Path, rows) -> str:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def wrong(tmp_path_factory, bert_dir, llama_dir):
    import json
    import shutil

    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("wrong-inputs")
    torch.manual_seed(0)
    no_tokenizer = root / "bert-without-tokenizer"
    BertForSequenceClassification(BertConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(no_tokenizer)
    empty_tokenizer = root / "bert-with-empty-tokenizer"  # settings but no vocabulary: 5 special tokens
    shutil.copytree(no_tokenizer, empty_tokenizer)
    (empty_tokenizer / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    chat_llama = root / "chat-llama"  # a template that, like many, renders only the roles it knows
    shutil.copytree(llama_dir, chat_llama)
    tok = AutoTokenizer.from_pretrained(chat_llama)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] in ['user', 'assistant', 'system'] %}"
                         "{{ m['role'] }} : {{ m['content'] }} . {% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}assistant : {% endif %}")
    tok.save_pretrained(chat_llama)
    two = [{"text": f"example {i}", "label": ["pos", "neg"][i % 2]} for i in range(20)]
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    files = {
        "two_classes": write_csv(root / "two.csv", two),
        "one_class": write_csv(root / "one.csv", [{"text": f"example {i}", "label": "pos"} for i in range(20)]),
        "one_integer_class": write_csv(root / "stars.csv", [{"text": f"example {i}", "label": 5} for i in range(20)]),
        "no_assistant": _jsonl(root / "no_assistant.jsonl", [{"conversations": [
            {"from": "human", "value": f"hi {i}"}, {"from": "human", "value": "anyone?"}]} for i in range(10)]),
        "unknown_role": _jsonl(root / "unknown_role.jsonl", [{"messages": [
            {"role": "narrator", "content": f"scene {i}"}, *chat]} for i in range(10)]),
    }
    files["text"] = str(root / "reviews.txt")
    Path(files["text"]).write_text("good film\nbad film\n")
    return root, {"no_tokenizer": str(no_tokenizer), "empty_tokenizer": str(empty_tokenizer), "bert": bert_dir,
                  "llama": llama_dir, "chat_llama": str(chat_llama)}, files


WRONG = {
    "model folder without tokenizer files": ("no_tokenizer", "two_classes", [], "no tokenizer files"),
    "tokenizer without a vocabulary": ("empty_tokenizer", "two_classes", [], "only 5 tokens"),
    "one class in train": ("bert", "one_class", [], "one class only"),
    "one integer class in train": ("bert", "one_integer_class", [], "one class only"),
    "label word given twice": ("llama", "two_classes", ["--task", "label_words", "--label_words", "yes,yes"],
                               "'yes' is given twice"),
    "label words with the same tokens": ("llama", "two_classes",
                                         ["--task", "label_words", "--label_words", "Yes,yes"], "same tokens"),
    "max_steps zero": ("bert", "two_classes", ["--max_steps", "0"], "max_steps"),
    "max_steps below -1": ("bert", "two_classes", ["--max_steps", "-3"], "max_steps"),
    "max_length past the encoder's positions": ("bert", "two_classes", ["--max_length", "129"], "128 positions"),
    "max_length past the decoder's positions": ("llama", "two_classes", ["--task", "causal_lm", "--max_length", "200"],
                                                "128 positions"),
    "sft without an assistant turn": ("chat_llama", "no_assistant", ["--task", "sft"], "no assistant turn"),
    "sft role the template drops": ("chat_llama", "unknown_role", ["--task", "sft"], "'narrator'"),
    "plain text for classification": ("bert", "text", [], "causal_lm only"),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_input_that_would_train_the_wrong_thing_is_refused(wrong, capsys, name):
    """Exit 2, one stderr line naming the problem, and no output folder."""
    root, models, files = wrong
    model, data, extra, needle = WRONG[name]
    train = files[data]
    out = root / f"out-{name.replace(' ', '-')}"
    argv = ["train", "--model_name_or_path", models[model], "--train_file", train, "--output_dir", str(out),
            "--max_steps", "2", "--report_to", "none", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert needle.lower() in err[0].lower(), err[0]
    assert not out.exists()
