"""Run an encoder's layers on the batch's real tokens only: padding costs nothing outside attention.

A random batch of MNLI pairs padded to its longest example is 56% padding; sorted micro-batches
(sampling.py) cut that to 18% but run smaller matrix products, each with a fixed cost. Here the whole
batch runs at once: before the first layer the encoder's input is packed into one sequence of its real
tokens, every linear layer, norm, activation and dropout works on that, and only attention scatters
queries, keys and values back to a padded layout, per group of rows of similar length, to run the
model's own attention function with a padding mask. After the last layer the output is unpacked
(padding positions hold zeros). Position and token-type embeddings are added before packing, so each
token keeps its place in its sequence: the model computes the same function, on fewer tokens.

Supported: encoders built like BERT (a module with `embeddings` and `encoder.layer`, attention through
transformers' attention-function registry); `enable_packing` says whether it applied. Only training
steps pack; evaluation runs the model unchanged.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from loraplus.speed.fast_dropout import CPU_DROPOUT_ATTENTION

PACKED_ATTENTION = "loraplus_packed"  # prefix of the names it registers, one per inner attention
# attention functions that take a (rows, 1, 1, keys) padding mask: boolean, or additive for eager
PACKABLE_ATTENTION = ("eager", "sdpa", CPU_DROPOUT_ATTENTION)
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


@dataclass
class _Packing:
    """Where the real tokens of the batch running now sit, packed and in each attention group."""

    index: torch.Tensor  # for each packed token, its place in the flattened (batch * length) grid
    batch: int
    length: int
    groups: list[tuple[int, int, torch.Tensor, torch.Tensor]]  # (first, end) packed token, grid index, key mask

    @classmethod
    def of(cls, mask: torch.Tensor, max_groups: int, group_cost: float) -> "_Packing":
        """Rows packed longest first, cut into attention groups of similar lengths (sampling.micro_batch_cuts)."""
        from loraplus.speed.sampling import micro_batch_cuts

        batch, length = mask.shape
        real = mask.bool()
        lengths = real.sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        grid = order[:, None] * length + torch.arange(length, device=mask.device)[None, :]
        index = grid[real[order]]  # row by row, longest row first; a row's tokens in their order
        sorted_lengths = lengths[order].tolist()
        groups, first, row = [], 0, 0
        for end_row in micro_batch_cuts(sorted_lengths, max_groups, group_cost):
            group_lengths = lengths[order[row:end_row]]
            width = sorted_lengths[row]
            keys = torch.arange(width, device=mask.device)[None, :] < group_lengths[:, None]  # (rows, width)
            grid_index = torch.arange(keys.numel(), device=mask.device).view_as(keys)[keys]
            groups.append((first, first + len(grid_index), grid_index, keys))
            first, row = first + len(grid_index), end_row
        return cls(index, batch, length, groups)


def pack(x: torch.Tensor, packing: _Packing) -> torch.Tensor:
    """(batch, length, ...) -> (1, real tokens, ...)."""
    return x.flatten(0, 1).index_select(0, packing.index).unsqueeze(0)


def unpack(x: torch.Tensor, packing: _Packing) -> torch.Tensor:
    """(1, real tokens, ...) -> (batch, length, ...), zeros at padding."""
    grid = x.new_zeros((packing.batch * packing.length, *x.shape[2:]))
    return grid.index_copy(0, packing.index, x[0]).view(packing.batch, packing.length, *x.shape[2:])


def _packed_attention(inner_name: str):
    """An attention function for packed layers: `inner_name` on each group's own padded layout."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward  # BERT's; its kin copy it

    def attention(module, query, key, value, attention_mask, **kwargs):
        packing = kwargs.pop("loraplus_packing", None)
        inner = ALL_ATTENTION_FUNCTIONS.get_interface(inner_name, eager_attention_forward)
        if packing is None:
            return inner(module, query, key, value, attention_mask, **kwargs)
        outputs, weights = [], None
        for first, end, grid_index, keys in packing.groups:
            rows, width = keys.shape
            padded = []
            for t in (query, key, value):  # (1, heads, tokens, head_dim) -> (rows, heads, width, head_dim)
                tokens = t[0, :, first:end].transpose(0, 1)
                grid = tokens.new_zeros((rows * width, *tokens.shape[1:])).index_copy(0, grid_index, tokens)
                padded.append(grid.view(rows, width, *tokens.shape[1:]).transpose(1, 2))
            mask = keys[:, None, None, :]
            if inner_name == "eager":  # eager attention adds its mask to the scores
                mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                    ~mask, torch.finfo(query.dtype).min)
            out, weights = inner(module, *padded, mask, **kwargs)  # (rows, width, heads, head_dim)
            outputs.append(out.flatten(0, 1).index_select(0, grid_index))
        return torch.cat(outputs).unsqueeze(0), weights

    return attention


def _bert_like(model: nn.Module) -> nn.Module | None:
    """The module holding `embeddings` and `encoder.layer` (BertModel and kin), if the model has one."""
    for module in model.modules():
        if hasattr(module, "embeddings") and isinstance(getattr(getattr(module, "encoder", None), "layer", None),
                                                          nn.ModuleList):
            return module
    return None


def enable_packing(model: nn.Module, *, max_groups: int = 4, group_cost: float = 128) -> bool:
    """Pack the encoder's layers in training steps; False (nothing changed) if the model is not supported.

    Attention runs per group of rows of similar length (at most `max_groups`, cut as micro-batches are:
    `group_cost` padded tokens is what one more group must save), so it pads little too.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    config = getattr(model, "config", None)
    backbone = _bert_like(model)
    inner = getattr(config, "_attn_implementation", None)
    if (backbone is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES
            or getattr(config, "is_decoder", False) or inner not in PACKABLE_ATTENTION):
        return False
    name = f"{PACKED_ATTENTION}_{inner}"
    AttentionInterface.register(name, _packed_attention(inner))
    if inner in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])  # the inner function's masks
    model.set_attn_implementation(name)

    state: dict = {}
    signature = inspect.signature(backbone.forward)

    def remember_mask(module, args, kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        mask = bound.arguments.get("attention_mask")
        state["mask"] = mask if module.training and torch.is_tensor(mask) and mask.dim() == 2 else None

    def pack_input(module, args, kwargs):
        mask = state.pop("mask", None)
        if mask is None or bool(mask.all()):
            return None
        hidden = args[0] if args else kwargs.pop("hidden_states")
        packing = _Packing.of(mask, max_groups, group_cost)
        state["packing"] = packing
        return (pack(hidden, packing), *args[1:]), {**kwargs, "loraplus_packing": packing}

    def unpack_output(module, args, kwargs, output):
        packing = state.pop("packing", None)
        if packing is not None:
            output.last_hidden_state = unpack(output.last_hidden_state, packing)
        return output

    backbone.register_forward_pre_hook(remember_mask, with_kwargs=True)
    backbone.encoder.register_forward_pre_hook(pack_input, with_kwargs=True)
    backbone.encoder.register_forward_hook(unpack_output, with_kwargs=True)
    return True


def is_packed(model: nn.Module) -> bool:
    """Whether `enable_packing` applied to this model (or the model PEFT wraps)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", "")).startswith(PACKED_ATTENTION)
