"""loraplus: LoRA+ finetuning (lr_B = ratio * lr_A) for every PEFT LoRA variant, with the evidence.

The library is `loraplus.core` (torch, transformers and peft only); `loraplus.speed`, `loraplus.train`,
`loraplus.experiments` and `loraplus.cli` are the finetuning application (`pip install 'loraplus[cli]'`),
each importing only the layers before it (README, "Architecture"). Public names are imported lazily so
that `loraplus --help` does not pay for torch and transformers.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "param_groups": "core.groups",
    "parameter_roles": "core.groups",
    "describe": "core.groups",
    "create_loraplus_optimizer": "core.optim",
    "LoraPlusTrainer": "core.trainer",
    "LoraPlusTrainingArguments": "core.trainer",
    "LoraPlusArguments": "core.settings",
    "LoraPlusMixin": "core.trainer",
    "LoraPlusError": "core.errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'loraplus' has no attribute {name!r}")
