"""loraplus: LoRA+ finetuning (lr_B = ratio * lr_A) for every PEFT LoRA variant, with the evidence.

Public names are imported lazily so that `loraplus --help` does not pay for torch and transformers.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "param_groups": "groups",
    "parameter_roles": "groups",
    "describe": "groups",
    "create_loraplus_optimizer": "optim",
    "LoraPlusTrainer": "trainer",
    "LoraPlusTrainingArguments": "trainer",
    "LoraPlusArguments": "trainer",
    "LoraPlusMixin": "trainer",
    "LoraPlusError": "errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'loraplus' has no attribute {name!r}")
