"""The LoRA+ width toy: exact vectorised Adam, the lr_B = 0 fixed point, the width shift, outputs, flag errors."""

import json
import math
import statistics

import pytest
import torch

from loraplus.errors import LoraPlusError
from loraplus.toy import main_toy, toy_problem, train_grid

F64 = torch.float64


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Widths 64 and 2048, 20 steps, lr grid 2^-14..2^0, seeds 0 and 1, through the CLI entry point (~3 s)."""
    out = tmp_path_factory.mktemp("toy")
    argv = ["--widths", "64,2048", "--steps", "20", "--seeds", "0,1", "--log2_lr_min", "-14", "--log2_lr_max", "0",
            "--output_dir", str(out)]
    assert main_toy(argv) == 0
    return out, json.loads((out / "toy.json").read_text())


def test_vectorised_adam_matches_torch_adam():
    """Every cell of train_grid follows W0 + B A trained by torch.optim.Adam with lr_A, lr_B groups, step by step."""
    n, rank, d, bs, steps = 48, 2, 8, 8, 15
    cells = [(3e-3, 5e-2), (1e-2, 1e-3)]
    losses, a_grid, b_grid = train_grid(n, [c[0] for c in cells], [c[1] for c in cells], rank=rank, input_dim=d,
                                        steps=steps, batch_size=bs, seed=3, dtype=F64)
    w0 = torch.randn(n, n, generator=torch.Generator().manual_seed(9), dtype=F64) / math.sqrt(n)
    for c, (lr_a, lr_b) in enumerate(cells):
        gen, w_in, a0, a_star, b_star = toy_problem(n, rank=rank, input_dim=d, seed=3, dtype=F64)
        a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(torch.zeros(n, rank, dtype=F64))
        opt = torch.optim.Adam([{"params": [a], "lr": lr_a}, {"params": [b], "lr": lr_b}])
        for t in range(steps):
            x = torch.randn(bs, d, generator=gen, dtype=F64) @ w_in.T
            loss = torch.nn.functional.mse_loss(x @ (w0 + b @ a).T, x @ (w0 + b_star @ a_star).T)
            assert torch.allclose(loss.detach(), losses[t, c], rtol=1e-9, atol=1e-12)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert torch.allclose(a_grid[c], a.detach(), rtol=1e-9, atol=1e-12)
        assert torch.allclose(b_grid[c], b.detach(), rtol=1e-9, atol=1e-12)


def test_zero_lr_b_keeps_b_zero_and_the_untrained_loss():
    """With lr_B = 0, B stays exactly zero and every step's loss is the untrained model's, whatever lr_A."""
    losses, a, b = train_grid(256, [0.0, 1e-3, 1.0], [0.0, 0.0, 0.0], steps=12, seed=1)
    _, _, a0, _, _ = toy_problem(256, seed=1)
    assert torch.equal(b, torch.zeros_like(b))
    assert torch.equal(a, a0.expand_as(a))
    assert torch.equal(losses, losses[:, :1].expand_as(losses))


def test_best_ratio_at_fixed_lr_b_grows_with_width(small_run):
    """At fixed lr_B, best lr_B / lr_A grows from width 64 to 2048: median over lr_B >= 2^2 times (paper: 2^5)."""
    # Not the global argmin: the loss is flat along lr_A * lr_B = const, so where the argmin lands on that ridge
    # is noise (steps 20, seed pairs 0..11: the 2048 argmin ratio was below the 64 one for seeds 6,7). The valley
    # at fixed lr_B is what width moves; its median shift was 3 to 4.5 octaves on each of those six seed pairs.
    _, result = small_run
    log2_a = result["config"]["log2_lrs_a"]
    narrow, wide = (w["valley_log2_lr_a"] for w in result["widths"])
    inner = [(x, y) for x, y in zip(narrow, wide) if all(v is not None and log2_a[0] < v < log2_a[-1] for v in (x, y))]
    assert len(inner) >= 5 and statistics.median(x - y for x, y in inner) >= 2


def test_outputs_exist_and_best_cell_is_the_argmin(small_run):
    """toy.json and both PNGs are written and non-empty, and each width's best cell is the argmin of its loss grid."""
    out, result = small_run
    assert all((out / f).stat().st_size > 0 for f in ("toy.json", "toy_heatmaps.png", "toy_ratio.png"))
    cfg = result["config"]
    for width in result["widths"]:
        grid = torch.tensor([[math.inf if v is None else v for v in row] for row in width["loss"]], dtype=F64)
        i, j = divmod(int(grid.argmin()), grid.shape[1])
        best = width["best"]
        assert (best["log2_lr_b"], best["log2_lr_a"]) == (cfg["log2_lrs_b"][i], cfg["log2_lrs_a"][j])
        assert best["loss"] == grid.min().item()


@pytest.mark.parametrize("argv, flag", [
    (["--widths", "128,abc"], "--widths"), (["--widths", "1"], "--widths"), (["--steps", "0"], "--steps"),
    (["--steps", "1.5"], "--steps"), (["--seeds", ""], "--seeds"), (["--rank", "0"], "--rank"),
    (["--batch_size", "-2"], "--batch_size"), (["--log2_lr_min", "2", "--log2_lr_max", "0"], "--log2_lr_min"),
    (["--learning_rate", "1"], "--learning_rate"), (["--steps"], "--steps"),
])
def test_bad_flag_values_raise_one_line_naming_the_flag(argv, flag, tmp_path):
    """Each bad flag value raises LoraPlusError with one line that names the flag, before anything is written."""
    with pytest.raises(LoraPlusError) as err:
        main_toy(argv + ["--output_dir", str(tmp_path / "out")])
    assert flag in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
