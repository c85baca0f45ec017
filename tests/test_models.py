"""Model resolution, safe loading and LoRA attachment (tiny models; the packaged MiniLM once)."""

import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2, tiny_llama

from loraplus.core.errors import LoraPlusError
from loraplus.train.models import load_model, load_tokenizer, resolve_model
from loraplus.train.lora import attach_lora, default_target_modules


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_minilm_alias_is_a_local_folder():
    """The alias minilm resolves to the packaged folder holding config.json and safetensors weights."""
    path = Path(resolve_model("minilm"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_minilm_loads_as_classifier_with_lora():
    """MiniLM loads as a 3-way classifier (labels in its config) and LoRA wraps query/value + trains the head."""
    path = resolve_model("minilm")
    tokenizer = load_tokenizer(path)
    model = load_model(path, task="classification", num_labels=3, id2label={0: "a", 1: "b", 2: "c"},
                       pad_token_id=tokenizer.pad_token_id)
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.label2id["c"] == 2
    peft_model = attach_lora(model, task="classification", r=4)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(".query.lora_A." in n for n in trainable) and any(".value.lora_B." in n for n in trainable)
    assert not any(".key." in n for n in trainable)
    assert any("classifier" in n for n in trainable)
    with torch.no_grad():
        out = peft_model(**tokenizer(["a fine film"], return_tensors="pt"))
    assert out.logits.shape == (1, 3)


def test_unknown_hub_id_offline_fails_fast(monkeypatch):
    """With HF_HUB_OFFLINE=1 an unknown hub id is a one-line LoraPlusError within seconds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(LoraPlusError) as err:
        resolve_model("no-such-org/no-such-model-xyz")
    assert time.time() - start < 5
    assert "offline" in one_line(err) and "minilm" in str(err.value)


def test_missing_folder_is_named():
    """A path-like name that does not exist is reported as a missing model folder."""
    with pytest.raises(LoraPlusError) as err:
        resolve_model("./no/such/model")
    assert "does not exist" in one_line(err)


def test_folder_without_config_is_refused(tmp_path):
    """A folder without config.json is refused, saying config.json is missing."""
    with pytest.raises(LoraPlusError) as err:
        resolve_model(str(tmp_path))
    assert "config.json" in one_line(err)


def test_pickle_only_folder_refused(tmp_path):
    """A folder with only pytorch_model.bin is refused unless allow_pickle, naming --allow_pickle."""
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(LoraPlusError) as err:
        load_model(str(tmp_path), task="causal_lm")
    assert "--allow_pickle" in one_line(err)


def test_saved_tiny_model_loads_with_pad_id(tmp_path):
    """A saved causal LM without a pad id gets eos as pad_token_id in its config."""
    model = tiny_llama()
    model.config.pad_token_id = None
    model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), task="sft")
    assert loaded.config.pad_token_id == loaded.config.eos_token_id
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_regression_head_has_one_output(tmp_path):
    """problem_type regression loads a classifier with one output and that problem type."""
    tiny_bert().save_pretrained(tmp_path)
    model = load_model(str(tmp_path), task="classification", problem_type="regression")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


@pytest.mark.parametrize("build, expected", [(tiny_bert, ["query", "value"]), (tiny_gpt2, ["c_attn"]),
                                             (tiny_llama, ["q_proj", "v_proj"])])
def test_default_targets(build, expected):
    """Default LoRA targets are the attention query/value layers of each architecture."""
    assert default_target_modules(build()) == expected


def test_unknown_architecture_falls_back_to_all_linear():
    """A model type without defaults gets PEFT's all-linear."""
    model = tiny_bert()
    model.config.model_type = "something-new"
    assert default_target_modules(model) == "all-linear"


def test_gpt2_conv1d_targets_get_lora():
    """attach_lora with default targets adapts GPT-2's Conv1D c_attn layers, and only those."""
    model = attach_lora(tiny_gpt2(), task="causal_lm", r=2)
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted == {"c_attn"}


def test_target_matching_nothing_lists_layers():
    """A target name that matches no layer is a one-line error listing the model's layer names."""
    with pytest.raises(LoraPlusError) as err:
        attach_lora(tiny_bert(), task="classification", target_modules=["q_proj", "value"])
    message = one_line(err)
    assert "q_proj" in message and "query" in message and "dense" in message


def test_folder_without_tokenizer_files_is_refused(tmp_path):
    """A model folder with weights but no tokenizer files is refused, naming the files it lacks."""
    tiny_bert().save_pretrained(tmp_path)
    with pytest.raises(LoraPlusError) as err:
        load_tokenizer(str(tmp_path))
    assert "no tokenizer files" in one_line(err) and "save_pretrained" in one_line(err)


def test_tokenizer_far_smaller_than_the_model_vocabulary_is_refused(tmp_path):
    """Tokenizer settings without a vocabulary load as 5 special tokens; refused against the model's 64."""
    import json

    tiny_bert().save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(LoraPlusError) as err:
        load_tokenizer(str(tmp_path))
    assert "only 5 tokens" in one_line(err) and "vocabulary of 64" in one_line(err)


def test_a_real_tokenizer_with_its_model_loads(tmp_path):
    """The packaged MiniLM tokenizer beside a model of its vocabulary size passes both checks."""
    tokenizer = load_tokenizer(resolve_model("minilm"))
    tokenizer.save_pretrained(tmp_path)
    _config_folder(tmp_path, "bert", vocab_size=tokenizer.vocab_size)
    assert len(load_tokenizer(str(tmp_path))) == len(tokenizer)


def _config_folder(path, kind, **fields):
    from transformers import AutoConfig

    AutoConfig.for_model(kind, **fields).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("kind, fields, limit", [
    ("bert", {"max_position_embeddings": 64}, 64),
    ("gpt2", {"n_positions": 32}, 32),
    ("llama", {"max_position_embeddings": 128}, 128),
    ("roberta", {"max_position_embeddings": 514, "pad_token_id": 1}, 512),  # positions start after pad
])
def test_max_length_beyond_the_positions_is_refused(tmp_path, kind, fields, limit):
    """A max_length past the model's positions is refused naming the limit; up to it passes."""
    from loraplus.train.models import check_max_length

    path = _config_folder(tmp_path, kind, **fields)
    check_max_length(path, limit)
    with pytest.raises(LoraPlusError) as err:
        check_max_length(path, limit + 1)
    assert f"the {limit} positions" in one_line(err) and f"--max_length {limit}" in one_line(err)


def test_models_without_a_position_table_take_any_length(tmp_path):
    """BLOOM's ALiBi positions have no table: no bound."""
    from loraplus.train.models import check_max_length

    check_max_length(_config_folder(tmp_path, "bloom"), 100_000)


def test_converting_the_gguf_alias_without_gguf_names_the_package(tmp_path, monkeypatch):
    """The smollm2-135m alias needs gguf to convert; without it the conversion stops in one line naming it,
    before anything is written (the CLI itself runs without gguf: only this feature needs it)."""
    import importlib.util

    from loraplus.cli import NEEDED_BY_ONE_FEATURE
    from loraplus.train.models import _convert_gguf

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "model.gguf").write_bytes(b"GGUF")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(LoraPlusError, match="needs the gguf package"):
        _convert_gguf(tmp_path / "pkg", tmp_path / "cache" / "smollm2-135m")
    assert not (tmp_path / "cache").exists() and "gguf" in NEEDED_BY_ONE_FEATURE
