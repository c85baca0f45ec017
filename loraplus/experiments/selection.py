"""Which run is best: one rule for `compare`, `sweep` and `tune` (README, "Tuning lr and ratio").

A run's score is the validation metric of the model it delivers. With a validation split the Trainer keeps
the best of the run's evaluations (`load_best_model_at_end`), so the score is that evaluation: what a user
of the run gets. The metric's direction (`loraplus.train.metrics.greater_is_better`: eval loss lower,
accuracy / F1 / Pearson higher) says which way is better. A run that diverged has no score and is never
chosen. Equal scores (short runs that all predict the majority class) go to the lower validation loss, then
to the first run in grid order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping

from loraplus.train.arguments import positive_numbers
from loraplus.train.metrics import greater_is_better


def lr_grid(given: list[float] | None, learning_rate: float) -> list[float]:
    """The --lrs grid of compare and tune: the given values, else the config's learning_rate x 1/4 .. 4."""
    return positive_numbers("--lrs", given or [float(f"{learning_rate * f:g}") for f in (0.25, 0.5, 1, 2, 4)])


def run_score(summary: Mapping) -> float | None:
    """The validation metric of the model a run delivers, or None when it diverged or has none."""
    if summary.get("diverged") or not summary.get("metric"):
        return None
    value = summary.get("validation", {}).get(f"eval_{summary['metric']}", summary.get("best_metric"))
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_tiebreak(summary: Mapping) -> float:
    """The validation loss of the model a run delivers (inf when there is none): lower breaks a tie."""
    loss = summary.get("validation", {}).get("eval_loss")
    return float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf


def runs_greater_is_better(metrics: Iterable[str | None]) -> bool:
    """The direction for runs reporting these metrics (diverged runs report None and do not count)."""
    named = set(metrics) - {None}
    return bool(named) and all(greater_is_better(m) for m in named)


def ranked(scores: Mapping[Hashable, float | None], greater: bool,
           tiebreaks: Mapping[Hashable, float] | None = None) -> list[Hashable]:
    """The keys that have a score, best first; ties by the lower tiebreak, then by their order in `scores`."""
    tiebreaks = tiebreaks or {}
    finite = [(key, v) for key, v in scores.items() if v is not None and math.isfinite(v)]
    return [key for key, v in sorted(finite, key=lambda kv: (-kv[1] if greater else kv[1],
                                                             tiebreaks.get(kv[0], math.inf)))]


def best_run(summaries: Mapping[Hashable, Mapping]) -> Hashable | None:
    """The key of the best of these run summaries by the rule above, or None when every run diverged."""
    greater = runs_greater_is_better(s.get("metric") for s in summaries.values())
    order = ranked({k: run_score(s) for k, s in summaries.items()}, greater,
                   {k: run_tiebreak(s) for k, s in summaries.items()})
    return order[0] if order else None
