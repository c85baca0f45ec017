"""CPU dropout with four masks per random word: same keep rate, same expectation, same model otherwise."""

import pytest
import torch

from conftest import tiny_bert
from loraplus.speed import fast_dropout
from loraplus.speed.fast_dropout import CpuDropout, cpu_dropout, keep_mask, use_cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_keeps_one_minus_p(p):
    torch.manual_seed(0)
    kept = keep_mask(torch.Size([1000, 1000]), p).float().mean().item()
    assert abs(kept - (1 - p)) < 3e-3  # 1e6 Bernoulli draws: std 5e-4


def test_keep_mask_lanes_are_independent():
    """Neighbouring elements come from one 64-bit word: their masks must still be uncorrelated."""
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([400_000]), 0.5).float()
    pairs = mask.view(-1, 4)
    corr = torch.corrcoef(pairs.T)
    assert (corr - torch.eye(4)).abs().max() < 0.02


def test_cpu_dropout_preserves_the_expectation():
    torch.manual_seed(0)
    out = cpu_dropout(torch.ones(500_000), 0.1, training=True)
    assert out.unique().tolist() == pytest.approx([0.0, 1 / 0.9])
    assert abs(out.mean().item() - 1) < 5e-3


def test_cpu_dropout_is_reproducible_from_the_seed():
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    a = CpuDropout(0.2)(x)
    torch.manual_seed(3)
    assert torch.equal(a, CpuDropout(0.2)(x))


def test_cpu_dropout_passes_gradients_through_kept_elements_only():
    x = torch.randn(256, requires_grad=True)
    torch.manual_seed(0)
    out = cpu_dropout(x, 0.3, training=True)
    out.sum().backward()
    assert torch.equal(x.grad != 0, out != 0)


def test_eval_mode_outputs_are_unchanged():
    batch = {"input_ids": torch.randint(0, 64, (3, 10)), "attention_mask": torch.ones(3, 10, dtype=torch.long)}
    batch["attention_mask"][0, 6:] = 0
    reference = tiny_bert().eval()
    swapped = tiny_bert()
    assert use_cpu_dropout(swapped) > 0
    swapped.eval()
    with torch.no_grad():
        assert torch.equal(reference(**batch).logits, swapped(**batch).logits)


def test_explicit_attention_path_matches_sdpa(monkeypatch):
    """With masks that keep everything, the attention that draws its own masks is SDPA's arithmetic."""
    batch = {"input_ids": torch.randint(0, 64, (3, 10)), "attention_mask": torch.ones(3, 10, dtype=torch.long)}
    batch["attention_mask"][1, 4:] = 0  # padding: exercises the attention mask
    model = tiny_bert()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and not name.endswith("attention.self.dropout"):
            module.p = 0.0  # only attention-probability dropout left
    with torch.no_grad():
        expected = model.eval()(**batch).logits
    use_cpu_dropout(model)
    assert model.config._attn_implementation == fast_dropout.CPU_DROPOUT_ATTENTION
    monkeypatch.setattr(fast_dropout, "cpu_dropout", lambda x, p, training: x)
    with torch.no_grad():
        got = model.train()(**batch).logits  # training mode: attention dropout 0.1 takes the explicit path
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
