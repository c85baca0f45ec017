"""`loraplus compare` and `loraplus sweep`: LoRA vs LoRA+ each at its own tuned lr, and lr grids.

Protocol (compare): each method's learning rate is chosen on a validation split that never sees the
test split (tuning runs drop it), then every method re-runs at its chosen rate for each seed with the
same data order and budget, evaluating on the test split as it trains. Only the adapter's learning
rates differ between arms: heads and other non-adapter parameters train at one shared rate
(`loraplus_lr_other`, default: LoRA's base learning rate), since a LoRA+ arm whose head inherits a
small lr_A would lose for the wrong reason. Every run has its own folder; a folder with a
summary.json is reused, so an interrupted compare or sweep continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path

from loraplus.train.arguments import parse_own_flags, positive_numbers
from loraplus.train.config import TrainConfig, parse_train_args
from loraplus.core.errors import LoraPlusError
from loraplus.train.distributed import is_writer
from loraplus.train.files import write_json
from loraplus.experiments.selection import best_run, lr_grid, run_score, runs_greater_is_better
from loraplus.train.runs import check_reusable, run_cell, run_log

# What each arm sets of the adapter's optimisation; everything else is the base config, the same in every arm.
# A ratio of None makes one arm per --ratios value. Every arm states every key, so an arm means the same
# whatever the base config says (a base with --use_dora does not turn the lora arm into DoRA).
ADAPTER_DEFAULTS = {"lora_init": "A", "loraplus_optimizer": "loraplus", "use_rslora": False, "use_dora": False}
ARMS = {
    "lora": {"loraplus_lr_ratio": 1.0},
    "loraplus": {"loraplus_lr_ratio": None},
    "loraplus_init2": {"loraplus_lr_ratio": None, "lora_init": "B"},  # the paper's Init[2]: A = 0, B random
    "riemannian": {"loraplus_lr_ratio": 1.0, "loraplus_optimizer": "riemannian"},
    "lorafa": {"loraplus_lr_ratio": 1.0, "loraplus_optimizer": "lorafa"},
    "rslora": {"loraplus_lr_ratio": 1.0, "use_rslora": True},
    "dora": {"loraplus_lr_ratio": 1.0, "use_dora": True},
}


def arm_settings(method: str, ratios: list[float]) -> dict[str, dict]:
    """{arm name: the config keys it sets}: one arm, or one per ratio for a ratio-grid method."""
    spec = {**ADAPTER_DEFAULTS, **ARMS[method]}
    if spec["loraplus_lr_ratio"] is not None:
        return {method: spec}
    return {f"{method}_r{ratio:g}": {**spec, "loraplus_lr_ratio": ratio} for ratio in ratios}


def _metric_value(summary: dict, split: str) -> float | None:
    prefix = {"validation": "eval", "test": "test"}[split]
    return summary.get(split, {}).get(f"{prefix}_{summary['metric']}")


def _print_run(what: str, summary: dict, split: str, reused: bool) -> None:
    """One line per run of an experiment (its Trainer printout goes to the run's train.log)."""
    if not is_writer():
        return
    value = _metric_value(summary, split) if summary.get("metric") else None
    shown = f"{split} {summary['metric']} {value:.4f}" if isinstance(value, float) else "diverged"
    print(f"{what}: {summary.get('global_step')} steps, {shown}" + (" (reused)" if reused else ""), flush=True)


def _records(run_dir: str) -> list[dict]:
    """What a run logged while it trained (its metrics.jsonl), read once for its curve and its loss drop."""
    from loraplus.train.plots import read_metrics

    return read_metrics(Path(run_dir) / "metrics.jsonl")


def _curve(records: list[dict], metric: str) -> list[tuple[int, float]]:
    """A final run's test curve: its loop evaluations, logged as test_* (eval_* in runs made by earlier versions)."""
    points = []
    for r in records:
        key = next((k for k in (f"test_{metric}", f"eval_{metric}") if k in r), None)
        if key is not None:
            points.append((r["step"], r[key]))
    return points


def _loss_drop(records: list[dict]) -> float | None:
    """How far a run's training loss fell: 1 - last logged / first logged (None with fewer than two logs)."""
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if len(losses) < 2 or losses[0] <= 0:
        return None
    return 1 - losses[-1] / losses[0]


def compare(base: TrainConfig, *, methods: list[str], seeds: list[int], lrs: list[float], ratios: list[float],
            output_dir: str, arm_lrs: dict[str, list[float]] | None = None,
            arm_ratios: dict[str, list[float]] | None = None, tune_max_steps: int | None = None) -> dict:
    """Tune each arm's lr on validation, re-run it per seed, and write report.md, curves.png, results.json.

    arm_lrs / arm_ratios: a method's own lr grid / ratios (by method name), instead of `lrs` / `ratios`.
    tune_max_steps: the tuning runs' budget (a whole schedule of that many steps), when the final runs' is
    too dear to tune at; None tunes at the final budget.
    """
    unknown = [m for m in [*methods, *(arm_lrs or {}), *(arm_ratios or {})] if m not in ARMS]
    if unknown:
        raise LoraPlusError(f"unknown method '{unknown[0]}'; use {', '.join(ARMS)}")
    out = Path(output_dir)
    lr_other = base.lr_other  # one head lr for every arm
    arms, grids = {}, {}
    for method in methods:
        for name, settings in arm_settings(method, (arm_ratios or {}).get(method, ratios)).items():
            arms[name], grids[name] = settings, (arm_lrs or {}).get(method, lrs)
    results = {"protocol": {"lrs": lrs, "seeds": seeds, "lr_other": lr_other, "tuning_seed": seeds[0],
                            "tune_max_steps": tune_max_steps}, "arms": {}}
    for arm, settings in arms.items():
        ratio = settings["loraplus_lr_ratio"]
        tuning = {}
        for lr in grids[arm]:
            # test_file=None: a tuning run has no business opening the test data at all
            cfg = dataclasses.replace(base, **settings, learning_rate=lr, loraplus_lr_other=lr_other,
                                      seed=seeds[0], test_file=None, output_dir=str(out / "tune" / f"{arm}_lr{lr:g}"))
            if tune_max_steps:
                cfg = dataclasses.replace(cfg, max_steps=tune_max_steps)
            reused = check_reusable(cfg)
            with run_log(Path(cfg.output_dir) / "train.log"):
                summary = run_cell(cfg, role="tune")
            tuning[lr] = summary
            _print_run(f"tune  {arm} lr_A {lr:g}", summary, "validation", reused)
        results["protocol"]["greater_is_better"] = runs_greater_is_better(s["metric"] for s in tuning.values())
        chosen = best_run(tuning)
        if chosen is None:
            raise LoraPlusError("every tuning run diverged (no validation metric); try smaller --lrs")
        finals = {}
        for seed in seeds:
            cfg = dataclasses.replace(base, **settings, learning_rate=chosen, loraplus_lr_other=lr_other,
                                      seed=seed, output_dir=str(out / "final" / f"{arm}_seed{seed}"))
            reused = check_reusable(cfg)
            with run_log(Path(cfg.output_dir) / "train.log"):
                finals[seed] = (run_cell(cfg, role="final"), cfg.output_dir)
            _print_run(f"final {arm} lr_A {chosen:g} seed {seed}", finals[seed][0], "test", reused)
        metric = next((s["metric"] for s, _ in finals.values() if s["metric"]), None)
        logged = {str(seed): _records(d) for seed, (s, d) in finals.items() if not s.get("diverged")}
        results["arms"][arm] = {
            "ratio": ratio, "lrs": grids[arm], "init": settings["lora_init"],
            "optimizer": settings["loraplus_optimizer"],
            "variant": "dora" if settings["use_dora"] else "rslora" if settings["use_rslora"] else "lora",
            "chosen_lr": chosen, "validation_by_lr": {f"{k:g}": run_score(s) for k, s in tuning.items()},
            "metric": metric,
            "final": [_metric_value(s, "test") for s, _ in finals.values()],
            "curves": {seed: _curve(r, metric) for seed, r in logged.items()},
            "diverged_seeds": [seed for seed, (s, _) in finals.items() if s.get("diverged")],
            "loss_drop": {seed: _loss_drop(r) for seed, r in logged.items()},
            "steps": [s["global_step"] for s, _ in finals.values()],
        }
    _speedups(results)
    if is_writer():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", results)
        (out / "report.md").write_text(report(results))
        _plot_curves(results, out / "curves.png")
    return results


def _mean_curve(curves: dict[str, list]) -> list[tuple[int, float]]:
    steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves.values()))) if curves else []
    return [(s, statistics.mean(dict(c)[s] for c in curves.values())) for s in steps]


def _speedups(results: dict) -> None:
    """Steps at which each arm's mean test curve first reaches tuned LoRA's mean final metric."""
    lora = results["arms"].get("lora")
    if not lora or None in lora["final"]:
        return
    target = statistics.mean(lora["final"])
    sign = 1 if results["protocol"].get("greater_is_better", True) else -1
    for arm in results["arms"].values():
        curve = _mean_curve(arm["curves"])
        reached = next((s for s, v in curve if sign * v >= sign * target), None)
        arm["steps_to_lora_final"] = reached
    base_steps = lora.get("steps_to_lora_final")
    for arm in results["arms"].values():
        s = arm.get("steps_to_lora_final")
        arm["speedup_vs_lora"] = base_steps / s if base_steps and s else None


def _mean_std(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def report(results: dict) -> str:
    """The Markdown report of a compare."""
    p = results["protocol"]
    lines = ["# LoRA vs LoRA+ and rivals", "",
             "Each arm's lr_A is chosen from its own grid (below) on validation "
             f"(seed {p['tuning_seed']}, test split dropped); heads and other parameters at lr {p['lr_other']:g} "
             f"in every arm; seeds {', '.join(map(str, p['seeds']))}"
             + (f"; tuning runs trained {p['tune_max_steps']} steps" if p.get("tune_max_steps") else "")
             + ". Init A: PEFT's (A random, B = 0; the "
             "paper's Init[1]); init B: A = 0, B random (Init[2]).", "",
             "| arm | ratio | init | optimizer | chosen lr_A | final test (mean ± std) | "
             "best test over steps (mean ± std) | steps to tuned LoRA's final | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    pick = max if p.get("greater_is_better", True) else min
    for name, arm in results["arms"].items():
        best = [pick(v for _, v in c) for c in arm["curves"].values() if c]
        speedup = f"{arm['speedup_vs_lora']:.2f}x" if arm.get("speedup_vs_lora") else "n/a"
        optimizer = arm.get("optimizer", "loraplus") + ("" if arm.get("variant", "lora") == "lora" else
                                                         f", {arm['variant']}")
        reached = arm.get("steps_to_lora_final") or "not reached"
        lines.append(f"| {name} | {arm['ratio']:g} | {arm.get('init', 'A')} | {optimizer} | {arm['chosen_lr']:g} | "
                     f"{_mean_std(arm['final'])} | {_mean_std(best)} | {reached} | {speedup} |")
    lines += ["", "Validation metric by learning rate (tuning runs):", ""]
    for name, arm in results["arms"].items():
        scores = ", ".join(f"{lr}: {v:.4f}" if v is not None else f"{lr}: diverged"
                       for lr, v in arm["validation_by_lr"].items())
        lines.append(f"- {name}: {scores}")
    lines += ["", "## Findings", "", *findings(results)]
    return "\n".join(lines) + "\n"


def findings(results: dict) -> list[str]:
    """Plain statements a reader can act on: each arm against tuned LoRA, and learning rates left untuned.

    A difference counts as a finding only beyond twice its standard error over seeds; with one seed there
    is no noise estimate, and the report says so rather than ranking the arms.
    """
    p, arms = results["protocol"], results["arms"]
    better = "higher" if p.get("greater_is_better", True) else "lower"
    out = []
    lora = arms.get("lora")
    lora_final = [v for v in (lora or {}).get("final", []) if v is not None]
    for name, arm in arms.items():
        final = [v for v in arm["final"] if v is not None]
        if name == "lora" or not lora_final or not final:
            continue
        diff = statistics.mean(final) - statistics.mean(lora_final)
        if min(len(final), len(lora_final)) < 2:
            verdict = "one seed per arm: no noise estimate, so no ranking; add --seeds"
        else:
            se = math.sqrt(statistics.variance(final) / len(final) + statistics.variance(lora_final) / len(lora_final))
            side = "better" if (diff > 0) == (better == "higher") else "worse"
            verdict = (f"{side} than tuned LoRA beyond seed noise (standard error {se:.4f})" if abs(diff) > 2 * se
                       else f"not distinguishable from seed noise (standard error {se:.4f})")
        steps = arm.get("steps_to_lora_final")
        reach = (f"reaches tuned LoRA's final at step {steps} of {max(arm['steps'])}" if steps
                 else "never reaches tuned LoRA's final")
        out.append(f"- {name} − lora, final test ({better} is better): {diff:+.4f}; {verdict}; {reach}.")
    out += _stalled_seeds(arms)
    for name, arm in arms.items():
        grid = sorted(arm.get("lrs", p["lrs"]))
        if len(grid) > 1 and arm["chosen_lr"] in (grid[0], grid[-1]):
            edge = "smallest" if arm["chosen_lr"] == grid[0] else "largest"
            out.append(f"- {name}: the chosen lr {arm['chosen_lr']:g} is the {edge} tried, so its best may lie "
                       f"outside the grid; extend --lrs before trusting this arm's result.")
        chosen = f"{arm['chosen_lr']:g}"
        tied = _tied_lrs(arm.get("validation_by_lr", {}), chosen)
        if tied:
            out.append(f"- {name}: lr {', '.join(tied)} tied the chosen {chosen} on validation "
                       f"({arm['validation_by_lr'][chosen]:.4f}); the lower validation loss picked {chosen}, "
                       f"so tuning did not separate them: train the tied lr's seeds too before trusting "
                       f"{name}'s result.")
    return out or ["- nothing to compare: run at least lora and one LoRA+ arm."]


def _tied_lrs(scores: dict[str, float | None], chosen: str) -> list[str]:
    """The other lrs that scored exactly the chosen lr's validation metric: `selection.ranked` left the choice
    between them to the tie-break."""
    best = scores.get(chosen)
    return [lr for lr, v in scores.items() if best is not None and lr != chosen and v == best]


# A seed whose training loss fell less than this fraction of what its arm's best seed's fell has stalled.
STALL_FRACTION = 0.25


def _stalled_seeds(arms: dict) -> list[str]:
    """Seeds that barely trained while another seed of the same arm did: a stuck start (for example a
    classifier left at chance), which decides the arm's mean and is not the seed noise the ranking allows for."""
    out = []
    for name, arm in arms.items():
        drops = {seed: d for seed, d in arm.get("loss_drop", {}).items() if d is not None}
        top = max(drops.values(), default=0.0)
        for seed, drop in drops.items():
            if top > 0.05 and drop < STALL_FRACTION * top:
                out.append(f"- {name} seed {seed} stalled: its training loss fell {100 * drop:.0f}%, another seed's "
                           f"{100 * top:.0f}%. Its final counts in {name}'s mean; rerun with more seeds or a smaller "
                           f"lr before trusting {name}'s result."
                           + (" It also makes LoRA's mean final, the target of every arm's steps to tuned LoRA's "
                              "final, easier to reach."
                              if name == "lora" else ""))
    return out


def _plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, arm in results["arms"].items():
        curves = [c for c in arm["curves"].values() if c]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
        values = [[dict(c)[s] for s in steps] for c in curves]
        mean = [statistics.mean(v) for v in zip(*values)]
        lo, hi = [min(v) for v in zip(*values)], [max(v) for v in zip(*values)]
        ax.plot(steps, mean, marker="o", label=f"{name} (lr_A {arm['chosen_lr']:g})")
        ax.fill_between(steps, lo, hi, alpha=0.2)
    ax.set(xlabel="optimizer step", ylabel=f"test {next(iter(results['arms'].values()))['metric']}",
           title="test metric: mean and range over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(base: TrainConfig, *, lrs: list[float], ratios: list[float], output_dir: str) -> dict:
    """One tuning run per (lr_A, ratio) cell; heatmap over (lr_A, lr_B) of where each run ended.

    A cell's `value` is its last evaluation (as the paper's heatmaps show), `best` the best over its steps,
    `score` what selection.run_score ranks it by; the best cell is chosen by that rule, as compare and tune
    choose theirs.
    """
    out = Path(output_dir)
    lr_other = base.lr_other  # one head lr for every cell
    cells, summaries = [], {}
    for lr in lrs:
        for ratio in ratios:
            cfg = dataclasses.replace(base, learning_rate=lr, loraplus_lr_ratio=ratio, loraplus_lr_other=lr_other,
                                      output_dir=str(out / f"lr{lr:g}_ratio{ratio:g}"))
            reused = check_reusable(cfg)
            with run_log(Path(cfg.output_dir) / "train.log"):
                summary = run_cell(cfg, role="tune")
            _print_run(f"lr_A {lr:g} ratio {ratio:g}", summary, "validation", reused)
            summaries[len(cells)] = summary
            cells.append({"lr_A": lr, "ratio": ratio, "lr_B": lr * ratio, "metric": summary["metric"],
                          "value": _final_value(cfg.output_dir, summary), "best": summary["best_metric"],
                          "score": run_score(summary), "diverged": "diverged" in summary})
    chosen = best_run(summaries)
    best = cells[chosen] if chosen is not None else None
    result = {"cells": cells, "best": best, "lr_other": lr_other}
    if is_writer():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "sweep.json", result)
        _plot_heatmap(cells, best, out / "heatmap.png")
    return result


def _final_value(run_dir: str, summary: dict) -> float | None:
    """The metric of the loop's last evaluation: where the run ended, as the paper's heatmaps show (a run that
    peaks and then degrades shows it here, beside its score)."""
    if summary.get("diverged") or not summary["metric"]:
        return None
    curve = _curve(_records(run_dir), summary["metric"])
    if not curve:
        return summary["best_metric"]
    last = max(step for step, _ in curve)
    return next(value for step, value in curve if step == last)


def _plot_heatmap(cells: list[dict], best: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    xs = [math.log10(c["lr_A"]) for c in cells]
    ys = [math.log10(c["lr_B"]) for c in cells]
    vs = [c["value"] if c["value"] is not None else float("nan") for c in cells]
    sc = ax.scatter(xs, ys, c=vs, s=400, marker="s", cmap="viridis", zorder=2)
    fig.colorbar(sc, label=f"validation {cells[0]['metric'] if cells else ''}")
    for x, y, v in zip(xs, ys, vs):  # the number itself: neighbouring colours are hard to rank by eye
        ax.annotate(f"{v:.3g}", (x, y), xytext=(0, -17), textcoords="offset points", ha="center", fontsize=7)
    lo, hi = min(xs + ys), max(xs + ys)
    # grey, behind the cells: the diagonal must show on the white background between them
    ax.plot([lo, hi], [lo, hi], "--", color="0.5", zorder=1, label="ratio 1 (plain LoRA)")
    if best:
        ax.plot(math.log10(best["lr_A"]), math.log10(best["lr_B"]), "r*", markersize=18,
                label="chosen (selection rule)")
    ax.margins(0.12)
    ax.set(xlabel="log10 lr_A", ylabel="log10 lr_B", title="final metric per (lr_A, lr_B)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _help(text: str) -> dict:
    return {"help": text}


@dataclasses.dataclass
class CompareArguments:
    """compare's own flags; the others are `loraplus train` keys, shared by every run."""

    methods: list[str] = dataclasses.field(default_factory=lambda: ["lora", "loraplus"], metadata=_help(
        f"the arms, comma-separated: {', '.join(ARMS)}"))
    seeds: list[int] = dataclasses.field(default_factory=lambda: [1, 2], metadata=_help("final-run seeds"))
    lrs: list[float] | None = dataclasses.field(default=None, metadata=_help(
        "lr_A grid of every arm (none = learning_rate x 1/4 .. 4)"))
    ratios: list[float] | None = dataclasses.field(default=None, metadata=_help(
        "ratio grid of the LoRA+ arms (none = loraplus_lr_ratio)"))
    output_dir: str | None = dataclasses.field(default=None, metadata=_help("where runs and the report go "
                                                                             "(none = output_dir)"))
    tune_max_steps: int | None = dataclasses.field(default=None, metadata=_help(
        "steps of each tuning run (none = the final runs' budget)"))


# An lr grid per arm (--lrs_lora ...) and a ratio grid per arm whose ratio is tuned (--ratios_loraplus ...).
ARM_GRIDS = {f"lrs_{method}": method for method in ARMS}
ARM_RATIOS = {f"ratios_{method}": method for method in ARMS if ARMS[method]["loraplus_lr_ratio"] is None}
CompareFlags = dataclasses.make_dataclass("CompareFlags", [
    (name, list[float] | None, dataclasses.field(default=None, metadata=_help(
        f"the {what} grid of {method} (none = {shared})")))
    for grids, what, shared in ((ARM_GRIDS, "lr_A", "--lrs"), (ARM_RATIOS, "ratio", "--ratios"))
    for name, method in grids.items()],
    bases=(CompareArguments,))


def main_compare(argv: list[str]) -> int:
    """loraplus compare CONFIG [--methods lora,loraplus] [--seeds 1,2] [--lrs ...] [--ratios 16] [--key value]."""
    mine, rest = parse_own_flags(CompareFlags, argv, "compare")
    base = parse_train_args(rest, command_flags=[f.name for f in dataclasses.fields(CompareFlags)])
    if not mine.seeds:
        raise LoraPlusError("--seeds needs at least one integer seed")
    output_dir = mine.output_dir or base.output_dir
    arm_lrs = {method: positive_numbers(f"--{flag}", getattr(mine, flag))
               for flag, method in ARM_GRIDS.items() if getattr(mine, flag) is not None}
    arm_ratios = {method: positive_numbers(f"--{flag}", getattr(mine, flag))
                  for flag, method in ARM_RATIOS.items() if getattr(mine, flag) is not None}
    if mine.tune_max_steps is not None and mine.tune_max_steps <= 0:
        raise LoraPlusError(f"--tune_max_steps takes a number of optimizer steps > 0, got {mine.tune_max_steps}")
    results = compare(base, methods=mine.methods, seeds=mine.seeds, lrs=lr_grid(mine.lrs, base.learning_rate),
                      ratios=positive_numbers("--ratios", mine.ratios or [base.loraplus_lr_ratio]),
                      output_dir=output_dir, arm_lrs=arm_lrs, arm_ratios=arm_ratios,
                      tune_max_steps=mine.tune_max_steps)
    print(report(results))
    print(f"report.md, curves.png and results.json in {output_dir}")
    return 0


@dataclasses.dataclass
class SweepArguments:
    """sweep's own flags; the others are `loraplus train` keys, shared by every cell."""

    lr: list[float] | None = dataclasses.field(default=None, metadata=_help("lr_A values, e.g. 1e-4,3e-4"))
    ratio: list[float] = dataclasses.field(default_factory=lambda: [1.0, 4.0, 16.0], metadata=_help(
        "lr_B / lr_A values"))
    output_dir: str | None = dataclasses.field(default=None, metadata=_help("where the cells and the heatmap go "
                                                                             "(none = output_dir)"))


def main_sweep(argv: list[str]) -> int:
    """loraplus sweep CONFIG --lr 1e-4,3e-4 --ratio 1,4,16 [--key value ...]."""
    mine, rest = parse_own_flags(SweepArguments, argv, "sweep")
    base = parse_train_args(rest, command_flags=[f.name for f in dataclasses.fields(SweepArguments)])
    if not mine.lr:
        raise LoraPlusError("sweep needs --lr with comma-separated lr_A values, e.g. --lr 1e-4,3e-4,1e-3")
    lrs, ratios = positive_numbers("--lr", mine.lr), positive_numbers("--ratio", mine.ratio)
    output_dir = mine.output_dir or base.output_dir
    result = sweep(base, lrs=lrs, ratios=ratios, output_dir=output_dir)
    best = result["best"]
    for c in result["cells"]:
        print(f"lr_A {c['lr_A']:<8g} ratio {c['ratio']:<5g} lr_B {c['lr_B']:<9g} {c['metric']} {c['value']}")
    if best:
        print(f"best: lr_A {best['lr_A']:g}, ratio {best['ratio']:g} ({best['metric']} {best['value']:.4f})")
    print(f"sweep.json and heatmap.png in {output_dir}")
    return 0
