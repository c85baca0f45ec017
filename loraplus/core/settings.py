"""The LoRA+ settings, declared once: `create_loraplus_optimizer`, `LoraPlusTrainingArguments` (and TRL's configs)
and `loraplus train` all take their names, defaults and help from `LoraPlusArguments`.

Defaults that differ from PEFT's `create_loraplus_optimizer` on purpose (README, "Drop-in for PEFT"):
- `loraplus_lr_ratio` has a default, the paper's 2^4 (PEFT requires it);
- 1-D parameters (biases, norms, DoRA magnitudes) train at `loraplus_lr_magnitude` / `loraplus_lr_other`,
  `lr` by default, never at `lr * ratio`;
- `loraplus_lr_embedding` is `lr` by default in the Trainer and the CLI; `create_loraplus_optimizer` alone
  keeps PEFT's 1e-6 (`PEFT_LR_EMBEDDING`), so that a call written for PEFT trains the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# The adapter's optimisation: LoRA+ groups, or one of PEFT's rivals over the same groups (core/rivals.py).
LORAPLUS_OPTIMIZERS = ("loraplus", "riemannian", "lorafa")
PEFT_LR_EMBEDDING = 1e-6  # PEFT's default lr of LoRA embedding factors in its create_loraplus_optimizer


@dataclass
class LoraPlusArguments:
    """The LoRA+ settings; `learning_rate` (lr_A) and `weight_decay` stay the Trainer's own."""

    loraplus_lr_ratio: float = field(default=16.0, metadata={
        "help": "lr_B / lr_A; 1 means plain LoRA. 16 is the largest ratio that stayed stable up to lr_A 1e-3 in "
                "our MNLI heatmap (README, 'Initialisation and rival optimisers'); above, use 4 or less"})
    loraplus_lr_embedding: float | None = field(default=None, metadata={
        "help": "lr of both LoRA embedding factors (none = learning_rate)"})
    loraplus_lr_magnitude: float | None = field(default=None, metadata={
        "help": "lr of DoRA magnitudes (none = learning_rate)"})
    loraplus_lr_other: float | None = field(default=None, metadata={
        "help": "lr of heads, modules_to_save and biases (none = learning_rate)"})
    loraplus_weight_decay: float | None = field(default=None, metadata={
        "help": "weight decay of the LoRA factors (none = weight_decay); biases, norms, magnitudes: never"})
    loraplus_optimizer: str = field(default="loraplus", metadata={
        "help": "how the adapter is optimised: loraplus (lr_B = ratio x lr_A), riemannian (PEFT's "
                "preconditioning of A and B) or lorafa (PEFT's LoRA-FA: A frozen); the same groups for each"})


LORAPLUS_DEFAULTS = LoraPlusArguments()
LORAPLUS_SETTINGS = tuple(f.name for f in fields(LoraPlusArguments))


def loraplus_settings(source) -> dict:
    """The LoRA+ settings of `source` (TrainingArguments, a config, ...), with the defaults for any it lacks."""
    return {name: getattr(source, name, getattr(LORAPLUS_DEFAULTS, name)) for name in LORAPLUS_SETTINGS}
