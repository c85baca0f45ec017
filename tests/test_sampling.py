"""Random batches sorted inside (loraplus/speed/sampling.py): the batches stay random draws, only padding changes."""

import itertools
import random

import pytest
import torch
from conftest import peft, save_tiny_bert, tiny_gpt2, tiny_llama, write_sentiment_csvs
from safetensors.torch import load_file
from transformers import TrainerCallback

import loraplus.speed.sampling
from loraplus import LoraPlusTrainer, LoraPlusTrainingArguments
from loraplus.cli import main
from loraplus.speed.sampling import SortedWithinBatchesMixin, micro_batch_cuts, sorted_within_batches, split_batch

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


def cost_of(lengths, cuts, part_cost):
    """Padded tokens computed plus part_cost per micro-batch, rows sorted longest first."""
    starts = [0, *cuts[:-1]]
    return sum((end - start) * lengths[start] + part_cost for start, end in zip(starts, cuts))


def test_cuts_are_the_cheapest_of_all_cut_points():
    """Against every way to cut small sorted batches into at most max_parts pieces."""
    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted((rng.randint(1, 60) for _ in range(rng.randint(1, 8))), reverse=True)
        max_parts, part_cost = rng.randint(1, 4), rng.choice([0, 7, 40, 128])
        cuts = micro_batch_cuts(lengths, max_parts, part_cost)
        n = len(lengths)
        every = [[*inner, n] for k in range(min(max_parts, n)) for inner in itertools.combinations(range(1, n), k)]
        assert cuts[-1] == n and len(cuts) <= max_parts
        assert cost_of(lengths, cuts, part_cost) == min(cost_of(lengths, c, part_cost) for c in every)


def test_a_batch_of_equal_lengths_runs_whole():
    assert micro_batch_cuts([50] * 32, 4, 128) == [32]


def test_a_long_tail_is_cut_where_it_ends():
    """Two long rows then thirty short ones: padding the short rows to the long ones costs far more
    than a micro-batch, and equal quarters would pad six short rows to the long length."""
    assert micro_batch_cuts([120, 110] + [20] * 30, 4, 128) == [2, 32]


def test_split_batch_trims_each_part_to_its_own_longest_on_either_padding_side():
    lengths = [5, 4, 2, 1]
    for left in (False, True):
        mask = torch.tensor([[0] * (5 - n) + [1] * n if left else [1] * n + [0] * (5 - n) for n in lengths])
        ids = mask * torch.arange(1, 6)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 0, 1])}
        parts = split_batch(batch, [2, 4])
        assert [p["input_ids"].shape for p in parts] == [(2, 5), (2, 2)]
        assert parts[1]["labels"].tolist() == [0, 1]
        assert parts[1]["attention_mask"].sum(dim=1).tolist() == [2, 1]  # no real token cut off


def test_micro_batches_train_the_same_adapter_as_one_padded_batch(tmp_path, tokenizer, monkeypatch):
    """Without dropout, micro-batches of unequal sizes give the gradient of one padded batch of 8."""
    sizes = []

    def recording_split(batch, cuts):
        sizes.append([end - start for start, end in zip([0, *cuts[:-1]], cuts)])
        return split_batch(batch, cuts)

    monkeypatch.setattr(loraplus.speed.sampling, "split_batch", recording_split)
    model = save_tiny_bert(tmp_path / "bert", tokenizer, dropout=0.0)
    write_sentiment_csvs(tmp_path)
    adapters = []
    for micro in (1, 4):
        out = tmp_path / f"micro{micro}"
        assert main(["train", "--model_name_or_path", model, "--train_file", str(tmp_path / "train.csv"),
                     "--validation_file", str(tmp_path / "dev.csv"), "--output_dir", str(out),
                     "--per_device_train_batch_size", "8", "--length_micro_batches", str(micro),
                     "--length_micro_batch_cost", "0",  # cut wherever padding is saved
                     "--packed_sequences", "false",
                     "--max_steps", "6", "--learning_rate", "1e-2", "--lora_dropout", "0",
                     "--report_to", "none", "--fast_cpu_dropout", "false"]) == 0
        adapters.append(load_file(out / "adapter_model.safetensors"))
    assert any(len(set(step)) > 1 for step in sizes), sizes  # some step ran unequal micro-batches
    assert adapters[0].keys() == adapters[1].keys()
    diff = max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0])
    moved = max(adapters[0][k].abs().max().item() for k in adapters[0] if "lora_B" in k)
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)


class LogRecorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.logs.append((logs["loss"], logs["grad_norm"]))


class MicroBatchTrainer(SortedWithinBatchesMixin, LoraPlusTrainer):
    pass


def causal_rows(seed: int, n: int = 48):
    """Token rows of 2 to 30 tokens, so that sorted batches have long tails worth cutting."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = [[rng.randrange(4, 64) for _ in range(rng.randint(2, 30))] for _ in range(n)]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": rows})


def micro_batch_run(tmp_path, tokenizer, build, micro: int, loss_kwargs: bool, seed: int):
    """Per-step (loss, gradient norm) of 6 steps of batch 4 x accumulation 2, with or without micro-batches."""
    from loraplus.train.data import collator_for

    model = peft(build(), target_modules=TARGETS[build.__name__])
    args = LoraPlusTrainingArguments(output_dir=str(tmp_path / f"m{micro}"), per_device_train_batch_size=4,
                                     gradient_accumulation_steps=2, learning_rate=1e-2, max_steps=6, logging_steps=1,
                                     report_to=[], save_strategy="no", use_cpu=True, seed=seed, disable_tqdm=True,
                                     max_grad_norm=1e9)  # logs the gradient norm without clipping
    recorder = LogRecorder()
    trainer = MicroBatchTrainer(model=model, args=args, train_dataset=causal_rows(seed),
                                data_collator=collator_for("causal_lm", tokenizer),
                                callbacks=[recorder], length_micro_batches=micro, length_micro_batch_cost=0)
    # False: the model's loss is a mean over each forward's tokens, weighted by share (the token-weighted branch);
    # True: the Trainer passes num_items_in_batch and the loss is already a sum over the step's items
    trainer.model_accepts_loss_kwargs = loss_kwargs
    parts = []
    original = trainer._micro_batches
    trainer._micro_batches = lambda inputs: parts.append(len(found := original(inputs))) or found
    trainer.train()
    return recorder.logs, parts


def gpt2_without_dropout():
    model = tiny_gpt2()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the two runs must differ in their batches' cuts only
    return model


TARGETS = {"gpt2_without_dropout": ["c_attn"], "tiny_llama": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("build", [gpt2_without_dropout, tiny_llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("loss_kwargs", [True, False], ids=["num_items_in_batch", "token_weighted"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_causal_micro_batches_log_the_losses_and_gradient_norms_of_whole_batches(tmp_path, tokenizer, build,
                                                                                   loss_kwargs, seed):
    """A causal LM cut into micro-batches logs, at every step, the loss and gradient norm of whole padded batches."""
    whole, _ = micro_batch_run(tmp_path, tokenizer, build, 1, loss_kwargs, seed)
    cut, parts = micro_batch_run(tmp_path, tokenizer, build, 4, loss_kwargs, seed)
    assert max(parts) > 1  # some batches did run as several micro-batches
    assert len(whole) == len(cut) == 6
    assert [loss for loss, _ in cut] == pytest.approx([loss for loss, _ in whole], rel=1e-5)
    assert [norm for _, norm in cut] == pytest.approx([norm for _, norm in whole], rel=1e-4)
