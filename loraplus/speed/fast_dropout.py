"""Cheaper dropout on CPUs: four masks from each random 64-bit word.

A LoRA step on a CPU spends a sixth of its time drawing dropout masks for the frozen model
(`aten::bernoulli_`: one random float per activation, measured on MiniLM). Here each random 64-bit
integer gives four 16-bit lanes, and an element is kept when its lane is at or above p * 2^16: the
keep probability is 1 - p to within 2^-16, with the usual 1 / (1 - p) scaling, so the model trains
with the same dropout at a fraction of the cost. On GPUs (fast RNG already) and in eval mode nothing
changes. Masks come from the global CPU generator, so seeds and resumed RNG states reproduce them.

Two places draw masks: `nn.Dropout` modules (swapped for `CpuDropout`, a subclass, so isinstance
checks and `.p` keep working) and attention probabilities inside SDPA, which a registered
Hugging Face attention function (`sdpa_cpu_dropout`) computes with the same masks when it can.
"""

from __future__ import annotations

import torch
from torch import nn

LANES = 4  # 16-bit lanes per random int64
_INT64 = torch.iinfo(torch.int64)


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A bool mask of `shape`, each element True with probability 1 - p (to 2^-16), independently."""
    n = shape.numel()
    words = torch.randint(_INT64.min, _INT64.max, ((n + LANES - 1) // LANES,), dtype=torch.int64)
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform over [-2^15, 2^15)
    return lanes >= round(p * 2**16) - 2**15


def cpu_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`torch.nn.functional.dropout`, with cheaper masks for CPU tensors."""
    if not training or p <= 0 or p >= 1 or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    # One float mask holding 0 or 1 / (1 - p): the forward and backward are then a plain multiply each
    # (measured faster than masked_fill on a bool mask, whose backward is another masked_fill).
    scale = torch.where(keep_mask(x.shape, p), 1 / (1 - p), 0.0).to(x.dtype)
    return x * scale


class CpuDropout(nn.Dropout):
    """`nn.Dropout` whose masks cost a quarter of a random draw per element on CPUs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_dropout(x, self.p, self.training)


def sdpa_cpu_dropout(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """Hugging Face attention: SDPA, except training-time attention dropout on CPU uses `keep_mask`.

    Only bidirectional attention without grouped key/value heads takes the explicit path (encoders
    such as BERT); everything else, and every case without dropout, is plain SDPA.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # Unknown modules count as causal, as in transformers' own SDPA path: they keep SDPA, never lose a mask.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    if dropout <= 0 or query.device.type != "cpu" or causal or grouped or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = cpu_dropout(torch.softmax(scores, dim=-1), dropout, True)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


CPU_DROPOUT_ATTENTION = "sdpa_cpu_dropout"  # the name it registers with transformers


def use_cpu_dropout(model: nn.Module) -> int:
    """Swap the model's dropout modules and SDPA attention for the CPU variants; return how many swapped."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    swapped = 0
    for module in list(model.modules()):  # listed first: the loop replaces children as it goes
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout and child.p > 0:
                setattr(module, name, CpuDropout(child.p, child.inplace))
                swapped += 1
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        AttentionInterface.register(CPU_DROPOUT_ATTENTION, sdpa_cpu_dropout)
        AttentionMaskInterface.register(CPU_DROPOUT_ATTENTION, sdpa_mask)  # the masks SDPA would get
        model.set_attn_implementation(CPU_DROPOUT_ATTENTION)
    return swapped
