"""Stop training at the first non-finite loss or gradient, before the optimizer applies it, in every precision.

Where it looks, and why there:

- The loss, at every forward (micro-batch) and on every process: a NaN or Inf loss stops the run at that
  step. Under several processes the verdict is summed across them once per optimizer step, so every
  process stops together instead of one waiting forever in the next collective.
- The gradients, once per optimizer step, after the last backward and before clipping: clipping
  multiplies every gradient by max_norm / total_norm, so one NaN would make all of them NaN and hide the
  parameter it came from. The error names the parameter whose gradient went non-finite first (the last
  one in the model's order: backward runs from the output) and how many others did.
- fp16 with a gradient scaler: an Inf gradient is routine there. The scaler skips that step and halves
  its scale, so the gradients are not checked. The run stops after `MAX_SKIPPED_STEPS` skipped steps in
  a row: each skip halves the scale, and 24 take torch's default start, 2**16, to 2**-8. Gradients that
  overflow fp16 even divided by 256 are no longer a scaling problem. A healthy run skips a handful of
  steps at its start and single steps later on.
- DeepSpeed keeps gradients in its own partitioned buffers (`p.grad` is None): the loss is guarded, and so
  are the engine's skipped fp16 steps; the gradients are not, and the run says so once when it starts.
"""

from __future__ import annotations

import logging

import torch
from accelerate.utils import DistributedType
from transformers import TrainerCallback

from loraplus.core.errors import LoraPlusError

logger = logging.getLogger("loraplus")

MAX_SKIPPED_STEPS = 24


class NonFiniteGradientError(LoraPlusError):
    """Training met a NaN/Inf loss or gradient: stopped before the optimizer could apply it."""

    def __init__(self, message: str, *, step: int):
        super().__init__(message)
        self.step = step  # the optimizer step that was computed but not applied


_ADVICE = ("training stopped before applying it (checkpoints written so far are intact); try a lower "
           "--learning_rate or --loraplus_lr_ratio, or --max_grad_norm 1.0")


def first_non_finite(model) -> tuple[str, int, int] | None:
    """(the parameter whose gradient went non-finite first, how many did, how many have gradients), or None.

    Backward runs from the output to the input, and a non-finite value spreads from where it arises to every
    gradient computed after it: the first to go non-finite is the last of them in the model's order.
    """
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    finite = torch.stack(torch._foreach_norm([g for _, g in named])).isfinite()
    if bool(finite.all()):
        return None
    bad = [n for (n, _), ok in zip(named, finite.tolist()) if not ok]
    return bad[-1], len(bad), len(named)


class SkippedStepsCallback(TrainerCallback):
    """Count the optimizer steps the fp16 loss scaler (or DeepSpeed's fp16 engine) skipped in a row; stop at too many.

    A GradScaler step was skipped when the scale went down: it halves at every skip and never falls otherwise.
    accelerate's `step_was_skipped` misses that with fused optimizers (they take the scaler into their own
    step, which then always runs), so it is read only where no GradScaler is: DeepSpeed's engine.
    """

    def __init__(self, trainer, limit: int = MAX_SKIPPED_STEPS):
        self.trainer, self.limit = trainer, limit
        self.in_a_row = 0
        self._scale = None

    def _skipped(self, optimizer) -> bool:
        scaler = getattr(self.trainer.accelerator, "scaler", None)
        if scaler is None:
            return bool(getattr(optimizer, "step_was_skipped", False))
        scale, before = scaler.get_scale(), self._scale
        self._scale = scale
        return before is not None and scale < before

    def on_step_begin(self, args, state, control, **kwargs):
        scaler = getattr(self.trainer.accelerator, "scaler", None)
        if scaler is not None and self._scale is None:
            self._scale = scaler.get_scale()  # the scale the first step starts from (restored on resume)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if not self._skipped(optimizer):
            self.in_a_row = 0
            return
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            first = state.global_step - self.limit + 1
            raise NonFiniteGradientError(
                f"non-finite gradients at {self.limit} optimizer steps in a row ({first}-{state.global_step}), each "
                f"skipped by the fp16 loss scaler, whose scale fell by 2^{self.limit}; " + _ADVICE,
                step=state.global_step)


class NonFiniteGuardMixin:
    """Trainer mixin: raise NonFiniteGradientError at a non-finite loss or gradient, before the optimizer step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(SkippedStepsCallback(self))
        self._bad_losses = None  # non-finite losses this step, kept on the device: one sync per step, not per forward
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            logger.warning("NaN/Inf guard: DeepSpeed holds the gradients, so the loss and skipped fp16 steps "
                           "are checked, the gradients are not")

    def _scaler_skips_steps(self) -> bool:
        return getattr(self.accelerator, "scaler", None) is not None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        bad = (~torch.isfinite(loss.detach())).sum()
        self._bad_losses = bad if self._bad_losses is None else self._bad_losses + bad
        if self.accelerator.sync_gradients:  # the step's last backward: gradients complete, not yet clipped
            self._check_step(model)
        return loss

    def _check_step(self, model) -> None:
        step = self.state.global_step + 1
        bad_losses, self._bad_losses = self._bad_losses, None
        if self.args.world_size > 1:  # every process must stop at the same step
            bad_losses = self.accelerator.reduce(bad_losses.float(), reduction="sum")
        if bool(bad_losses > 0):
            raise NonFiniteGradientError(f"non-finite loss at step {step}; " + _ADVICE, step=step)
        if self._scaler_skips_steps():
            return
        found = first_non_finite(model)
        if found is not None:
            name, count, total = found
            others = f" (and {count - 1} more of {total} tensors, before it in the model)" if count > 1 else ""
            raise NonFiniteGradientError(f"non-finite gradient at step {step} in {name}{others}; " + _ADVICE,
                                         step=step)
