"""LoRA+ in the Hugging Face Trainer: `create_optimizer` builds `param_groups`, nothing else changes.

The Trainer's own `optim` choice (class and kwargs), its schedulers (which scale each group's base
lr, so lr_B / lr_A holds at every step), gradient accumulation, mixed precision, DDP/FSDP and
checkpoint resume all stay the Trainer's. Only one hook is overridden; `Trainer.__init__` is never
re-declared (a subclass that forwards its arguments by position breaks with each release), so the
integration survives transformers releases.

TRL: `loraplus.trl` has the ready-made `LoraPlusSFTTrainer` / `LoraPlusSFTConfig` and
`LoraPlusDPOTrainer` / `LoraPlusDPOConfig` (`LoraPlusMixin` over TRL's trainer; a plain SFTConfig or
DPOConfig gives the defaults below). It needs `pip install trl`; this module never imports TRL.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer, TrainingArguments

from loraplus.core.errors import LoraPlusError
from loraplus.core.groups import param_groups
from loraplus.core.optim import build_optimizer
from loraplus.core.settings import LORAPLUS_OPTIMIZERS, LoraPlusArguments, loraplus_settings


@dataclass
class LoraPlusTrainingArguments(TrainingArguments, LoraPlusArguments):
    """TrainingArguments plus the LoRA+ settings; `learning_rate` is lr_A."""


def _is_factory(optimizer_cls) -> bool:
    """Muon/Dion-style factories build the optimizer from the model themselves."""
    try:
        from transformers.trainer_optimizer import is_optimizer_factory
    except ImportError:  # transformers before optimizer factories existed
        return not isinstance(optimizer_cls, type)
    return is_optimizer_factory(optimizer_cls)


class LoraPlusMixin:
    """Overrides `create_optimizer` of a Trainer (or subclass) with LoRA+ parameter groups."""

    def create_optimizer(self, model=None):
        """Build the Trainer's chosen optimizer over LoRA+ groups: lr_B = loraplus_lr_ratio * lr_A."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        args = self.args
        cls_and_kwargs = getattr(self, "optimizer_cls_and_kwargs", None)
        if cls_and_kwargs is not None:
            optimizer_cls, kwargs = cls_and_kwargs
        else:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(args, opt_model)
        kwargs = dict(kwargs)
        # GaLore, LOMO, layer-wise and factory optimizers bring their own parameter groups.
        if {"params", "model", "optimizer_dict"} & kwargs.keys() or _is_factory(optimizer_cls):
            raise LoraPlusError(
                f"optim '{args.optim}' builds its own parameter groups, so LoRA+ cannot set lr_B = ratio * lr_A; "
                "use an Adam-type optim such as adamw_torch"
            )

        settings = loraplus_settings(args)  # a plain TrainingArguments (or TRL config) gets the defaults
        kind = settings["loraplus_optimizer"]
        if kind == "lorafa":
            from loraplus.core.rivals import lorafa_optimizer

            self.optimizer = lorafa_optimizer(opt_model, lr=args.learning_rate, lr_other=settings["loraplus_lr_other"],
                                              weight_decay=args.weight_decay,
                                              betas=kwargs.get("betas", (0.9, 0.999)), eps=kwargs.get("eps", 1e-6))
            return self.optimizer
        if kind == "riemannian":
            from loraplus.core.rivals import riemannian_optimizer_class

            optimizer_cls = riemannian_optimizer_class(opt_model, optimizer_cls)
        elif kind != "loraplus":
            raise LoraPlusError(f"unknown loraplus_optimizer '{kind}'; use one of {', '.join(LORAPLUS_OPTIMIZERS)}")
        groups = param_groups(
            opt_model,
            lr=args.learning_rate,
            ratio=settings["loraplus_lr_ratio"],
            weight_decay=args.weight_decay,
            lora_weight_decay=settings["loraplus_weight_decay"],
            lr_embedding=settings["loraplus_lr_embedding"],
            lr_magnitude=settings["loraplus_lr_magnitude"],
            lr_other=settings["loraplus_lr_other"],
        )
        self.optimizer = build_optimizer(opt_model, optimizer_cls, groups, **kwargs)
        return self.optimizer


class LoraPlusTrainer(LoraPlusMixin, Trainer):
    """`transformers.Trainer` with LoRA+ optimizer groups; use with `LoraPlusTrainingArguments`."""
