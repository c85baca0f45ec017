"""LoRA+'s rivals as optimizers over the same parameter groups: PEFT's Riemannian preconditioning and LoRA-FA.

A fair comparison changes only how the adapter is optimised. PEFT's own functions put every trainable
parameter in one group at one lr, so a head would train at the adapter's rate in those arms and at
`lr_other` in the others. Here each rival keeps PEFT's update rule and takes loraplus' groups, so heads,
`modules_to_save` and biases train at `lr_other` (and the same weight decay) in every arm.

- `riemannian` (PEFT's `create_riemannian_optimizer`, Zhang & Pilanci 2024): before each step the gradient of
  A is multiplied by (B^T B + reg I)^-1 and that of B by (A A^T + reg I)^-1, then the chosen optimizer steps.
  PEFT builds the optimizer class around the model's (A, B) pairs; it is instantiated here over the LoRA+
  groups, so the ratio applies too (the `riemannian` arm of `compare` uses ratio 1).
- `lorafa` (PEFT's `create_lorafa_optimizer`, Zhang et al. 2023): A stays at its random init and B's gradient
  is projected by (A A^T)^-1 / scaling^2 inside an AdamW-style step. Its step pairs A with the B that follows
  it in its group, so the factors form one group, "lora" (A frozen), and the other parameters "other".
"""

from __future__ import annotations

from loraplus.core.errors import LoraPlusError


def riemannian_optimizer_class(model, optimizer_cls: type, *, reg: float = 1e-2) -> type:
    """`optimizer_cls` subclassed by PEFT so that each step preconditions the model's LoRA A and B gradients."""
    try:
        from peft.optimizers import create_riemannian_optimizer
    except ImportError as e:
        raise LoraPlusError("loraplus_optimizer riemannian needs PEFT's create_riemannian_optimizer, which this peft "
                            "lacks (0.21 has it); pip install -U peft, or use loraplus") from e
    # PEFT builds the class around this model's (A, B) pairs; the instance it returns holds no state yet.
    return type(create_riemannian_optimizer(model, optimizer_cls, lr=1.0, reg=reg))


def lora_scaling(model) -> float:
    """The LoRA layers' alpha / r (or alpha / sqrt(r)): LoRA-FA divides B's projected gradient by its square."""
    from peft.tuners.lora import LoraLayer

    values = {v for m in model.modules() if isinstance(m, LoraLayer) for v in m.scaling.values()}
    if len(values) != 1:
        raise LoraPlusError(f"loraplus_optimizer lorafa needs one LoRA scaling for every layer, found {sorted(values)}")
    return values.pop()


def lorafa_optimizer(model, *, lr: float, lr_other: float | None, weight_decay: float,
                     betas=(0.9, 0.999), eps: float = 1e-6):
    """PEFT's LoRA-FA optimizer: A frozen at init, B's gradient projected; other parameters at lr_other."""
    from peft.optimizers.lorafa import LoraFAOptimizer

    from loraplus.core.groups import parameter_roles

    roles = parameter_roles(model)  # before A is frozen: it must be a LoRA model with A and B
    scaling = lora_scaling(model)
    if any(r in ("lora_magnitude", "lora_embedding_A", "lora_embedding_B") for r in roles.values()):
        raise LoraPlusError("loraplus_optimizer lorafa supports LoRA on linear layers only (no DoRA, no embeddings); "
                            "drop --use_dora and embedding targets, or use loraplus")
    lora, other, other_no_decay = [], [], []
    for name, p in model.named_parameters():
        if roles.get(name) in ("lora_A", "lora_B"):
            if roles[name] == "lora_A":
                p.requires_grad_(False)  # LoRA-FA: A stays a random projection
            lora.append((name, p))
        elif roles.get(name) == "other":
            other.append((name, p))
        elif roles.get(name) == "other_no_decay":
            other_no_decay.append((name, p))

    def group(name, named, group_lr, decay):
        # "scaling_factor" (one value) is what PEFT 0.18 reads, "scaling_factors" (per parameter) what later ones do
        return {"name": name, "params": [p for _, p in named], "names": [n for n, _ in named], "lr": group_lr,
                "weight_decay": decay, "scaling_factor": scaling,
                "scaling_factors": [scaling if ".lora_" in n else None for n, _ in named],
                "betas": tuple(betas), "eps": eps}

    lr_other = lr if lr_other is None else lr_other
    groups = [group("lora", lora, lr, weight_decay), group("other", other, lr_other, weight_decay),
              group("other_no_decay", other_no_decay, lr_other, 0.0)]
    return LoraFAOptimizer([g for g in groups if g["params"]])
