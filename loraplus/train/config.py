"""One typed config for `loraplus train`: defaults, YAML + `--key value` overrides, validation.

All of it runs before a model is loaded, so a typo costs a second rather than a model load: nothing
heavy is imported at module level. transformers' `TrainingArguments` is imported lazily, only to
learn its field names and types (pass-through keys) and to build its keyword arguments.
"""
# ruff: noqa: RUF009  (`_f` wraps dataclasses.field: help metadata plus a fresh copy of mutable defaults)

import dataclasses
import functools
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from loraplus.train.arguments import coerce, command_parser, fail, flag_lines, is_number, nearest, type_name
from loraplus.train.files import write_text_atomic
from loraplus.core.settings import LORAPLUS_OPTIMIZERS, LoraPlusArguments

TASKS = ("classification", "causal_lm", "sft", "label_words")
BF16_CHOICES = ("auto", "true", "false")
LORA_INITS = ("A", "B")  # which factor starts random (lora.init_factors)
GROUPS = ("model & data", "LoRA", "LoRA+", "training")


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its help line in `metadata` (where HfArgumentParser reads it)."""
    meta = {"help": help}
    if isinstance(default, (list, dict)):  # each config gets its own copy
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelDataSettings:
    """Which model, which data, which task."""

    _argument_group_name = GROUPS[0]  # HfArgumentParser's help group
    model_name_or_path: str = _f("minilm", "local HF model dir, hub id, or alias minilm / smollm2-135m")
    task: str = _f("classification", "classification | causal_lm | sft | label_words (a causal LM scores "
                   "label words after a prompt)")
    dataset_name: str | None = _f("rotten_tomatoes", "built-in alias or hub dataset id (ignored with train_file)")
    dataset_config_name: str | None = _f(None, "hub dataset config, e.g. mnli for glue")
    train_file: str | None = _f(None, "local train file (csv, json, jsonl, parquet)")
    validation_file: str | None = _f(None, "local validation file")
    test_file: str | None = _f(None, "local test file")
    text_column: str = _f("text", "column holding the input text")
    text_pair_column: str | None = _f(None, "second text column for sentence-pair tasks")
    label_column: str = _f("label", "column holding the class label")
    prompt_column: str = _f("prompt", "sft: column holding the prompt")
    response_column: str = _f("response", "sft: column holding the response")
    messages_column: str = _f("messages", "sft: column holding chat messages")
    label_words: list[str] | None = _f(None, "label_words: one word per class (none = from label names)")
    prompt_template: str | None = _f(None, "template wrapping each input text (none = task default)")
    max_length: int = _f(128, "max tokens per example (longer ones are truncated)")
    max_train_samples: int | None = _f(None, "use at most this many training examples")
    max_eval_samples: int | None = _f(None, "use at most this many evaluation examples")
    validation_split_ratio: float = _f(0.1, "fraction of train carved out when no validation split exists")
    allow_pickle: bool = _f(False, "load pickle (.bin/.pt) weights, which can run code; safetensors only otherwise")


@dataclass
class LoraSettings:
    """The adapter: PEFT's LoraConfig settings, and which factor starts random."""

    _argument_group_name = GROUPS[1]

    lora_r: int = _f(8, "LoRA rank r")
    lora_alpha: float = _f(16, "LoRA alpha; the update B A is scaled by alpha / r")
    lora_dropout: float = _f(0.05, "dropout on the LoRA input, in [0, 1)")
    lora_target_modules: list[str] | str | None = _f(None, "modules to adapt, e.g. query,value, or all-linear "
                                                      "(none = per-architecture default)")
    use_dora: bool = _f(False, "DoRA: learn a magnitude vector besides A and B")
    use_rslora: bool = _f(False, "rsLoRA: scale by alpha / sqrt(r) instead of alpha / r")
    modules_to_save: list[str] | None = _f(None, "non-LoRA modules trained in full, e.g. classifier")
    lora_init: str = _f("A", "which factor starts random: A (PEFT's default, B = 0; the paper's Init[1]) or B "
                        "(A = 0, B Kaiming-uniform; Init[2], the LoRA+ authors' default)")


class LoraPlusSettings(LoraPlusArguments):
    """The LoRA+ settings, declared once in core/settings.py, as the config's third help group."""

    _argument_group_name = GROUPS[2]


@dataclass
class TrainingSettings:
    """The Trainer's settings that the CLI sets itself (other TrainingArguments fields go to trainer_args)."""

    _argument_group_name = GROUPS[3]
    output_dir: str = _f("loraplus-output", "where checkpoints, adapter, metrics and config go")
    learning_rate: float = _f(2e-4, "lr_A, the learning rate of A; lr_B = loraplus_lr_ratio * lr_A")
    num_train_epochs: float = _f(3.0, "epochs to train (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "total optimizer steps; -1 = use num_train_epochs")
    per_device_train_batch_size: int = _f(16, "train batch size per device")
    per_device_eval_batch_size: int = _f(64, "eval batch size per device")
    gradient_accumulation_steps: int = _f(1, "batches accumulated per optimizer step")
    warmup_ratio: float = _f(0.06, "fraction of steps with linear lr warmup, in [0, 1)")
    lr_scheduler_type: str = _f("linear", "lr schedule; it scales each param group's own base lr")
    weight_decay: float = _f(0.0, "decoupled weight decay of weight matrices (not biases, norms)")
    optim: str = _f("adamw_torch", "optimizer name as in transformers: adamw_torch, adamw_bnb_8bit, ...")
    eval_steps: int | None = _f(None, "evaluate every this many steps (none = once per epoch)")
    save_steps: int | None = _f(None, "checkpoint every this many steps, a multiple of eval_steps (none = "
                                "at each evaluation)")
    logging_steps: int = _f(10, "log loss and lrs every this many steps")
    seed: int = _f(42, "random seed (data order, LoRA init, dropout)")
    resume_from_checkpoint: str | None = _f(None, "checkpoint directory to resume from")
    overwrite_output_dir: bool = _f(False, "allow writing into a non-empty output_dir")
    bf16: str = _f("auto", "bfloat16 mixed precision: auto (if the GPU supports it) | true | false")
    packed_sequences: bool = _f(True, "run a BERT-like encoder's or a Llama-family decoder's layers on the "
                                "batch's real tokens only, padding only inside attention (same function, "
                                "fewer tokens); other models run length-sorted micro-batches")
    length_micro_batches: int = _f(4, "sort each random batch by length and run it as up to this many "
                                   "micro-batches, each padded to its own longest, cut where that saves "
                                   "most (same batch, same gradient, less padding); 1 = one padded batch")
    length_micro_batch_cost: int = _f(128, "the fixed cost of one more micro-batch, in padded tokens: a batch is "
                                      "cut only where that saves more (fitted on a 2-core CPU; raise it on "
                                      "a GPU, where small micro-batches waste more)")
    group_by_length: bool = _f(False, "build batches from examples of similar length (less padding still, "
                               "but batches are no longer random draws; see results/speed)")
    fast_cpu_dropout: bool = _f(True, "on CPUs, draw the model's dropout masks four per random 64-bit word "
                                "(same keep rate, cheaper); false = torch's own dropout")
    feature_learning_steps: int | None = _f(None, "every K steps log delta_A / delta_B per LoRA layer to "
                                            "feature_learning.jsonl (none = off); see `loraplus diagnose`")
    report_to: list[str] = _f(["tensorboard"], "logging integrations, e.g. tensorboard,wandb, or none")
    trainer_args: dict[str, Any] = _f({}, "other TrainingArguments fields, forwarded to the Trainer")


CONFIG_GROUPS = (ModelDataSettings, LoraSettings, LoraPlusSettings, TrainingSettings)


# The bases in reverse: a dataclass collects the last base's fields first, so the fields (and config.yaml)
# read model & data, LoRA, LoRA+, training.
@dataclass
class TrainConfig(TrainingSettings, LoraPlusSettings, LoraSettings, ModelDataSettings):
    """Every setting of `loraplus train`; Hugging Face names where one exists, LoRA+ settings from the library."""

    @property
    def lr_other(self) -> float:
        """The lr of heads and other non-adapter parameters: loraplus_lr_other, else learning_rate (as param_groups)."""
        return self.loraplus_lr_other or self.learning_rate

    def validate(self) -> None:
        """Raise a one-line LoraPlusError naming the first invalid value and its fix; return when all are valid."""
        for name, hint in _own_hints().items():  # programmatic configs skip the parser's coercion
            value = getattr(self, name)
            if isinstance(value, float) and math.isnan(value):
                continue  # nan != nan; the range checks below name it
            if coerce(name, value, hint) != value:
                fail(f"bad value for {name}: expected {type_name(hint)}, got {value!r}")
        tm, words = self.lora_target_modules, self.label_words
        checks = [
            (self.task in TASKS, f"unknown task '{self.task}'; use one of {', '.join(TASKS)}"),
            (_positive(self.learning_rate), f"learning_rate must be a number > 0, got {self.learning_rate}; try 2e-4"),
            (_positive(self.loraplus_lr_ratio), (f"loraplus_lr_ratio must be a number > 0, got "
                                                 f"{self.loraplus_lr_ratio}; use 16 for LoRA+ or 1 for plain LoRA")),
            (self.loraplus_lr_embedding is None or _positive(self.loraplus_lr_embedding),
             f"loraplus_lr_embedding must be a number > 0, got {self.loraplus_lr_embedding}; "
             "or none for learning_rate"),
            (self.loraplus_lr_other is None or _positive(self.loraplus_lr_other),
             f"loraplus_lr_other must be a number > 0, got {self.loraplus_lr_other}; or none for learning_rate"),
            (self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}; try 8"),
            (self.lora_init in LORA_INITS, f"lora_init must be A or B, got {self.lora_init!r}"),
            (self.loraplus_lr_magnitude is None or _positive(self.loraplus_lr_magnitude),
             f"loraplus_lr_magnitude must be a number > 0, got {self.loraplus_lr_magnitude}; "
             "or none for learning_rate"),
            (self.loraplus_weight_decay is None or self.loraplus_weight_decay >= 0,
             f"loraplus_weight_decay must be >= 0, got {self.loraplus_weight_decay}; or none for weight_decay"),
            (self.loraplus_optimizer in LORAPLUS_OPTIMIZERS,
             f"loraplus_optimizer must be one of {', '.join(LORAPLUS_OPTIMIZERS)}, got {self.loraplus_optimizer!r}"),
            (_positive(self.lora_alpha), f"lora_alpha must be a number > 0, got {self.lora_alpha}; try 2 * lora_r"),
            (0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}; try 0.05"),
            (tm != [] and ((isinstance(tm, list) and "all-linear" not in tm) or tm in (None, "all-linear")),
             f"lora_target_modules must be module names, or just all-linear, got {tm!r}"),
            (words is None or len(words) >= 2, f"label_words needs one word per class (>= 2), got {words!r}"),
            # Two classes sharing a word are scored identically: one of them could never be predicted.
            (_first_repeat(words or []) is None,
             f"label word '{_first_repeat(words or [])}' is given twice in label_words; give each class its own word"),
            (self.max_length >= 1, f"max_length must be >= 1, got {self.max_length}"),
            (all(n is None or n >= 1 for n in (self.max_train_samples, self.max_eval_samples)),
             "max_train_samples and max_eval_samples must be >= 1, or none for all"),
            (0 < self.validation_split_ratio < 1,
             f"validation_split_ratio must be in (0, 1), got {self.validation_split_ratio}; try 0.1"),
            (min(self.per_device_train_batch_size, self.per_device_eval_batch_size) >= 1,
             "per_device_train_batch_size and per_device_eval_batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1,
             f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}"),
            (self.length_micro_batches >= 1,
             f"length_micro_batches must be >= 1, got {self.length_micro_batches}; 1 turns it off"),
            (self.length_micro_batch_cost >= 0,
             f"length_micro_batch_cost must be >= 0 tokens, got {self.length_micro_batch_cost}"),
            # -1 is the Trainer's "no step budget"; 0 would train nothing, and below -1 means nothing.
            (self.max_steps == -1 or self.max_steps > 0,
             f"max_steps must be a number of optimizer steps > 0, or -1 to train num_train_epochs; "
             f"got {self.max_steps}"),
            (self.max_steps > 0 or _positive(self.num_train_epochs),
             (f"num_train_epochs must be a number > 0 when max_steps is not set, got {self.num_train_epochs}; "
              "set --num_train_epochs or --max_steps")),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}; try 0.06"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (all(n is None or n >= 1 for n in (self.eval_steps, self.save_steps, self.feature_learning_steps))
             and self.logging_steps >= 1,
             "eval_steps, save_steps, feature_learning_steps and logging_steps must be >= 1"),
            # Checkpoints are written when evaluating, so the best one can be kept (load_best_model_at_end).
            (self.save_steps is None or (self.eval_steps is not None and self.save_steps % self.eval_steps == 0),
             (f"save_steps ({self.save_steps}) needs eval_steps and must be a multiple of it; "
              "set --eval_steps, or drop save_steps to save at each evaluation")),
            (self.bf16.lower() in BF16_CHOICES, f"bf16 must be one of {', '.join(BF16_CHOICES)}, got {self.bf16!r}"),
            (bool(self.output_dir), "output_dir is empty; give a directory for the run's outputs"),
        ]
        for ok, message in checks:
            if not ok:
                fail(message)

    def to_dict(self) -> dict[str, Any]:
        """Every key with its value (trainer_args included), JSON-serialisable."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """A validated TrainConfig from a mapping; TrainingArguments keys go to trainer_args, others are errors."""
        if not isinstance(d, Mapping):
            fail(f"a config must be a mapping of key: value, got {type(d).__name__}")
        own = _own_hints()
        d = {_norm(k): v for k, v in d.items()}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in coerce("trainer_args", d.pop("trainer_args", None) or {}, dict).items():
            if _norm(key) in own:
                fail(f"'{_norm(key)}' is a loraplus key, not a trainer_args entry; set it at the top level")
            extra[_norm(key)] = coerce(_norm(key), value, _hint(_norm(key)))
        for key, value in d.items():  # after trainer_args, so a top-level key overrides the nested one
            (kwargs if key in own else extra)[key] = coerce(key, value, _hint(key))
        tm = kwargs.get("lora_target_modules")
        if tm == ["all-linear"]:  # PEFT takes the bare string "all-linear", never inside a list
            kwargs["lora_target_modules"] = "all-linear"
        elif isinstance(tm, str) and tm != "all-linear":
            kwargs["lora_target_modules"] = [tm]
        cfg = cls(**kwargs, trainer_args=extra)
        for key, value in absolute_paths(dataclasses.asdict(cfg)).items():  # defaults too (output_dir)
            if value != getattr(cfg, key):
                setattr(cfg, key, value)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        """A validated TrainConfig from a YAML file (what `save` writes)."""
        return cls.from_dict(_read_yaml(path))

    def save(self, path: str) -> None:
        """Write the config to `path` as YAML, atomically, so a crash never leaves half a file."""
        text = "# resolved config of a run; rerun with: loraplus train <this file>\n"
        text += yaml.safe_dump(self.to_dict(), sort_keys=False)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_text_atomic(path, text)


def absolute_paths(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` with every local path made absolute (against the working folder), so a run's config.yaml
    works from anywhere (`loraplus eval RUN` from another folder). Aliases and hub ids stay as they are:
    a model or dataset name becomes a path only when it names something on disk."""
    def absolute(value):
        return os.path.abspath(os.path.expanduser(value))

    def builtin(key: str, value: str) -> bool:  # imported only for a name that is also on disk: data is heavy
        if key == "model_name_or_path":
            from loraplus.train.models import BUILTIN_MODELS as names
        else:
            from loraplus.train.sources import BUILTIN_DATASETS as names
        return value in names

    out = dict(settings)
    for key in ("train_file", "validation_file", "test_file", "output_dir"):
        if isinstance(out.get(key), str) and out[key]:
            out[key] = absolute(out[key])
    for key in ("model_name_or_path", "dataset_name"):
        value = out.get(key)
        if isinstance(value, str) and os.path.exists(os.path.expanduser(value)) and not builtin(key, value):
            out[key] = absolute(value)
    if isinstance(out.get("resume_from_checkpoint"), str) and out["resume_from_checkpoint"] != "latest":
        out["resume_from_checkpoint"] = absolute(out["resume_from_checkpoint"])
    return out


# Keys that name where a run lives or how it is launched, not what it trains.
RUN_ONLY_KEYS = frozenset({"output_dir", "overwrite_output_dir", "resume_from_checkpoint"})
# ... and those a resumed run may change without training anything differently (only what is logged or kept).
RESUME_FREE_KEYS = RUN_ONLY_KEYS | {"report_to", "logging_steps", "save_total_limit"}


def changed_settings(saved: Mapping[str, Any], cfg: "TrainConfig",
                     ignore: frozenset[str] = RUN_ONLY_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, saved value, value now) for each setting of `cfg` that differs from a run's saved config.

    A key the saved run did not have (a newer loraplus) had its default there. Values are compared as
    read back from YAML, so a tuple and a list, or 1e-3 and 0.001, are the same setting.
    """
    wanted = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    # a run saved by an older loraplus: relative paths name the same files, a renamed key the same setting
    saved = absolute_paths({_norm(k): v for k, v in saved.items()})
    defaults = yaml.safe_load(yaml.safe_dump(TrainConfig().to_dict()))
    return [(k, saved.get(k, defaults.get(k)), wanted.get(k)) for k in sorted(wanted.keys() | saved.keys())
            if k not in ignore and saved.get(k, defaults.get(k)) != wanted.get(k)]


def describe_changes(changes: list[tuple[str, Any, Any]], limit: int = 3) -> str:
    """'learning_rate 0.001 there, 0.003 now; ...' for the first `limit` changes."""
    return "; ".join(f"{k} {old!r} there, {new!r} now" for k, old, new in changes[:limit])


def parse_train_args(argv: Sequence[str], command_flags: Sequence[str] = ()) -> TrainConfig:
    """A validated TrainConfig from `[CONFIG.yaml] [--key value | --key=value | --bool_flag ...]`; flags win.

    TrainConfig's own keys are parsed first; a flag it does not know is looked up among the Trainer's
    TrainingArguments fields (forwarded through trainer_args), and refused with the nearest key otherwise,
    among these and `command_flags` (the own flags of compare, sweep or tune, which pass the rest here)."""
    flags, rest = _config_parser().parse_given(argv)
    if any(token.startswith("--") for token in rest):
        trainer_flags, rest = _trainer_arguments_parser().parse_given(rest)
        flags.update(trainer_flags)
    for token in rest:
        if token.startswith("--"):
            _hint(_norm(token[2:].split("=", 1)[0]), command_flags)  # raises: unknown key, with the nearest one
        if token.startswith("-") and not is_number(token):
            fail(f"unexpected argument '{token}'; flags are written --key value")
    if len(rest) > 1:
        fail(f"more than one config file given ({', '.join(rest)}); pass one YAML file, override with --key value")
    raw = {_norm(k): v for k, v in (_read_yaml(rest[0]) if rest else {}).items()}
    return TrainConfig.from_dict({**raw, **flags})


@functools.lru_cache(maxsize=1)
def _config_parser():
    """The parser of TrainConfig's own flags, one help group each (see arguments.py)."""
    return command_parser(CONFIG_GROUPS, "train", renamed=RENAMED_KEYS)


@functools.lru_cache(maxsize=1)
def _trainer_arguments_parser():
    """The parser of the TrainingArguments fields TrainConfig does not declare (imports transformers' Trainer
    side, so only built when such a flag is given)."""
    from transformers import TrainingArguments

    return command_parser(TrainingArguments, "train", renamed=RENAMED_KEYS)


def train_help() -> str:
    """The text of `loraplus train --help`: every key with its type, default and help, grouped."""
    lines = ["usage: loraplus train [CONFIG.yaml] [--key value | --key=value ...]", "",
             "Keys come from the YAML file; --key value flags override them. Lists: a,b,c. Empty: none.",
             "A bool flag alone means true (--use_dora); --no_KEY turns off one that defaults to true.",
             "Flags are read by transformers' HfArgumentParser; --key-name is --key_name."]
    for group in CONFIG_GROUPS:
        lines += ["", f"{group._argument_group_name}:"]
        lines += flag_lines(group)
    lines += ["", "Any other transformers.TrainingArguments field (e.g. --adam_beta2 0.98, --max_grad_norm 0.5)",
              "is also accepted, type-checked against TrainingArguments, and forwarded to the Trainer."]
    return "\n".join(lines)


def training_arguments_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The keyword arguments of `transformers.TrainingArguments` for `cfg`: HF-named fields, then trainer_args."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    # Checked here, not left to TrainingArguments, so the user gets one clear line instead of a traceback.
    for key, choices in (("lr_scheduler_type", SchedulerType), ("optim", OptimizerNames)):
        names = [e.value for e in choices]
        if getattr(cfg, key) not in names:
            fail(f"unknown {key} '{getattr(cfg, key)}'; use one of {', '.join(names)}")
    accepted = _trainer_arg_hints()
    hf_named = ("output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                "per_device_eval_batch_size", "gradient_accumulation_steps", "lr_scheduler_type",
                "weight_decay", "optim", "logging_steps", "seed", "resume_from_checkpoint",
                "overwrite_output_dir", "group_by_length")
    # Only the names this transformers version has (5.x dropped overwrite_output_dir and group_by_length).
    kw: dict[str, Any] = {k: getattr(cfg, k) for k in hf_named if k in accepted}
    kw["report_to"] = list(cfg.report_to)
    # transformers 5 has no warmup_ratio: a fractional warmup_steps is the ratio. 4.x: int steps + warmup_ratio.
    if accepted.get("warmup_steps") is float or "warmup_ratio" not in accepted:
        kw["warmup_steps"] = cfg.warmup_ratio
    else:
        kw["warmup_ratio"] = cfg.warmup_ratio
    if cfg.group_by_length and "group_by_length" not in accepted and "train_sampling_strategy" in accepted:
        kw["train_sampling_strategy"] = "group_by_length"
    # Save on the evaluation schedule so the caller can keep the best checkpoint (load_best_model_at_end).
    if cfg.eval_steps is None:
        kw.update(eval_strategy="epoch", save_strategy="epoch")
    else:
        kw.update(eval_strategy="steps", eval_steps=cfg.eval_steps, save_strategy="steps",
                  save_steps=cfg.save_steps or cfg.eval_steps)
    kw["bf16"] = cfg.bf16.lower() == "true"
    if cfg.bf16.lower() == "auto":
        import torch

        kw["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    kw.update(cfg.trainer_args)  # keys the user named explicitly win
    return kw


def check_training_arguments(kwargs: dict[str, Any]) -> None:
    """Build TrainingArguments once, before any loading, so its own checks end in one line, not a traceback."""
    import torch
    from transformers import TrainingArguments

    accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    if kwargs.get("bf16") and not kwargs.get("use_cpu") and not accelerator:
        fail("bf16 true needs a GPU with bfloat16 and none is visible; use --bf16 auto, "
              "or add --use_cpu true for bfloat16 autocast on the CPU")
    _check_report_to(kwargs.get("report_to"))
    if kwargs.get("deepspeed"):
        # A DeepSpeed TrainingArguments registers its config globally (ZeRO-3 init at from_pretrained); a
        # throwaway one could leave that half-set for the model load. Its file was checked already.
        return
    try:
        TrainingArguments(**kwargs)
    except (ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"the Trainer refuses these settings: {first}")


def _check_report_to(report_to) -> None:
    """A logger that is not installed fails here, not when the Trainer is built after config.yaml is written."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if names in (["none"], ["all"], []):
        return
    available = set(get_available_reporting_integrations())
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            fail(f"report_to '{name}' is not a logger the Trainer knows; use one of "
                  f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}, or none")
        if name not in available:
            fail(f"report_to '{name}': its package is not installed; pip install it, or pass --report_to none")


def _first_repeat(words: list[str]) -> str | None:
    """The first word that occurs again (surrounding spaces ignored: the prompt supplies its own), or None."""
    seen: set[str] = set()
    for word in words:
        if word.strip() in seen:
            return word.strip()
        seen.add(word.strip())
    return None


def _positive(value: float) -> bool:
    """A finite number above zero (nan and inf are neither a learning rate nor a length of training)."""
    return math.isfinite(value) and value > 0


# Keys that were renamed: a config or a run folder written with the old name still reads the same.
RENAMED_KEYS = {"lora_optimizer": "loraplus_optimizer"}


def _norm(key: Any) -> str:
    """A key as written in a flag or YAML, with hyphens read as underscores (--learning-rate), under its
    current name."""
    key = str(key).strip().replace("-", "_")
    return RENAMED_KEYS.get(key, key)


@functools.lru_cache(maxsize=1)
def _own_hints() -> dict[str, Any]:
    """Field name -> annotation of every TrainConfig field."""
    return typing.get_type_hints(TrainConfig)


@functools.lru_cache(maxsize=1)
def _trainer_arg_hints() -> dict[str, Any]:
    """Field name -> annotation of every constructor field of transformers.TrainingArguments (lazy import)."""
    from transformers import TrainingArguments

    try:
        hints = typing.get_type_hints(TrainingArguments)
    except (NameError, TypeError):  # some versions annotate with names importable only under TYPE_CHECKING
        hints = {}
    return {f.name: hints.get(f.name, Any if isinstance(f.type, str) else f.type)
            for f in dataclasses.fields(TrainingArguments) if f.init and not f.name.startswith("_")}


def _hint(key: str, command_flags: Sequence[str] = ()) -> Any:
    """The annotation of a TrainConfig or TrainingArguments key; an unknown key raises with the nearest name."""
    if key in _own_hints():
        return _own_hints()[key]
    if key in _trainer_arg_hints():
        return _trainer_arg_hints()[key]
    fail(f"unknown key '{key}'{nearest(key, [*command_flags, *_own_hints(), *_trainer_arg_hints()])} "
         "(`loraplus train --help` lists every key)")


def _read_yaml(path: str) -> dict[str, Any]:
    """The top-level mapping of a YAML config file (safe_load only), or a one-line error."""
    if not os.path.isfile(path):
        fail(f"config file not found: {path}; check the path (one YAML file, then --key value flags)")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark, start = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        # the parser notices late (an unclosed bracket shows on a later line): say where the construct began
        began = f" ({e.context} at line {start.line + 1})" if start is not None and e.context else ""
        fail(f"cannot parse {path}{where}: {getattr(e, 'problem', None) or e}{began}; fix the YAML syntax there")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read config file {path}: {e}")
    if data is not None and not isinstance(data, dict):
        fail(f"{path} must hold a mapping at the top level, got a {type(data).__name__}; write key: value lines")
    return data or {}


