"""The LoRA+ toys. Linear: exact vectorised Adam, the lr_B = 0 fixed point, the width shift, outputs, flag errors.
Paper (section 3.2): batched training equals torch.optim.Adam on nn.Linear layers, only A and B train, the 1%
marking, the ReLU slope at 0, outputs and reuse, flag errors."""

import inspect
import json
import math
import statistics

import pytest
import torch

from loraplus.core.errors import LoraPlusError
from loraplus.experiments.toy import main_toy, toy_problem, train_grid
from loraplus.experiments.toy_paper import near_best, paper_problem, summarise, train_paper_grid

F64 = torch.float64


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Widths 64 and 2048, 20 steps, lr grid 2^-14..2^0, seeds 0 and 1, through the CLI entry point (~3 s)."""
    out = tmp_path_factory.mktemp("toy")
    argv = ["--model", "linear", "--widths", "64,2048", "--steps", "20", "--seeds", "0,1", "--log2_lr_min", "-14",
            "--log2_lr_max", "0", "--output_dir", str(out)]
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
        main_toy(["--model", "linear"] + argv + ["--output_dir", str(tmp_path / "out")])
    assert flag in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


# --- the paper's section-3.2 toy: f(x) = W_out relu(B A relu(W_in x)) ---------------------------------------------


class PaperToy(torch.nn.Module):
    """The paper's toy from nn.Linear layers, W_in and W_out frozen; the middle ReLU has slope 1 at 0."""

    def __init__(self, problem):
        super().__init__()
        (n, d), r = problem.w_in.shape, problem.a0.shape[0]
        self.w_in, self.a = torch.nn.Linear(d, n, bias=False), torch.nn.Linear(n, r, bias=False)
        self.b, self.w_out = torch.nn.Linear(r, n, bias=False), torch.nn.Linear(n, 1, bias=False)
        for layer, weight in ((self.w_in, problem.w_in), (self.a, problem.a0), (self.b, problem.b0),
                              (self.w_out, problem.w_out[None])):
            layer.to(problem.w_in.dtype).weight.data.copy_(weight)
        self.w_in.requires_grad_(False)
        self.w_out.requires_grad_(False)

    def forward(self, x):
        z = self.b(self.a(torch.relu(self.w_in(x))))
        return self.w_out(torch.where(z >= 0, z, 0.0)).squeeze(-1)


@pytest.mark.parametrize("block_elements, b_init_std", [
    (10**6, 0.0), (2 * 24 * 12, 0.0), (5 * 12, 0.0),  # untiled; tiles of cells; tiles of samples
    (10**6, 0.1),  # B drawn at random instead of 0
])
def test_paper_batched_training_matches_torch_adam_on_linear_layers(block_elements, b_init_std):
    """Every cell's train and test loss at every step, and its final A and B, equal torch.optim.Adam's on
    PaperToy at that cell's (lr_A, lr_B), whichever way the cells and samples are tiled."""
    problem = paper_problem(12, rank=2, n_train=24, n_test=7, seed=4, b_init_std=b_init_std, dtype=F64)
    cells, steps = [(3e-2, 1e-1), (1e-3, 3e-2), (1e-1, 1e-3)], 12
    train, test, a_grid, b_grid = train_paper_grid(problem, [c[0] for c in cells], [c[1] for c in cells],
                                                   steps=steps, block_elements=block_elements)
    mse = torch.nn.functional.mse_loss
    for c, (lr_a, lr_b) in enumerate(cells):
        model = PaperToy(problem)
        opt = torch.optim.Adam([{"params": model.a.parameters(), "lr": lr_a},
                                {"params": model.b.parameters(), "lr": lr_b}])
        for t in range(steps + 1):
            loss = mse(model(problem.x_train), problem.y_train)
            with torch.no_grad():
                test_loss = mse(model(problem.x_test), problem.y_test)
            torch.testing.assert_close(train[t, c], loss.detach(), rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(test[t, c], test_loss, rtol=1e-10, atol=1e-14)
            if t < steps:  # the loss after the last step is measured, not trained on
                opt.zero_grad()
                loss.backward()
                opt.step()
        torch.testing.assert_close(a_grid[c], model.a.weight.detach(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(b_grid[c], model.b.weight.detach(), rtol=1e-9, atol=1e-12)
    assert (train[-1] < 0.9 * train[0]).all()  # every cell trained: the comparison is not between frozen models


def test_paper_training_changes_only_a_and_b():
    """Training leaves W_in, W_out and the data bit for bit as they were, and moves both A and B from their init."""
    problem = paper_problem(16, n_train=30, n_test=5, seed=2)
    before = [x.clone() for x in problem]
    _, _, a, b = train_paper_grid(problem, [1e-2, 1e-1], [1e-2, 1e-3], steps=5)
    assert all(torch.equal(x, y) for x, y in zip(problem, before))
    assert (a != problem.a0).any((1, 2)).all() and (b != 0).any((1, 2)).all()


def test_paper_relu_slope_zero_at_zero_would_never_train():
    """Why the middle ReLU has slope 1 at 0: with B = 0 and torch.relu's slope 0 there, every gradient is zero."""
    problem = paper_problem(16, n_train=30, seed=0, dtype=F64)
    model = PaperToy(problem)
    out = model.w_out(torch.relu(model.b(model.a(torch.relu(model.w_in(problem.x_train)))))).squeeze(-1)
    torch.nn.functional.mse_loss(out, problem.y_train).backward()
    assert torch.equal(model.a.weight.grad, torch.zeros_like(model.a.weight))
    assert torch.equal(model.b.weight.grad, torch.zeros_like(model.b.weight))


def test_paper_problem_is_the_papers_setup():
    """d = 5, r = 4, 1000 train and 100 test points, Y = sin(mean of X), and a seed fixes everything."""
    problem = paper_problem(100, seed=7)
    assert problem.w_in.shape == (100, 5) and problem.w_out.shape == (100,) and problem.a0.shape == (4, 100)
    assert problem.x_train.shape == (1000, 5) and problem.x_test.shape == (100, 5)
    assert torch.equal(problem.b0, torch.zeros(100, 4))
    torch.testing.assert_close(problem.y_train, torch.sin(problem.x_train.mean(1)))
    torch.testing.assert_close(problem.y_test, torch.sin(problem.x_test.mean(1)))
    assert all(torch.equal(x, y) for x, y in zip(problem, paper_problem(100, seed=7)))


def test_paper_random_b_init_leaves_every_other_draw_unchanged():
    """--b_init_std only adds B's draw: W_in, W_out, A's init and the data are those of the default B = 0."""
    default, drawn = paper_problem(32, seed=3), paper_problem(32, seed=3, b_init_std=0.5)
    assert all(torch.equal(x, y) for name, x, y in zip(default._fields, default, drawn) if name != "b0")
    assert drawn.b0.std() > 0.3


def test_near_best_marks_exactly_the_cells_within_one_percent():
    """The marked cells are those with loss <= 1.01 x the best finite loss: never an inf or NaN cell."""
    grid = torch.tensor([[2.0, 1.0099, math.inf], [1.0101, 1.0, math.nan], [1.01, 0.5 + 0.5, 1.5]], dtype=F64)
    expected = torch.tensor([[False, True, False], [False, True, False], [True, True, False]])
    assert torch.equal(near_best(grid), expected)
    summary = summarise(grid, log2_a=[-2.0, -1.0, 0.0], log2_b=[-3.0, -2.0, -1.0])
    assert summary["best"] == {"log2_lr_a": -1.0, "log2_lr_b": -2.0, "log2_ratio": -1.0, "loss": 1.0, "grid_edge": []}
    assert summary["near_best"]["cells"] == 4
    assert (summary["near_best"]["log2_ratio_min"], summary["near_best"]["log2_ratio_max"]) == (-2.0, 1.0)


def test_best_by_ratio_is_the_minimum_over_each_diagonal():
    """best_by_ratio holds, for every lr_B / lr_A on the grid, the lowest finite loss among the cells at that ratio."""
    grid = torch.tensor([[3.0, 2.0, math.inf], [0.5, 4.0, 1.0], [6.0, 7.0, 8.0]], dtype=F64)
    by_ratio = summarise(grid, log2_a=[0.0, 1.0, 2.0], log2_b=[0.0, 1.0, 2.0])["best_by_ratio"]
    # ratio log2_b - log2_a: -2 -> {inf}: none finite; -1 -> {2, 1}; 0 -> {3, 4, 8}; 1 -> {0.5, 7}; 2 -> {6}
    assert by_ratio == {"log2_ratio": [-1.0, 0.0, 1.0, 2.0], "loss": [1.0, 3.0, 0.5, 6.0]}


def test_largest_ratio_within_twice_the_best_loss():
    """log2_ratio_max_within_2x is the largest ratio whose best loss is at most 2x the best, gaps allowed."""
    grid = torch.tensor([[1.0, 3.0, 9.0], [1.9, 5.0, 3.0], [2.5, 2.0, 7.0]], dtype=F64)
    # best by ratio: -2 -> 9, -1 -> 3, 0 -> 1, 1 -> 1.9, 2 -> 2.5; within 2 x 1.0: ratios 0 and 1
    assert summarise(grid, log2_a=[0.0, 1.0, 2.0], log2_b=[0.0, 1.0, 2.0])["log2_ratio_max_within_2x"] == 1.0


def test_best_cell_on_the_grid_border_is_flagged():
    """A best cell at the smallest or largest lr_A or lr_B of the grid says so (the valley may go on beyond it)."""
    grid = torch.ones(3, 4, dtype=F64)
    grid[2, 0] = 0.5  # largest lr_B, smallest lr_A
    assert summarise(grid, [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0])["best"]["grid_edge"] == ["lr_A min", "lr_B max"]
    grid[2, 0], grid[1, 2] = 1.0, 0.5
    assert summarise(grid, [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0])["best"]["grid_edge"] == []


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """Widths 8 and 16, 12 steps, 50 train points, a 5 x 5 lr grid, seeds 0 and 1, through the CLI (~1 s)."""
    out = tmp_path_factory.mktemp("toy_paper")
    argv = ["--widths", "8,16", "--steps", "12", "--seeds", "0,1", "--n_train", "50", "--n_test", "10",
            "--log2_lr_a", "-8,0", "--log2_lr_b", "-8,0", "--log2_lr_step", "2", "--output_dir", str(out)]
    assert main_toy(argv) == 0  # the paper's model is the default
    return out, argv, json.loads((out / "toy_paper.json").read_text())


def test_paper_outputs_and_seed_mean_best_cell(paper_run):
    """toy_paper.json, a heatmap per width and the ratio plot are written; each reported grid is the mean of the
    seeds' grids and its best cell is that grid's argmin."""
    out, _, result = paper_run
    assert all((out / f).stat().st_size > 0
               for f in ("heatmaps_n8.png", "heatmaps_n16.png", "ratio_vs_width.png", "loss_by_ratio.png"))
    cfg = result["config"]
    assert cfg["report_steps"] == [10, 12]
    for width in result["widths"]:
        seeds = [json.loads((out / "runs" / f"width{width['width']}_seed{s}.json").read_text()) for s in (0, 1)]
        for split in ("train", "test"):
            for t in ("10", "12"):
                reported = width[split][t]
                grid = torch.tensor(reported["loss"], dtype=F64)
                per_seed = torch.tensor([r["loss"][split][t] for r in seeds], dtype=F64)
                torch.testing.assert_close(grid, per_seed.mean(0))
                i, j = divmod(int(grid.argmin()), grid.shape[1])
                assert (reported["best"]["log2_lr_b"], reported["best"]["log2_lr_a"]) == (
                    cfg["log2_lrs_b"][i], cfg["log2_lrs_a"][j])


def test_paper_rerun_reuses_each_width_and_seed(paper_run):
    """Run again with the same settings, no (width, seed) trains again: the saved runs are reused unchanged."""
    out, argv, result = paper_run
    runs = sorted((out / "runs").iterdir())
    stamps = [p.stat().st_mtime_ns for p in runs]
    assert main_toy(argv) == 0
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert json.loads((out / "toy_paper.json").read_text()) == result


@pytest.mark.parametrize("argv, flag", [
    (["--widths", "2"], "--widths"), (["--steps", "0"], "--steps"), (["--report_steps", "300"], "--report_steps"),
    (["--log2_lr_a", "1,0"], "--log2_lr_a"), (["--log2_lr_b", "-3"], "--log2_lr_b"),
    (["--log2_lr_step", "0"], "--log2_lr_step"), (["--n_train", "x"], "--n_train"),
    (["--batch_size", "8"], "--batch_size"), (["--model", "mlp"], "--model"), (["--b_init_std", "-1"], "--b_init_std"),
])
def test_paper_bad_flag_values_raise_one_line_naming_the_flag(argv, flag, tmp_path):
    """Each bad flag value raises LoraPlusError with one line that names the flag, before anything is written."""
    with pytest.raises(LoraPlusError) as err:
        main_toy(argv + ["--output_dir", str(tmp_path / "out")])
    assert flag in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_help_shows_each_models_actual_defaults(capsys):
    """`loraplus toy --help` lists both models and reads their defaults from the code, so they cannot drift."""
    from loraplus.experiments.toy_paper import DEFAULT_LOG2_LR_A, run_paper_toy

    assert main_toy(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: loraplus toy [--model paper|linear]") and "--model linear" in out
    assert f"--log2_lr_a {DEFAULT_LOG2_LR_A[0]:g},{DEFAULT_LOG2_LR_A[1]:g}" in out
    assert f"--steps {inspect.signature(run_paper_toy).parameters['steps'].default}" in out
