"""Figures from metrics.jsonl: training loss and eval metric against optimizer step."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path) -> list[dict]:
    """The records logged during training in a metrics.jsonl file, as the (last) resumed run made them.

    A `resumed_from` record at step N (metrics_log.JsonlMetricsCallback) means the steps after N were trained
    again: records after N logged before it give way to the replayed ones. Lines a crash left unreadable
    are skipped. Scores taken after training (marked `after_training`) are left out: they belong to
    summary.json, and may be of another split than the periodic evaluations. [] when there is no file.
    """
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # blank, or torn by a crash
            continue
        if "resumed_from" in record:
            records = [r for r in records if r.get("step", 0) <= record["step"] and "train_runtime" not in r
                       and not r.get("after_training")]
            continue
        records.append(record)
    return [r for r in records if not r.get("after_training")]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in points], [v for _, v in points]


def learning_curves(runs: dict[str, list[dict]], metric: str, path, title: str = "") -> Path:
    """Write a PNG with the training loss (left) and `metric` on the eval split (right) for each run."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for label, records in runs.items():
        ax_loss.plot(*_series(records, "loss"), label=label)
        steps, values = _series(records, metric)
        ax_metric.plot(steps, values, marker="o", label=label)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    ax_metric.set(xlabel="optimizer step", ylabel=metric, title=metric)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
