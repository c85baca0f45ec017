"""Packed encoders (loraplus/speed/packing.py): the same function on fewer tokens."""

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


def test_a_causal_lm_is_left_unpacked():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    before = model.config._attn_implementation
    assert not enable_packing(model) and not is_packed(model)
    assert model.config._attn_implementation == before


def test_packed_training_trains_the_adapter_of_one_padded_batch(tmp_path, tokenizer, monkeypatch):
    """`loraplus train` end to end, without dropout: packed and plain padded batches log the same loss at every
    step and give one adapter, and the packed run did pack (every training forward), the plain one never."""
    model = save_tiny_bert(tmp_path / "bert", tokenizer, dropout=0.0)
    write_sentiment_csvs(tmp_path)
    packs = []
    original = loraplus.speed.packing.pack
    monkeypatch.setattr(loraplus.speed.packing, "pack", lambda x, p: packs.append(x.shape) or original(x, p))
    adapters, losses, packs_per_run = [], [], []
    for packed in ("true", "false"):
        packs.clear()
        out = tmp_path / f"packed-{packed}"
        assert main(["train", "--model_name_or_path", model, "--train_file", str(tmp_path / "train.csv"),
                     "--validation_file", str(tmp_path / "dev.csv"), "--output_dir", str(out),
                     "--per_device_train_batch_size", "8", "--length_micro_batches", "1",
                     "--packed_sequences", packed, "--max_steps", "6", "--learning_rate", "1e-2",
                     "--lora_dropout", "0", "--report_to", "none", "--fast_cpu_dropout", "false",
                     "--logging_steps", "1"]) == 0
        adapters.append(load_file(out / "adapter_model.safetensors"))
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in records if "loss" in r])
        packs_per_run.append(len(packs))
    assert packs_per_run[0] >= 6 and packs_per_run[1] == 0, packs_per_run  # 6 training steps packed, then evals not
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    diff = max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0])
    moved = max(adapters[0][k].abs().max().item() for k in adapters[0] if "lora_B" in k)
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)
