"""Packed encoders and decoders (loraplus/speed/packing.py): the same function on fewer tokens."""

import copy
import json

import pytest
import torch
from conftest import save_tiny_bert, write_sentiment_csvs
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

import loraplus.speed.packing
from loraplus.cli import main
from loraplus.speed.fast_dropout import use_cpu_dropout
from loraplus.speed.packing import enable_packing, is_packed


def tiny_encoder(family: str, attention: str):
    """A 2-layer, 16-wide LoRA classifier without dropout, with non-zero B so LoRA changes the output."""
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    config_class, model_class = {"bert": (BertConfig, BertForSequenceClassification),
                                 "roberta": (RobertaConfig, RobertaForSequenceClassification)}[family]
    torch.manual_seed(0)
    config = config_class(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, pad_token_id=1,
                          attn_implementation="eager" if attention == "eager" else "sdpa")
    model = get_peft_model(model_class(config), LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    return model


def padded_batch():
    lengths = [10, 7, 3, 5]
    ids = torch.randint(3, 100, (len(lengths), max(lengths)), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def loss_and_grads(model, batch):
    model.train()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("attention", ["sdpa", "eager", "sdpa_cpu_dropout"])
@pytest.mark.parametrize("group_cost", [0, 128])  # attention in a group per row length, or in one group
def test_packed_encoder_computes_the_same_logits_and_gradients(family, attention, group_cost, monkeypatch):
    plain = tiny_encoder(family, attention)
    packed = copy.deepcopy(plain)
    if attention == "sdpa_cpu_dropout":
        use_cpu_dropout(packed.get_base_model())
    assert enable_packing(packed.get_base_model(), group_cost=group_cost) and is_packed(packed)
    packed_shapes = []
    original = loraplus.speed.packing.pack
    monkeypatch.setattr(loraplus.speed.packing, "pack", lambda x, p: packed_shapes.append(x.shape) or original(x, p))
    batch = padded_batch()
    logits, grads = loss_and_grads(plain, batch)
    packed_logits, packed_grads = loss_and_grads(packed, batch)
    assert packed_shapes and packed_shapes[0][:2] == (4, 10)  # it did pack the (batch, length) input
    assert torch.allclose(logits, packed_logits, atol=1e-6)
    assert grads.keys() == packed_grads.keys()
    assert all(torch.allclose(grads[n], packed_grads[n], atol=1e-6) for n in grads)


def test_evaluation_runs_unpacked(monkeypatch):
    model = tiny_encoder("bert", "sdpa")
    enable_packing(model.get_base_model())
    monkeypatch.setattr(loraplus.speed.packing, "pack", lambda *a: pytest.fail("packed in eval mode"))
    model.eval()
    with torch.no_grad():
        model(**padded_batch())


def tiny_decoder(family: str, attention: str, layers: int = 2):
    """A Llama-family causal LM with LoRA on every projection and non-zero B (grouped-query attention)."""
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                                 "mistral": (MistralConfig, MistralForCausalLM)}[family]
    torch.manual_seed(0)
    config = config_class(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                          attn_implementation=attention)
    model = get_peft_model(model_class(config), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model


def causal_batch(lengths, seed, right_padding=True):
    """Rows of the given lengths, padded to the longest on one side; labels -100 at padding."""
    width = max(lengths)
    ids = torch.randint(1, 64, (len(lengths), width), generator=torch.Generator().manual_seed(seed))
    places = torch.arange(width)[None, :]
    real = places < torch.tensor(lengths)[:, None] if right_padding else \
        places >= width - torch.tensor(lengths)[:, None]
    ids = ids.masked_fill(~real, 0)
    return {"input_ids": ids, "attention_mask": real.long(), "labels": ids.masked_fill(~real, -100)}


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("seed", range(4))
def test_packed_decoder_computes_the_same_loss_logits_and_gradients(family, attention, seed, monkeypatch):
    """Packed at its first layer, unpacked after its last: the same loss, logits at real tokens and LoRA gradients,
    for varied row lengths and either attention grouping (rows padded on the right, as the collator pads)."""
    generator = torch.Generator().manual_seed(100 + seed)
    lengths = torch.randint(1, 24, (int(torch.randint(2, 7, (1,), generator=generator)),), generator=generator).tolist()
    lengths[0] = 24  # one full row: some padding always remains in the others
    batch = causal_batch(lengths, seed)
    plain = tiny_decoder(family, attention, layers=1 + seed % 2)
    packed = copy.deepcopy(plain)
    assert enable_packing(packed.get_base_model(), group_cost=0 if seed < 2 else 128) and is_packed(packed)
    packed_shapes = []
    original = loraplus.speed.packing.pack
    monkeypatch.setattr(loraplus.speed.packing, "pack", lambda x, p: packed_shapes.append(x.shape) or original(x, p))
    plain.train()
    packed.train()
    out, packed_out = plain(**batch), packed(**batch)
    out.loss.backward()
    packed_out.loss.backward()
    real = batch["attention_mask"].bool()
    assert packed_shapes and packed_shapes[0][:2] == tuple(real.shape)  # it did pack the (batch, length) input
    torch.testing.assert_close(packed_out.loss, out.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(packed_out.logits[real], out.logits[real], rtol=1e-5, atol=1e-5)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    packed_grads = {n: p.grad for n, p in packed.named_parameters() if p.requires_grad}
    assert grads.keys() == packed_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_left_padded_batch_runs_unpacked(monkeypatch):
    """Left padding puts a pad position's logits into the loss (it predicts the first token), so it is not packed:
    the packed model then computes exactly what the plain one does."""
    plain = tiny_decoder("llama", "eager")
    packed = copy.deepcopy(plain)
    assert enable_packing(packed.get_base_model())
    calls = []
    original = loraplus.speed.packing.pack
    monkeypatch.setattr(loraplus.speed.packing, "pack", lambda x, p: calls.append(x.shape) or original(x, p))
    batch = causal_batch([24, 5, 17, 9], 1, right_padding=False)
    plain.train()
    packed.train()
    assert packed(**batch).loss.item() == plain(**batch).loss.item() and not calls


def test_a_decoder_evaluates_unpacked_and_packs_again_after(monkeypatch):
    """Evaluation runs the decoder unchanged; the next training step packs again."""
    model = tiny_decoder("llama", "sdpa")
    assert enable_packing(model.get_base_model())
    calls = []
    original = loraplus.speed.packing.pack
    monkeypatch.setattr(loraplus.speed.packing, "pack", lambda x, p: calls.append(x.shape) or original(x, p))
    batch = causal_batch([9, 4, 6], 0)
    model.eval()
    with torch.no_grad():
        model(**batch)
    assert not calls
    model.train()
    model(**batch).loss.backward()
    assert calls


def test_a_gpt2_causal_lm_is_left_unpacked():
    """GPT-2 (no rotary embedding, Conv1D layers) is not a supported decoder: nothing changes."""
    from conftest import tiny_gpt2

    model = tiny_gpt2()
    before = model.config._attn_implementation
    assert not enable_packing(model) and not is_packed(model)
    assert model.config._attn_implementation == before


def train_packed_and_plain(tmp_path, monkeypatch, data_args: list[str], steps: int):
    """`loraplus train` twice, packed and not, without dropout: each run's adapter, logged losses and pack count."""
    packs = []
    original = loraplus.speed.packing.pack
    monkeypatch.setattr(loraplus.speed.packing, "pack", lambda x, p: packs.append(x.shape) or original(x, p))
    adapters, losses, packs_per_run = [], [], []
    for packed in ("true", "false"):
        packs.clear()
        out = tmp_path / f"packed-{packed}"
        assert main(["train", *data_args, "--output_dir", str(out), "--per_device_train_batch_size", "8",
                     "--length_micro_batches", "1", "--packed_sequences", packed, "--max_steps", str(steps),
                     "--learning_rate", "1e-2", "--lora_dropout", "0", "--report_to", "none",
                     "--fast_cpu_dropout", "false", "--logging_steps", "1"]) == 0
        adapters.append(load_file(out / "adapter_model.safetensors"))
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in records if "loss" in r])
        packs_per_run.append(len(packs))
    diff = max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0])
    moved = max(adapters[0][k].abs().max().item() for k in adapters[0] if "lora_B" in k)
    return losses, packs_per_run, moved, diff


def test_packed_training_trains_the_adapter_of_one_padded_batch(tmp_path, tokenizer, monkeypatch):
    """`loraplus train` end to end, without dropout: packed and plain padded batches log the same loss at every
    step and give one adapter, and the packed run did pack (every training forward), the plain one never."""
    model = save_tiny_bert(tmp_path / "bert", tokenizer, dropout=0.0)
    write_sentiment_csvs(tmp_path)
    losses, packs_per_run, moved, diff = train_packed_and_plain(
        tmp_path, monkeypatch, ["--model_name_or_path", model, "--train_file", str(tmp_path / "train.csv"),
                                "--validation_file", str(tmp_path / "dev.csv")], steps=6)
    assert packs_per_run[0] >= 6 and packs_per_run[1] == 0, packs_per_run  # 6 training steps packed, then evals not
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)


@pytest.mark.parametrize("task", ["sft", "causal_lm"])
def test_packed_decoder_training_matches_one_padded_batch(tmp_path, llama_dir, task, monkeypatch):
    """`loraplus train` on a tiny Llama, no dropout: packed and plain padded batches log the same loss at every
    step and give one adapter; the packed run packed every training step, the plain one never."""
    from conftest import WORDS, write_csv

    if task == "sft":
        rows = [{"prompt": f"review {i}: {' '.join(WORDS[j % 6] for j in range(i % 5 + 1))}",
                 "response": "positive" if i % 2 else "negative" + ", really" * (i % 3)} for i in range(32)]
        train = write_csv(tmp_path / "train.csv", rows, ("prompt", "response"))
    else:
        train = write_csv(tmp_path / "train.csv", [{"text": " ".join(WORDS[j % 6] for j in range(i % 7 + 1)),
                                                    "label": "x"} for i in range(32)])
    losses, packs_per_run, moved, diff = train_packed_and_plain(
        tmp_path, monkeypatch, ["--model_name_or_path", llama_dir, "--task", task, "--train_file", train,
                                "--validation_split_ratio", "0.25"], steps=5)
    assert packs_per_run[0] >= 5 and packs_per_run[1] == 0, packs_per_run  # every training step packed
    assert len(losses[0]) == 5 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)
