"""The Trainer `loraplus train` runs: LoRA+ optimizer groups plus the speed paths and the NaN/Inf guard.

Mixins, outermost first, each overriding as little as it can:

- `NonFiniteGuardMixin` (guard.py) sees each step's whole loss, and its gradients before clipping;
- `SortedWithinBatchesMixin` (sampling.py) draws blocks of the global batch sorted by length and runs each
  process's batch as micro-batches padded to their own longest row;
- `TargetLogitsMixin` (target_logits.py) has causal LMs compute logits at target positions only;
- `LoraPlusTrainer` (trainer.py) builds the optimizer over the LoRA+ groups.

`build_trainer` assembles the trainer of one run from its parts, top to bottom.

`loop_eval_prefix` names the evaluations of the training loop: "eval" on a validation split, "test"
when a comparison's final run follows the test split (its scores must never pass for validation ones).
"""

from __future__ import annotations

from pathlib import Path

from loraplus.core.trainer import LoraPlusTrainer
from loraplus.speed.packing import is_packed
from loraplus.speed.sampling import SortedWithinBatchesMixin
from loraplus.speed.target_logits import TargetLogitsMixin
from loraplus.train.data import collator_for
from loraplus.train.feature_learning import attach_feature_learning
from loraplus.train.guard import NonFiniteGuardMixin
from loraplus.train.metrics_log import JsonlMetricsCallback
from loraplus.train.reliability import CheckpointCompleteCallback


class RunTrainer(NonFiniteGuardMixin, SortedWithinBatchesMixin, TargetLogitsMixin, LoraPlusTrainer):
    """LoraPlusTrainer with the guard, sorted global batches, micro-batches and target-position logits."""

    loop_eval_prefix = "eval"

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix=None):
        # The training loop calls evaluate() without a prefix; an explicit one (scoring after training) stays.
        prefix = self.loop_eval_prefix if metric_key_prefix is None else metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=prefix)


def build_trainer(cfg, args, model, tokenizer, prepared, evaluation, *, out: Path, resume: str | None,
                  run_record: dict, eval_on_test: bool) -> RunTrainer:
    """The trainer of one run, from its parts: model, splits, collator, metrics, callbacks and the speed settings.

    The training loop evaluates the validation split, or the test split for a comparison's final run
    (`eval_on_test`), whose scores are then logged as test_* (`loop_eval_prefix`).
    """
    trainer = RunTrainer(
        model=model, args=args, train_dataset=prepared.splits["train"],
        eval_dataset=prepared.splits["test" if eval_on_test else "validation"],
        data_collator=collator_for(cfg.task, tokenizer),
        compute_metrics=evaluation.compute_metrics, preprocess_logits_for_metrics=evaluation.preprocess_logits,
        processing_class=tokenizer,
        callbacks=[JsonlMetricsCallback(out / "metrics.jsonl", resumed_from=resume),
                   CheckpointCompleteCallback(run_record)],
        # a packed encoder pays for real tokens only: a batch gains nothing from micro-batches
        length_micro_batches=1 if is_packed(model) else cfg.length_micro_batches,
        length_micro_batch_cost=cfg.length_micro_batch_cost,
    )
    trainer.loop_eval_prefix = "test" if eval_on_test else "eval"
    if cfg.feature_learning_steps:
        attach_feature_learning(trainer, cfg.feature_learning_steps)
    return trainer
