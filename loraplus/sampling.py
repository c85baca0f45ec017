"""Random batches, sorted inside: each batch's micro-batches pad only to their own longest example.

Padding a random batch of MNLI pairs to its longest example computes 2.25 tokens per real one.
transformers' `group_by_length` removes that by building batches out of examples of similar length,
but then batches are no longer random draws: at one epoch on MNLI it cost accuracy against random
batches (results/speed/README.md). Here the batch stays the random draw it would be without any
grouping; it is sorted by length and cut into `length_micro_batches` micro-batches, run as gradient
accumulation steps. Same examples, same averaged gradient, less padding (79% of the computed tokens are
real on MNLI with 4 micro-batches of 8, against 44% for one padded batch of 32).

The batch's unit is the optimizer step on one process (`per_device_train_batch_size` x accumulation,
as transformers sizes its length groups); under data parallelism accelerate deals the micro-batches out
to the processes in turn, and the step's global batch is still a random draw.
"""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from .trainer import LoraPlusTrainer


def micro_batches_for(batch_size: int, wanted: int) -> int:
    """The most micro-batches, at most `wanted`, that split `batch_size` evenly (equal micro-batches keep
    the loss an average over the batch, whatever the task's loss normalisation)."""
    return max(d for d in range(1, min(wanted, batch_size) + 1) if batch_size % d == 0)


def sorted_within_batches(lengths: list[int], batch_size: int, generator: torch.Generator | None = None) -> list[int]:
    """A random permutation cut into batches of `batch_size`, each sorted by length, longest first.

    The batch holding the longest example goes first (an out-of-memory error shows at step 1, as with
    transformers' length grouping); batches are otherwise in random order. The short last batch stays last.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = [sorted(order[i:i + batch_size], key=lengths.__getitem__, reverse=True)
               for i in range(0, len(order), batch_size)]
    longest = max(range(len(batches)), key=lambda k: lengths[batches[k][0]], default=None)
    if longest is not None and len(batches[longest]) == batch_size:
        batches.insert(0, batches.pop(longest))
    return [i for batch in batches for i in batch]


class SortedWithinBatchesSampler(LengthGroupedSampler):
    """Random batches of `batch_size`, each sorted by length.

    A `LengthGroupedSampler` subclass, so `reliability.EpochSeededSamplerCallback` seeds each epoch's
    order (exact resume).
    """

    def __iter__(self):
        return iter(sorted_within_batches(self.lengths, self.batch_size, self.generator))


class SortedWithinBatchesMixin:
    """Trainer mixin: where transformers would draw random batches, sort each one by length.

    Sorting pays when a batch runs as micro-batches (gradient accumulation) and changes nothing otherwise;
    it is done either way, so a run gets the same batches whatever its `length_micro_batches`. With
    length grouping (`train_sampling_strategy="group_by_length"`) transformers' own sampler is kept.
    """

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(sampler, torch.utils.data.RandomSampler) and "input_ids" in getattr(dataset, "column_names", ()):
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return SortedWithinBatchesSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                              lengths=lengths)
        return sampler


class SortedBatchesLoraPlusTrainer(SortedWithinBatchesMixin, LoraPlusTrainer):
    """The trainer `loraplus train` runs."""
