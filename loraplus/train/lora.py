"""LoRA attached through PEFT: which modules (per-architecture defaults, all-linear, checked names), and which
factor starts random (Init[1]: A random and B = 0, PEFT's default; Init[2]: A = 0 and B random, the authors')."""

from __future__ import annotations

import logging
import math

from loraplus.core.errors import LoraPlusError
from loraplus.train.config import TASKS
from loraplus.train.models import BERT_LIKE

log = logging.getLogger(__name__)


def _adaptable_layers(model) -> dict[str, str]:
    """Every Linear / Conv1D / Embedding module name of `model` -> its class name."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    kinds = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, Conv1D)
    return {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds) and name}


def _matches(module_name: str, target: str) -> bool:
    # PEFT's rule for a list of names (peft.tuners.tuners_utils.check_target_module_exists).
    return module_name == target or module_name.endswith("." + target)


def default_target_modules(model) -> list[str] | str:
    """Attention query/value layer names for the model's architecture, else "all-linear"."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    names = _DEFAULT_TARGETS.get(model_type)
    if names:
        layers = _adaptable_layers(model)
        present = [t for t in names if any(_matches(n, t) for n in layers)]
        if present:
            return present
    log.info("no default LoRA targets for model_type %r; using all-linear", model_type)
    return "all-linear"


def _check_targets(model, target_modules: list[str]) -> None:
    """Raise LoraPlusError when a target name matches no adaptable layer, listing the layer names."""
    layers = _adaptable_layers(model)
    missing = [t for t in target_modules if not any(_matches(n, t) for n in layers)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in layers})
        raise LoraPlusError(f"target module(s) {', '.join(missing)} match no Linear/Conv1D/Embedding layer of "
                            f"this model; choose --lora_target_modules among: {', '.join(leaves)} (or all-linear)")


def attach_lora(model, *, task: str, r: int = 8, alpha: float = 16, dropout: float = 0.05,
                target_modules: list[str] | str | None = None, use_dora: bool = False,
                use_rslora: bool = False, modules_to_save: list[str] | None = None, init: str = "A"):
    """Wrap `model` in a PeftModel with LoRA (W0 + (alpha/r)·B·A, B = 0 at start) on target_modules.

    target_modules: None -> default_target_modules(model); "all-linear"; a list of names or one
    comma-separated string, each matching a module named exactly so or ending in "." + name.
    For classification the task type is SEQ_CLS, so PEFT also trains the new head.
    init: "A" keeps PEFT's initialisation, "B" swaps the factors' roles (`init_factors`).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if task not in TASKS:
        raise LoraPlusError(f"unknown task '{task}'; use one of: {', '.join(TASKS)}")
    if r < 1:
        raise LoraPlusError(f"LoRA rank r={r} must be at least 1; pass --lora_r 8 or similar")
    if target_modules is None:
        target_modules = default_target_modules(model)
    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [t.strip() for t in target_modules.split(",") if t.strip()]
    fan_in_fan_out = False
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
        _check_targets(model, target_modules)
        # GPT-2's Conv1D stores W transposed; PEFT needs to know (it warns and flips it otherwise).
        fan_in_fan_out = any(kind == "Conv1D" and any(_matches(n, t) for t in target_modules)
                             for n, kind in _adaptable_layers(model).items())
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM,
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
        use_dora=use_dora, use_rslora=use_rslora, modules_to_save=modules_to_save, fan_in_fan_out=fan_in_fan_out,
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:  # e.g. DoRA on a layer type it does not support
        raise LoraPlusError(f"PEFT refused the LoRA config ({str(e).splitlines()[0]}); "
                            f"change --lora_target_modules or the LoRA variant") from e
    if init == "B":
        init_factors(peft_model)
    return peft_model


def init_factors(model) -> int:
    """The paper's Init[2]: A = 0 and B Kaiming-uniform, in every LoRA layer; returns how many layers changed.

    PEFT's default is Init[1]: A Kaiming-uniform (`kaiming_uniform_(a=sqrt(5))`, as nn.Linear), B = 0. The LoRA+
    authors' experiments ran on a PEFT fork whose default swaps the two (LoRA+ section 5.3: the recommended
    ratio 2^4 belongs to Init[2]; with Init[1] the best ratio is smaller). B then gets the initialiser PEFT
    gives A. Either way B A = 0, so the model starts as the base model. Embedding LoRA already starts with
    A = 0 and B ~ N(0, 1) in PEFT, which is Init[2]; it is left so. DoRA's magnitude is computed from the
    weight with B A = 0 and stays valid.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    changed = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            for adapter in module.lora_A.keys():
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                a.zero_()
                torch.nn.init.kaiming_uniform_(b, a=math.sqrt(5))
                changed += 1
    return changed


_DEFAULT_TARGETS: dict[str, list[str]] = {
    **{t: ["query", "value"] for t in BERT_LIKE},
    "distilbert": ["q_lin", "v_lin"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "mpnet": ["q", "v"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "bloom": ["query_key_value"],
    "falcon": ["query_key_value"],
    "phi3": ["qkv_proj"],
    **{t: ["q_proj", "v_proj"] for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                                         "gemma3_text", "smollm3", "opt", "phi", "olmo", "olmo2", "gptj")},
}
