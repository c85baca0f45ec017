"""loraplus tune: successive halving over (lr_A, ratio), validated on training data only, resumable."""

import json
import math
from pathlib import Path

import pytest
import yaml

from loraplus.cli import main
from loraplus.experiments.tune import Rung, default_budget, plan_rungs, successive_halving

FAST = ["--per_device_train_batch_size", "8", "--report_to", "none", "--max_length", "16"]


# Rung planning and halving, without training.

def test_rungs_shrink_by_eta_grow_by_eta_and_fit_the_budget():
    """30 cells, eta 3, budget 1000: rungs of 30, 10, 3 cells at r0, 3 r0, 9 r0 steps, r0 the largest that fits."""
    rungs = plan_rungs(30, 3, 1000)
    assert rungs == [Rung(30, 11), Rung(10, 33), Rung(3, 99)]  # 11 * (30 + 10 * 3 + 3 * 9) = 957 <= 1000 < 12 * 87
    assert sum(r.cells * r.steps for r in rungs) <= 1000


def test_default_budget_never_trains_the_last_rung_longer_than_the_final_run():
    """The default budget is 4 final runs, capped so the finalists train at most as long as the final run."""
    assert default_budget(282, 30, 3) == 4 * 282
    for cells in (2, 5, 6, 30):
        last = plan_rungs(cells, 3, default_budget(282, cells, 3))[-1]
        assert last.steps <= 282


@pytest.mark.parametrize("greater", [True, False])
def test_halving_keeps_the_best_third_of_each_rung(greater):
    """Each rung keeps its best floor(n / eta) cells (higher accuracy or lower loss); the chosen cell is the best."""
    cells = [(lr, ratio) for lr in (1e-4, 3e-4, 1e-3) for ratio in (1, 4, 16)]
    quality = {cell: -abs(math.log(cell[0] * cell[1] / 4e-3)) for cell in cells}  # best lr_B near 4e-3
    sign = 1 if greater else -1
    records, chosen = successive_halving(cells, plan_rungs(9, 3, 18), lambda c, k, steps: sign * quality[c],
                                         greater=greater)
    kept = [(r["lr"], r["ratio"]) for r in records if r["rung"] == 0 and r["kept"]]
    assert sorted(kept) == sorted(sorted(cells, key=quality.get)[-3:])
    assert {(r["lr"], r["ratio"]) for r in records if r["rung"] == 1} == set(kept)
    assert chosen == max(cells, key=quality.get)


def test_accuracy_ties_are_ranked_by_validation_loss():
    """Short runs that tie on accuracy (all predicting the majority class) survive by lower validation loss."""
    cells = [(1e-3, 1), (1e-3, 4), (1e-3, 16), (1e-3, 32)]
    loss = {(1e-3, 1): 1.10, (1e-3, 4): 1.08, (1e-3, 16): 1.02, (1e-3, 32): 1.05}
    records, chosen = successive_halving(cells, [Rung(4, 1), Rung(2, 2)], lambda c, k, s: (0.33, loss[c]),
                                         greater=True)
    assert [(r["ratio"], r["kept"]) for r in records if r["rung"] == 0] == [(1, False), (4, False), (16, True),
                                                                            (32, True)]
    assert chosen == (1e-3, 16)


def test_diverged_cells_never_survive():
    """A cell without a finite validation metric is never kept, even when fewer finite cells than places remain."""
    cells = [(1e-3, 1), (1e-3, 4), (1e-3, 16), (1e-3, 32)]
    records, chosen = successive_halving(cells, [Rung(4, 1), Rung(2, 2)], lambda c, k, s: None if c[1] > 1 else 0.5,
                                         greater=True)
    assert chosen == (1e-3, 1)
    assert [(r["ratio"], r["kept"]) for r in records if r["rung"] == 0] == [(1, True), (4, False), (16, False),
                                                                            (32, False)]


# The tune loop with a stand-in for training (instant): folders, cost, divergence.

@pytest.fixture
def fake_training(monkeypatch):
    """Replace each training run by a summary whose accuracy peaks at lr_B = 6e-3; record the runs asked for."""
    from loraplus.train import runs as runs_module
    from loraplus.train.guard import NonFiniteGradientError

    runs = []

    def train_or_reuse(cfg, *, role):
        assert role == "tune" and cfg.test_file is None and cfg.validation_file is None
        run = Path(cfg.output_dir)
        if (run / "summary.json").is_file():
            return json.loads((run / "summary.json").read_text())
        run.mkdir(parents=True, exist_ok=True)
        cfg.save(str(run / "config.yaml"))
        runs.append((cfg.learning_rate, cfg.loraplus_lr_ratio, cfg.max_steps))
        if cfg.learning_rate * cfg.loraplus_lr_ratio > 0.1:
            raise NonFiniteGradientError("non-finite gradient at step 2 in lora_B; training stopped", step=2)
        value = 0.9 - 0.1 * abs(math.log(cfg.learning_rate * cfg.loraplus_lr_ratio / 6e-3))
        summary = {"metric": "accuracy", "global_step": cfg.max_steps, "train_seconds": 0.0, "best_metric": value,
                   "validation": {"eval_accuracy": value}}
        (run / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(runs_module, "train_or_reuse", train_or_reuse)
    return runs


def _fake_tune(tmp_path, *flags):
    return main(["tune", "--train_file", str(tmp_path / "train.csv"), "--test_file", str(tmp_path / "test.csv"),
                 "--output_dir", str(tmp_path / "out"), "--report_to", "none", *flags])


def test_survivors_restart_longer_and_every_step_is_counted(fake_training, tmp_path):
    """Survivors run again from scratch for eta x the steps, each in its own folder; cost sums every run's steps."""
    assert _fake_tune(tmp_path, "--lrs", "1e-4,1e-3", "--ratios", "1,4,16", "--eta", "2", "--budget", "24") == 0
    result = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert [(r["cells"], r["steps"]) for r in result["rungs"]] == [(6, 2), (3, 4)]  # 2 * (6 + 3 * 2) = 24
    assert sorted(s for *_, s in fake_training) == [2] * 6 + [4] * 3
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 9
    assert result["cost"] == {"runs": 9, "optimizer_steps": 24, "budget": 24, "train_seconds": 0.0, "reused_runs": 0}
    assert (result["chosen"]["learning_rate"], result["chosen"]["loraplus_lr_ratio"]) == (1e-3, 4)


def test_a_diverging_run_is_a_lost_cell_not_a_failed_tune(fake_training, tmp_path):
    """A run stopped by a NaN/Inf gradient scores as diverged, costs the steps it took, and is not retried."""
    argv = ["--lrs", "1e-3,1e-2", "--ratios", "1,16", "--budget", "8"]  # 1e-2 * 16 diverges
    assert _fake_tune(tmp_path, *argv) == 0
    runs = json.loads((tmp_path / "out" / "tune.json").read_text())["runs"]
    lost = [r for r in runs if r["diverged"]]
    assert [(r["lr"], r["ratio"], r["value"], r["kept"], r["global_step"]) for r in lost] == [
        (1e-2, 16, None, False, 2)]
    fake_training.clear()
    assert _fake_tune(tmp_path, *argv) == 0 and fake_training == []


def test_tuned_config_is_the_users_config_with_the_chosen_values(fake_training, tmp_path):
    """tuned_config.yaml keeps every setting and the data files, with the chosen lr_A, ratio and the shared head lr."""
    assert _fake_tune(tmp_path, "--lrs", "1e-3,2e-3", "--ratios", "1,4", "--budget", "4", "--lora_r", "4") == 0
    tuned = yaml.safe_load((tmp_path / "out" / "tuned_config.yaml").read_text())
    chosen = json.loads((tmp_path / "out" / "tune.json").read_text())["chosen"]
    assert tuned["learning_rate"] == chosen["learning_rate"] == 2e-3
    assert tuned["loraplus_lr_ratio"] == chosen["loraplus_lr_ratio"] == 4
    assert tuned["loraplus_lr_other"] == 2e-4  # the config's learning_rate, as in every tuning run
    assert tuned["test_file"] == str(tmp_path / "test.csv") and tuned["lora_r"] == 4
    assert tuned["output_dir"] == str(tmp_path / "out" / "train")


def test_run_folder_with_other_settings_is_refused(fake_training, tmp_path, capsys):
    """Tuning again into the same folder with another config exits 2 rather than reusing runs of other settings."""
    assert _fake_tune(tmp_path, "--lrs", "1e-3,2e-3", "--ratios", "1", "--budget", "2") == 0
    capsys.readouterr()
    assert _fake_tune(tmp_path, "--lrs", "1e-3,2e-3", "--ratios", "1", "--budget", "2", "--lora_r", "4") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings (lora_r)" in err


@pytest.mark.parametrize("flags, message", [
    (["--lrs", "1e-3,fast"], "--lrs takes comma-separated numbers"),
    (["--lrs", "1e-3", "--ratios", "16"], "single (lr, ratio) cell"),
    (["--lrs", "1e-3,2e-3", "--ratios", "1,16", "--budget", "3"], "--budget 3 is too small"),
    (["--eta", "1"], "--eta must be an integer >= 2"),
    (["--budget", "ten"], "--budget takes a whole number"),
    (["--lrs", "1e-3,2e-3", "--budget"], "--budget needs a value"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    """A mistake in tune's own flags ends in one line naming it, exit 2, and no output folder."""
    assert _fake_tune(tmp_path, *flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


# End to end on a tiny classifier (two real runs).

@pytest.fixture(scope="module")
def tuned(tmp_path_factory, bert_dir, sentiment):
    """A real tune over two cells; every file the data loader opens is recorded."""
    from loraplus.train import sources

    root = tmp_path_factory.mktemp("tune")
    argv = ["tune", "--model_name_or_path", bert_dir, "--train_file", sentiment["train"],
            "--validation_file", sentiment["dev"], "--test_file", str(root / "test-never-read.csv"),
            "--output_dir", str(root / "out"), "--lrs", "2e-3", "--ratios", "1,16", "--budget", "4", *FAST]
    opened, load_file = [], sources.load_file
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "load_file", lambda path, *args: opened.append(str(path)) or load_file(path, *args))
        assert main(argv) == 0
    return root / "out", argv, opened


def test_tune_returns_a_grid_point(tuned):
    """On a tiny task tune chooses one (lr_A, ratio) of the grid and writes it to tune.json and tuned_config.yaml."""
    out, _, _ = tuned
    chosen = json.loads((out / "tune.json").read_text())["chosen"]
    assert chosen["learning_rate"] == 2e-3 and chosen["loraplus_lr_ratio"] in (1, 16)
    assert yaml.safe_load((out / "tuned_config.yaml").read_text())["loraplus_lr_ratio"] == chosen["loraplus_lr_ratio"]


def test_tune_never_reads_the_test_split(tuned, sentiment):
    """Tuning opens the training file only: the test file (absent here) and the validation file are never read."""
    out, _, opened = tuned
    assert opened and set(opened) == {sentiment["train"]}
    summaries = [json.loads(p.read_text()) for p in out.glob("runs/*/summary.json")]
    assert len(summaries) == 2 and all("test" not in s for s in summaries)


def test_tune_reuses_finished_runs(tuned, capsys):
    """Running the same tune again retrains nothing and reports the same choice."""
    out, argv, _ = tuned
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    before = json.loads((out / "tune.json").read_text())["chosen"]
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")} == stamps
    assert json.loads((out / "tune.json").read_text())["chosen"] == before
    assert "2 runs reused" in capsys.readouterr().out
