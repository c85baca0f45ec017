"""Init[2] (A = 0, B random) and the rival arms (PEFT's Riemannian preconditioning, LoRA-FA) over loraplus' groups."""

import math

import pytest
import torch
from conftest import peft, tiny_bert, tiny_gpt2, tiny_llama, train_lm_losses
from peft.tuners.lora import LoraLayer

from loraplus import LoraPlusError, LoraPlusTrainer, LoraPlusTrainingArguments
from loraplus.train.lora import init_factors

try:
    from peft.optimizers import create_riemannian_optimizer  # noqa: F401
    HAS_RIEMANNIAN = True
except ImportError:  # peft 0.18, the lowest supported: the arm is refused in one line
    HAS_RIEMANNIAN = False
needs_riemannian = pytest.mark.skipif(not HAS_RIEMANNIAN, reason="this peft has no create_riemannian_optimizer")

MODELS = {
    "bert_linear": lambda: peft(tiny_bert(), task_type="SEQ_CLS", target_modules=["query", "value"]),
    "gpt2_conv1d": lambda: peft(tiny_gpt2(), target_modules=["c_attn"], fan_in_fan_out=True),
    "llama_dora_embedding": lambda: peft(tiny_llama(), target_modules=["q_proj", "embed_tokens"], use_dora=True),
}


def factors(model):
    """(A, B, r) of every LoRA layer and adapter: weights of Linear factors, or the embedding parameters."""
    found = []
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter, a in module.lora_A.items():
                found.append((a.weight, module.lora_B[adapter].weight, module.r[adapter], "linear"))
            for adapter, a in module.lora_embedding_A.items():
                found.append((a, module.lora_embedding_B[adapter], module.r[adapter], "embedding"))
    return found


def ids():
    return torch.randint(1, 64, (3, 7), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_init_b_zeroes_a_and_draws_b_and_leaves_the_base_function(name):
    """Init[2]: every linear factor A = 0 and B Kaiming-uniform (|B| <= 1/sqrt(r), not all zero); B A = 0."""
    model = MODELS[name]().eval()  # no dropout: the two forwards must differ only in the adapter
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids()).logits
    assert init_factors(model) > 0
    for a, b, r, kind in factors(model):
        assert torch.count_nonzero(b @ a if kind == "linear" else a.T @ b.T) == 0
        if kind == "linear":  # embeddings keep PEFT's A = 0, B ~ N(0, 1), which is Init[2] already
            assert torch.count_nonzero(a) == 0
            assert b.abs().max() <= 1 / math.sqrt(r) + 1e-7 and b.abs().max() > 0.2 / math.sqrt(r)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids()).logits, base)  # the model starts as the base model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_init_a_is_peft_default(name):
    """Init[1] (lora_init A): PEFT's own start, A random and B = 0 on linear factors."""
    for a, b, _r, kind in factors(MODELS[name]()):
        if kind == "linear":
            assert torch.count_nonzero(b) == 0 and torch.count_nonzero(a) == a.numel()


def lm_batches(steps=4):
    g = torch.Generator().manual_seed(3)
    return [torch.randint(1, 64, (4, 8), generator=g) for _ in range(steps)]


def trainer_optimizer(model, tmp_path, kind, **args):
    settings = dict(output_dir=str(tmp_path), learning_rate=1e-2, loraplus_lr_ratio=1.0, report_to=[],
                    use_cpu=True, optim="adamw_torch", weight_decay=0.0, loraplus_optimizer=kind)
    return LoraPlusTrainer(model=model, args=LoraPlusTrainingArguments(**{**settings, **args})).create_optimizer()


@needs_riemannian
def test_riemannian_arm_steps_like_peft(tmp_path):
    """With every group at one lr, the riemannian arm's per-step losses and weights are those of PEFT's optimizer."""
    from peft.optimizers import create_riemannian_optimizer

    kw = dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    ours_model, peft_model = peft(tiny_llama(), **kw), peft(tiny_llama(), **kw)
    for model in (ours_model, peft_model):  # B != 0, so A's preconditioner is not just 1 / reg
        torch.manual_seed(5)
        init_factors(model)
    ours = trainer_optimizer(ours_model, tmp_path, "riemannian")
    theirs = create_riemannian_optimizer(peft_model, torch.optim.AdamW, lr=1e-2, weight_decay=0.0)
    batches = lm_batches()
    expected = train_lm_losses(peft_model, theirs, batches)
    assert train_lm_losses(ours_model, ours, batches) == pytest.approx(expected, rel=1e-6)
    for (n, p), q in zip(ours_model.named_parameters(), peft_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), n


@needs_riemannian
def test_riemannian_arm_keeps_the_groups_lrs(tmp_path):
    """The riemannian arm preconditions, and still gives the head lr_other and B ratio x lr."""
    model = peft(tiny_bert(), task_type="SEQ_CLS", target_modules=["query"])
    optimizer = trainer_optimizer(model, tmp_path, "riemannian", loraplus_lr_ratio=4.0, loraplus_lr_other=3e-3)
    assert type(optimizer).__name__ == "RiemannianPreconditionedOptimizer"
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"lora_A": 1e-2, "lora_B": 4e-2, "other": 3e-3, "other_no_decay": 3e-3}


@pytest.mark.skipif(HAS_RIEMANNIAN, reason="this peft has create_riemannian_optimizer")
def test_riemannian_arm_refused_on_older_peft(tmp_path):
    """Where PEFT lacks the Riemannian optimizer, the arm ends in one clear error naming the fix."""
    with pytest.raises(LoraPlusError, match="create_riemannian_optimizer.*pip install -U peft"):
        trainer_optimizer(peft(tiny_llama(), target_modules=["q_proj"]), tmp_path, "riemannian")


def test_lorafa_arm_steps_like_peft_and_never_moves_a(tmp_path):
    """LoRA-FA over loraplus' groups: per-step losses and weights of PEFT's create_lorafa_optimizer; A never moves."""
    from peft.optimizers import create_lorafa_optimizer

    kw = dict(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)
    ours_model, peft_model = peft(tiny_llama(), **kw), peft(tiny_llama(), **kw)
    a_before = {n: p.detach().clone() for n, p in ours_model.named_parameters() if ".lora_A." in n}
    ours = trainer_optimizer(ours_model, tmp_path, "lorafa")
    theirs = create_lorafa_optimizer(peft_model, r=4, lora_alpha=8, lr=1e-2, weight_decay=0.0)
    theirs.param_groups[0]["eps"] = 1e-8  # the arm takes the Trainer's adam_epsilon, as every other arm does
    batches = lm_batches()
    expected = train_lm_losses(peft_model, theirs, batches)
    assert train_lm_losses(ours_model, ours, batches) == pytest.approx(expected, rel=1e-6)
    named = dict(ours_model.named_parameters())
    assert all(torch.equal(named[n], a) for n, a in a_before.items())
    assert any(not torch.equal(p, q) for n, p in named.items() if ".lora_B." in n
               for q in [torch.zeros_like(p)])  # B moved off zero
    for (n, p), q in zip(ours_model.named_parameters(), peft_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), n
