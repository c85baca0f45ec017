"""`loraplus toy --model linear`: training loss of a linear LoRA toy over an (lr_A, lr_B) grid per width n.

LoRA+ (Hayou, Ghosh, Yu, ICML 2024, arXiv 2402.12354) section 3 argues that under Adam efficient feature
learning needs lr_A = Theta(1/n) and lr_B = Theta(1): the best ratio lr_B / lr_A grows with the width n.

Model (after the paper's section-3 toy, which embeds a fixed low-dimensional input into width n before the
LoRA layer; kept linear here, with n outputs and no readout): inputs s ~ N(0, I_d), d small and fixed,
embedded by a frozen W_in (n x d, entries N(0, 1/d)), so the features x = W_in s have O(1) coordinates and d
stays fixed as n grows: the regime of the paper's width analysis. (With isotropic n-dimensional inputs the
valley barely moved from n = 512 to 2048 in development runs: an Adam step on A is aligned with the inputs
it saw, so it changes A x by lr_A * n only for later inputs that share those directions.) LoRA layer:
f = (W0 + B A) x, A: (r, n) ~ N(0, 1/n), B: (n, r) = 0. Teacher: y = (W0 + B* A*) x with A* ~ N(0, 1/n),
B* ~ N(0, 1/r), a rank-r change that moves every output by O(1). Loss: mean squared error over the n outputs
and a fresh minibatch each step. The model is linear, so W0 cancels in the residual (B A - B* A*) x and is
never built (tests/test_toy.py builds it and agrees).

All (lr_A, lr_B) cells of one width and seed train at once: A and B carry a leading cell dimension and a
hand-written Adam runs over it (Adam is elementwise, so this is exact; tested against torch.optim.Adam).
Gradients are closed-form and never form the (cells, n, batch) residual. Metric: the mean training loss
over the last tenth of the steps, averaged over seeds; a non-finite loss is +inf (null in toy.json).

Reading the output: f sees A and B only through B A, and Adam ignores the scale of a gradient, so
(lr_A, lr_B) and (s lr_A, lr_B / s) train the same function once A has moved far from its init. Expect a
ridge lr_A * lr_B = const along which the loss barely changes; that is why the near-best band (cells
within 10% of the best) and the valley (best lr_A at each lr_B) are reported next to the argmin.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
from pathlib import Path

import torch

from loraplus.core.errors import LoraPlusError
from loraplus.train.arguments import given_values, parse_command, parse_own_flags

DEFAULT_LRS = tuple(2.0**k for k in range(-16, 1))  # brackets Theta(1/n) for A and Theta(1) for B up to n = 8192
NEAR = 1.1  # cells within 10% of the best loss form the near-best band reported next to the argmin


def toy_problem(n: int, *, rank: int = 1, input_dim: int = 8, seed: int = 0, dtype=torch.float32):
    """The generator (it then draws the minibatches s), W_in (n, d), A's init (r, n), A* (r, n) and B* (n, r)."""
    gen = torch.Generator().manual_seed(seed)  # draws in float64 so that every dtype sees the same problem

    def draw(*shape, std):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(dtype)

    w_in = draw(n, input_dim, std=input_dim**-0.5)
    a0, a_star = draw(rank, n, std=n**-0.5), draw(rank, n, std=n**-0.5)
    return gen, w_in, a0, a_star, draw(n, rank, std=rank**-0.5)


def adam_step(p, g, m, v, step: int, lr, *, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """One torch.optim.Adam update in place (its single-tensor arithmetic); `lr` may be a tensor broadcast on p."""
    b1, b2 = betas
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    update = v.sqrt().div_(math.sqrt(1 - b2**step)).add_(eps)
    p.sub_(torch.div(m, update, out=update).mul_(lr / (1 - b1**step)))


def train_grid(n: int, lr_a, lr_b, *, rank: int = 1, input_dim: int = 8, steps: int = 50, batch_size: int = 32,
               seed: int = 0, dtype=torch.float32):
    """Train one adapter per cell c at (lr_a[c], lr_b[c]), all from the same init, teacher and minibatches.

    Returns the loss before each update (steps, cells; float64), the final A (cells, r, n) and B (cells, n, r).
    """
    # float32 is 2.5x faster than float64; on a 200-step width-512 grid the two agreed to 5e-5 (median relative
    # loss), with the same argmin; cells at the edge of stability are chaotic and differ more, as under any noise.
    gen, w_in, a0, a_star, b_star = toy_problem(n, rank=rank, input_dim=input_dim, seed=seed, dtype=dtype)
    cells = len(lr_a)
    # One buffer per cell: rows [:r] are A, rows [r:] are B^T, so a single Adam call updates both with
    # per-row learning rates (lr_A for A's rows, lr_B for B's: the LoRA+ split).
    theta = torch.zeros(cells, 2 * rank, n, dtype=dtype)
    theta[:, :rank] = a0
    lr = torch.cat([torch.as_tensor(lr_a, dtype=dtype).view(-1, 1, 1).expand(cells, rank, 1),
                    torch.as_tensor(lr_b, dtype=dtype).view(-1, 1, 1).expand(cells, rank, 1)], dim=1)
    a, bt = theta[:, :rank], theta[:, rank:]
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    b_star64 = b_star.double()
    bs_bs = b_star64.T @ b_star64
    c = 2.0 / (n * batch_size)  # d/dtheta of the mean of squares over n outputs and the batch
    losses = torch.empty(steps, cells, dtype=torch.float64)
    for t in range(1, steps + 1):
        x = torch.randn(batch_size, input_dim, generator=gen, dtype=torch.float64).to(dtype) @ w_in.T
        # The residual R = B z - B* zs (cells, n, batch) stays implicit: only r x r Gram matrices of B and B* are
        # formed, in float64 because |B z|^2 - 2 z.B^T B* zs + |B* zs|^2 cancels to the loss (1e-8 in long runs).
        z, zs = (a @ x.T).double(), (a_star @ x.T).double()  # features A x, A* x: (cells, r, batch), (r, batch)
        bt64 = bt.double()
        bt_b, bt_bs = bt64 @ bt64.mT, bt64 @ b_star64
        bt_r = bt_b @ z - bt_bs @ zs  # B^T R
        sq = (z * bt_r).sum((1, 2)) - (zs * (bt_bs.mT @ z)).sum((1, 2)) + (zs * (bs_bs @ zs)).sum()
        losses[t - 1] = sq / (n * batch_size)
        grad_a = bt_r.to(dtype) @ x  # dL/dA = c B^T R x^T
        grad_bt = (z @ z.mT).to(dtype) @ bt - (z @ zs.mT).to(dtype) @ b_star.T  # c (z z^T B^T - z zs^T B*^T)
        adam_step(theta, torch.cat([grad_a, grad_bt], dim=1).mul_(c), m, v, t, lr)
    return losses, a.clone(), bt.mT.clone()


def _finite(t):
    return [_finite(r) for r in t] if t.dim() else (float(t) if math.isfinite(float(t)) else None)


def _cell(lrs_a, lrs_b, loss, growth, i, j) -> dict:
    return {"lr_a": lrs_a[j], "lr_b": lrs_b[i], "ratio": lrs_b[i] / lrs_a[j], "log2_lr_a": math.log2(lrs_a[j]),
            "log2_lr_b": math.log2(lrs_b[i]), "loss": float(loss[i, j]), "a_feature_growth": float(growth[i, j])}


def _summarise(n, lrs_a, lrs_b, loss, growth, untrained) -> dict:
    """Best cell, best equal-lr cell, near-best band and the valley (best lr_A for each lr_B) of one width."""
    log2_ratio = torch.tensor([[math.log2(b / a) for a in lrs_a] for b in lrs_b])
    out = {"width": n, "untrained_loss": untrained, "best": None, "best_ratio_1": None, "near_best": None}
    if torch.isfinite(loss).any():
        i, j = divmod(int(loss.argmin()), len(lrs_a))
        out["best"] = _cell(lrs_a, lrs_b, loss, growth, i, j)
        near = log2_ratio[loss <= NEAR * loss[i, j]]
        out["near_best"] = {"cells": len(near), "log2_ratio_min": float(near.min()),
                            "log2_ratio_max": float(near.max()), "includes_ratio_1": bool((near == 0).any())}
    diag = [(i, j) for i in range(len(lrs_b)) for j in range(len(lrs_a)) if math.isclose(lrs_b[i], lrs_a[j])]
    if diag and any(math.isfinite(loss[d]) for d in diag):
        out["best_ratio_1"] = _cell(lrs_a, lrs_b, loss, growth, *min(diag, key=lambda d: float(loss[d])))
    # The valley: for each lr_B, the lr_A with the lowest loss (None when that row never beats the untrained model).
    out["valley_log2_lr_a"] = [math.log2(lrs_a[int(row.argmin())]) if row.min() < untrained else None for row in loss]
    return out


def _run_width(n, lrs_a, lrs_b, seeds, *, rank, input_dim, steps, batch_size) -> dict:
    """All seeds of one width: seed-mean final-loss grid, A-feature growth, and _summarise's digest."""
    cell_a = [a for _ in lrs_b for a in lrs_a]  # cell c = i * len(lrs_a) + j  <->  (lr_B = lrs_b[i], lr_A = lrs_a[j])
    cell_b = [b for b in lrs_b for _ in lrs_a]
    start, losses, growth, untrained = time.perf_counter(), [], [], 0.0
    for seed in seeds:
        trace, a, _ = train_grid(n, cell_a, cell_b, rank=rank, input_dim=input_dim, steps=steps,
                                 batch_size=batch_size, seed=seed)
        final = trace[-max(1, steps // 10):].mean(0)
        losses.append(torch.where(torch.isfinite(final), final, math.inf).view(len(lrs_b), len(lrs_a)))
        _, w_in, a0, a_star, b_star = toy_problem(n, rank=rank, input_dim=input_dim, seed=seed, dtype=a.dtype)
        growth.append(((a @ w_in).norm(dim=(1, 2)) / (a0 @ w_in).norm()).view(len(lrs_b), len(lrs_a)))
        untrained += float((b_star @ (a_star @ w_in)).square().sum()) / n / len(seeds)  # E_s |B* A* W_in s|^2 / n
    loss, grow = torch.stack(losses).mean(0), torch.stack(growth).mean(0)
    summary = _summarise(n, lrs_a, lrs_b, loss, grow, untrained)
    summary.update(seconds=round(time.perf_counter() - start, 2), loss=_finite(loss),
                   loss_per_seed={str(s): _finite(x) for s, x in zip(seeds, losses)}, a_feature_growth=_finite(grow))
    return summary


def run_toy(*, widths=(128, 512, 2048, 8192), rank: int = 1, input_dim: int = 8, steps: int = 50,
            lrs_a=DEFAULT_LRS, lrs_b=DEFAULT_LRS, seeds=(0, 1), batch_size: int = 32,
            output_dir="loraplus-toy", threads: int | None = 1) -> dict:
    """Train the toy on the full (lr_A, lr_B) grid at each width; write toy.json and two PNGs; return the json.

    loss[i][j] is the seed-mean final loss at lr_B = lrs_b[i], lr_A = lrs_a[j]; a_feature_growth is
    ||A_T W_in|| / ||A_0 W_in||, how far the adapter's features A x moved from their init scale. `threads`:
    torch intra-op threads while training (None keeps torch's setting): the ops are small, and on a busy
    2-core machine one thread ran a width-2048 grid 10x faster than two.
    """
    widths, seeds, lrs_a, lrs_b = list(widths), list(seeds), [float(x) for x in lrs_a], [float(x) for x in lrs_b]
    _require(widths and all(isinstance(w, int) and w >= 2 for w in widths), "widths", "integers >= 2", widths)
    _require(isinstance(rank, int) and 1 <= rank <= min(widths), "rank", "an integer in [1, min(widths)]", rank)
    _require(isinstance(input_dim, int) and input_dim >= 1, "input_dim", "an integer >= 1", input_dim)
    _require(isinstance(steps, int) and steps >= 1, "steps", "an integer >= 1", steps)
    _require(isinstance(batch_size, int) and batch_size >= 1, "batch_size", "an integer >= 1", batch_size)
    _require(seeds and all(isinstance(s, int) for s in seeds), "seeds", "a non-empty list of integers", seeds)
    _require(threads is None or (isinstance(threads, int) and threads >= 1), "threads", "an integer >= 1", threads)
    for name, lrs in (("lrs_a", lrs_a), ("lrs_b", lrs_b)):
        _require(lrs and all(0 < x < math.inf for x in lrs), name, "positive finite learning rates", lrs,
                 "--log2_lr_min/--log2_lr_max")
    result = {"model": "f = (W0 + B A) W_in s, s ~ N(0, I_d); teacher W0 + B* A*; Adam on A and B; see loraplus/toy.py",
              "config": {"widths": widths, "rank": rank, "input_dim": input_dim, "steps": steps,
                         "batch_size": batch_size, "seeds": seeds, "tail_steps": max(1, steps // 10),
                         "log2_lrs_a": [math.log2(x) for x in lrs_a], "log2_lrs_b": [math.log2(x) for x in lrs_b]}}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or previous_threads)
    try:
        result["widths"] = [_run_width(n, lrs_a, lrs_b, seeds, rank=rank, input_dim=input_dim, steps=steps,
                                       batch_size=batch_size) for n in widths]
    finally:
        torch.set_num_threads(previous_threads)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "toy.json").write_text(json.dumps(result))
    _plot_heatmaps(result, out / "toy_heatmaps.png")
    _plot_ratio(result, out / "toy_ratio.png")
    print(format_table(result))
    print(f"toy.json, toy_heatmaps.png and toy_ratio.png in {out}")
    return result


def _require(ok, name: str, what: str, got, flag: str = "") -> None:
    if not ok:
        raise LoraPlusError(f"toy: {name} must be {what} ({flag or '--' + name}); got {got!r}")


def _p2(x) -> str:
    return "-" if x is None else f"2^{x:g}"


def format_table(result: dict) -> str:
    """One line per width: the best cell, the best cell with lr_A = lr_B (loss, lr, loss / best), near-best band."""
    rows = [f"{'width':>6} {'best lr_A':>9} {'best lr_B':>9} {'best ratio':>10} {'best loss':>9} {'ratio-1 loss':>12} "
            f"{'at lr':>6} {'x best':>6} {'ratios within 10%':>17} {'seconds':>7}"]
    for w in result["widths"]:
        b, d, nb = w["best"] or {}, w["best_ratio_1"] or {}, w["near_best"]
        band = f"2^{nb['log2_ratio_min']:g}..2^{nb['log2_ratio_max']:g}" if nb else "-"
        times = d["loss"] / b["loss"] if b and d and b["loss"] > 0 else math.nan
        rows.append(f"{w['width']:>6} {_p2(b.get('log2_lr_a')):>9} {_p2(b.get('log2_lr_b')):>9} "
                    f"{_p2(b['log2_lr_b'] - b['log2_lr_a'] if b else None):>10} {b.get('loss', math.inf):9.2e} "
                    f"{d.get('loss', math.inf):12.2e} {_p2(d.get('log2_lr_a')):>6} {times:6.2f} {band:>17} "
                    f"{w['seconds']:7.1f}")
    return "\n".join(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _plot_heatmaps(result: dict, path: Path) -> None:
    plt, cfg = _pyplot(), result["config"]
    xa, yb = cfg["log2_lrs_a"], cfg["log2_lrs_b"]
    grids = [torch.tensor([[math.inf if v is None else v for v in row] for row in w["loss"]], dtype=torch.float64)
             for w in result["widths"]]
    finite = torch.cat([g[torch.isfinite(g)] for g in grids])
    vmax = math.log10(max(w["untrained_loss"] for w in result["widths"]))  # no progress, worse or inf: worst colour
    vmin = math.log10(float(finite.min())) if len(finite) else vmax - 1
    fig, axes = plt.subplots(1, len(grids), figsize=(3.7 * len(grids) + 1.2, 4.0), squeeze=False)
    extent = (xa[0] - 0.5, xa[-1] + 0.5, yb[0] - 0.5, yb[-1] + 0.5) if len(xa) > 1 and len(yb) > 1 else None
    for ax, w, g in zip(axes[0], result["widths"], grids):
        im = ax.imshow(g.clamp(max=10**vmax).log10(), origin="lower", extent=extent, aspect="auto",
                       cmap="viridis_r", vmin=vmin, vmax=vmax)
        lo, hi = max(xa[0], yb[0]), min(xa[-1], yb[-1])
        ax.plot([lo, hi], [lo, hi], "w--", lw=1, label="lr_B = lr_A")
        if w["best"] and len(xa) > 1 and len(yb) > 1:
            ax.contour(xa, yb, g.numpy(), levels=[NEAR * w["best"]["loss"]], colors="r", linewidths=0.8)
        if w["best"]:
            ax.plot(w["best"]["log2_lr_a"], w["best"]["log2_lr_b"], "r*", ms=13, mec="k", label="best")
        if w["best_ratio_1"]:
            ax.plot(w["best_ratio_1"]["log2_lr_a"], w["best_ratio_1"]["log2_lr_b"], "o", mfc="none", mec="w", ms=10,
                    label="best with lr_B = lr_A")
        ax.set(title=f"n = {w['width']}", xlabel="log2 lr_A")
    axes[0][0].set_ylabel("log2 lr_B")
    axes[0][0].legend(loc="lower left", fontsize=7, framealpha=0.6)
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 final training loss (red line: within 10% of best)")
    fig.suptitle(f"LoRA toy, rank {cfg['rank']}, Adam, {cfg['steps']} steps, mean of {len(cfg['seeds'])} seeds")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_ratio(result: dict, path: Path) -> None:
    plt = _pyplot()
    ws = [w for w in result["widths"] if w["best"]]
    n = [w["width"] for w in ws]
    fig, (ax_r, ax_l, ax_v) = plt.subplots(1, 3, figsize=(15, 4.2))
    best = [2.0 ** (w["best"]["log2_lr_b"] - w["best"]["log2_lr_a"]) for w in ws]
    lo = [b - 2.0 ** w["near_best"]["log2_ratio_min"] for b, w in zip(best, ws)]
    hi = [2.0 ** w["near_best"]["log2_ratio_max"] - b for b, w in zip(best, ws)]
    ax_r.errorbar(n, best, yerr=[lo, hi], fmt="o-", capsize=4, label="best cell (bar: cells within 10% of best)")
    if n:
        ax_r.plot(n, [best[0] * x / n[0] for x in n], "k:", label="proportional to n (paper: lr_B / lr_A ~ n)")
    ax_r.axhline(1, color="grey", lw=0.8)
    ax_r.set(xlabel="width n", ylabel="lr_B / lr_A", title="best ratio against width")
    ax_l.plot(n, [w["best"]["loss"] for w in ws], "o-", label="best cell")
    eq = [(w["width"], w["best_ratio_1"]["loss"]) for w in ws if w["best_ratio_1"]]
    ax_l.plot([e[0] for e in eq], [e[1] for e in eq], "s--", label="best cell with lr_B = lr_A")
    ax_l.set(xlabel="width n", ylabel="final training loss", title="best loss, any ratio vs ratio 1")
    for ax in (ax_r, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2 if ax is ax_r else 10)
    # The valley: at each lr_B, the best lr_A (paper: lr_A ~ 1/n at fixed lr_B, so the curves shift left with n).
    log2_b = result["config"]["log2_lrs_b"]
    for w in ws:
        pts = [(a, b) for a, b in zip(w["valley_log2_lr_a"], log2_b) if a is not None]
        ax_v.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=f"n = {w['width']}")
    ax_v.set(xlabel="log2 best lr_A at this lr_B", ylabel="log2 lr_B", title="valley: best lr_A for each lr_B")
    for ax in (ax_r, ax_l, ax_v):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclasses.dataclass
class LinearToyArguments:
    """`loraplus toy --model linear` flags; one not given takes run_toy's default (shown by --help)."""

    widths: list[int] | None = None
    steps: int | None = None
    seeds: list[int] | None = None
    rank: int | None = None
    output_dir: str | None = None
    log2_lr_min: float | None = None
    log2_lr_max: float | None = None
    batch_size: int | None = None
    input_dim: int | None = None
    threads: int | None = None


@dataclasses.dataclass
class ToyModelArguments:
    """The flag that picks the toy; the model's own flags follow (LinearToyArguments, PaperToyArguments)."""

    model: str = "paper"


MODELS = ("paper", "linear")  # the first is the default
LINEAR_LOG2_LRS = (-16.0, 0.0)  # --model linear: (min, max) of log2 lr, for lr_A and lr_B alike


def _defaults(func, arguments_class, **special) -> str:
    """`--flag default` for each flag of arguments_class, read from func's signature (special: flags that are
    not its parameters), as indented lines that never split a flag from its value."""
    params = inspect.signature(func).parameters
    flags = [f.name for f in dataclasses.fields(arguments_class)]

    def show(v):
        return ",".join(f"{x:g}" for x in v) if isinstance(v, (tuple, list)) else f"{v:g}" if isinstance(
            v, float) else str(v)

    lines = [""]
    for f in flags:
        item = f"--{f} {show(special[f] if f in special else params[f].default)}"
        if lines[-1] and len(lines[-1]) + 1 + len(item) > 110:
            lines.append("")
        lines[-1] = f"{lines[-1]} {item}" if lines[-1] else item
    return "\n".join("      " + line for line in lines)


def _usage() -> str:
    from loraplus.experiments import toy_paper

    paper = _defaults(toy_paper.run_paper_toy, toy_paper.PaperToyArguments, report_steps="10,<steps>")
    linear = _defaults(run_toy, LinearToyArguments, log2_lr_min=LINEAR_LOG2_LRS[0], log2_lr_max=LINEAR_LOG2_LRS[1])
    return f"""usage: loraplus toy [--model paper|linear] [--flag value ...]

  --model paper   (default) the LoRA+ paper's section-3.2 toy, f(x) = W_out relu(B A relu(W_in x)) with only A
                  and B trained: train and test loss over the (lr_A, lr_B) grid at t = 10 and t = --steps, mean
                  of the seeds, cells within 1% of the best marked (toy_paper.json, heatmaps_n<width>.png,
                  loss_by_ratio.png, ratio_vs_width.png). Each (width, seed) is saved under OUTPUT_DIR/runs/ and
                  reused by a later run with the same settings. Defaults:
{paper}
  --model linear  a linear LoRA layer after a fixed low-dimensional embedding, fitted to a low-rank teacher:
                  training loss over the grid per width (toy.json, toy_heatmaps.png, toy_ratio.png). Defaults:
{linear}
"""


def main_toy(argv: list[str]) -> int:
    """`loraplus toy [--model paper|linear] [--flag value ...]`: loss over (lr_A, lr_B) per width."""
    chosen, argv = parse_own_flags(ToyModelArguments, argv, "toy")
    model = chosen.model
    if model not in MODELS:
        raise LoraPlusError(f"toy: --model must be one of {', '.join(MODELS)}; got {model!r}")
    if any(a in ("-h", "--help") for a in argv):
        from loraplus.experiments import toy_paper

        print(_usage() + "\n" + (toy_paper.__doc__ if model == "paper" else __doc__))
        return 0
    if model == "paper":
        from loraplus.experiments.toy_paper import main_paper

        return main_paper(argv)
    opts = given_values(parse_command(LinearToyArguments, argv, "toy --model linear")[0])
    lo, hi = opts.pop("log2_lr_min", LINEAR_LOG2_LRS[0]), opts.pop("log2_lr_max", LINEAR_LOG2_LRS[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and hi - lo <= 40):
        raise LoraPlusError(f"bad --log2_lr_min/--log2_lr_max: {lo:g}, {hi:g} (need finite min <= max, <= 40 apart)")
    lrs = tuple(2.0 ** (lo + k) for k in range(int(hi - lo) + 1))
    run_toy(lrs_a=lrs, lrs_b=lrs, **opts)
    return 0
