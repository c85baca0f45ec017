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

from dataclasses import dataclass, field
from pathlib import Path

from transformers import Trainer, TrainerCallback, TrainingArguments

from .errors import LoraPlusError
from .groups import param_groups
from .optim import build_optimizer
from .reliability import is_writer, json_text


@dataclass
class LoraPlusArguments:
    """The LoRA+ settings a Trainer's arguments carry (mixed into any TrainingArguments subclass)."""

    loraplus_lr_ratio: float = field(default=16.0, metadata={"help": "lr_B / lr_A (1 = plain LoRA)."})
    loraplus_lr_embedding: float | None = field(
        default=None, metadata={"help": "lr of LoRA embedding factors (default: learning_rate)."}
    )
    loraplus_lr_magnitude: float | None = field(
        default=None, metadata={"help": "lr of DoRA magnitudes (default: learning_rate)."}
    )
    loraplus_lr_other: float | None = field(
        default=None, metadata={"help": "lr of heads, modules_to_save, biases (default: learning_rate)."}
    )
    loraplus_weight_decay: float | None = field(
        default=None, metadata={"help": "weight decay of the LoRA factors (default: weight_decay)."}
    )
    loraplus_optimizer: str = field(
        default="loraplus", metadata={"help": "how the adapter is optimised: loraplus (lr_B = ratio * lr_A), "
                                              "riemannian or lorafa (PEFT's rivals, over the same groups; rivals.py)."}
    )


@dataclass
class LoraPlusTrainingArguments(TrainingArguments, LoraPlusArguments):
    """TrainingArguments plus the LoRA+ settings; `learning_rate` is lr_A."""


_DEFAULTS = LoraPlusArguments()


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

        def setting(name):
            return getattr(args, name, getattr(_DEFAULTS, name))

        kind = setting("loraplus_optimizer")
        if kind == "lorafa":
            from .rivals import lorafa_optimizer

            self.optimizer = lorafa_optimizer(opt_model, lr=args.learning_rate, lr_other=setting("loraplus_lr_other"),
                                              weight_decay=args.weight_decay,
                                              betas=kwargs.get("betas", (0.9, 0.999)), eps=kwargs.get("eps", 1e-6))
            return self.optimizer
        if kind == "riemannian":
            from .rivals import riemannian_optimizer_class

            optimizer_cls = riemannian_optimizer_class(opt_model, optimizer_cls)
        elif kind != "loraplus":
            raise LoraPlusError(f"unknown loraplus_optimizer '{kind}'; use loraplus, riemannian or lorafa")
        groups = param_groups(
            opt_model,
            lr=args.learning_rate,
            ratio=setting("loraplus_lr_ratio"),
            weight_decay=args.weight_decay,
            lora_weight_decay=setting("loraplus_weight_decay"),
            lr_embedding=setting("loraplus_lr_embedding"),
            lr_magnitude=setting("loraplus_lr_magnitude"),
            lr_other=setting("loraplus_lr_other"),
        )
        self.optimizer = build_optimizer(opt_model, optimizer_cls, groups, **kwargs)
        return self.optimizer


class LoraPlusTrainer(LoraPlusMixin, Trainer):
    """`transformers.Trainer` with LoRA+ optimizer groups; use with `LoraPlusTrainingArguments`."""


class JsonlMetricsCallback(TrainerCallback):
    """Append every Trainer log (loss, eval metrics) to a JSON Lines file, with the A and B group lrs.

    The Trainer's own "learning_rate" is the first group's; LoRA+ has two that matter, so both are read
    from the optimizer's named groups right after the optimizer step, before the scheduler moves them:
    the lrs that step used, which is what the Trainer logs as its learning rate. Rank 0 writes alone.

    The file is only ever appended to. A run resumed from checkpoint-N appends a record
    `{"step": N, "resumed_from": "checkpoint-N"}` and replays the steps after N; `plots.read_metrics`
    reads the history as the resumed run made it (records after step N logged before the resume give
    way to the replayed ones), and the raw lines keep everything that was logged.
    """

    def __init__(self, path, resumed_from: str | None = None):
        self.path = path
        self.resumed_from = resumed_from
        self._lrs: dict[str, float] = {}
        self._trained = False

    def on_train_begin(self, args, state, control, **kwargs):
        path = Path(self.path)
        if not is_writer():
            return
        if not self.resumed_from or not path.is_file():  # a fresh run starts the file empty
            path.write_text("")
            return
        with open(path, "rb") as f:  # only the last byte: does the file end with a whole line?
            f.seek(0, 2)
            ends_cleanly = f.tell() == 0 or (f.seek(-1, 2), f.read(1))[1] == b"\n"
        with open(path, "a") as f:
            if not ends_cleanly:  # a line torn by the crash stays its own (unreadable) line
                f.write("\n")
            f.write(json_text({"step": state.global_step, "resumed_from": Path(self.resumed_from).name},
                              indent=None) + "\n")

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            self._lrs = {g.get("name"): g["lr"] for g in optimizer.param_groups}

    def on_train_end(self, args, state, control, **kwargs):
        self._trained = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not is_writer() or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        if self._trained:
            # Scores of the final (or best) model taken after training, on whichever split the caller asks:
            # marked, so no curve mistakes them for one more point of the evaluation set's series.
            record["after_training"] = True
        if "loss" in logs and "lora_A" in self._lrs:
            record["lr_A"] = self._lrs["lora_A"]
            record["lr_B"] = self._lrs.get("lora_B")
        with open(self.path, "a") as f:
            f.write(json_text(record, indent=None) + "\n")
