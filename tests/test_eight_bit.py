"""8-bit bitsandbytes optimizers: found by base class and optim_bits, embeddings kept in 32-bit state."""

import torch
from conftest import peft, tiny_llama

from loraplus import create_loraplus_optimizer
from loraplus.core.optim import is_8bit


def step_and_state_dtypes(model, optimizer):
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return {g["name"]: {optimizer.state[p]["state1"].dtype for p in g["params"]} for g in optimizer.param_groups}


def test_adamw_optim_bits_8_detected_and_embeddings_32bit():
    """bnb AdamW(optim_bits=8), whose class name says nothing of 8 bits, keeps LoRA embedding state in fp32."""
    import bitsandbytes as bnb

    model = peft(tiny_llama(), target_modules=["embed_tokens", "q_proj"])
    optimizer = create_loraplus_optimizer(model, bnb.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, optim_bits=8,
                                          min_8bit_size=16)
    assert is_8bit(optimizer)
    dtypes = step_and_state_dtypes(model, optimizer)
    assert dtypes["lora_A"] == dtypes["lora_B"] == {torch.uint8}
    assert dtypes["lora_embedding_A"] == dtypes["lora_embedding_B"] == {torch.float32}


def test_adamw_8bit_by_name():
    """The name "adamw_8bit" gives an 8-bit optimizer with the LoRA+ lrs."""
    model = peft(tiny_llama(), target_modules=["q_proj"])
    optimizer = create_loraplus_optimizer(model, "adamw_8bit", lr=1e-3, loraplus_lr_ratio=16)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert is_8bit(optimizer) and lrs["lora_B"] == 16 * lrs["lora_A"]


def test_32bit_bnb_optimizer_not_8bit():
    """A bitsandbytes optimizer with 32-bit state is not treated as 8-bit."""
    import bitsandbytes as bnb

    model = peft(tiny_llama(), target_modules=["q_proj"])
    assert not is_8bit(create_loraplus_optimizer(model, bnb.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16,
                                                 optim_bits=32))
