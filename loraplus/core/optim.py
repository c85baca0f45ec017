"""The LoRA+ optimizer: any torch optimizer over `param_groups` (lr_B = ratio * lr_A).

`create_loraplus_optimizer` accepts every call PEFT's function of the same name accepts
(`peft.optimizers.create_loraplus_optimizer`) and gives every parameter PEFT's learning rate and
weight decay, except where PEFT is wrong (README, "Drop-in for PEFT"): 1-D parameters (biases,
norms, DoRA magnitudes) and `lora_bias` train at `lr`, not `lr * ratio`, and are never decayed; a
`weight_decay` the caller gives is honoured (PEFT drops it). It also takes optimizers by name and
detects 8-bit bitsandbytes optimizers by base class and `optim_bits` rather than by class name.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from loraplus.core.errors import LoraPlusError
from loraplus.core.groups import describe, param_groups
from loraplus.core.settings import LORAPLUS_DEFAULTS, PEFT_LR_EMBEDDING

logger = logging.getLogger("loraplus")



def _adafactor():
    from transformers.optimization import Adafactor

    return Adafactor


def _bnb(name: str):
    def load():
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise LoraPlusError(f"optimizer '{name}' needs bitsandbytes; pip install bitsandbytes") from e
        return bnb.optim.AdamW8bit

    return load


OPTIMIZERS = {
    "adamw": lambda: torch.optim.AdamW,
    "adam": lambda: torch.optim.Adam,
    "sgd": lambda: torch.optim.SGD,
    "adafactor": _adafactor,
    "adamw_8bit": _bnb("adamw_8bit"),
}
# Adafactor's defaults ignore the given lr (relative steps): LoRA+ needs the lr it is given.
_DEFAULT_KWARGS = {"adafactor": {"scale_parameter": False, "relative_step": False, "warmup_init": False}}


def resolve_optimizer(optimizer_cls) -> tuple[type, dict]:
    """An optimizer class, and its required default kwargs, from a class or a name in OPTIMIZERS."""
    if isinstance(optimizer_cls, str):
        key = optimizer_cls.lower().replace("-", "_")
        if key not in OPTIMIZERS:
            raise LoraPlusError(f"unknown optimizer '{optimizer_cls}'; use one of {', '.join(OPTIMIZERS)} or a class")
        return OPTIMIZERS[key](), dict(_DEFAULT_KWARGS.get(key, {}))
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise LoraPlusError(f"optimizer_cls must be a torch.optim.Optimizer subclass or a name, got {optimizer_cls!r}")
    return optimizer_cls, {}


def is_8bit(optimizer: torch.optim.Optimizer) -> bool:
    """True for bitsandbytes optimizers keeping 8-bit state (any class: AdamW(optim_bits=8) too)."""
    try:
        from bitsandbytes.optim.optimizer import Optimizer8bit
    except ImportError:
        return False
    if not isinstance(optimizer, Optimizer8bit):
        return False
    bits = getattr(getattr(optimizer, "args", None), "optim_bits", None)
    return bits == 8 or any(g.get("optim_bits") == 8 for g in optimizer.param_groups)


def keep_embeddings_32bit(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Give embedding weights and LoRA embedding factors 32-bit optimizer state; returns how many.

    8-bit state on embeddings is unstable (bitsandbytes docs; transformers' Trainer does the same
    for nn.Embedding weights). LoRA embedding factors are bare Parameters, so they are overridden
    by parameter rather than by module.
    """
    import bitsandbytes as bnb

    embedding_ids = {
        id(p) for g in optimizer.param_groups if g.get("name", "").startswith("lora_embedding") for p in g["params"]
    }
    params = [p for p in model.parameters() if p.requires_grad and id(p) in embedding_ids]
    params += [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.weight.requires_grad]
    if params:
        bnb.optim.GlobalOptimManager.get_instance().override_config(params, key_value_dict={"optim_bits": 32})
    return len(params)


def build_optimizer(model: nn.Module, optimizer_cls, groups: list[dict], **optimizer_kwargs):
    """Instantiate `optimizer_cls` over LoRA+ `groups`, fix 8-bit embedding state, log the table."""
    cls, defaults = resolve_optimizer(optimizer_cls)
    optimizer = cls(groups, **{**defaults, **optimizer_kwargs})
    if is_8bit(optimizer):
        keep_embeddings_32bit(optimizer, model)
    guard_resume(optimizer)
    logger.info("LoRA+ optimizer %s:\n%s", cls.__name__, describe(optimizer))
    return optimizer


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls=torch.optim.AdamW,
    *,
    lr: float,
    loraplus_lr_ratio: float = LORAPLUS_DEFAULTS.loraplus_lr_ratio,
    loraplus_lr_embedding: float | None = PEFT_LR_EMBEDDING,  # PEFT's, so that its calls train the same
    loraplus_weight_decay: float | None = LORAPLUS_DEFAULTS.loraplus_weight_decay,
    weight_decay: float | None = None,
    loraplus_lr_magnitude: float | None = LORAPLUS_DEFAULTS.loraplus_lr_magnitude,
    loraplus_lr_other: float | None = LORAPLUS_DEFAULTS.loraplus_lr_other,
    **optimizer_kwargs,
) -> torch.optim.Optimizer:
    """A LoRA+ optimizer: lr_A = lr, lr_B = loraplus_lr_ratio * lr, drop-in for PEFT's function.

    Args:
        model: a PEFT LoRA model (also wrapped by DDP, or FSDP with use_orig_params=True).
        optimizer_cls: an optimizer class, or a name ("adamw", "adam", "sgd", "adafactor", "adamw_8bit").
        lr: learning rate of the A factors.
        loraplus_lr_ratio: lr_B / lr_A (default 16, the paper's 2^4; PEFT requires it).
        loraplus_lr_embedding: lr of both embedding factors (PEFT's default 1e-6; None = lr).
        loraplus_weight_decay: decay of the LoRA factors (PEFT's name); None = `weight_decay`.
        weight_decay: decay of the other matrices (heads, modules_to_save) and, without
            loraplus_weight_decay, of the LoRA factors too. None = loraplus_weight_decay, or 0.0 when
            neither is given: PEFT's function decays every group by loraplus_weight_decay (default 0.0),
            so the same call trains the same. Biases, norms and DoRA magnitudes are never decayed.
        loraplus_lr_magnitude: lr of DoRA magnitudes (None = lr).
        loraplus_lr_other: lr of heads, modules_to_save and biases (None = lr).
        **optimizer_kwargs: passed to the optimizer (betas, eps, ...).
    """
    if weight_decay is None:  # PEFT: every group at loraplus_weight_decay, 0.0 by default
        weight_decay = 0.0 if loraplus_weight_decay is None else loraplus_weight_decay
    groups = param_groups(
        model,
        lr=lr,
        ratio=loraplus_lr_ratio,
        weight_decay=weight_decay,
        lora_weight_decay=loraplus_weight_decay,
        lr_embedding=loraplus_lr_embedding,
        lr_magnitude=loraplus_lr_magnitude,
        lr_other=loraplus_lr_other,
    )
    return build_optimizer(model, optimizer_cls, groups, lr=lr, **optimizer_kwargs)


def _group_layout(groups) -> list[tuple[str, int, int]]:
    return [(g.get("name", "?"), len(g["params"]), sum(p.numel() for p in g["params"])) for g in groups]


def _b_over_a(groups) -> float | None:
    lrs = {g.get("name"): g.get("initial_lr", g.get("lr")) for g in groups}
    if lrs.get("lora_A") and lrs.get("lora_B") is not None:
        return lrs["lora_B"] / lrs["lora_A"]
    return None


def guard_resume(optimizer: torch.optim.Optimizer) -> None:
    """Refuse to load optimizer state whose LoRA+ groups do not match this optimizer's groups.

    torch matches saved state to parameters by position only; a checkpoint from another model or
    LoRA config would silently give B's moments (and lr) to A. The check compares group names and
    tensor counts; sizes are compared from the saved state where present.
    """
    if not hasattr(optimizer, "register_load_state_dict_pre_hook"):  # torch < 2.2: nothing to hook
        return
    def check(opt, state_dict):
        # Read at load time, not build time: DeepSpeed ZeRO flattens each group into one tensor after the
        # optimizer is built, and its checkpoints hold that flat layout.
        current = _group_layout(opt.param_groups)
        saved = state_dict.get("param_groups", [])
        names = [g.get("name") for g in saved]
        layout = [(g.get("name"), len(g["params"])) for g in saved]
        if None in names:
            raise LoraPlusError(
                "the checkpoint's optimizer groups have no LoRA+ names (saved by another optimizer); "
                "resume from a checkpoint written by a LoRA+ run, or start a fresh run"
            )
        if layout != [(n, k) for n, k, _ in current]:
            raise LoraPlusError(
                f"the checkpoint's LoRA+ groups {layout} do not fit this model's {[(n, k) for n, k, _ in current]}; "
                "resume with the same model and LoRA config, or start a fresh run"
            )
        saved_ratio, ratio = _b_over_a(saved), _b_over_a(opt.param_groups)
        if saved_ratio and ratio and abs(saved_ratio / ratio - 1) > 1e-6:
            logger.warning("resuming with the checkpoint's lr_B/lr_A = %.4g, not the configured %.4g",
                           saved_ratio, ratio)
        return state_dict

    optimizer.register_load_state_dict_pre_hook(check)
