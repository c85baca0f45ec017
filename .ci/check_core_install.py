"""Run by `make check-core` in a fresh environment holding `pip install loraplus` alone (no extra): the core
imports and builds a LoRA+ optimizer, the application's packages are absent, and the CLI says what to install."""

import importlib.util
import subprocess
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

import loraplus

for module in ("datasets", "sklearn", "matplotlib", "tensorboard", "gguf"):
    assert importlib.util.find_spec(module) is None, f"{module} is installed: this is not a core-only environment"
base = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32))
model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"]))
optimizer = loraplus.create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=8)
lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
assert lrs["lora_B"] == 8 * lrs["lora_A"], lrs
python = [sys.executable, *(["-S"] if sys.flags.no_site else [])]  # the same environment as this one
cli = subprocess.run([*python, "-m", "loraplus.cli", "train"], capture_output=True, text=True)
assert cli.returncode == 2 and "loraplus[cli]" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1, cli
print(f"core install ok: lrs {lrs}")
