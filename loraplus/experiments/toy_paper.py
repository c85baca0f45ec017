"""`loraplus toy --model paper`: the LoRA+ paper's section-3.2 toy model over an (lr_A, lr_B) grid per width.

Model (Hayou, Ghosh, Yu, ICML 2024, arXiv 2402.12354, section 3.2): f(x) = W_out relu(B A relu(W_in x)) with
W_in (n x d) and W_out (1 x n) frozen and only the LoRA factors A (r x n) and B (n x r) trained; d = 5, n = 100,
r = 4. Data: X ~ N(0, I_d), Y = sin(d^-1 sum_i X_i); 1000 training and 100 test points. The paper shows the
training and test loss over an (lr_A, lr_B) grid after t = 10 and t = 200 Adam steps, averaged over 3 seeds,
and marks the cells within 1% of the best loss.

The rest of the setup is in the paper's appendix C, which we could not consult, and the authors' public code
holds no toy model. Each detail below is therefore our reading, chosen as the most natural one:
- W_in ~ N(0, 1/d) and W_out ~ N(0, 1/n) entrywise (variance 1/fan_in), so relu(W_in x) and f have O(1) scale.
- A ~ N(0, 1/n) and B = 0: the standard LoRA initialisation, so training starts from f = 0.
- The middle ReLU takes slope 1 at 0 (relu'(z) = 1 for z >= 0). With B = 0 every entry of B A relu(W_in x) is
  exactly 0, and with PyTorch's slope 0 at 0 every gradient of A and B would be exactly 0: nothing would ever
  train (tests/test_toy.py shows it). Only the first step sees z = 0; after it B != 0 and z = 0 has probability 0.
  `--b_init_std S` instead starts B from N(0, S^2), where the slope at 0 never matters: a check on this reading.
- Loss: mean squared error over the training set, full batch (every step sees all 1000 points).
- Adam as torch.optim.Adam's defaults (betas 0.9/0.999, eps 1e-8), no weight decay, no schedule.
- lr grids: powers of 2 (log2 steps of `--log2_lr_step`), lr_A and lr_B over their own ranges.
- Seeds: each seed draws new W_in, W_out, A, training and test data.
- "Loss at t": the mean squared error of the model after t Adam steps (t = 0 is the initial model).
- Metric: the mean over seeds; a non-finite loss in any seed makes the cell +inf (null in toy_paper.json).

Reading the output: f sees A and B only through their product BA, and Adam's step ignores the scale of a
gradient, so training at (lr_A, lr_B) from (A0, B0) follows the same functions as training at (c lr_A, lr_B / c)
from (c A0, B0 / c), eps aside. Along a line lr_A x lr_B = const the ratio thus acts like a rescaling of A's
random init, and the loss has a valley along such lines. The best loss at each ratio (best_by_ratio,
loss_by_ratio.png) and the largest ratio within 2x of the best say more than the single best cell on that valley.

All (lr_A, lr_B) cells of one width and seed train at once: A and B carry a leading cell dimension and the
batched Adam of loraplus/toy.py (adam_step, tested against torch.optim.Adam) updates them. Gradients are
written out by hand and checked step by step against autograd plus torch.optim.Adam on the same model built
from nn.Linear layers (tests/test_toy.py). The (cells, samples, n) activations are formed in tiles of at
most `block_elements` entries: the work is memory-bound, and small tiles stay in the CPU cache.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import torch

from loraplus.train.arguments import given_values, parse_command
from loraplus.experiments.toy import _pyplot, _require, adam_step

WITHIN = 0.01  # cells whose loss is within 1% of the best are marked, as in the paper's heatmaps
WIDE = 0.10  # also reported: how far the cells within 10% of the best reach, a measure of how flat the optimum is
SPLITS = ("train", "test")
# (min, max) of log2 lr: at n = 100 this holds the whole valley of the loss, up to where it fades out at small lr_B
DEFAULT_LOG2_LR_A = (-16.0, 6.0)
DEFAULT_LOG2_LR_B = (-22.0, 0.0)


class PaperProblem(NamedTuple):
    """One seed's frozen weights, LoRA init and data; W_out is stored as a vector (n,)."""

    w_in: torch.Tensor  # (n, d)
    w_out: torch.Tensor  # (n,)
    a0: torch.Tensor  # (r, n)
    b0: torch.Tensor  # (n, r): zero unless b_init_std > 0
    x_train: torch.Tensor  # (n_train, d)
    y_train: torch.Tensor  # (n_train,)
    x_test: torch.Tensor  # (n_test, d)
    y_test: torch.Tensor  # (n_test,)


def paper_problem(width: int, *, input_dim: int = 5, rank: int = 4, n_train: int = 1000, n_test: int = 100,
                  seed: int = 0, b_init_std: float = 0.0, dtype=torch.float32) -> PaperProblem:
    """W_in, W_out, the LoRA init and the data of one seed (drawn in float64 so every dtype sees the same problem).

    b_init_std > 0 draws B ~ N(0, b_init_std^2) last, so every other draw is the same as with B = 0."""
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    w_in, w_out, a0 = draw(width, input_dim, std=input_dim**-0.5), draw(width, std=width**-0.5), draw(
        rank, width, std=width**-0.5)
    x_train, x_test = draw(n_train, input_dim), draw(n_test, input_dim)
    b0 = draw(width, rank, std=b_init_std) if b_init_std else torch.zeros(width, rank, dtype=torch.float64)
    tensors = (w_in, w_out, a0, b0, x_train, torch.sin(x_train.mean(1)), x_test, torch.sin(x_test.mean(1)))
    return PaperProblem(*(x.to(dtype) for x in tensors))


def _loss_and_grad(theta, h, y, w_out, rank: int, grad, block_elements: int):
    """Per-cell mean squared error of f = W_out relu(B A h) on features h = relu(W_in x); adds dL/dtheta to grad.

    theta (cells, 2r, n) holds A in rows [:r] and B^T in rows [r:]; grad (same shape, or None for the loss only).
    """
    cells, n = theta.shape[0], theta.shape[-1]
    samples = len(y)
    # Tiles of cells (whole sample set) or, when one cell's activations are already too large, of samples.
    cell_block = max(1, min(cells, block_elements // (samples * n)))
    sample_block = samples if cell_block > 1 else max(1, min(samples, block_elements // n))
    squares = torch.zeros(cells, dtype=torch.float64)
    for c0 in range(0, cells, cell_block):
        a, bt = theta[c0:c0 + cell_block, :rank], theta[c0:c0 + cell_block, rank:]
        c = len(a)
        for s0 in range(0, samples, sample_block):
            hs, ys = h[s0:s0 + sample_block], y[s0:s0 + sample_block]
            u = (a.reshape(c * rank, n) @ hs.T).view(c, rank, -1).mT  # A h: (c, S, r)
            z = u @ bt  # B A h: (c, S, n)
            # The middle ReLU's slope, 1 at z = 0 (see the module docstring): sign(z) + 1 clamped to 1. Float
            # arithmetic: on one CPU thread a comparison plus masked_fill took 6 ns an entry, this 0.5 ns.
            slope = torch.sign(z) if grad is not None else None
            residual = z.clamp_(min=0) @ w_out - ys  # f - y: (c, S)
            squares[c0:c0 + c] += residual.double().square().sum(1)
            if grad is None:
                continue
            dz = torch.mul(residual.mul_(2.0 / samples).unsqueeze(-1), w_out, out=z)  # dL/d relu(B A h)
            dz.mul_(slope.add_(1).clamp_(max=1))  # dL/d(B A h)
            grad[c0:c0 + c, rank:] += u.mT @ dz  # dL/dB^T = sum_s (A h_s) dz_s^T
            du_t = bt @ dz.mT  # (dL/d(A h))^T = B^T dz^T: (c, r, S); faster than dz @ B on one thread
            grad[c0:c0 + c, :rank] += (du_t.view(c * rank, -1) @ hs).view(c, rank, n)  # dL/dA = du h^T
    return squares / samples


def train_paper_grid(problem: PaperProblem, lr_a, lr_b, *, steps: int, block_elements: int = 2**18):
    """Train one LoRA adapter per cell c at (lr_a[c], lr_b[c]), all from the same init and data, full batch.

    Returns the training and test loss after t = 0..steps Adam steps (steps + 1, cells; float64), the final
    A (cells, r, n) and B (cells, n, r).
    """
    w_in, w_out, a0 = problem.w_in, problem.w_out, problem.a0
    dtype, (rank, n), cells = w_in.dtype, a0.shape, len(lr_a)
    h_train, h_test = (problem.x_train @ w_in.T).clamp(min=0), (problem.x_test @ w_in.T).clamp(min=0)
    # One buffer per cell: rows [:r] are A, rows [r:] are B^T, so a single Adam call updates both with per-row
    # learning rates (lr_A for A's rows, lr_B for B's: the LoRA+ split).
    theta = torch.zeros(cells, 2 * rank, n, dtype=dtype)
    theta[:, :rank], theta[:, rank:] = a0, problem.b0.T
    lr = torch.cat([torch.as_tensor(lr_a, dtype=dtype).view(-1, 1, 1).expand(cells, rank, 1),
                    torch.as_tensor(lr_b, dtype=dtype).view(-1, 1, 1).expand(cells, rank, 1)], dim=1)
    m, v, grad = torch.zeros_like(theta), torch.zeros_like(theta), torch.empty_like(theta)
    train_loss, test_loss = (torch.empty(steps + 1, cells, dtype=torch.float64) for _ in range(2))
    for t in range(steps + 1):
        grad.zero_()
        last = t == steps
        train_loss[t] = _loss_and_grad(theta, h_train, problem.y_train, w_out, rank, None if last else grad,
                                       block_elements)
        test_loss[t] = _loss_and_grad(theta, h_test, problem.y_test, w_out, rank, None, block_elements)
        if not last:
            adam_step(theta, grad, m, v, t + 1, lr)
    return train_loss, test_loss, theta[:, :rank].clone(), theta[:, rank:].mT.clone()


def near_best(grid: torch.Tensor, tolerance: float = WITHIN) -> torch.Tensor:
    """Boolean mask of the cells whose loss is at most (1 + tolerance) times the best finite loss of the grid."""
    finite = torch.isfinite(grid)
    if not finite.any():
        return torch.zeros_like(grid, dtype=torch.bool)
    return finite & (grid <= (1 + tolerance) * grid[finite].min())


def _finite(t, digits: int = 17):
    """Nested lists of floats (to `digits` significant digits), None for a non-finite entry."""
    if t.dim():
        return [_finite(r, digits) for r in t]
    return float(f"{float(t):.{digits}g}") if math.isfinite(float(t)) else None


def _grid(rows) -> torch.Tensor:
    return torch.tensor([[math.inf if v is None else v for v in row] for row in rows], dtype=torch.float64)


def summarise(grid: torch.Tensor, log2_a: list[float], log2_b: list[float]) -> dict:
    """Best cell, the cells within 1% and 10% of it (count, lr_B / lr_A range), the best cell with lr_A = lr_B,
    the best loss at each ratio and the largest ratio whose best loss is within 2x of the best.

    grid[i][j] is the loss at lr_B = 2^log2_b[i], lr_A = 2^log2_a[j].
    """
    out = {"best": None, "near_best": None, "near_best_10pct": None, "best_equal_lr": None, "best_by_ratio": None,
           "log2_ratio_max_within_2x": None}
    if not torch.isfinite(grid).any():
        return out
    i, j = divmod(int(torch.where(torch.isfinite(grid), grid, math.inf).argmin()), len(log2_a))

    def cell(i, j):
        # A best cell on the grid's border may only be the best the grid can see: the valley can run on past it.
        edge = [f"lr_{name} {end}" for name, k, size in (("A", j, len(log2_a)), ("B", i, len(log2_b)))
                for end, at in (("min", 0), ("max", size - 1)) if k == at and size > 1]
        return {"log2_lr_a": log2_a[j], "log2_lr_b": log2_b[i], "log2_ratio": log2_b[i] - log2_a[j],
                "loss": float(grid[i, j]), "grid_edge": edge}

    out["best"] = cell(i, j)
    for key, tolerance in (("near_best", WITHIN), ("near_best_10pct", WIDE)):
        rows, cols = near_best(grid, tolerance).nonzero(as_tuple=True)
        ratios = [log2_b[r] - log2_a[c] for r, c in zip(rows.tolist(), cols.tolist())]
        out[key] = {"cells": len(ratios), "log2_ratio_min": min(ratios), "log2_ratio_max": max(ratios),
                    "includes_equal_lr": 0 in ratios}
    diagonal = [(r, c) for r, b in enumerate(log2_b) for c, a in enumerate(log2_a)
                if a == b and math.isfinite(grid[r, c])]
    if diagonal:
        out["best_equal_lr"] = cell(*min(diagonal, key=lambda rc: float(grid[rc])))
        out["best_equal_lr"]["times_best"] = out["best_equal_lr"]["loss"] / out["best"]["loss"]
    # The best loss at each ratio lr_B / lr_A (over the cells on that diagonal of the grid): how the optimum
    # depends on the ratio alone, whatever the overall learning rate.
    by_ratio = {}
    for r, b in enumerate(log2_b):
        for c, a in enumerate(log2_a):
            if math.isfinite(grid[r, c]):
                by_ratio[b - a] = min(by_ratio.get(b - a, math.inf), float(grid[r, c]))
    out["best_by_ratio"] = {"log2_ratio": sorted(by_ratio), "loss": [by_ratio[k] for k in sorted(by_ratio)]}
    # Where raising the ratio stops paying: the largest ratio whose best loss is within 2x of the best. LoRA+
    # predicts it grows with the width; unlike the best cell's ratio it does not wander along a flat valley.
    out["log2_ratio_max_within_2x"] = max(k for k, v in by_ratio.items() if v <= 2 * out["best"]["loss"])
    return out


def _seed_record(path: Path, config: dict, width: int, seed: int, *, b_init_std: float, block_elements: int):
    """One (width, seed): train every cell, keep the loss grids at the report steps; reuse a matching record.

    Returns the record and whether it was reused."""
    if path.exists():
        record = json.loads(path.read_text())
        if record["config"] == config:
            return record, True
    log2_a, log2_b = config["log2_lrs_a"], config["log2_lrs_b"]
    cell_a = [2.0**a for _ in log2_b for a in log2_a]  # cell c = i * len(log2_a) + j <-> (lr_B_i, lr_A_j)
    cell_b = [2.0**b for b in log2_b for _ in log2_a]
    problem = paper_problem(width, input_dim=config["input_dim"], rank=config["rank"], n_train=config["n_train"],
                            n_test=config["n_test"], seed=seed, b_init_std=b_init_std)
    start = time.perf_counter()
    train, test, _, _ = train_paper_grid(problem, cell_a, cell_b, steps=config["steps"],
                                         block_elements=block_elements)
    shape = (len(log2_b), len(log2_a))
    # Besides the report steps, steps 1, 2, 5, 10, 20, 50, ... are kept, for looking at the grids over time later.
    kept = sorted({0, *config["report_steps"], *(k * 10**e for e in range(7) for k in (1, 2, 5)
                                                  if k * 10**e <= config["steps"])})
    loss = {split: {str(t): _finite(trace[t].view(shape), digits=7) for t in kept}
            for split, trace in (("train", train), ("test", test))}
    record = {"config": config, "width": width, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
              "loss": loss}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record, False


def _width_summary(records: list[dict], config: dict) -> dict:
    """Seed-mean grids (a non-finite seed makes the cell inf) and their summaries, per split and report step."""
    out = {"width": records[0]["width"], "seconds": round(sum(r["seconds"] for r in records), 1),
           "untrained_loss": {s: statistics.mean(r["loss"][s]["0"][0][0] for r in records) for s in SPLITS}}
    for split in SPLITS:
        out[split] = {}
        for t in map(str, config["report_steps"]):
            grid = torch.stack([_grid(r["loss"][split][t]) for r in records]).mean(0)
            grid = torch.where(torch.isfinite(grid), grid, math.inf)
            out[split][t] = {"loss": _finite(grid), **summarise(grid, config["log2_lrs_a"], config["log2_lrs_b"])}
    return out


def run_paper_toy(*, widths=(100,), steps: int = 200, report_steps=None, seeds=(0, 1, 2), rank: int = 4,
                  input_dim: int = 5, n_train: int = 1000, n_test: int = 100, log2_lr_a=DEFAULT_LOG2_LR_A,
                  log2_lr_b=DEFAULT_LOG2_LR_B, log2_lr_step: float = 1.0, b_init_std: float = 0.0,
                  output_dir="loraplus-toy-paper", threads: int | None = 1, block_elements: int = 2**18) -> dict:
    """Train the paper's toy on the (lr_A, lr_B) grid at each width and seed; write toy_paper.json and figures.

    log2_lr_a / log2_lr_b: (min, max) of log2 lr, in steps of log2_lr_step. b_init_std > 0: B starts from
    N(0, b_init_std^2) instead of 0, a check on the ReLU-slope reading (module docstring). Each (width, seed) is
    saved under output_dir/runs/ and reused by a later run with the same settings, so a long sweep can be run in
    parts.
    `threads`: torch intra-op threads while training (None keeps torch's setting).
    """
    widths, seeds = list(widths), list(seeds)
    report_steps = sorted(set(report_steps or (min(10, steps), steps)))
    _require(isinstance(rank, int) and rank >= 1, "rank", "an integer >= 1", rank)
    _require(widths and all(isinstance(w, int) and w >= rank for w in widths), "widths", "integers >= rank",
             widths)
    for name, value in (("steps", steps), ("input_dim", input_dim), ("n_train", n_train), ("n_test", n_test)):
        _require(isinstance(value, int) and value >= 1, name, "an integer >= 1", value)
    _require(all(isinstance(t, int) and 1 <= t <= steps for t in report_steps), "report_steps",
             "integers in [1, steps]", report_steps)
    _require(seeds and all(isinstance(s, int) for s in seeds), "seeds", "a non-empty list of integers", seeds)
    _require(threads is None or (isinstance(threads, int) and threads >= 1), "threads", "an integer >= 1", threads)
    _require(math.isfinite(log2_lr_step) and log2_lr_step > 0, "log2_lr_step", "a positive number", log2_lr_step)
    _require(math.isfinite(b_init_std) and b_init_std >= 0, "b_init_std", "a number >= 0", b_init_std)
    grids = {}
    for name, bounds in (("log2_lr_a", log2_lr_a), ("log2_lr_b", log2_lr_b)):
        lo, hi = bounds if len(bounds) == 2 else (math.nan, math.nan)
        count = math.floor((hi - lo) / log2_lr_step + 1e-9) + 1 if -100 < lo <= hi < 100 else 0
        _require(1 <= count <= 200, name, "MIN,MAX with -100 < MIN <= MAX < 100, at most 200 grid points", bounds)
        grids[name] = [float(lo + k * log2_lr_step) for k in range(count)]
    config = {"model": "f(x) = W_out relu(B A relu(W_in x)); only A, B trained; see loraplus/toy_paper.py",
              "rank": rank, "input_dim": input_dim, "n_train": n_train, "n_test": n_test, "steps": steps,
              "report_steps": report_steps, "log2_lrs_a": grids["log2_lr_a"], "log2_lrs_b": grids["log2_lr_b"],
              "init": "W_in ~ N(0, 1/d), W_out ~ N(0, 1/n), A ~ N(0, 1/n), "
                      + (f"B ~ N(0, {b_init_std:g}^2)" if b_init_std else "B = 0"), "relu_slope_at_zero": 1.0,
              "optimizer": "Adam (0.9, 0.999), eps 1e-8, full batch", "loss": "mean squared error",
              "dtype": "float32"}
    out = Path(output_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or previous_threads)
    summaries = []
    try:
        for n in widths:
            records = []
            for seed in seeds:
                record, reused = _seed_record(out / "runs" / f"width{n}_seed{seed}.json", config, n, seed,
                                              b_init_std=b_init_std, block_elements=block_elements)
                records.append(record)
                print(f"width {n} seed {seed}: {record['seconds']:.1f} s" + (" (saved run reused)" if reused else ""),
                      flush=True)
            summaries.append(_width_summary(records, config))
    finally:
        torch.set_num_threads(previous_threads)
    result = {"config": {**config, "widths": widths, "seeds": seeds, "log2_lr_step": log2_lr_step},
              "widths": summaries}
    (out / "toy_paper.json").write_text(json.dumps(result))
    for w in summaries:
        _plot_heatmaps(result, w, out / f"heatmaps_n{w['width']}.png")
    _plot_loss_by_ratio(result, out / "loss_by_ratio.png")
    if len(summaries) > 1:
        _plot_ratio(result, out / "ratio_vs_width.png")
    print(format_table(result))
    print("\nlog2 lr_B / lr_A of the best cell [range within 1% of the best] {within 10%}, and the largest with a best"
          "\nloss within 2x of the best:\n" + format_ratios(result))
    print(f"toy_paper.json and figures in {out}")
    return result


def _p2(x) -> str:
    return "-" if x is None else f"2^{x:g}"


def format_table(result: dict) -> str:
    """One line per width, split and report step: best cell, cells within 1% and their ratios, the best cells with
    lr_A = lr_B and with lr_B = 16 lr_A, and whether the best cell lies on the grid's border."""
    rows = [f"{'width':>6} {'split':>5} {'t':>4} {'best lr_A':>9} {'best lr_B':>9} {'lr_B/lr_A':>9} "
            f"{'best loss':>9} {'1% cells':>8} {'1% lr_B/lr_A':>14} {'lr_A=lr_B':>9} {'its loss':>9} {'x best':>6} "
            f"{'lr_B=16lr_A x best':>18}  best on edge"]
    for w in result["widths"]:
        for split in SPLITS:
            for t in map(str, result["config"]["report_steps"]):
                s = w[split][t]
                b, nb, eq = s["best"] or {}, s["near_best"], s["best_equal_lr"] or {}
                # LoRA+'s usual ratio: the best cell with lr_B = 16 lr_A, relative to the best cell
                by_ratio = dict(zip(*s["best_by_ratio"].values())) if b else {}
                sixteen = by_ratio[4.0] / b["loss"] if 4.0 in by_ratio else math.nan
                band = f"2^{nb['log2_ratio_min']:g}..2^{nb['log2_ratio_max']:g}" if nb else "-"
                rows.append(f"{w['width']:>6} {split:>5} {t:>4} {_p2(b.get('log2_lr_a')):>9} "
                            f"{_p2(b.get('log2_lr_b')):>9} {_p2(b.get('log2_ratio')):>9} "
                            f"{b.get('loss', math.inf):9.3e} {nb['cells'] if nb else 0:>8} {band:>14} "
                            f"{_p2(eq.get('log2_lr_a')):>9} {eq.get('loss', math.inf):9.3e} "
                            f"{eq.get('times_best', math.nan):6.2f} {sixteen:18.2f}  "
                            f"{', '.join(b.get('grid_edge', [])) or '-'}")
    return "\n".join(rows)


def format_ratios(result: dict) -> str:
    """log2 lr_B / lr_A of the best cell per width and (split, step), [its range over the cells within 1% of the
    best], {and within 10%}, and the largest ratio whose best loss is within 2x of the best (after "2x<=")."""
    columns = [(split, t) for split in SPLITS for t in map(str, result["config"]["report_steps"])]
    rows = [f"{'width':>6} " + " ".join(f"{f'{split} t={t}':>28}" for split, t in columns)]
    for w in result["widths"]:
        cells = []
        for split, t in columns:
            s = w[split][t]
            b, nb, wide = s["best"], s["near_best"], s["near_best_10pct"]
            cells.append(f"{b['log2_ratio']:g} [{nb['log2_ratio_min']:g},{nb['log2_ratio_max']:g}] "
                         f"{{{wide['log2_ratio_min']:g},{wide['log2_ratio_max']:g}}} "
                         f"2x<={s['log2_ratio_max_within_2x']:g}" if b else "-")
        rows.append(f"{w['width']:>6} " + " ".join(f"{c:>28}" for c in cells))
    return "\n".join(rows)


def _plot_heatmaps(result: dict, width: dict, path: Path) -> None:
    """The paper's figure layout: train and test loss at each report step, the 1% cells dotted red."""
    plt, cfg = _pyplot(), result["config"]
    xa, yb = cfg["log2_lrs_a"], cfg["log2_lrs_b"]
    steps = list(map(str, cfg["report_steps"]))
    fig, axes = plt.subplots(len(steps), 2, figsize=(9.5, 3.9 * len(steps)), squeeze=False)
    half = cfg["log2_lr_step"] / 2
    extent = (xa[0] - half, xa[-1] + half, yb[0] - half, yb[-1] + half)
    for row, t in zip(axes, steps):
        for ax, split in zip(row, SPLITS):
            s = width[split][t]
            grid = _grid(s["loss"])
            # Every cell starts from the same model; no progress, worse or diverged all get the worst colour.
            shown = grid.clamp(max=width["untrained_loss"][split]).log10()
            im = ax.imshow(shown, origin="lower", extent=extent, aspect="auto", cmap="viridis_r")
            fig.colorbar(im, ax=ax, label="log10 loss")
            lo, hi = max(xa[0], yb[0]), min(xa[-1], yb[-1])
            if lo < hi:
                ax.plot([lo, hi], [lo, hi], "--", color="orange", lw=1.2, label="lr_A = lr_B")
            rows, cols = near_best(grid).nonzero(as_tuple=True)
            ax.plot([xa[c] for c in cols.tolist()], [yb[r] for r in rows.tolist()], "r.", ms=5,
                    label="within 1% of best")
            if s["best"]:
                ax.plot(s["best"]["log2_lr_a"], s["best"]["log2_lr_b"], "r*", ms=12, mec="k", label="best")
            ax.set(title=f"{split} loss, t = {t}", xlabel="log2 lr_A", ylabel="log2 lr_B")
    axes[0][0].legend(loc="upper right", fontsize=7, framealpha=0.7)
    fig.suptitle(f"LoRA+ toy f = W_out relu(B A relu(W_in x)), n = {width['width']}, r = {cfg['rank']}, "
                 f"Adam, mean of {len(cfg['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_loss_by_ratio(result: dict, path: Path) -> None:
    """For each split and report step: the best loss at each lr_B / lr_A over the grid, relative to the best
    loss of that width, one line per width (LoRA+ predicts the minimum moves right as the width grows)."""
    plt, cfg = _pyplot(), result["config"]
    steps = list(map(str, cfg["report_steps"]))
    fig, axes = plt.subplots(len(steps), 2, figsize=(11, 3.8 * len(steps)), squeeze=False)
    for row, t in zip(axes, steps):
        for ax, split in zip(row, SPLITS):
            for w in result["widths"]:
                s = w[split][t]
                if s["best"]:
                    by = s["best_by_ratio"]
                    ax.plot(by["log2_ratio"], [x / s["best"]["loss"] for x in by["loss"]], ".-", ms=4,
                            label=f"n = {w['width']}")
            ax.axvline(0, color="orange", ls="--", lw=1)
            ax.set_yscale("log")
            ax.set_ylim(0.9, 10)
            ax.set(title=f"{split} loss, t = {t}", xlabel="log2 (lr_B / lr_A)",
                   ylabel="best loss at this ratio / best loss")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_ratio(result: dict, path: Path) -> None:
    """Against width, per split and report step: the best cell's lr_B / lr_A (bars: the cells within 1%), and
    the largest ratio whose best loss is within 2x of the best."""
    plt, cfg = _pyplot(), result["config"]
    fig, (ax_best, ax_edge) = plt.subplots(1, 2, figsize=(13, 4.5))
    for k, (split, t) in enumerate((s, t) for t in map(str, cfg["report_steps"]) for s in SPLITS):
        ws = [w for w in result["widths"] if w[split][t]["best"]]
        x = [w["width"] * 2 ** (0.06 * (k - 1.5)) for w in ws]  # a small offset per series keeps the bars apart
        best = [w[split][t]["best"]["log2_ratio"] for w in ws]
        lo = [b - w[split][t]["near_best"]["log2_ratio_min"] for b, w in zip(best, ws)]
        hi = [w[split][t]["near_best"]["log2_ratio_max"] - b for b, w in zip(best, ws)]
        ax_best.errorbar(x, best, yerr=[lo, hi], fmt="o-", capsize=3, label=f"{split}, t = {t}")
        ax_edge.plot(x, [w[split][t]["log2_ratio_max_within_2x"] for w in ws], "o-", label=f"{split}, t = {t}")
    ax_best.set(ylabel="log2 (lr_B / lr_A) of the best cell", title="best cell (bars: cells within 1% of best)")
    ax_edge.set(ylabel="log2 (lr_B / lr_A)", title="largest ratio whose best loss is within 2x of the best")
    for ax in (ax_best, ax_edge):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="width n")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclasses.dataclass
class PaperToyArguments:
    """`loraplus toy --model paper` flags; one not given takes run_paper_toy's default (shown by --help)."""

    widths: list[int] | None = None
    steps: int | None = None
    report_steps: list[int] | None = None
    seeds: list[int] | None = None
    rank: int | None = None
    input_dim: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    log2_lr_a: list[float] | None = None
    log2_lr_b: list[float] | None = None
    log2_lr_step: float | None = None
    b_init_std: float | None = None
    output_dir: str | None = None
    threads: int | None = None


def main_paper(argv: list[str]) -> int:
    """`loraplus toy [--model paper] [--widths 100 --steps 200 --seeds 0,1,2 --log2_lr_a -14,4 ...]`."""
    run_paper_toy(**given_values(parse_command(PaperToyArguments, argv, "toy --model paper")[0]))
    return 0


if __name__ == "__main__":  # reprint the table of a toy_paper.json: python -m loraplus.experiments.toy_paper PATH
    import sys

    reprinted = json.loads(Path(sys.argv[1]).read_text())
    print(format_table(reprinted) + "\n\n" + format_ratios(reprinted))
