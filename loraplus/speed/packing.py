"""Run a model's layers on the batch's real tokens only: padding costs nothing outside attention.

A random batch of MNLI pairs padded to its longest example is 56% padding; sorted micro-batches
(sampling.py) cut that to 18% but run smaller matrix products, each with a fixed cost. Here the whole
batch runs at once: before the first layer the encoder's input is packed into one sequence of its real
tokens, every linear layer, norm, activation and dropout works on that, and only attention scatters
queries, keys and values back to a padded layout, per group of rows of similar length, to run the
model's own attention function with a padding mask. After the last layer the output is unpacked
(padding positions hold zeros). Position and token-type embeddings are added before packing, so each
token keeps its place in its sequence: the model computes the same function, on fewer tokens.

Supported: encoders built like BERT (a module with `embeddings` and `encoder.layer`), and Llama-family
decoders (a module with `embed_tokens`, `rotary_emb` and `layers`: Llama, Mistral, Qwen2, SmolLM2). A
decoder packs at its first layer and unpacks after its last: each token keeps the rotary position
embedding of its place in its row, and attention in each group is causal within each row. Attention goes
through transformers' attention-function registry; `enable_packing` says whether it applied. Only training
steps pack (a decoder: right-padded batches, not under gradient checkpointing); evaluation runs the model
unchanged.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import torch
from torch import nn

from loraplus.speed.fast_dropout import CPU_DROPOUT_ATTENTION

PACKED_ATTENTION = "loraplus_packed"  # prefix of the names it registers, one per inner attention
# attention functions that take a (rows, 1, 1, keys) padding mask: boolean, or additive for eager
PACKABLE_ATTENTION = ("eager", "sdpa", CPU_DROPOUT_ATTENTION)
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
SUPPORTED_DECODER_TYPES = ("llama", "mistral", "qwen2")


@dataclass
class _Packing:
    """Where the real tokens of the batch running now sit, packed and in each attention group."""

    index: torch.Tensor  # for each packed token, its place in the flattened (batch * length) grid
    batch: int
    length: int
    groups: list[tuple[int, int, torch.Tensor, torch.Tensor]]  # (first, end) packed token, grid index, key mask
    causal: bool = False  # a decoder's rows: each token sees the tokens before it in its own row only

    @classmethod
    def of(cls, mask: torch.Tensor, max_groups: int, group_cost: float, causal: bool = False) -> "_Packing":
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
        return cls(index, batch, length, groups, causal)


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

    def attention(module, query, key, value, attention_mask, **kwargs):
        packing = kwargs.pop("loraplus_packing", None)
        # "eager" is not in the registry: each model's file has its own (Llama's repeats grouped keys and values)
        own_eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        inner = ALL_ATTENTION_FUNCTIONS.get_interface(inner_name, own_eager)
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
            if packing.causal:  # (rows, 1, width, width): the row's own keys, up to the query's place
                mask = mask & torch.ones(width, width, dtype=torch.bool, device=keys.device).tril()
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


def _decoder_like(model: nn.Module) -> nn.Module | None:
    """The module holding `embed_tokens`, `rotary_emb` and `layers` (LlamaModel and kin), if the model has one."""
    for module in model.modules():
        if (hasattr(module, "embed_tokens") and hasattr(module, "rotary_emb")
                and isinstance(getattr(module, "layers", None), nn.ModuleList) and len(module.layers)):
            return module
    return None


def _register_attention(model: nn.Module, inner: str) -> None:
    """Route the model's attention through the packed function around its own `inner` one."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = f"{PACKED_ATTENTION}_{inner}"
    AttentionInterface.register(name, _packed_attention(inner))
    if inner in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])  # the inner function's masks
    model.set_attn_implementation(name)


def _enable_decoder_packing(model: nn.Module, backbone: nn.Module, inner: str, max_groups: int,
                            group_cost: float) -> bool:
    """Pack a Llama-family decoder between its first layer's input and its last layer's output."""
    _register_attention(model, inner)
    state: dict = {}
    signature = inspect.signature(backbone.forward)
    layers = list(backbone.layers)

    def remember_mask(module, args, kwargs):
        state.clear()  # a forward that raised must not leave its packing to the next one
        mask = signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
        # Gradient checkpointing re-runs layers in the backward pass, after this forward's packing is gone.
        # Left padding: the loss reads the last pad position's logits (they predict each row's first token),
        # and packed pad positions hold zeros, not what the model computes there; so only right padding packs.
        if (module.training and torch.is_tensor(mask) and mask.dim() == 2 and not bool(mask.all())
                and bool((mask[:, 1:] <= mask[:, :-1]).all()) and not getattr(module, "gradient_checkpointing", False)):
            state["mask"] = mask

    def pack_layer_input(module, args, kwargs):
        if module is layers[0] and "mask" in state:
            mask = state.pop("mask")
            batch, length = mask.shape
            packing = _Packing.of(mask, max_groups, group_cost, causal=True)
            cos, sin = kwargs["position_embeddings"]  # (1 or batch, length, head_dim): one per place in a row
            positions = kwargs.get("position_ids")
            state["packed"] = {
                "position_embeddings": tuple(pack(t.expand(batch, length, *t.shape[2:]), packing) for t in (cos, sin)),
                "position_ids": None if positions is None else pack(positions.expand(batch, length)[..., None],
                                                                   packing)[..., 0],
                "attention_mask": None, "loraplus_packing": packing}
            state["packing"] = packing
            hidden = args[0] if args else kwargs.pop("hidden_states")
            return (pack(hidden, packing), *args[1:]), {**kwargs, **state["packed"]}
        if "packed" in state:
            return args, {**kwargs, **state["packed"]}
        return None

    def unpack_last_output(module, args, kwargs, output):
        packing = state.pop("packing", None)
        state.pop("packed", None)
        if packing is None:
            return output
        if isinstance(output, tuple):  # older releases return (hidden_states, ...)
            return (unpack(output[0], packing), *output[1:])
        return unpack(output, packing)

    backbone.register_forward_pre_hook(remember_mask, with_kwargs=True)
    for layer in layers:
        layer.register_forward_pre_hook(pack_layer_input, with_kwargs=True)
    layers[-1].register_forward_hook(unpack_last_output, with_kwargs=True)
    return True


def enable_packing(model: nn.Module, *, max_groups: int = 4, group_cost: float = 128) -> bool:
    """Pack the model's layers in training steps; False (nothing changed) if the model is not supported.

    Attention runs per group of rows of similar length (at most `max_groups`, cut as micro-batches are:
    `group_cost` padded tokens is what one more group must save), so it pads little too.
    """
    config = getattr(model, "config", None)
    inner = getattr(config, "_attn_implementation", None)
    model_type = getattr(config, "model_type", None)
    if inner not in PACKABLE_ATTENTION:
        return False
    decoder = _decoder_like(model) if model_type in SUPPORTED_DECODER_TYPES else None
    if decoder is not None:
        return _enable_decoder_packing(model, decoder, inner, max_groups, group_cost)
    backbone = _bert_like(model)
    if backbone is None or model_type not in SUPPORTED_MODEL_TYPES or getattr(config, "is_decoder", False):
        return False
    _register_attention(model, inner)

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
