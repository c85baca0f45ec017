"""Group membership by parameter-name sets for every LoRA role (never by group index)."""

import pytest
import torch
from conftest import peft, tiny_bert, tiny_gpt2, tiny_llama

from loraplus import LoraPlusError, param_groups

LR, RATIO = 1e-3, 16.0


def bert_names(module, kind, adapter="default", layers=(0, 1)):
    return {f"base_model.model.bert.encoder.layer.{i}.attention.self.{module}.{kind}.{adapter}.weight" for i in layers}


def test_linear_a_and_b_sets(names_by_group):
    """Linear LoRA: A factors alone in lora_A at lr, B factors alone in lora_B at ratio*lr."""
    model = peft(tiny_bert(), target_modules=["query", "value"])
    groups = param_groups(model, lr=LR, ratio=RATIO)
    sets = names_by_group(model, groups)
    assert sets["lora_A"] == bert_names("query", "lora_A") | bert_names("value", "lora_A")
    assert sets["lora_B"] == bert_names("query", "lora_B") | bert_names("value", "lora_B")
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"lora_A": LR, "lora_B": LR * RATIO}


def test_gpt2_conv1d_roles(names_by_group):
    """GPT-2's Conv1D c_attn: lora_A / lora_B found from the layer object."""
    model = peft(tiny_gpt2(), target_modules=["c_attn"], fan_in_fan_out=True)
    sets = names_by_group(model, param_groups(model, lr=LR))
    layer = "base_model.model.transformer.h.{}.attn.c_attn.{}.default.weight"
    assert sets["lora_A"] == {layer.format(i, "lora_A") for i in (0, 1)}
    assert sets["lora_B"] == {layer.format(i, "lora_B") for i in (0, 1)}
    assert set(sets) == {"lora_A", "lora_B"}


def test_embedding_factors_in_embedding_groups(names_by_group):
    """Embedding LoRA factors go to lora_embedding_A/B (PEFT's group was empty for two years)."""
    model = peft(tiny_llama(), target_modules=["embed_tokens", "q_proj"])
    groups = param_groups(model, lr=LR, ratio=RATIO, lr_embedding=5e-5)
    sets = names_by_group(model, groups)
    assert sets["lora_embedding_A"] == {"base_model.model.model.embed_tokens.lora_embedding_A.default"}
    assert sets["lora_embedding_B"] == {"base_model.model.model.embed_tokens.lora_embedding_B.default"}
    assert {g["name"]: g["lr"] for g in groups}["lora_embedding_B"] == 5e-5


def test_dora_magnitude_own_group_no_decay(names_by_group):
    """DoRA magnitudes: own group at lr (not ratio*lr), never decayed."""
    model = peft(tiny_llama(), target_modules=["q_proj", "v_proj"], use_dora=True)
    groups = param_groups(model, lr=LR, ratio=RATIO, weight_decay=0.1)
    sets = names_by_group(model, groups)
    expected = {f"base_model.model.model.layers.{i}.self_attn.{m}.lora_magnitude_vector.default.weight"
                for i in (0, 1) for m in ("q_proj", "v_proj")}
    assert sets["lora_magnitude"] == expected
    g = next(g for g in groups if g["name"] == "lora_magnitude")
    assert (g["lr"], g["weight_decay"]) == (LR, 0.0)


def test_rslora_bias_all_biases_at_lr_no_decay(names_by_group):
    """rsLoRA with bias="all": every bias trains at lr (never ratio*lr) without decay."""
    model = peft(tiny_bert(), target_modules=["query", "value"], use_rslora=True, bias="all")
    groups = param_groups(model, lr=LR, ratio=RATIO, weight_decay=0.1)
    sets = names_by_group(model, groups)
    biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")}
    assert biases and biases <= sets["other_no_decay"]
    g = next(g for g in groups if g["name"] == "other_no_decay")
    assert (g["lr"], g["weight_decay"]) == (LR, 0.0)


def test_modules_to_save_head_in_other(names_by_group):
    """A classifier in modules_to_save: weight in "other" (decayed), bias in "other_no_decay", both at lr_other."""
    model = peft(tiny_bert(), task_type="SEQ_CLS", target_modules=["query", "value"])
    groups = param_groups(model, lr=LR, ratio=RATIO, weight_decay=0.1, lr_other=3e-3)
    sets = names_by_group(model, groups)
    head = "base_model.model.classifier.modules_to_save.default"
    assert sets["other"] == {f"{head}.weight"}
    assert sets["other_no_decay"] == {f"{head}.bias"}
    by_name = {g["name"]: g for g in groups}
    assert by_name["other"]["lr"] == by_name["other_no_decay"]["lr"] == 3e-3
    assert by_name["other"]["weight_decay"] == 0.1


def test_two_adapters_both_grouped(names_by_group):
    """Two trainable adapters: both adapters' A and B are grouped by role."""
    model = peft(tiny_bert(), target_modules=["query"])
    from peft import LoraConfig

    model.add_adapter("second", LoraConfig(target_modules=["query"]))
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)
    sets = names_by_group(model, param_groups(model, lr=LR))
    assert sets["lora_A"] == bert_names("query", "lora_A") | bert_names("query", "lora_A", "second")
    assert sets["lora_B"] == bert_names("query", "lora_B") | bert_names("query", "lora_B", "second")


def test_lora_bias_is_not_at_ratio(names_by_group):
    """lora_bias=True puts a bias on B's Linear; it is a bias (lr, no decay), not a B factor."""
    model = peft(tiny_bert(), target_modules=["query"], lora_bias=True)
    sets = names_by_group(model, param_groups(model, lr=LR, weight_decay=0.1))
    b_bias = {n for n in sets["other_no_decay"] if "lora_B" in n}
    assert len(b_bias) == 2 and not any(n.endswith("bias") for n in sets["lora_B"])


def test_groups_partition_trainable_parameters():
    """Groups are disjoint, cover every trainable parameter, and omit frozen ones."""
    model = peft(tiny_llama(), target_modules=["embed_tokens", "q_proj", "v_proj"], use_dora=True,
                 modules_to_save=["lm_head"])
    groups = param_groups(model, lr=LR)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(g["params"] for g in groups)


def test_one_d_never_decayed():
    """No 1-D parameter is in a group with weight decay."""
    model = peft(tiny_bert(), task_type="SEQ_CLS", target_modules=["query", "value"], bias="all", use_dora=True)
    for g in param_groups(model, lr=LR, weight_decay=0.3):
        if g["weight_decay"] > 0:
            assert all(p.ndim >= 2 for p in g["params"]), g["name"]


def test_nothing_but_b_at_ratio_by_default(names_by_group):
    """With default policy only B factors train at lr*ratio."""
    model = peft(tiny_llama(), target_modules=["embed_tokens", "q_proj"], use_dora=True, bias="all",
                 modules_to_save=["lm_head"])
    for g in param_groups(model, lr=LR, ratio=RATIO):
        assert (g["lr"] == LR * RATIO) == (g["name"] == "lora_B")


def test_weight_decay_policy_values():
    """weight_decay on LoRA and head matrices; lora_weight_decay overrides it for LoRA factors only."""
    model = peft(tiny_bert(), task_type="SEQ_CLS", target_modules=["query"])
    decay = {g["name"]: g["weight_decay"] for g in param_groups(model, lr=LR, weight_decay=0.1, lora_weight_decay=0.0)}
    assert decay == {"lora_A": 0.0, "lora_B": 0.0, "other": 0.1, "other_no_decay": 0.0}


@pytest.mark.parametrize("ratio", [0, -1.0, float("nan"), float("inf")])
def test_bad_ratio_refused(ratio):
    """ratio <= 0 (or not finite) is refused with a one-line message."""
    with pytest.raises(LoraPlusError, match="ratio") as e:
        param_groups(peft(tiny_bert(), target_modules=["query"]), lr=LR, ratio=ratio)
    assert "\n" not in str(e.value)


def test_ratio_below_one_warns():
    """ratio < 1 builds the groups but warns."""
    with pytest.warns(UserWarning, match="ratio"):
        param_groups(peft(tiny_bert(), target_modules=["query"]), lr=LR, ratio=0.5)


def test_model_without_lora_refused():
    """A model with no LoRA layer is refused, saying what it has."""
    with pytest.raises(LoraPlusError, match="no LoRA B parameters found.*BertForSequenceClassification"):
        param_groups(tiny_bert(), lr=LR)


@pytest.mark.parametrize("kind", ["loha", "lokr", "vera", "ia3"])
def test_other_adapter_types_refused(kind):
    """LoHa, LoKr, VeRA and IA3 models are refused, naming the adapter."""
    import peft as peft_lib

    configs = {
        "loha": lambda: peft_lib.LoHaConfig(target_modules=["query"]),
        "lokr": lambda: peft_lib.LoKrConfig(target_modules=["query"]),
        "vera": lambda: peft_lib.VeraConfig(target_modules=["query"], r=4),
        "ia3": lambda: peft_lib.IA3Config(target_modules=["query"], feedforward_modules=[]),
    }
    model = peft_lib.get_peft_model(tiny_bert(), configs[kind]())
    with pytest.raises(LoraPlusError, match=f"'{kind}' adapter"):
        param_groups(model, lr=LR)


def test_adalora_refused():
    """AdaLoRA (a LoraLayer subclass with singular values) is refused by name."""
    from peft import AdaLoraConfig, get_peft_model

    model = get_peft_model(tiny_bert(), AdaLoraConfig(target_modules=["query"], total_step=10))
    with pytest.raises(LoraPlusError, match="AdaLora|adalora"):
        param_groups(model, lr=LR)


def test_frozen_lora_refused():
    """LoRA layers whose factors are all frozen are refused with a hint."""
    model = peft(tiny_bert(), target_modules=["query"])
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(False)
    with pytest.raises(LoraPlusError, match="none of their A/B factors is trainable"):
        param_groups(model, lr=LR)


def test_fsdp_flat_parameter_refused():
    """A parameter flattened by FSDP (use_orig_params=False) is refused, saying to set it."""
    model = peft(tiny_bert(), target_modules=["query"])
    flat = torch.nn.Parameter(torch.zeros(10))
    flat._is_flat_param = True  # what FSDP's FlatParameter carries
    model.register_parameter("_flat_param", flat)
    with pytest.raises(LoraPlusError, match="use_orig_params=True"):
        param_groups(model, lr=LR)


def test_ddp_wrapped_model_grouped(names_by_group):
    """A DDP-wrapped model (gloo, world size 1) gets the same roles under the module. prefix."""
    import torch.distributed as dist

    model = peft(tiny_bert(), target_modules=["query"])
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        sets = names_by_group(wrapped, param_groups(wrapped, lr=LR))
    finally:
        dist.destroy_process_group()
    assert sets["lora_B"] == {"module." + n for n in bert_names("query", "lora_B")}


def _fsdp(model, use_orig_params):
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    # Wrapping each Linear (frozen base or trainable LoRA factor) keeps requires_grad uniform per unit,
    # which FSDP needs when it flattens.
    return FullyShardedDataParallel(model, use_orig_params=use_orig_params, device_id=torch.device("cpu"),
                                    auto_wrap_policy=ModuleWrapPolicy({torch.nn.Linear}))


def test_fsdp_use_orig_params(names_by_group):
    """Under FSDP with use_orig_params=True (gloo, CPU) the roles survive; flattened FSDP is refused."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29534", rank=0, world_size=1)
    try:
        wrapped = _fsdp(peft(tiny_bert(), target_modules=["query"]), use_orig_params=True)
        sets = names_by_group(wrapped, param_groups(wrapped, lr=LR))
        flat = _fsdp(peft(tiny_bert(), target_modules=["query"]), use_orig_params=False)
        with pytest.raises(LoraPlusError, match="use_orig_params=True"):
            param_groups(flat, lr=LR)
    finally:
        dist.destroy_process_group()
    assert {n.replace("_fsdp_wrapped_module.", "") for n in sets["lora_B"]} == bert_names("query", "lora_B")
    assert len(sets["lora_A"]) == 2


def test_partition_check_holds_under_python_O():
    """The groups' disjoint-and-complete check raises under `python -O` too (an assert would vanish there)."""
    import subprocess
    import sys

    code = ("import torch; from loraplus.core.groups import _assert_partition; p = torch.nn.Parameter(torch.zeros(2)); "
            "_assert_partition([{'params': [p]}, {'params': [p]}], [p])")
    done = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "two LoRA+ groups" in done.stderr
