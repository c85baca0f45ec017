"""LoRA+ parameter groups: lr_B = ratio * lr_A, with every trainable parameter given a role.

Roles come from the PEFT layer object that owns a parameter, never from its name or shape
(sorting by name substrings or `ndim` is how other implementations put embedding factors, biases and
DoRA magnitudes in the wrong group):

| role / group       | what                                                        | lr            | decay |
|--------------------|-------------------------------------------------------------|---------------|-------|
| `lora_A`           | `LoraLayer.lora_A[adapter]` weights (Linear, Conv1D, Conv)  | lr            | yes   |
| `lora_B`           | `LoraLayer.lora_B[adapter]` weights                         | lr * ratio    | yes   |
| `lora_embedding_A` | `LoraLayer.lora_embedding_A[adapter]`                       | lr_embedding  | yes   |
| `lora_embedding_B` | `LoraLayer.lora_embedding_B[adapter]`                       | lr_embedding  | yes   |
| `lora_magnitude`   | DoRA `lora_magnitude_vector[adapter]`                       | lr_magnitude  | never |
| `other`            | heads, `modules_to_save`, trainable tokens: matrices        | lr_other      | yes   |
| `other_no_decay`   | biases (`bias="all"/"lora_only"`, `lora_bias`), norms, 1-D  | lr_other      | never |

`lr_embedding`, `lr_magnitude` and `lr_other` default to `lr`: nothing but B trains at
`lr * ratio` unless asked. "decay" means the user's `weight_decay` (or `lora_weight_decay` for the
LoRA matrices), or the optimizer's own default when neither is given (AdamW: 0.01), so switching from
`AdamW(params, lr=...)` changes nothing but the learning rates; biases, norm weights and DoRA
magnitudes are never decayed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

from torch import nn

from loraplus.core.errors import LoraPlusError

GROUP_ORDER = (
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude",
    "other",
    "other_no_decay",
)
LORA_ROLES = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")

# LoraLayer attribute -> role of the parameters it holds (ModuleDict or ParameterDict per adapter).
_LORA_CONTAINERS = {
    "lora_A": "lora_A",
    "lora_B": "lora_B",
    "lora_embedding_A": "lora_embedding_A",
    "lora_embedding_B": "lora_embedding_B",
    "lora_magnitude_vector": "lora_magnitude",
}

_NORM_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
        nn.modules.batchnorm._NormBase,
    )
    if t is not None
)


def _peft_layer_types():
    """The PEFT classes that decide roles (imported lazily: peft is heavy)."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:  # AdaLoRA subclasses LoraLayer but adds singular values E that LoRA+ does not define.
        from peft.tuners.adalora import AdaLoraLayer
    except ImportError:  # pragma: no cover - very old or trimmed peft
        AdaLoraLayer = ()
    try:  # trainable tokens ride along with LoRA (`trainable_token_indices`): a plain "other" delta.
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    except ImportError:  # pragma: no cover - peft < 0.15
        TrainableTokensLayer = ()
    return LoraLayer, BaseTunerLayer, AdaLoraLayer, TrainableTokensLayer


def _refuse_flattened(named: list[tuple[str, nn.Parameter]]) -> None:
    """FSDP without use_orig_params hands the optimizer one flat tensor per unit: roles are gone."""
    for name, p in named:
        if getattr(p, "_is_flat_param", False) or name.endswith("_flat_param"):
            raise LoraPlusError(
                f"parameter '{name}' is an FSDP flat parameter, so LoRA A and B cannot be told apart; "
                "wrap the model with FSDP(..., use_orig_params=True) (Trainer: fsdp_config "
                '{"use_orig_params": true}) before building the LoRA+ optimizer'
            )


def _refuse_other_adapters(model: nn.Module, types) -> None:
    """LoRA+ is defined for LoRA's A/B factorisation only: name any other adapter type and stop."""
    LoraLayer, BaseTunerLayer, AdaLoraLayer, TrainableTokensLayer = types
    for name, module in model.named_modules():
        if isinstance(module, AdaLoraLayer) or (
            isinstance(module, BaseTunerLayer)
            and not isinstance(module, (LoraLayer, *_as_tuple(TrainableTokensLayer)))
        ):
            kind = type(module).__module__.split(".tuners.")[-1].split(".")[0]
            raise LoraPlusError(
                f"module '{name}' is a {type(module).__name__} from PEFT's '{kind}' adapter; LoRA+ is "
                "defined only for LoRA (A/B factors, incl. DoRA, rsLoRA, embeddings, Conv1D); "
                "use a LoraConfig, or a plain optimizer for this adapter"
            )


def _as_tuple(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """Map every trainable parameter name of `model` to its role (see the module table).

    Raises LoraPlusError for FSDP-flattened parameters, non-LoRA PEFT adapters, and models with
    no trainable LoRA factor at all.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    _refuse_flattened(named)
    types = _peft_layer_types()
    _refuse_other_adapters(model, types)
    LoraLayer = types[0]

    role_by_id: dict[int, str] = {}
    n_lora_layers = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            n_lora_layers += 1
            for attr, role in _LORA_CONTAINERS.items():
                container = getattr(module, attr, None)
                if container is None:
                    continue
                for held in container.values():  # one entry per adapter name
                    if isinstance(held, nn.Parameter):
                        role_by_id[id(held)] = role
                        continue
                    for pname, p in held.named_parameters():
                        # lora_bias=True puts a bias on B's Linear: a bias, not a B factor.
                        is_bias = role == "lora_B" and pname.rsplit(".", 1)[-1] == "bias"
                        role_by_id[id(p)] = "other_no_decay" if is_bias else role
        if isinstance(module, _NORM_TYPES):
            for p in module.parameters(recurse=False):
                role_by_id.setdefault(id(p), "other_no_decay")

    roles = {}
    for name, p in named:
        role = role_by_id.get(id(p))
        if role is None:
            role = "other" if p.ndim >= 2 else "other_no_decay"  # decay policy only, not a LoRA role
        roles[name] = role

    if not any(r in LORA_ROLES for r in roles.values()):
        _raise_no_lora(model, named, n_lora_layers)
    return roles


def _raise_no_lora(model: nn.Module, named, n_lora_layers: int) -> None:
    kind = type(model).__name__
    if n_lora_layers:
        raise LoraPlusError(
            f"{kind} has {n_lora_layers} LoRA layers but none of their A/B factors is trainable "
            "(frozen or merged?); call model.train() on a PeftModel or set requires_grad on the adapter"
        )
    sample = ", ".join(n for n, _ in named[:3]) or "none"
    total = sum(p.numel() for _, p in named)
    raise LoraPlusError(
        f"no LoRA B parameters found: {kind} has no PEFT LoRA layer and {len(named)} trainable tensors "
        f"({total:,} params; e.g. {sample}); wrap it with peft.get_peft_model(model, LoraConfig(...)) first"
    )


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    ratio: float = 16.0,
    weight_decay: float | None = None,
    lora_weight_decay: float | None = None,
    lr_embedding: float | None = None,
    lr_magnitude: float | None = None,
    lr_other: float | None = None,
) -> list[dict]:
    """Optimizer param groups with lr_B = ratio * lr_A and every other role at its own policy.

    Args:
        lr: learning rate of the A factors (lr_A).
        ratio: lr_B / lr_A (paper: about 2**4). Must be > 0; < 1 warns.
        weight_decay: decay of matrices (LoRA factors, heads); 1-D params, norms, DoRA never.
            None leaves the matrices' groups without a "weight_decay" key: the optimizer's default
            applies.
        lora_weight_decay: decay of the LoRA factors only, if different (PEFT's `loraplus_weight_decay`).
        lr_embedding: lr of both embedding factors (default: lr).
        lr_magnitude: lr of DoRA magnitudes (default: lr).
        lr_other: lr of heads, modules_to_save, biases, norms, trainable tokens (default: lr).

    Returns a list of dicts in `GROUP_ORDER`, empty groups dropped; each has "name", "params",
    "param_names", "lr" and (unless left to the optimizer) "weight_decay". The groups are disjoint
    and cover every parameter with requires_grad (asserted).
    """
    _check_lr("lr", lr)
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
        raise LoraPlusError(f"loraplus ratio must be a finite number > 0 (lr_B = ratio * lr_A), got {ratio!r}")
    if ratio < 1:
        warnings.warn(
            f"LoRA+ ratio {ratio} < 1 makes B learn slower than A; the paper's analysis asks for ratio >> 1",
            stacklevel=2,
        )
    for label, value in (("lr_embedding", lr_embedding), ("lr_magnitude", lr_magnitude), ("lr_other", lr_other)):
        if value is not None:
            _check_lr(label, value)
    lora_decay = weight_decay if lora_weight_decay is None else lora_weight_decay
    policy = {
        "lora_A": (lr, lora_decay),
        "lora_B": (lr * ratio, lora_decay),
        "lora_embedding_A": (lr if lr_embedding is None else lr_embedding, lora_decay),
        "lora_embedding_B": (lr if lr_embedding is None else lr_embedding, lora_decay),
        "lora_magnitude": (lr if lr_magnitude is None else lr_magnitude, 0.0),
        "other": (lr if lr_other is None else lr_other, weight_decay),
        "other_no_decay": (lr if lr_other is None else lr_other, 0.0),
    }

    roles = parameter_roles(model)
    by_name = dict(model.named_parameters())
    groups = []
    for role in GROUP_ORDER:
        names = [n for n, r in roles.items() if r == role]
        if names:
            group_lr, decay = policy[role]
            group = {"name": role, "params": [by_name[n] for n in names], "param_names": names, "lr": group_lr}
            if decay is not None:
                group["weight_decay"] = decay
            groups.append(group)
    _assert_partition(groups, (p for p in model.parameters() if p.requires_grad))
    return groups


def _check_lr(label: str, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise LoraPlusError(f"{label} must be a finite number > 0, got {value!r}")


def _assert_partition(groups: list[dict], trainable: Iterable[nn.Parameter]) -> None:
    """Groups are disjoint and cover exactly the trainable parameters (style rule 4)."""
    # raised, not asserted: the check must hold under `python -O` too
    seen = [id(p) for g in groups for p in g["params"]]
    if len(seen) != len(set(seen)):
        raise RuntimeError("a parameter landed in two LoRA+ groups (a loraplus bug: please report it)")
    if set(seen) != {id(p) for p in trainable}:
        raise RuntimeError("LoRA+ groups do not cover the trainable parameters (a loraplus bug: please report it)")


def describe(optimizer_or_groups) -> str:
    """A table of an optimizer's groups: group, tensors, parameters, lr, weight decay."""
    groups = getattr(optimizer_or_groups, "param_groups", optimizer_or_groups)
    rows = [("group", "tensors", "params", "lr", "weight_decay")]
    for i, g in enumerate(groups):
        rows.append(
            (
                str(g.get("name", f"group{i}")),
                str(len(g["params"])),
                f"{sum(p.numel() for p in g['params']):,}",
                f"{g['lr']:.3g}",
                f"{g.get('weight_decay', 0.0):.3g}",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
