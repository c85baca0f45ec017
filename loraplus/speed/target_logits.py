"""Causal LMs train with logits only where a token is predicted: the LM head skips untargeted positions.

Scoring label words trains on one token per example, and SFT on the response only, yet a causal LM's
forward projects every position onto the vocabulary. For SmolLM2-135M that head (576 x 49,152) costs
about a quarter of the forward per token, and its cross-entropy input is the largest tensor of the step.
transformers' `logits_to_keep` accepts a boolean (batch, positions) mask and returns the kept rows
flattened; the model's own loss then takes `shift_labels`, the targets of exactly those rows. The loss,
its reduction (mean, or sum over the step's item count) and everything the Trainer does around it stay
the model's and the Trainer's: only the untargeted rows are never computed.

Evaluation does the same when it needs no logits (a loss-only evaluation), or when its
`preprocess_logits_for_metrics` is a `TargetRowsPreprocessor` (the one-token label-word scoring of
train/metrics.py); otherwise it keeps full logits for its metrics.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class TargetRowsPreprocessor:
    """A `preprocess_logits_for_metrics` that reads only the logits of positions with a target.

    Wrapping one in this class is how an evaluation says so (the one-token label-word scoring of
    train/metrics.py does): `TargetLogitsMixin` then computes only those rows in evaluation too, and the
    function receives them as a (rows, vocabulary) tensor instead of (batch, positions, vocabulary).
    """

    takes_target_logits = True

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, logits, labels):
        return self.preprocess(logits, labels)


def position_mask_supported() -> bool:
    """Whether this transformers accepts a boolean mask as `logits_to_keep` (it came with `slice_logits_to_keep`)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:  # transformers 5.17 and earlier: an int or an index tensor only
        return False
    return True


def accepts_position_mask(model) -> bool:
    """True when `model` (PEFT-wrapped or not) is a causal LM whose forward takes a `logits_to_keep` mask."""
    if not position_mask_supported():
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes(type(base), "logits_to_keep") and getattr(base, "loss_type", None) in (None, "ForCausalLM")


@functools.lru_cache(maxsize=None)
def _forward_takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


def with_target_positions(inputs: dict) -> dict:
    """`inputs` asking the model for logits at target positions only, with the matching shifted targets.

    Position p predicts token p + 1, so it is kept when labels[:, p + 1] is a target. Rows and positions
    come out in the same row-major order as the model's flattened logits.
    """
    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = F.pad(targets != IGNORE_INDEX, (0, 1), value=False)
    return {**inputs, "logits_to_keep": keep, "shift_labels": targets[keep[:, :-1]]}


class TargetLogitsMixin:
    """Trainer mixin: a causal LM computes logits only at positions with a target, where nothing reads the rest."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._target_logits = accepts_position_mask(self.model)

    def _only_targets_read(self, return_outputs: bool) -> bool:
        if not return_outputs:  # a training step: the loss is all that is used
            return True
        # an evaluation step: its logits go to the metrics, unless there are none or they read target rows
        return self.compute_metrics is None or isinstance(self.preprocess_logits_for_metrics, TargetRowsPreprocessor)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        # label smoothing and a custom loss function read the full logits: they keep the plain forward
        if (self._target_logits and torch.is_tensor(labels) and labels.dim() == 2 and labels.shape[1] > 1
                and self.label_smoother is None and self.compute_loss_func is None
                and self._only_targets_read(return_outputs)):
            inputs = with_target_positions(inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)
