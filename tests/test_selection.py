"""The one rule that picks the best run, for compare, sweep and tune (experiments/selection.py)."""

import math

from loraplus.experiments.selection import best_run, ranked, run_score


def summary(metric="accuracy", value=None, loss=None, diverged=False, best=None):
    validation = {} if value is None else {f"eval_{metric}": value}
    if loss is not None:
        validation["eval_loss"] = loss
    s = {"metric": None if diverged else metric, "validation": {} if diverged else validation, "best_metric": best}
    return {**s, "diverged": "non-finite loss at step 3"} if diverged else s


def test_score_is_the_delivered_models_validation_metric():
    """The validation metric of the model a run delivers; best_metric only when that evaluation is missing."""
    assert run_score(summary(value=0.7, best=0.8)) == 0.7
    assert run_score(summary(best=0.8)) == 0.8
    assert run_score(summary(diverged=True, best=0.9)) is None
    assert run_score(summary(value=math.nan)) is None


def test_direction_follows_the_metric():
    """Accuracy: the highest wins; eval loss: the lowest wins."""
    assert best_run({"a": summary(value=0.6), "b": summary(value=0.9), "c": summary(value=0.7)}) == "b"
    assert best_run({"a": summary("loss", 2.0), "b": summary("loss", 0.5), "c": summary("loss", 1.0)}) == "b"


def test_a_diverged_run_is_never_chosen():
    """Even as the only run with a 'better' best_metric, a diverged run has no score; all diverged: None."""
    assert best_run({"a": summary(diverged=True, best=0.99), "b": summary(value=0.5)}) == "b"
    assert best_run({"a": summary(diverged=True), "b": summary(diverged=True)}) is None


def test_ties_go_to_the_lower_loss_then_to_grid_order():
    """Equal scores: the lower validation loss first; equal losses too: the first in order."""
    runs = {"a": summary(value=0.5, loss=0.69), "b": summary(value=0.5, loss=0.60), "c": summary(value=0.5, loss=0.60)}
    assert best_run(runs) == "b"
    assert ranked({"x": 1.0, "y": 1.0, "z": 2.0}, greater=True) == ["z", "x", "y"]
