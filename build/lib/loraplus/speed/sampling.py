"""Random batches, sorted inside: each batch runs as micro-batches padded only to their own longest example.

Padding a random batch of MNLI pairs to its longest example computes 2.25 tokens per real one.
transformers' `group_by_length` removes that by building batches out of examples of similar length,
but then batches are no longer random draws: at one epoch on MNLI it cost accuracy against random
batches (results/speed/README.md). Here the batch stays the random draw it would be without any
grouping; it is sorted by length and cut into at most `length_micro_batches` micro-batches, each run
forward and backward on its own, with its loss weighted by its share of the batch. Same examples, same
averaged gradient, less padding.

Where to cut: each micro-batch costs its padded tokens plus a fixed overhead (a forward and backward of
every layer, however small the tensors; `length_micro_batch_cost`, in tokens: 128 is what a linear fit
gave for MiniLM on a 2-core CPU, about 65 ms per micro-batch against 0.54 ms per token). The cuts
minimise the sum, so a batch of similar lengths runs whole and a batch with a long tail is cut where
the tail ends, not into equal parts. On MNLI that ran no faster than equal quarters (results/speed):
the fit is rough, and fewer, larger micro-batches are not cheaper per token by as much as it says.

A BERT-like encoder packs instead (packing.py): its layers then pay for real tokens only, and its
batches run whole.
"""

from __future__ import annotations

import contextlib

import torch
from accelerate.utils import DistributedType
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


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


def micro_batch_cuts(lengths: list[int], max_parts: int, part_cost: float) -> list[int]:
    """Where to cut rows sorted longest first into at most `max_parts` micro-batches: the end of each.

    Minimises the padded tokens computed (rows x the micro-batch's first, longest, row) plus `part_cost`
    per micro-batch; of equal costs, the fewest micro-batches. Dynamic programming over cut points.
    """
    n = len(lengths)
    if n == 0:
        return []
    position = torch.arange(n + 1, dtype=torch.float64)
    # cost[i, j]: rows i..j-1 as one micro-batch, padded to row i's length; infinite unless i < j
    cost = (position[None, :] - position[:-1, None]) * torch.tensor(lengths, dtype=torch.float64)[:, None] + part_cost
    cost = cost.masked_fill(position[None, :] <= position[:-1, None], float("inf"))
    cheapest = torch.full((n + 1,), float("inf"), dtype=torch.float64)
    cheapest[0] = 0.0  # cheapest[j]: rows 0..j-1 in the micro-batches so far (none yet: only j = 0)
    last_starts, totals = [], []
    for _ in range(min(max_parts, n)):
        cheapest, last_start = (cheapest[:-1, None] + cost).min(dim=0)
        last_starts.append(last_start)
        totals.append(cheapest[n].item())
    parts = min(range(len(totals)), key=lambda k: (totals[k], k)) + 1
    cuts, end = [], n
    for k in reversed(range(parts)):
        cuts.append(end)
        end = int(last_starts[k][end])
    return cuts[::-1]


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Indices in blocks of the global batch (per-device batch x accumulation x processes), epoch e seeded by seed + e.

    Each block is one optimizer step. accelerate deals a block's per-device batches out to the processes
    (`BatchSamplerShard`) and gradient accumulation takes them one after another, so 1 process x 8, 2 x 4 and
    1 x 4 with accumulation 2 train on the same examples at every step. Blocks are random draws sorted by
    length (`sorted_within_batches`), or, with `group_by_length`, transformers' megabatches of similar length.

    Every process builds the same order: the generator is seeded from `seed` and the epoch that the Trainer
    passes through `set_epoch` (accelerate's `DataLoaderShard.set_epoch` forwards it here), never from the
    global RNG that dropout also draws from, so a resumed run replays each epoch's order exactly.

    max_steps: no block after the run's last step is drawn. Training never reaches them; but a run resumed
    from its final checkpoint, partway through an epoch, would otherwise train one step more than
    max_steps (the Trainer checks the limit only after a step), and now finds its epoch used up.
    """

    def __init__(self, lengths: list[int], global_batch: int, seed: int, *, group_by_length: bool = False,
                 max_steps: int | None = None):
        self.lengths, self.global_batch, self.seed = lengths, global_batch, seed
        self.group_by_length = group_by_length
        self.max_steps = max_steps if max_steps and max_steps > 0 else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.group_by_length:
            order = get_length_grouped_indices(self.lengths, self.global_batch, generator=generator)
        else:
            order = sorted_within_batches(self.lengths, self.global_batch, generator)
        if self.max_steps is not None:
            steps_per_epoch = -(-len(self.lengths) // self.global_batch)
            steps_left = max(self.max_steps - self.epoch * steps_per_epoch, 0)
            order = order[:steps_left * self.global_batch]
        return iter(order)


def _loss_items(labels: torch.Tensor) -> int:
    """What the model's own loss averages over: examples (one label each) or target tokens (-100 = none)."""
    if labels.dim() == 1:
        return labels.shape[0]
    return int(labels[:, 1:].ne(-100).sum())  # a causal LM predicts token t+1 from token t


def split_batch(inputs: dict, cuts: list[int]) -> list[dict]:
    """The batch's rows (sorted longest first) cut at `cuts`, each part trimmed to its own longest row."""
    mask = inputs["attention_mask"]
    width = mask.shape[1]
    parts, start = [], 0
    for end in cuts:
        used = mask[start:end].any(dim=0).nonzero()  # the columns some row of this part uses (either padding side)
        first, last = int(used[0]), int(used[-1]) + 1
        part = {}
        for key, value in inputs.items():
            if torch.is_tensor(value) and value.dim() >= 2 and value.shape[1] == width:
                part[key] = value[start:end, first:last]
            elif torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == mask.shape[0]:
                part[key] = value[start:end]
            else:
                part[key] = value
        parts.append(part)
        start = end
    return parts


class SortedWithinBatchesMixin:
    """Trainer mixin: draw random batches sorted by length, and run each as cheap micro-batches.

    Sorting is done whatever `length_micro_batches`, so a run gets the same batches either way. With
    length grouping (`train_sampling_strategy="group_by_length"`) transformers' own sampler is kept and
    its batches are cut the same way. Under DeepSpeed a batch runs whole: its engine steps the optimizer
    at every backward that accelerate does not mark as accumulation.
    """

    _part_weight = 1.0  # the loss weight of the micro-batch running now

    def __init__(self, *args, length_micro_batches: int = 1, length_micro_batch_cost: float = 128, **kwargs):
        super().__init__(*args, **kwargs)
        self.length_micro_batches = length_micro_batches  # 1 = each batch runs whole
        self.length_micro_batch_cost = length_micro_batch_cost  # padded tokens a micro-batch must save

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        grouped = isinstance(sampler, LengthGroupedSampler)
        if not (grouped or isinstance(sampler, torch.utils.data.RandomSampler)):
            return sampler
        if grouped:
            lengths = list(sampler.lengths)
        elif "input_ids" in getattr(dataset, "column_names", ()):
            lengths = [len(ids) for ids in dataset["input_ids"]]
        else:
            return sampler
        args = self.args
        global_batch = args.train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        seed = args.data_seed if args.data_seed is not None else args.seed
        return GlobalBatchSampler(lengths, global_batch, seed, group_by_length=grouped, max_steps=args.max_steps)

    def _micro_batches(self, inputs: dict) -> list[dict]:
        mask, labels = inputs.get("attention_mask"), inputs.get("labels")
        if (self.length_micro_batches <= 1 or not torch.is_tensor(mask) or not torch.is_tensor(labels)
                or self.accelerator.distributed_type == DistributedType.DEEPSPEED):
            return [inputs]
        lengths = mask.sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        if not torch.equal(order, torch.arange(len(order))):  # transformers' grouped batches are not sorted
            inputs = {k: v[order] if torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == len(order) else v
                      for k, v in inputs.items()}
            lengths = lengths[order]
        return split_batch(inputs, micro_batch_cuts(lengths.tolist(), self.length_micro_batches,
                                                        self.length_micro_batch_cost))

    def training_step(self, model, inputs, num_items_in_batch=None):
        parts = self._micro_batches(inputs)
        if len(parts) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        # A loss the model already divides by the step's item count adds up over parts as it is; a loss
        # that is a mean over the part is weighted by the part's share of the batch.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)  # transformers >= 5.19; before it, inferred below
        if scaled is None:
            scaled = ((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                      or self.compute_loss_func is not None)
        items = _loss_items(inputs["labels"])
        total = 0.0
        try:
            for i, part in enumerate(parts):
                self._part_weight = 1.0 if scaled or items == 0 else _loss_items(part["labels"]) / items
                # gradients are averaged across processes once, after the batch's last part
                sync = contextlib.nullcontext() if i == len(parts) - 1 else self.accelerator.no_sync(model)
                with sync:
                    total = total + super().training_step(model, part, num_items_in_batch)
        finally:
            self._part_weight = 1.0
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if self._part_weight == 1.0:
            return result
        if return_outputs:
            return result[0] * self._part_weight, result[1]
        return result * self._part_weight
