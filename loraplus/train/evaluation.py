"""How a task is evaluated: its metric functions and the metric that picks the best checkpoint, scoring a model on
a split, and the periodic evaluations a training loop logged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loraplus.train.config import TrainConfig
from loraplus.train.data import PreparedData
from loraplus.train.metrics import greater_is_better


@dataclass
class Evaluation:
    """How the Trainer evaluates a task: its metric functions and the metric that picks the best checkpoint."""

    compute_metrics: object = None  # Trainer(compute_metrics=...); None: eval_loss only
    preprocess_logits: object = None  # Trainer(preprocess_logits_for_metrics=...)
    metric: str = "loss"

    @property
    def greater_is_better(self) -> bool:
        return greater_is_better(self.metric)


def evaluation_for(cfg: TrainConfig, prepared: PreparedData, tokenizer) -> Evaluation:
    """Classification: accuracy (Pearson for regression). Label words: accuracy when each word is one token
    (scored in the Trainer's own evaluation), else eval loss. Language modelling: eval loss."""
    from loraplus.train.metrics import compute_metrics_for, label_word_eval_for, label_word_ids

    if cfg.task == "classification":
        compute = compute_metrics_for(cfg.task, prepared.is_regression, len(prepared.label_names or []) or None)
        return Evaluation(compute, None, "pearson" if prepared.is_regression else "accuracy")
    if cfg.task == "label_words":
        scored = label_word_eval_for(label_word_ids(tokenizer, prepared.label_words))
        if scored:
            return Evaluation(scored[1], scored[0], "accuracy")
    return Evaluation()


def sorted_by_length(dataset):
    """The split ordered by length: eval batches then pad to near their own length (metrics ignore order)."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def score(cfg: TrainConfig, model, tokenizer, dataset, prepared: PreparedData, trainer=None, prefix="test",
          logged: dict | None = None) -> dict:
    """Metrics of `model` on a prepared split: Trainer evaluation, plus label-word accuracy.

    logged: this model's metrics on this split as the training loop already logged them (see
    `logged_evaluation`); the Trainer evaluation is then not run again.
    """
    from loraplus.train.metrics import classification_metrics, score_label_words

    metrics = logged if logged is not None else (
        trainer.evaluate(dataset, metric_key_prefix=prefix) if trainer is not None else {})
    if cfg.task == "label_words" and f"{prefix}_accuracy" not in metrics:  # not scored in the evaluation
        predictions = score_label_words(model, tokenizer, dataset, prepared.label_words,
                                        batch_size=cfg.per_device_eval_batch_size)
        labels = [int(y) for y in dataset["label"]]  # a datasets Column, not an array
        scored = classification_metrics(predictions, labels, len(prepared.label_names))
        metrics.update({f"{prefix}_{k}": v for k, v in scored.items()})
    return metrics


def _loop_entry(trainer, step: int, prefix: str) -> dict | None:
    """The training loop's evaluation at `step` (keys `prefix`_*), or None when none fell on that step."""
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == step and f"{prefix}_loss" in entry:
            return {key: value for key, value in entry.items() if key.startswith(f"{prefix}_")}
    return None


def logged_evaluation(trainer, prefix: str) -> dict | None:
    """The training loop's own evaluation of the weights the trainer holds now (its keys `prefix`_*).

    The model after training is the last step's, or the best checkpoint's when the Trainer loaded it at the
    end; the loop has evaluated it on its eval split if an evaluation fell on that step. Evaluating it again
    costs a full pass for the same numbers (a minute a run for SmolLM2's label words on a CPU).
    None when no evaluation fell on that step.
    """
    state = trainer.state
    step = state.global_step
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint:
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    return _loop_entry(trainer, step, prefix)


def loop_evaluations(trainer, prefix: str, chosen_by: str | None) -> dict:
    """{"final": the loop's evaluation at the last step, "best": at the checkpoint chosen by `chosen_by`},
    each with its step; "best" is None when no checkpoint is chosen (compare's final runs, scored on test)."""
    state = trainer.state
    final = _loop_entry(trainer, state.global_step, prefix)
    found = {"final": {"step": state.global_step, **final} if final else None, "best": None}
    if chosen_by and state.best_model_checkpoint:
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
        best = _loop_entry(trainer, step, prefix)
        found["best"] = {"step": step, **best} if best else None
    return found
