"""`loraplus diagnose`: does a run's A and B learn efficiently? A verdict and a plot from feature_learning.jsonl.

The records are written during training by `loraplus.train.feature_learning.FeatureLearningCallback`; this
module only reads them, so it works on a run that is still training.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

from loraplus.core.errors import LoraPlusError
from loraplus.train.arguments import flag_lines, parse_command
from loraplus.train.feature_learning import PLOT_FILE, RECORDS_FILE
from loraplus.train.files import read_jsonl

BALANCED = 0.5  # |log10(delta_B / delta_A)| within this (a factor of about 3) counts as balanced


def _log_ratio(record: dict) -> float | None:
    """log10(delta_B / delta_A), +-inf when only one side moves, None when neither does."""
    a, b = record["delta_A"], record["delta_B"]
    if a <= 0 and b <= 0:
        return None
    if a <= 0 or b <= 0:
        return math.inf if b > 0 else -math.inf
    return math.log10(b / a)


def current_ratio(run_dir) -> tuple[float | None, str | None]:
    """lr_B / lr_A of a run and where it came from: metrics.jsonl (lr_A, lr_B), else config.yaml."""
    run = Path(run_dir)
    if (run / "metrics.jsonl").is_file():
        for r in reversed(read_jsonl(run / "metrics.jsonl")):
            if r.get("lr_A") and r.get("lr_B") is not None:  # lr_A is 0 at the start of a warmup
                return r["lr_B"] / r["lr_A"], "metrics.jsonl"
    if (run / "config.yaml").is_file():
        import yaml

        try:
            ratio = yaml.safe_load((run / "config.yaml").read_text()).get("loraplus_lr_ratio")
        except (yaml.YAMLError, AttributeError):  # unreadable, or not a mapping
            ratio = None
        if isinstance(ratio, (int, float)):
            return float(ratio), "config.yaml"
    return None, None


def _require_records(run_dir) -> Path:
    path = Path(run_dir) / RECORDS_FILE
    if not path.is_file():
        raise LoraPlusError(f"{run_dir} has no {RECORDS_FILE}; train with the feature-learning monitor on "
                            "(e.g. loraplus train ... --feature_learning_steps 10) and diagnose that output_dir")
    return path


def diagnose(run_dir, *, output=None) -> dict:
    """Verdict on a run's feature learning: is delta_B / delta_A within a factor ~3 of 1, and what ratio balances it.

    The verdict uses the median of log10(delta_B / delta_A) of the aggregate over the last half of
    the measurements (early steps start from B = 0, where delta_A is 0 by construction).
    The suggested ratio assumes that under Adam an update's size is proportional to its learning
    rate, so delta_A ~ lr_A and delta_B ~ lr_B at a given state: multiplying lr_B / lr_A by
    delta_A / delta_B then balances them if the trend continues. The assumption ignores that
    delta_A = s*B*dA*x also grows with ||B||, which itself grows with lr_B while B is still growing
    from zero; then the deltas' ratio hardly depends on lr_B and the suggestion is unreliable, so the
    message says when ||B|| grew more than 1.5x over the measurements used. Measured on the toy of
    tests/test_diagnostics.py: ratio 16 moves log10(delta_B / delta_A) by about +0.9 over ratio 1,
    not the +1.2 the assumption predicts. Read it as a direction and a rough size, not a tuned value.
    Reads files only, so it works on a running run. Writes the plot to `output` (default:
    RUN_DIR/feature_learning.png).
    """
    path = _require_records(run_dir)
    records = read_jsonl(path)
    total = sorted((r for r in records if r.get("layer") == "all"), key=lambda r: r["step"])
    if not total:
        raise LoraPlusError(f"{path} holds no measurement yet; wait for the first measured step and run again")
    tail = total[len(total) // 2:]
    logs = [v for v in map(_log_ratio, tail) if v is not None]
    m = statistics.median(logs) if logs else None
    ratio, source = current_ratio(run_dir)
    suggested = ratio * 10 ** -m if ratio is not None and m is not None and math.isfinite(m) else None

    span = f"median of the last {len(tail)} measurements, steps {tail[0]['step']}-{tail[-1]['step']}"
    if m is None:
        verdict, text = "no update", f"neither A nor B changed the features ({span})"
    elif abs(m) <= BALANCED:
        verdict, text = "balanced", f"delta_B / delta_A = {10 ** m:.3g} ({span})"
    else:
        side, other = ("B", "A") if m > 0 else ("A", "B")
        verdict = f"{side} dominates"
        factor = 10 ** abs(m)
        text = (f"delta_{side} is {factor:.3g}x delta_{other} ({span})" if math.isfinite(factor)
                else f"delta_{other} is zero: {other} does not move ({span})")
    if ratio is not None:
        text += f"; lr_B / lr_A = {ratio:.4g} (from {source})"
        if suggested is not None and verdict != "balanced":
            text += f"; a ratio of about {suggested:.3g} would balance them if the trend continues"
    b0, b1 = tail[0]["norm_B"], tail[-1]["norm_B"]
    growth = b1 / b0 if b0 > 0 else (math.inf if b1 > 0 else 1.0)
    if growth > 1.5:  # see the docstring: while B grows, delta_A grows with lr_B too
        text += f"; ||B|| grew {growth:.3g}x over these steps, so the deltas' ratio still moves: diagnose again later"
    plot = _plot(records, Path(output) if output else Path(run_dir) / PLOT_FILE, f"{Path(run_dir).name}: {verdict}")
    return {"run_dir": str(run_dir), "verdict": verdict, "log10_ratio": m, "measurements": len(total),
            "ratio": ratio, "ratio_source": source, "suggested_ratio": suggested, "norm_B_growth": growth,
            "plot": str(plot), "message": f"{run_dir}: {verdict}: {text}"}


def _plot(records: list[dict], path: Path, title: str) -> Path:
    """delta_A and delta_B against step on a log axis: the aggregate thick, each layer thin."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    layers = sorted(dict.fromkeys(r["layer"] for r in records), key=lambda name: name == "all")  # "all" on top
    for layer in layers:
        rows = sorted((r for r in records if r["layer"] == layer), key=lambda r: r["step"])
        for key, color in (("delta_A", "tab:blue"), ("delta_B", "tab:orange")):
            points = [(r["step"], r[key]) for r in rows if r[key] > 0]  # a log axis cannot show 0
            if points:
                style = dict(lw=2.2, label=f"{key} (all layers)") if layer == "all" else dict(lw=0.6, alpha=0.35)
                ax.plot(*zip(*points), color=color, **style)
    if ax.lines:
        ax.set_yscale("log")
        ax.legend()
    ax.set(xlabel="optimizer step", ylabel="per-token RMS change of s*B*A*x", title=title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclasses.dataclass
class DiagnoseArguments:
    """`loraplus diagnose` flags; the run folders are its positional arguments."""

    output_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "put each run's plot here, as <run folder name>_feature_learning.png (none = in the run folder)"})
    output: str | None = dataclasses.field(default=None, metadata={"help": "the plot file of one run"})


USAGE = "usage: loraplus diagnose RUN_DIR [RUN_DIR ...] [--output_dir D | --output PNG]"


def main_diagnose(argv: list[str]) -> int:
    """`loraplus diagnose RUN_DIR [RUN_DIR ...] [--output_dir D | --output PNG]`: one verdict per run, and plots.

    A run's plot goes into the run folder by default; `--output_dir D` (the output flag of every command)
    puts each into D as <run folder name>_feature_learning.png; `--output PNG` names the file of one run.
    """
    if any(a in ("-h", "--help") for a in argv):
        print("\n".join([USAGE, "", *flag_lines(DiagnoseArguments)]))
        return 0
    flags, runs = parse_command(DiagnoseArguments, argv, "diagnose", positionals=True)
    output, output_dir = flags.output, flags.output_dir
    if not runs or (output and (len(runs) > 1 or output_dir)):
        raise LoraPlusError(f"{USAGE} (--output only with one RUN_DIR, and not with --output_dir)" if runs else USAGE)
    for run in runs:  # every run checked before any plot is written
        _require_records(run)
    for run in runs:
        plot = output or (Path(output_dir) / f"{Path(run).resolve().name}_{PLOT_FILE}" if output_dir else None)
        result = diagnose(run, output=plot)
        print(f"{result['message']}\nplot: {result['plot']}")
    return 0
