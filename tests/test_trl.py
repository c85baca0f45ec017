"""loraplus.trl: LoRA+ in TRL's SFT and DPO trainers (tiny Llama, packaged MiniLM tokenizer, CPU, offline)."""

import subprocess
import sys

import pytest
import torch
from conftest import peft
from transformers import TrainerCallback

trl = pytest.importorskip("trl")
from loraplus.trl import (  # noqa: E402  (after the skip: these tests need TRL)
    LoraPlusDPOConfig,
    LoraPlusDPOTrainer,
    LoraPlusSFTConfig,
    LoraPlusSFTTrainer,
)

# Renders every role and closes each turn with [SEP], the tokenizer's end of sequence here.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}assistant : {% endif %}")
WORDS = ["good fun great film", "bad dull awful plot", "great acting good", "awful boring bad", "fun lovely great",
         "dull bad poor", "the plot was dull", "a lovely film with fun"]


@pytest.fixture(scope="module")
def chat_tokenizer():
    """The packaged MiniLM tokenizer (a fresh copy: the shared fixture stays as it is) with a chat template."""
    from loraplus.train.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model("minilm"))
    tok.chat_template = CHAT_TEMPLATE
    tok.eos_token = "[SEP]"
    return tok


def tiny_lora_llama(tokenizer):
    """A 2-layer, 32-wide Llama over the tokenizer's vocabulary, LoRA on q/v; the final norm and
    the MLP's down projections train whole (groups other_no_decay and other)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)
    return peft(LlamaForCausalLM(cfg), target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", r=4,
                lora_alpha=8, modules_to_save=["norm", "down_proj"])


def chats(n=16):
    from datasets import Dataset

    return Dataset.from_dict({"messages": [[{"role": "user", "content": WORDS[i % 8]},
                                            {"role": "assistant", "content": WORDS[(3 * i + 1) % 8]}]
                                           for i in range(n)]})


def preferences(n=8):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [WORDS[i % 8] for i in range(n)],
                              "chosen": [WORDS[(i + 1) % 8] for i in range(n)],
                              "rejected": [WORDS[(i + 5) % 8] for i in range(n)]})


COMMON = dict(per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True,
              bf16=False, seed=0, disable_tqdm=True, save_strategy="no", dataloader_num_workers=0)


class RecordSteps(TrainerCallback):
    """Per optimizer step, just before it: every group's (name, lr, number of parameters); and every logged loss."""

    def __init__(self):
        self.groups, self.losses = [], []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.groups.append([(g["name"], g["lr"], len(g["params"])) for g in optimizer.param_groups])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def sft_trainer(tmp_path, tokenizer, callbacks=(), config_cls=LoraPlusSFTConfig, **args):
    config = config_cls(output_dir=str(tmp_path), max_length=32, **{**COMMON, **args})
    return LoraPlusSFTTrainer(model=tiny_lora_llama(tokenizer), args=config, train_dataset=chats(),
                              processing_class=tokenizer, callbacks=list(callbacks))


def lrs(steps, name):
    """The lr of group `name` at each recorded step."""
    return [dict((n, lr) for n, lr, _ in groups)[name] for groups in steps]


def test_sft_chat_ratio_holds_every_step(tmp_path, chat_tokenizer):
    """SFT on user/assistant chats under warmup + cosine: lr_B == ratio * lr_A at every step, as the lr moves."""
    rec = RecordSteps()
    trainer = sft_trainer(tmp_path, chat_tokenizer, [rec], loraplus_lr_ratio=8.0, max_steps=8, warmup_steps=2,
                          lr_scheduler_type="cosine")
    assert "user : " in chat_tokenizer.decode(trainer.train_dataset[0]["input_ids"])  # rendered by the chat template
    assert trainer.train().global_step == 8 and len(rec.groups) == 8
    assert [n for n, _, _ in rec.groups[0]] == ["lora_A", "lora_B", "other", "other_no_decay"]
    assert len(set(lrs(rec.groups, "lora_A"))) > 4  # warmup, then decay
    assert lrs(rec.groups, "lora_B") == pytest.approx([8.0 * lr for lr in lrs(rec.groups, "lora_A")], rel=1e-12)
    assert all(torch.isfinite(torch.tensor(rec.losses)))


def test_plain_sft_config_gives_default_ratio(tmp_path, chat_tokenizer):
    """A plain trl.SFTConfig (no LoRA+ fields) trains with the LoraPlusArguments defaults: ratio 16."""
    rec = RecordSteps()
    trainer = sft_trainer(tmp_path, chat_tokenizer, [rec], config_cls=trl.SFTConfig, max_steps=2,
                          lr_scheduler_type="constant")
    assert not hasattr(trainer.args, "loraplus_lr_ratio")
    trainer.train()
    assert lrs(rec.groups, "lora_B") == [16.0 * lr for lr in lrs(rec.groups, "lora_A")] == [16e-3, 16e-3]


def adapter_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_sft_resume_continues_the_same_run(tmp_path, chat_tokenizer):
    """Resumed from checkpoint-3 of 6 steps, a fresh trainer has the run's groups (names, lrs, parameter counts)
    at every step after 3, the same per-step losses, and ends at the same adapter weights."""
    args = dict(loraplus_lr_ratio=4.0, max_steps=6, warmup_steps=1, lr_scheduler_type="linear")
    whole = RecordSteps()
    trainer = sft_trainer(tmp_path / "whole", chat_tokenizer, [whole], save_strategy="steps", save_steps=3, **args)
    trainer.train()
    final = adapter_weights(trainer.model)
    resumed = RecordSteps()
    fresh = sft_trainer(tmp_path / "resumed", chat_tokenizer, [resumed], **args)
    assert fresh.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-3")).global_step == 6
    assert resumed.groups == whole.groups[3:]
    assert resumed.losses == pytest.approx(whole.losses[3:6], rel=1e-5)
    weights = adapter_weights(fresh.model)
    assert weights.keys() == final.keys()
    for name, value in final.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_dpo_ratio_holds_every_step(tmp_path, chat_tokenizer):
    """DPO (reference = the model with its adapter off) under warmup + cosine: lr_B == ratio * lr_A every step."""
    rec = RecordSteps()
    config = LoraPlusDPOConfig(output_dir=str(tmp_path), max_length=32, loraplus_lr_ratio=8.0, max_steps=6,
                               warmup_steps=2, lr_scheduler_type="cosine", **COMMON)
    trainer = LoraPlusDPOTrainer(model=tiny_lora_llama(chat_tokenizer), args=config, train_dataset=preferences(),
                                 processing_class=chat_tokenizer, callbacks=[rec])
    assert trainer.train().global_step == 6
    assert [n for n, _, _ in rec.groups[0]] == ["lora_A", "lora_B", "other", "other_no_decay"]
    assert len(set(lrs(rec.groups, "lora_A"))) > 3
    assert lrs(rec.groups, "lora_B") == pytest.approx([8.0 * lr for lr in lrs(rec.groups, "lora_A")], rel=1e-12)


def test_import_without_trl_says_pip_install_trl():
    """Without TRL, importing loraplus.trl raises one ImportError whose message names the fix (pip install trl)."""
    code = ("import sys; sys.modules['trl'] = None  # what Python does for a module that cannot be imported\n"
            "try:\n    import loraplus.trl\nexcept ImportError as e:\n    print(e)\nelse:\n    print('imported')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("loraplus.trl needs TRL") and "pip install trl" in out.stdout, out.stdout


def test_import_loraplus_does_not_import_trl():
    """`import loraplus` (and its trainer module) stays light: TRL is imported only by loraplus.trl."""
    code = "import sys, loraplus, loraplus.core.trainer; loraplus.LoraPlusTrainer; print('trl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
