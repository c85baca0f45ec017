"""Logits at target positions only: the same loss and gradients as the full forward, less LM head."""

import json

import pytest
import torch
from conftest import peft, tiny_bert, tiny_gpt2, tiny_llama

from loraplus.speed.target_logits import accepts_position_mask, position_mask_supported, with_target_positions

# transformers before the mask form of `logits_to_keep` (5.17 and earlier): the trainer keeps full logits
# (test_older_transformers_keep_full_logits); the tests of the target-rows path need the newer form.
needs_position_mask = pytest.mark.skipif(not position_mask_supported(),
                                         reason="this transformers has no logits_to_keep mask: full logits are used")


def batch(kind):
    """Right-padded rows: label words (one target at each row's end) or SFT (a response span per row)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    for row, length in enumerate((12, 9, 7, 5)):
        mask[row, length:] = 0
        ids[row, length:] = 0
        start = length - 1 if kind == "label_words" else length // 2
        labels[row, start:length] = ids[row, start:length]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model, inputs, **kwargs):
    model.zero_grad()
    torch.manual_seed(0)  # the same dropout masks in both forwards (GPT-2 has dropout)
    loss = model(**inputs, **kwargs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_position_mask
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["label_words", "sft"])
@pytest.mark.parametrize("items", [None, 7], ids=["mean", "sum-over-items"])
def test_same_loss_and_gradients_as_full_logits(build, kind, items):
    """Keeping only target positions changes neither the loss (mean, or sum / item count) nor any gradient."""
    model = peft(build(), r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    model.train()
    inputs = batch(kind)
    extra = {} if items is None else {"num_items_in_batch": torch.tensor(items)}
    full_loss, full_grads = loss_and_grads(model, inputs, **extra)
    kept_loss, kept_grads = loss_and_grads(model, with_target_positions(inputs), **extra)
    torch.testing.assert_close(kept_loss, full_loss, rtol=1e-5, atol=1e-6)
    assert kept_grads.keys() == full_grads.keys() and kept_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(kept_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@needs_position_mask
def test_only_target_rows_reach_the_head():
    """The LM head sees one row per target token, not one per position."""
    model = tiny_llama()
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    inputs = batch("label_words")
    model(**with_target_positions(inputs))
    assert seen[0][:-1] == torch.Size([int((inputs["labels"][:, 1:] != -100).sum())])


@needs_position_mask
def test_label_word_scores_from_target_rows_equal_full_logits():
    """The evaluation's one-token label-word scores are the same from target rows as from full logits."""
    from loraplus.train.metrics import label_word_eval_for

    model = tiny_llama().eval()
    inputs = batch("label_words")
    words = [[3], [9], [17]]
    preprocess, _ = label_word_eval_for(words)
    assert preprocess.takes_target_logits
    with torch.no_grad():
        full = preprocess(model(**inputs).logits, inputs["labels"])
        kept = preprocess(model(**with_target_positions(inputs)).logits, inputs["labels"])
    assert kept.shape == (4, 3)
    torch.testing.assert_close(kept, full, rtol=1e-5, atol=1e-6)


@needs_position_mask
def test_only_causal_lms_with_the_mask_are_chosen():
    """A causal LM taking logits_to_keep qualifies (wrapped or not); a sequence classifier does not."""
    assert accepts_position_mask(tiny_llama())
    assert accepts_position_mask(peft(tiny_llama(), r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert not accepts_position_mask(tiny_bert())


@pytest.mark.skipif(position_mask_supported(), reason="this transformers has the logits_to_keep mask")
def test_older_transformers_keep_full_logits():
    """Without the mask form of logits_to_keep, no model qualifies: training keeps the full, correct forward."""
    assert not accepts_position_mask(tiny_llama())


@needs_position_mask
@pytest.mark.parametrize("task", ["label_words", "sft"])
def test_train_with_target_logits_matches_full_logits(tmp_path, llama_dir, monkeypatch, task):
    """`loraplus train` on a tiny Llama trains and evaluates the same whether the LM head runs at targets only."""
    from conftest import WORDS, write_csv
    from safetensors.torch import load_file

    import loraplus.speed.target_logits as target_logits
    from loraplus.cli import main

    if task == "sft":
        rows = [{"prompt": f"review {i}: {WORDS[i % 6]}", "response": ["positive", "negative"][i % 2]}
                for i in range(24)]
        train, task_args = write_csv(tmp_path / "train.csv", rows, ("prompt", "response")), []
    else:
        rows = [{"text": WORDS[i % 6], "label": ["good", "bad"][i % 2]} for i in range(24)]
        train, task_args = write_csv(tmp_path / "train.csv", rows), ["--label_words", "good,bad"]
    adapters, summaries, calls = [], [], []
    real = target_logits.with_target_positions
    monkeypatch.setattr(target_logits, "with_target_positions", lambda inputs: calls.append(1) or real(inputs))
    for keep_targets_only in (True, False):
        if not keep_targets_only:
            monkeypatch.setattr(target_logits, "accepts_position_mask", lambda model: False)
        out = tmp_path / f"out-{keep_targets_only}"
        assert main(["train", "--model_name_or_path", llama_dir, "--task", task, "--train_file", train,
                     "--validation_split_ratio", "0.25", "--output_dir", str(out), "--max_steps", "4",
                     "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--lora_dropout", "0",
                     "--eval_steps", "2", "--report_to", "none", *task_args]) == 0
        adapters.append(load_file(out / "adapter_model.safetensors"))
        summaries.append(json.loads((out / "summary.json").read_text())["validation"])
        if keep_targets_only:
            first_run_calls = len(calls)
    # the first run's 4 training steps and its evaluation steps kept target rows only; the second run none
    assert first_run_calls > 4 and len(calls) == first_run_calls
    assert summaries[0]["eval_loss"] == pytest.approx(summaries[1]["eval_loss"], rel=1e-5)
    assert summaries[0].get("eval_accuracy") == summaries[1].get("eval_accuracy")
    assert adapters[0].keys() == adapters[1].keys()
    for name, value in adapters[0].items():
        torch.testing.assert_close(value, adapters[1][name], rtol=1e-4, atol=1e-6, msg=name)
