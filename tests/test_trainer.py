"""LoraPlusTrainer end to end on a tiny Llama: optim choice, schedules, accumulation, resume."""

import pytest
import torch
from conftest import peft, tiny_llama
from transformers import TrainerCallback

from loraplus import LoraPlusError, LoraPlusTrainer, LoraPlusTrainingArguments
from loraplus.train.guard import NonFiniteGradientError, NonFiniteGuardMixin


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


class RecordMoments(TrainerCallback):
    """Adam's moments per (group name, index in group) when training begins: after a resume has loaded them."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.moments = {(g["name"], i): {k: optimizer.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")}
                        for g in optimizer.param_groups for i, p in enumerate(g["params"]) if p in optimizer.state}


def test_resume_restores_groups_moments_and_ratio(tmp_path):
    """A resume takes the checkpoint's groups, lrs and Adam moments, even when the new config says another ratio.

    The resumed steps' lrs are those of the uninterrupted run at the same steps (the checkpoint's ratio 4, not
    the new config's 8), and the moments the optimizer starts from are the checkpoint's own tensors.
    """
    uninterrupted = RecordLRs()
    make_trainer(tmp_path, [uninterrupted], max_steps=6, save_strategy="steps", save_steps=2,
                 loraplus_lr_ratio=4.0, lr_scheduler_type="linear").train()
    saved = torch.load(tmp_path / "checkpoint-2" / "optimizer.pt", weights_only=True)
    resumed, moments = RecordLRs(), RecordMoments()
    trainer = make_trainer(tmp_path, [resumed, moments], max_steps=6, save_strategy="no", loraplus_lr_ratio=8.0,
                           lr_scheduler_type="linear")
    assert trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2")).global_step == 6
    assert resumed.steps == uninterrupted.steps[2:]
    assert all(s["lora_B"] == 4.0 * s["lora_A"] for s in resumed.steps)
    index = 0  # torch numbers saved state by position over the groups, in order
    assert [g["name"] for g in saved["param_groups"]] == [g["name"] for g in trainer.optimizer.param_groups]
    for group in trainer.optimizer.param_groups:
        for i in range(len(group["params"])):
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(moments.moments[group["name"], i][key], saved["state"][index][key])
            index += 1
    assert index == len(saved["state"]) == len(moments.moments) > 0


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


class GuardedTrainer(NonFiniteGuardMixin, LoraPlusTrainer):
    pass


def guarded(tmp_path, model, **args):
    defaults = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=6,
                    logging_steps=1, report_to=[], save_strategy="steps", save_steps=2, use_cpu=True, seed=0,
                    disable_tqdm=True, max_grad_norm=1.0)
    return GuardedTrainer(model=model, args=LoraPlusTrainingArguments(**{**defaults, **args}),
                          train_dataset=lm_data(n=128))


def poison_gradient(trainer, param, steps, value=float("nan")):
    """Make `param`'s gradient non-finite during the given (1-based) optimizer steps."""
    param.register_hook(lambda g: g * value if trainer.state.global_step + 1 in steps else g)


def test_nan_loss_stops_before_the_step(tmp_path):
    """An injected NaN loss stops training at that step, naming the loss, with earlier checkpoints intact."""
    model = peft(tiny_llama(), target_modules=["q_proj", "v_proj"])
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    model.base_model.model.lm_head.register_forward_hook(poison)
    with pytest.raises(NonFiniteGradientError, match="non-finite loss at step 3") as stopped:
        guarded(tmp_path, model).train()
    assert stopped.value.step == 3
    assert (tmp_path / "checkpoint-2").is_dir()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_gradient_names_its_parameter_before_clipping(tmp_path):
    """A NaN gradient in one layer's B is named, not the first trainable tensor: the check runs before clipping."""
    model = peft(tiny_llama(), target_modules=["q_proj", "v_proj"])
    name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    trainer = guarded(tmp_path, model)
    poison_gradient(trainer, dict(model.named_parameters())[name], steps={3})
    with pytest.raises(NonFiniteGradientError, match=f"non-finite gradient at step 3 in {name};"):
        trainer.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def with_cpu_grad_scaler(trainer):
    """The fp16 loss scaler accelerate builds on a GPU, here on the CPU (accelerate makes none for CPU fp16)."""
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    return trainer


def test_fp16_scaler_skipping_an_inf_step_does_not_stop_the_run(tmp_path):
    """Under a loss scaler an Inf gradient is routine: that step is skipped (weights unchanged) and training goes on."""
    model = peft(tiny_llama(), target_modules=["q_proj", "v_proj"])
    trainer = with_cpu_grad_scaler(guarded(tmp_path, model, save_strategy="no"))
    b = dict(model.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    poison_gradient(trainer, b, steps={3, 4}, value=float("inf"))
    weights = RecordWeights(b)
    trainer.add_callback(weights)
    assert trainer.train().global_step == 6
    assert trainer.accelerator.scaler.get_scale() == 2.0**14  # halved at each skipped step
    changed = [not torch.equal(x, y) for x, y in zip(weights.after, weights.after[1:])]
    assert changed == [True, False, False, True, True]  # steps 3 and 4 applied nothing


class RecordWeights(TrainerCallback):
    def __init__(self, param):
        self.param, self.after = param, []

    def on_step_end(self, args, state, control, **kwargs):
        self.after.append(self.param.detach().clone())


def test_fp16_scaler_stops_after_too_many_skipped_steps_in_a_row(tmp_path):
    """Inf gradients at every step from step 2: the run stops after MAX_SKIPPED_STEPS skips, naming them."""
    from loraplus.train.guard import MAX_SKIPPED_STEPS

    model = peft(tiny_llama(), target_modules=["q_proj"])
    trainer = with_cpu_grad_scaler(guarded(tmp_path, model, save_strategy="no", max_steps=40))
    b = dict(model.named_parameters())["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    poison_gradient(trainer, b, steps=set(range(2, 41)), value=float("inf"))
    last = MAX_SKIPPED_STEPS + 1
    with pytest.raises(NonFiniteGradientError, match=f"{MAX_SKIPPED_STEPS} optimizer steps in a row \\(2-{last}\\)"):
        trainer.train()
    assert trainer.state.global_step == last
