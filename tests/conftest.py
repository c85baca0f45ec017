"""Tiny models built from configs (seconds on a CPU) shared by the tests."""

import csv
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)


def tiny_bert(num_labels=2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=32, num_labels=num_labels)
    return BertForSequenceClassification(cfg)


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def train_lm_losses(model, optimizer, batches) -> list[float]:
    """Train a causal LM one step per batch of token ids (labels = inputs); the per-step losses."""
    losses = []
    for ids in batches:
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return losses


def peft(model, **lora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(**lora))


@pytest.fixture
def names_by_group():
    """Map group name -> set of parameter names, found by identity (not by the group's own list)."""

    def collect(model, groups):
        by_id = {id(p): n for n, p in model.named_parameters()}
        return {g["name"]: {by_id[id(p)] for p in g["params"]} for g in groups}

    return collect


# Tiny local model folders and CSV data for end-to-end CLI tests (session-wide: built once).

@pytest.fixture(scope="session")
def tokenizer():
    from loraplus.train.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("minilm"))  # packaged, local, fast


def save_tiny_bert(path, tokenizer, *, dropout: float = 0.1) -> str:
    """A 2-layer, 16-wide BERT classifier with the packaged MiniLM tokenizer, saved to `path`."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# Texts of different lengths, so that length grouping and padding matter.
TEXTS = ["good", "bad film", "great acting , good", "awful boring bad plot", "a lovely film with fun and great acting",
         "dull , bad and poor", "the plot was dull and the acting awful , boring from start to end", "fun"]


def write_sentiment_csvs(root, sizes=(("train", 32), ("dev", 16))) -> None:
    """train.csv / dev.csv of TEXTS with alternating negative / positive labels."""
    for split, n in sizes:
        write_csv(root / f"{split}.csv",
                  [{"text": TEXTS[(3 * i) % 8], "label": ("negative", "positive")[i % 2]} for i in range(n)])


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory, tokenizer):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tokenizer)



@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    cfg = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


WORDS = ["good fun great film", "bad dull awful plot", "great acting good", "awful boring bad",
         "fun lovely great", "dull bad poor"]


def write_csv(path, rows, fields=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="session")
def sentiment(tmp_path_factory):
    d = tmp_path_factory.mktemp("sentiment")
    rows = [{"text": WORDS[i % 6], "label": "positive" if i % 2 == 0 else "negative"} for i in range(48)]
    return {s: write_csv(d / f"{s}.csv", rows[:n]) for s, n in (("train", 48), ("dev", 16), ("test", 16))}
