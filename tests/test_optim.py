"""The optimizer factory: PEFT-compatible calls, bitwise equivalence at ratio 1, names, resume guard."""

import collections

import pytest
import torch
from conftest import peft, tiny_bert, tiny_llama
from torch import nn

from loraplus import LoraPlusError, create_loraplus_optimizer, describe


def lr_to_names(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    out = collections.defaultdict(set)
    for g in optimizer.param_groups:
        out[g["lr"]].update(names[id(p)] for p in g["params"])
    return out


class SimpleNet(nn.Module):
    """The model PEFT's own LoRA+ tests use."""

    def __init__(self, bias=True):
        super().__init__()
        self.embedding = nn.Embedding(100, 20)
        self.layer_norm = nn.LayerNorm(20)
        self.lin0 = nn.Linear(20, 20, bias=bias)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(20, 16, bias=bias)

    def forward(self, x):
        return self.lin1(self.relu(self.lin0(self.layer_norm(self.embedding(x)))))


def test_peft_embedding_lr_sets():
    """PEFT's own check: embedding factors at loraplus_lr_embedding, lin0 A at lr, lin0 B at ratio*lr."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(SimpleNet(), LoraConfig(target_modules=["embedding", "lin0"]))
    optim = create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=5e-5,
                                      loraplus_lr_ratio=1.2, loraplus_lr_embedding=1e-6)
    sets = lr_to_names(model, optim)
    assert sets[1e-6] == {"base_model.model.embedding.lora_embedding_A.default",
                          "base_model.model.embedding.lora_embedding_B.default"}
    assert sets[5e-5] == {"base_model.model.lin0.lora_A.default.weight"}
    assert sets[5e-5 * 1.2] == {"base_model.model.lin0.lora_B.default.weight"}


def test_peft_call_with_optimizer_kwargs():
    """PEFT-style call (eps, betas, loraplus_weight_decay) reaches the optimizer and its groups."""
    model = peft(SimpleNet(), target_modules=["lin0", "lin1"])
    optim = create_loraplus_optimizer(model, torch.optim.Adam, lr=5e-5, loraplus_lr_ratio=1.2,
                                      eps=1e-6, betas=(0.9, 0.999), loraplus_weight_decay=0.0)
    assert optim.defaults["eps"] == 1e-6 and optim.defaults["betas"] == (0.9, 0.999)
    assert {g["name"]: g["weight_decay"] for g in optim.param_groups} == {"lora_A": 0.0, "lora_B": 0.0}


def test_peft_default_embedding_lr():
    """Like PEFT, the embedding factors default to lr 1e-6 in create_loraplus_optimizer."""
    model = peft(SimpleNet(), target_modules=["embedding", "lin0"])
    optim = create_loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=16)
    lrs = {g["name"]: g["lr"] for g in optim.param_groups}
    assert lrs["lora_embedding_A"] == lrs["lora_embedding_B"] == 1e-6


def test_weight_decay_honoured():
    """The user's weight_decay reaches LoRA matrices (PEFT drops it silently)."""
    model = peft(tiny_bert(), target_modules=["query"])
    optim = create_loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.05)
    assert {g["weight_decay"] for g in optim.param_groups} == {0.05}


def train_steps(model, optimizer, steps=5):
    torch.manual_seed(3)
    for _ in range(steps):
        ids = torch.randint(0, 64, (4, 8))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_ratio_one_bitwise_equals_adamw(weight_decay):
    """ratio=1 with every role at lr trains bitwise like plain AdamW over the trainable params."""
    kw = dict(target_modules=["embed_tokens", "q_proj", "v_proj"], use_dora=True, modules_to_save=["lm_head"])
    a, b = peft(tiny_llama(), **kw), peft(tiny_llama(), **kw)
    reference = torch.optim.AdamW(
        [{"params": [p for p in a.parameters() if p.requires_grad and p.ndim >= 2 and not _magnitude(a, p)],
          "weight_decay": weight_decay},
         {"params": [p for p in a.parameters() if p.requires_grad and (p.ndim < 2 or _magnitude(a, p))],
          "weight_decay": 0.0}], lr=1e-3)
    loraplus = create_loraplus_optimizer(b, lr=1e-3, loraplus_lr_ratio=1.0, loraplus_lr_embedding=1e-3,
                                         weight_decay=weight_decay)
    wa, wb = train_steps(a, reference), train_steps(b, loraplus)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def _magnitude(model, param):
    return any(param is p for n, p in model.named_parameters() if "lora_magnitude_vector" in n)


@pytest.mark.parametrize("name,cls", [("adamw", "AdamW"), ("adam", "Adam"), ("sgd", "SGD"), ("adafactor", "Adafactor")])
def test_optimizer_by_name(name, cls):
    """Optimizers by name keep the LoRA+ groups and take a step."""
    model = peft(tiny_llama(), target_modules=["q_proj"])
    optim = create_loraplus_optimizer(model, name, lr=1e-3, loraplus_lr_ratio=16)
    assert type(optim).__name__ == cls
    train_steps(model, optim, steps=1)
    lrs = {g["name"]: g["lr"] for g in optim.param_groups}
    assert lrs["lora_B"] == 16 * lrs["lora_A"]


def test_unknown_optimizer_name():
    """An unknown optimizer name is refused, listing the known ones."""
    with pytest.raises(LoraPlusError, match="unknown optimizer 'lion'.*adamw"):
        create_loraplus_optimizer(peft(tiny_bert(), target_modules=["query"]), "lion", lr=1e-3, loraplus_lr_ratio=16)


def test_describe_table_rows():
    """describe() prints one row per group with tensors, params, lr and decay."""
    model = peft(tiny_bert(), task_type="SEQ_CLS", target_modules=["query"])
    text = describe(create_loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:]}
    assert rows["lora_B"] == ["2", "256", "0.016", "0.1"]  # 2 layers x (16 out x r 8)
    assert rows["other_no_decay"][3] == "0"


def test_resume_refuses_mismatched_groups():
    """Loading optimizer state saved for another LoRA layout raises a clear error."""
    saved = create_loraplus_optimizer(peft(tiny_bert(), task_type="SEQ_CLS", target_modules=["query"]),
                                      lr=1e-3, loraplus_lr_ratio=16).state_dict()
    other = create_loraplus_optimizer(peft(tiny_bert(), target_modules=["query", "value"]),
                                      lr=1e-3, loraplus_lr_ratio=16)
    with pytest.raises(LoraPlusError, match="do not fit"):
        other.load_state_dict(saved)


def test_resume_refuses_plain_optimizer_state():
    """Optimizer state without LoRA+ group names is refused."""
    model = peft(tiny_bert(), target_modules=["query"])
    plain = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]).state_dict()
    with pytest.raises(LoraPlusError, match="no LoRA\\+ names"):
        create_loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=16).load_state_dict(plain)


def test_resume_restores_groups_and_ratio():
    """A matching state dict loads, keeping lr_B / lr_A."""
    model = peft(tiny_bert(), target_modules=["query"])
    first = create_loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=8)
    train_steps_bert(model, first)
    second = create_loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=8)
    second.load_state_dict(first.state_dict())
    lrs = {g["name"]: g["lr"] for g in second.param_groups}
    assert lrs["lora_B"] / lrs["lora_A"] == 8
    assert len(second.state) == len(first.state) > 0


def train_steps_bert(model, optimizer):
    ids = torch.randint(0, 64, (2, 6))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()


def test_default_weight_decay_is_the_optimizers():
    """Without weight_decay, matrices get the optimizer's own default (AdamW 0.01, Adam 0); 1-D params none."""
    model = peft(tiny_bert(), task_type="SEQ_CLS", target_modules=["query"])
    adamw = {g["name"]: g["weight_decay"] for g in
             create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16).param_groups}
    adam = {g["name"]: g["weight_decay"] for g in
            create_loraplus_optimizer(model, torch.optim.Adam, lr=1e-3, loraplus_lr_ratio=16).param_groups}
    assert adamw == {"lora_A": 0.01, "lora_B": 0.01, "other": 0.01, "other_no_decay": 0.0}
    assert set(adam.values()) == {0.0}


def test_ratio_one_drop_in_for_default_adamw():
    """A LoRA model: ratio=1 with no other argument trains bitwise like AdamW(trainable params, lr=lr)."""
    a = peft(tiny_llama(), target_modules=["q_proj", "v_proj"])
    b = peft(tiny_llama(), target_modules=["q_proj", "v_proj"])
    reference = torch.optim.AdamW([p for p in a.parameters() if p.requires_grad], lr=1e-3)
    loraplus = create_loraplus_optimizer(b, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=1.0)
    wa, wb = train_steps(a, reference), train_steps(b, loraplus)
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
