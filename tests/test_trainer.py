"""LoraPlusTrainer end to end on a tiny Llama: optim choice, schedules, accumulation, resume."""

import pytest
import torch
from conftest import peft, tiny_llama
from transformers import TrainerCallback

from loraplus import LoraPlusError, LoraPlusTrainer, LoraPlusTrainingArguments


def lm_data(n=16, length=8):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


class RecordLRs(TrainerCallback):
    """Each step's lr of every named group."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.steps.append({g["name"]: g["lr"] for g in optimizer.param_groups})


def make_trainer(tmp_path, callbacks=(), model=None, **args):
    defaults = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3,
                    loraplus_lr_ratio=16.0, max_steps=6, logging_steps=1, report_to=[], save_strategy="no",
                    use_cpu=True, seed=0, disable_tqdm=True)
    model = model or peft(tiny_llama(), target_modules=["q_proj", "v_proj"], use_dora=True)
    return LoraPlusTrainer(model=model, args=LoraPlusTrainingArguments(**{**defaults, **args}),
                           train_dataset=lm_data(), callbacks=list(callbacks))


@pytest.mark.parametrize("optim", ["adamw_torch", "adafactor"])
def test_trainer_runs_with_optim(tmp_path, optim):
    """A few steps with the Trainer's own optim choice; groups keep their LoRA+ lrs and the loss moves."""
    rec = RecordLRs()
    trainer = make_trainer(tmp_path, [rec], optim=optim, lr_scheduler_type="constant")
    out = trainer.train()
    assert out.global_step == 6 and torch.isfinite(torch.tensor(out.training_loss))
    assert {"lora_A", "lora_B", "lora_magnitude"} <= set(rec.steps[-1])
    assert all(s["lora_B"] == 16 * s["lora_A"] and s["lora_magnitude"] == s["lora_A"] for s in rec.steps)
    assert trainer.optimizer.optimizer.__class__.__name__ == {"adamw_torch": "AdamW", "adafactor": "Adafactor"}[optim]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ratio_holds_every_step_of_schedule(tmp_path, schedule):
    """lr_B / lr_A == ratio at every step of a warmup + decay schedule (the lr itself does move)."""
    rec = RecordLRs()
    make_trainer(tmp_path, [rec], lr_scheduler_type=schedule, warmup_steps=2, max_steps=8,
                 loraplus_lr_ratio=8.0).train()
    lrs_a = [s["lora_A"] for s in rec.steps]
    assert len(set(lrs_a)) > 3
    assert all(s["lora_B"] == pytest.approx(8.0 * s["lora_A"], rel=1e-12) for s in rec.steps)


def test_gradient_accumulation_steps_count(tmp_path):
    """With gradient accumulation the optimizer steps once per accumulated batch, ratio intact."""
    rec = RecordLRs()
    trainer = make_trainer(tmp_path, [rec], gradient_accumulation_steps=2, per_device_train_batch_size=2,
                           max_steps=3)
    assert trainer.train().global_step == 3 and len(rec.steps) == 3
    assert all(s["lora_B"] == 16 * s["lora_A"] for s in rec.steps)


def test_resume_keeps_ratio(tmp_path):
    """Resuming from a checkpoint restores the groups and the ratio, and continues to max_steps."""
    make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, loraplus_lr_ratio=4.0).train()
    rec = RecordLRs()
    trainer = make_trainer(tmp_path, [rec], max_steps=6, save_strategy="no", loraplus_lr_ratio=4.0)
    out = trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert out.global_step == 6 and len(rec.steps) == 4
    assert all(s["lora_B"] == 4.0 * s["lora_A"] for s in rec.steps)
    assert len(trainer.optimizer.state) > 0


def test_resume_refuses_checkpoint_of_other_layout(tmp_path):
    """A checkpoint whose optimizer groups do not fit the model is refused with a clear error."""
    make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2).train()
    same_adapter_no_dora = peft(tiny_llama(), target_modules=["q_proj", "v_proj"])
    trainer = make_trainer(tmp_path, model=same_adapter_no_dora, max_steps=4)
    with pytest.raises(LoraPlusError, match="do not fit"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_optim_with_own_groups_refused(tmp_path):
    """An optimizer that brings its own parameter groups is refused rather than silently ignoring LoRA+."""
    trainer = make_trainer(tmp_path)
    trainer.optimizer_cls_and_kwargs = (torch.optim.AdamW, {"params": [torch.nn.Parameter(torch.zeros(1))]})
    with pytest.raises(LoraPlusError, match="builds its own parameter groups"):
        trainer.create_optimizer()


def test_nan_loss_stops_before_the_step(tmp_path):
    """An injected NaN stops training at that step, naming it, with earlier checkpoints intact."""
    from loraplus.trainer import NonFiniteGradientError, NonFiniteGuardCallback

    model = peft(tiny_llama(), target_modules=["q_proj", "v_proj"])
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    model.base_model.model.lm_head.register_forward_hook(poison)
    trainer = make_trainer(tmp_path, [NonFiniteGuardCallback()], model=model, save_strategy="steps", save_steps=2)
    with pytest.raises(NonFiniteGradientError, match="non-finite gradient at step 3"):
        trainer.train()
    assert (tmp_path / "checkpoint-2").is_dir()
    assert all(torch.isfinite(p).all() for p in model.parameters())
