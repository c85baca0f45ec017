"""Random batches sorted inside (loraplus/sampling.py): the batches stay random draws, only padding changes."""

import random

import pytest
import torch
from conftest import save_tiny_bert, write_sentiment_csvs
from safetensors.torch import load_file

from loraplus.cli import main
from loraplus.sampling import micro_batches_for, sorted_within_batches

LENGTHS = [random.Random(0).randint(3, 120) for _ in range(203)]  # 6 full batches of 32 and a short one


def batches(order, size):
    return [order[i:i + size] for i in range(0, len(order), size)]


def test_an_epoch_visits_every_example_once():
    order = sorted_within_batches(LENGTHS, 32, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(LENGTHS)))


def test_batches_are_those_of_the_unsorted_random_order():
    """Sorting happens inside batches: the same examples are drawn together as without it."""
    order = sorted_within_batches(LENGTHS, 32, torch.Generator().manual_seed(5))
    plain = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(5)).tolist()
    assert sorted(map(sorted, batches(order, 32))) == sorted(map(sorted, batches(plain, 32)))


def test_each_batch_is_sorted_longest_first_and_the_longest_batch_leads():
    order = sorted_within_batches(LENGTHS, 32, torch.Generator().manual_seed(1))
    for batch in batches(order, 32):
        assert [LENGTHS[i] for i in batch] == sorted((LENGTHS[i] for i in batch), reverse=True)
    assert LENGTHS[order[0]] == max(LENGTHS)
    assert len(batches(order, 32)[-1]) == len(LENGTHS) % 32  # the short batch stays last


@pytest.mark.parametrize("batch, wanted, expected", [(32, 4, 4), (30, 4, 3), (7, 4, 1), (2, 4, 2), (16, 1, 1)])
def test_micro_batches_split_the_batch_evenly(batch, wanted, expected):
    assert micro_batches_for(batch, wanted) == expected


def test_micro_batches_train_the_same_adapter_as_one_padded_batch(tmp_path, tokenizer):
    """Without dropout, 4 length-sorted micro-batches of 2 give the gradient of one padded batch of 8."""
    model = save_tiny_bert(tmp_path / "bert", tokenizer, dropout=0.0)
    write_sentiment_csvs(tmp_path)
    adapters = []
    for micro in (1, 4):
        out = tmp_path / f"micro{micro}"
        assert main(["train", "--model_name_or_path", model, "--train_file", str(tmp_path / "train.csv"),
                     "--validation_file", str(tmp_path / "dev.csv"), "--output_dir", str(out),
                     "--per_device_train_batch_size", "8", "--length_micro_batches", str(micro),
                     "--max_steps", "6", "--learning_rate", "1e-2", "--lora_dropout", "0",
                     "--report_to", "none", "--fast_cpu_dropout", "false"]) == 0
        adapters.append(load_file(out / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    diff = max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0])
    moved = max(adapters[0][k].abs().max().item() for k in adapters[0] if "lora_B" in k)
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)
