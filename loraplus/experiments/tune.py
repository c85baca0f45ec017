"""`loraplus tune`: choose (lr_A, ratio) by successive halving over short runs validated on the training data.

Successive halving (Jamieson & Talwalkar, AISTATS 2016): rung 0 trains every (lr_A, ratio) cell of the grid
for r_0 optimizer steps; each rung keeps the best 1/eta of its cells by validation metric, and those train
eta times longer in the next rung. The best cell of the last rung is chosen.

Budget -> rungs: the budget B is the optimizer steps the whole tune may spend. Rung k has n_k cells,
n_0 = the grid and n_{k+1} = floor(n_k / eta), as long as that leaves two or more cells to compare, and
trains each for r_k = r_0 * eta^k steps, with r_0 = floor(B / sum_k n_k * eta^k). Every rung then costs
about the same, and the tune spends at most B (the rounding is left unspent).

Survivors restart rather than resume: each run is a complete `loraplus train` run of r_k steps, with
warmup and decay to zero over those r_k steps, as the final training will have. Resuming a rung-k
checkpoint, whose schedule has already decayed to zero, under a longer max_steps makes the learning
rate jump back up mid-run and scores a schedule that no real run uses. Restarting costs the earlier
rungs' steps again (at most eta / (eta - 1) times the resumed cost), and the reported cost counts them.

Data: tuning runs see only the training data. Their validation split is carved from it
(validation_split_ratio, seeded by seed); the config's validation and test files are never opened. Only
the adapter's learning rates vary: heads and other non-adapter parameters train at one shared rate
(loraplus_lr_other, default the config's learning_rate), as in compare, and tuned_config.yaml keeps it.

Every run has its own folder, runs/lr{lr_A}_ratio{ratio}_steps{r}; a folder with a summary.json is
reused, so an interrupted tune continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from loraplus.train.arguments import flag_lines, parse_own_flags, positive_numbers
from loraplus.train.config import TrainConfig, parse_train_args
from loraplus.core.errors import LoraPlusError
from loraplus.experiments.selection import lr_grid, ranked, run_score, run_tiebreak, runs_greater_is_better
from loraplus.train.runs import check_reusable, run_cell, run_log
from loraplus.train.distributed import is_writer
from loraplus.train.files import write_json

RATIOS = (1, 2, 4, 8, 16, 32)  # default ratio grid: plain LoRA up to twice the paper's 2^4
BUDGET_RUNS = 4  # default budget: the optimizer steps of this many training runs as configured
TUNE_FILES = {"runs", "data", "tune.json", "tuned_config.yaml", "train"}  # what a tune folder may hold

Cell = tuple[float, float]  # (lr_A, ratio)


@dataclasses.dataclass(frozen=True)
class Rung:
    """n cells, each trained for `steps` optimizer steps."""

    cells: int
    steps: int


def rung_sizes(cells: int, eta: int) -> list[int]:
    """n_0 = cells, n_{k+1} = floor(n_k / eta), while that still leaves two or more cells to compare."""
    sizes = [cells]
    while sizes[-1] // eta >= 2:
        sizes.append(sizes[-1] // eta)
    return sizes


def plan_rungs(cells: int, eta: int, budget: int) -> list[Rung]:
    """The rungs of a successive-halving tune spending at most `budget` optimizer steps (module docstring)."""
    sizes = rung_sizes(cells, eta)
    per_step = sum(n * eta**k for k, n in enumerate(sizes))  # steps spent per step of r_0
    first = budget // per_step
    if first < 1:
        raise LoraPlusError(f"--budget {budget} is too small: {cells} cells in {len(sizes)} rungs need at least "
                            f"{per_step} steps (1 step per cell in rung 0); raise --budget, or use fewer "
                            "--lrs / --ratios or a larger --eta")
    return [Rung(n, first * eta**k) for k, n in enumerate(sizes)]


def default_budget(final_steps: int, cells: int, eta: int) -> int:
    """BUDGET_RUNS x the final training's steps, less if the last rung would then train longer than it."""
    sizes = rung_sizes(cells, eta)
    per_step = sum(n * eta**k for k, n in enumerate(sizes))
    full_length = per_step * max(1, final_steps // eta ** (len(sizes) - 1))  # last rung at final_steps
    return max(per_step, min(BUDGET_RUNS * final_steps, full_length))


def successive_halving(cells: list[Cell], rungs: list[Rung], score: Callable[[Cell, int, int], float | None], *,
                       greater: bool | Callable[[], bool]) -> tuple[list[dict], Cell]:
    """Score every cell of rung 0, keep the best n_{k+1}, and so on; return every result and the chosen cell.

    score(cell, rung, steps) is the validation metric of that cell trained for `steps` (None or NaN:
    diverged; such a cell never survives), or (metric, validation loss): short runs often tie on
    accuracy (every cell still predicting the majority class), and the loss then ranks them. Remaining
    ties keep the earlier cell. greater may be a function, asked at each ranking (the runs say their metric).
    """
    alive, records = list(cells), []
    for k, rung in enumerate(rungs):
        results = {cell: score(cell, k, rung.steps) for cell in alive}
        tiebreak = {cell: r[1] if isinstance(r, tuple) else 0.0 for cell, r in results.items()}
        scored = [(cell, r[0] if isinstance(r, tuple) else r) for cell, r in results.items()]
        order = ranked(dict(scored), greater() if callable(greater) else greater, tiebreak)  # selection's rule
        if not order:
            raise LoraPlusError(f"every run of rung {k} diverged or has no validation metric; try smaller --lrs")
        keep = rungs[k + 1].cells if k + 1 < len(rungs) else 1
        alive = order[:keep]
        records += [{"rung": k, "steps": rung.steps, "lr": cell[0], "ratio": cell[1], "value": v,
                     "kept": cell in alive} for cell, v in scored]
    return records, alive[0]


def tune(base: TrainConfig, *, lrs: list[float], ratios: list[float], output_dir: str, eta: int = 3,
         budget: int | None = None) -> dict:
    """Choose (learning_rate, loraplus_lr_ratio) for `base`; write tune.json and tuned_config.yaml; return tune.json.

    budget: optimizer steps for the whole tune (None: BUDGET_RUNS x the configured training length,
    less when the last rung would train longer than that).
    """
    base.validate()
    cells = list(dict.fromkeys((lr, ratio) for lr in lrs for ratio in ratios))
    if len(cells) < 2:
        raise LoraPlusError("the grid has a single (lr, ratio) cell, so there is nothing to choose; "
                            "give several values to --lrs or --ratios")
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise LoraPlusError(f"--eta must be an integer >= 2 (each rung keeps 1/eta of its cells), got {eta!r}")
    out = Path(output_dir)
    _check_tune_dir(out)
    created = not out.exists()
    rungs = plan_rungs(len(cells), eta, budget) if budget is not None else None  # refuse before writing
    source = _train_only(base, out / "data")
    budget_rule = "--budget"
    if budget is None:
        final_steps = _training_steps(base, source)
        budget = default_budget(final_steps, len(cells), eta)
        budget_rule = f"default: {BUDGET_RUNS} x {final_steps} training steps, capped by the last rung's length"
        rungs = plan_rungs(len(cells), eta, budget)
    lr_other = base.lr_other  # one head lr for every cell, as in compare
    tuning = dataclasses.replace(base, dataset_name=None, dataset_config_name=None, train_file=source,
                                 validation_file=None, test_file=None, loraplus_lr_other=lr_other,
                                 save_steps=None, feature_learning_steps=None)
    summaries: dict[tuple[Cell, int], dict] = {}

    def score(cell: Cell, rung: int, steps: int) -> float | None:
        run_dir = out / "runs" / f"lr{cell[0]:g}_ratio{cell[1]:g}_steps{steps}"
        # One evaluation, at the end: the score of the model the run delivers after its whole schedule.
        cfg = dataclasses.replace(tuning, learning_rate=cell[0], loraplus_lr_ratio=cell[1], max_steps=steps,
                                  eval_steps=steps, output_dir=str(run_dir))
        reused = check_reusable(cfg)
        with run_log(run_dir / "train.log"):
            summary = run_cell(cfg, role="tune")
        for checkpoint in run_dir.glob("checkpoint-*"):  # only needed to resume the run mid-way
            shutil.rmtree(checkpoint, ignore_errors=True)
        summaries[cell, rung] = {**summary, "run_dir": str(run_dir.relative_to(out)), "reused": reused}
        value = run_score(summary)
        n = rungs[rung].cells
        done = sum(1 for _, k in summaries if k == rung)
        shown = f"validation {summary['metric']} {value:.4f}" if value is not None else "diverged"
        print(f"rung {rung} [{done:>{len(str(n))}}/{n}] lr_A {cell[0]:<8g} ratio {cell[1]:<4g} {steps} steps: "
              + shown + (" (reused)" if reused else ""), flush=True)
        return value, run_tiebreak(summary)

    try:
        # the direction follows the metric the runs report (accuracy, pearson or eval loss)
        records, chosen = successive_halving(cells, rungs, score, greater=lambda: runs_greater_is_better(
            s.get("metric") for s in summaries.values()))
    except LoraPlusError:
        if created and not any(out.rglob("summary.json")):  # a config error in the first run: leave nothing
            shutil.rmtree(out, ignore_errors=True)
        raise
    metric = next(s["metric"] for s in summaries.values() if s["metric"])
    for r in records:
        s = summaries[(r["lr"], r["ratio"]), r["rung"]]
        r.update(lr_B=r["lr"] * r["ratio"], metric=metric, global_step=s["global_step"],
                 train_seconds=s["train_seconds"], run_dir=s["run_dir"], diverged=s.get("diverged"))
    final = next(r for r in reversed(records) if (r["lr"], r["ratio"]) == chosen)
    tuned = dataclasses.replace(base, learning_rate=chosen[0], loraplus_lr_ratio=chosen[1],
                                loraplus_lr_other=lr_other, output_dir=str(out / "train"))
    result = {
        "chosen": {"learning_rate": chosen[0], "loraplus_lr_ratio": chosen[1], "lr_B": chosen[0] * chosen[1],
                   "loraplus_lr_other": lr_other, "metric": metric, "validation": final["value"],
                   "rung": final["rung"], "steps": final["steps"]},
        "cost": {"runs": len(records), "optimizer_steps": sum(r["global_step"] for r in records),
                 "budget": budget, "train_seconds": round(sum(r["train_seconds"] for r in records), 1),
                 "reused_runs": sum(s["reused"] for s in summaries.values())},
        "protocol": {"lrs": list(dict.fromkeys(lrs)), "ratios": list(dict.fromkeys(ratios)), "eta": eta,
                     "budget_rule": budget_rule, "greater_is_better": runs_greater_is_better(
                         s.get("metric") for s in summaries.values()),
                     "loraplus_lr_other": lr_other,
                     "survivors": "restart with the longer schedule",
                     "validation": f"{base.validation_split_ratio:g} of the training data, carved with seed "
                                   f"{base.seed}; the validation and test files are never read"},
        "rungs": [{"rung": k, "cells": r.cells, "steps": r.steps} for k, r in enumerate(rungs)],
        "runs": records,
        "tuned_config": str(out / "tuned_config.yaml"),
    }
    if is_writer():
        tuned.save(str(out / "tuned_config.yaml"))
        write_json(out / "tune.json", result)
    return result


def _check_tune_dir(out: Path) -> None:
    """Refuse an output_dir that is a file or holds something other than an earlier tune."""
    if out.exists() and not out.is_dir():
        raise LoraPlusError(f"output_dir {out} is a file; choose a folder path")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in TUNE_FILES) if out.is_dir() else []
    if foreign:
        raise LoraPlusError(f"output_dir {out} holds files that are not a tune's ({', '.join(foreign[:4])}); "
                            "pass another --output_dir")


def _train_only(base: TrainConfig, data_dir: Path) -> str:
    """A file holding exactly the config's training split, so the tuning runs can open nothing else."""
    from loraplus.train import sources

    if base.train_file:
        return base.train_file
    path = Path(base.dataset_name).expanduser()
    if path.is_dir():
        return str(sources.folder_files(path)["train"])  # only train.*: dev.* and test.* stay closed
    if path.is_file():
        return str(path)
    # A built-in or hub dataset arrives as one dataset dict: keep its train split in a file of our own.
    # (A hub dataset without a validation split has it carved once here and again in each run.)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{base.dataset_name}-{base.dataset_config_name or 'default'}")
    file = data_dir / f"{slug}-train.parquet"
    if not file.is_file():
        if base.dataset_name in sources.BUILTIN_DATASETS:
            train = sources._builtin_rotten_tomatoes()["train"]
        else:
            train = sources.load_splits(dataset_name=base.dataset_name, dataset_config_name=base.dataset_config_name,
                                        validation_split_ratio=base.validation_split_ratio, seed=base.seed)["train"]
        data_dir.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(".partial")
        train.to_parquet(str(partial))
        partial.replace(file)  # never a half-written file that a later tune would take as whole
    return str(file)


def _training_steps(base: TrainConfig, source: str) -> int:
    """Optimizer steps of one training run as configured: max_steps, or epochs of the carved training split."""
    if base.max_steps > 0:
        return base.max_steps
    from loraplus.train.sources import load_splits

    train = load_splits(train_file=source, validation_split_ratio=base.validation_split_ratio, seed=base.seed,
                        max_train_samples=base.max_train_samples)["train"]
    batches = math.ceil(len(train) / base.per_device_train_batch_size)
    return max(1, math.ceil(base.num_train_epochs * max(1, batches // base.gradient_accumulation_steps)))


def table(result: dict) -> str:
    """Every cell with its validation metric per rung, best first; the chosen cell marked."""
    rungs, chosen = result["rungs"], result["chosen"]
    by_cell: dict[Cell, dict[int, float | None]] = {}
    for r in result["runs"]:
        by_cell.setdefault((r["lr"], r["ratio"]), {})[r["rung"]] = r["value"]
    sign = 1 if result["protocol"]["greater_is_better"] else -1

    def order(item):
        last = max(item[1])
        value = item[1][last]
        return (-last, -sign * value if value is not None else math.inf)

    headers = [f"rung {r['rung']} ({r['steps']} st)" for r in rungs]
    lines = [f"validation {chosen['metric']} per rung, best first (st: optimizer steps of each run)",
             f"{'lr_A':<10} {'ratio':<6} {'lr_B':<10} " + " ".join(f"{h:<16}" for h in headers).rstrip()]
    for (lr, ratio), values in sorted(by_cell.items(), key=order):
        cols = [("-" if k not in values else "diverged" if values[k] is None else f"{values[k]:.4f}")
                for k in range(len(rungs))]
        mark = "  <- chosen" if (lr, ratio) == (chosen["learning_rate"], chosen["loraplus_lr_ratio"]) else ""
        lines.append(f"{lr:<10g} {ratio:<6g} {lr * ratio:<10g} " + " ".join(f"{c:<16}" for c in cols).rstrip() + mark)
    return "\n".join(lines)


@dataclasses.dataclass
class TuneArguments:
    """tune's own flags; the others are `loraplus train` keys, the config every run starts from."""

    lrs: list[float] | None = dataclasses.field(default=None, metadata={
        "help": "lr_A grid (none = learning_rate x 1/4 .. 4)"})
    ratios: list[float] = dataclasses.field(default_factory=lambda: [float(r) for r in RATIOS], metadata={
        "help": "lr_B / lr_A grid"})
    budget: int | None = dataclasses.field(default=None, metadata={
        "help": f"optimizer steps of the whole search (none = {BUDGET_RUNS} runs as configured)"})
    eta: int = dataclasses.field(default=3, metadata={"help": "keep the best 1/eta of the cells at each rung"})
    output_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "where the runs, tune.json and tuned_config.yaml go (none = output_dir)"})


def main_tune(argv: list[str]) -> int:
    """loraplus tune [CONFIG.yaml] [--lrs 1e-4,3e-4] [--ratios 1,4,16] [--budget STEPS] [--eta 3] [--output_dir D]
    [--key value ...]: --key value are `loraplus train` overrides."""
    if any(a in ("-h", "--help") for a in argv):
        print("\n".join([f"usage: {main_tune.__doc__}", "", "tune's own flags:", *flag_lines(TuneArguments), "",
                         __doc__]))
        return 0
    mine, rest = parse_own_flags(TuneArguments, argv, "tune")
    base = parse_train_args(rest, command_flags=[f.name for f in dataclasses.fields(TuneArguments)])
    for flag, value in (("--budget", mine.budget), ("--eta", mine.eta)):
        if value is not None and value < 1:
            raise LoraPlusError(f"{flag} takes a whole number >= 1, got {value}")
    output_dir = mine.output_dir or base.output_dir
    result = tune(base, lrs=lr_grid(mine.lrs, base.learning_rate), ratios=positive_numbers("--ratios", mine.ratios),
                  output_dir=output_dir, eta=mine.eta, budget=mine.budget)
    chosen, cost = result["chosen"], result["cost"]
    shape = ", ".join(f"{r['cells']} x {r['steps']}" for r in result["rungs"])
    print()
    print(table(result))
    print(f"\nchosen: learning_rate {chosen['learning_rate']:g}, loraplus_lr_ratio {chosen['loraplus_lr_ratio']:g} "
          f"(lr_B {chosen['lr_B']:g}; heads at {chosen['loraplus_lr_other']:g}); validation {chosen['metric']} "
          f"{chosen['validation']:.4f} after {chosen['steps']} steps")
    print(f"cost: {cost['runs']} runs, {cost['optimizer_steps']} optimizer steps of a {cost['budget']}-step budget "
          f"(runs x steps per rung: {shape}; survivors restart), {cost['train_seconds']:.0f} s of training"
          + (f", {cost['reused_runs']} runs reused" if cost["reused_runs"] else ""))
    print(f"validation: {result['protocol']['validation']}")
    print(f"tune.json, tuned_config.yaml and every run in {output_dir}")
    print(f"next: loraplus train {Path(output_dir) / 'tuned_config.yaml'}")
    return 0
