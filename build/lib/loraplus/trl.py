"""LoRA+ for TRL's trainers: ready-made SFT and DPO trainers whose B factors learn `ratio` times faster than A.

Why this module exists:
- Ready-made: `LoraPlusSFTTrainer` / `LoraPlusSFTConfig` (and DPO's pair) replace TRL's own classes one for one.
- Tested against TRL (tests/test_trl.py): the ratio holds at every scheduler step, resume restores the groups.
- Optional: TRL is an extra (`pip install trl`), so `import loraplus` never imports it; this module alone does.

The trainers override only `create_optimizer` (`LoraPlusMixin`), as `LoraPlusTrainer` does; a plain
`trl.SFTConfig` or `trl.DPOConfig` works too and gives the `LoraPlusArguments` defaults (ratio 16).
"""

from __future__ import annotations

from dataclasses import dataclass

# The lowest TRL tested here (pyproject's `trl` extra, constraints-floor.txt; `make test-floor`). TRL 0.28 and
# older take transformers 5's `_is_package_available` (a tuple) for a bool, so every optional integration looks
# installed and `trl.DPOTrainer` fails to import (No module named 'weave' / 'mergekit').
TRL_FLOOR = "0.29.0"

try:
    import trl
except ModuleNotFoundError as error:
    if error.name != "trl":  # TRL is there but one of its own imports is missing: show that, not "install trl"
        raise
    raise ModuleNotFoundError(
        "loraplus.trl needs TRL, which is not installed: pip install trl  (or pip install 'loraplus[trl]')",
        name="trl",
    ) from None

# After the TRL check, so that a missing TRL is reported before anything heavy is imported.
from packaging.version import Version  # noqa: E402

from loraplus.core.trainer import LoraPlusArguments, LoraPlusMixin  # noqa: E402

if Version(trl.__version__) < Version(TRL_FLOOR):
    raise ImportError(f"loraplus.trl needs trl>={TRL_FLOOR}, found {trl.__version__}: "
                      f"pip install -U 'trl>={TRL_FLOOR}'")

__all__ = ["LoraPlusSFTConfig", "LoraPlusSFTTrainer", "LoraPlusDPOConfig", "LoraPlusDPOTrainer"]


@dataclass
class LoraPlusSFTConfig(trl.SFTConfig, LoraPlusArguments):
    """`trl.SFTConfig` plus the LoRA+ settings (`loraplus_lr_ratio`, ...); `learning_rate` is lr_A."""


class LoraPlusSFTTrainer(LoraPlusMixin, trl.SFTTrainer):
    """`trl.SFTTrainer` with LoRA+ optimizer groups; use with `LoraPlusSFTConfig` (or a plain `SFTConfig`)."""


@dataclass
class LoraPlusDPOConfig(trl.DPOConfig, LoraPlusArguments):
    """`trl.DPOConfig` plus the LoRA+ settings (`loraplus_lr_ratio`, ...); `learning_rate` is lr_A."""


class LoraPlusDPOTrainer(LoraPlusMixin, trl.DPOTrainer):
    """`trl.DPOTrainer` with LoRA+ optimizer groups; use with `LoraPlusDPOConfig` (or a plain `DPOConfig`)."""
