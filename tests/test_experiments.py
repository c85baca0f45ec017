"""compare and sweep end to end on a tiny classifier: protocol, resumption, outputs."""

import json

import pytest

from loraplus.cli import main

BUDGET = ["--max_steps", "4", "--eval_steps", "2", "--per_device_train_batch_size", "8", "--report_to", "none",
          "--logging_steps", "1"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, bert_dir, sentiment):
    out = tmp_path_factory.mktemp("compare")
    argv = ["compare", "--model_name_or_path", bert_dir, "--train_file", sentiment["train"],
            "--test_file", sentiment["test"], "--output_dir", str(out), "--lrs", "1e-3,4e-3", "--seeds", "1,2",
            "--ratios", "16", *BUDGET]
    assert main(argv) == 0
    return out, argv


def test_compare_writes_report_curves_results(compared):
    """compare writes a non-empty report.md, curves.png and results.json with both arms."""
    out, _ = compared
    assert (out / "report.md").read_text().startswith("# LoRA vs LoRA+")
    assert (out / "curves.png").stat().st_size > 0
    arms = json.loads((out / "results.json").read_text())["arms"]
    assert set(arms) == {"lora", "loraplus_r16"} and all(len(a["final"]) == 2 for a in arms.values())


def test_lr_never_chosen_on_test(compared):
    """Tuning runs never load the test split; only the per-seed final runs score it."""
    out, _ = compared
    tuning = [json.loads(p.read_text()) for p in (out / "tune").glob("*/summary.json")]
    finals = [json.loads(p.read_text()) for p in (out / "final").glob("*/summary.json")]
    assert len(tuning) == 4 and all("test" not in s for s in tuning)
    assert len(finals) == 4 and all("test" in s for s in finals)


def test_compare_resumes_finished_runs(compared, capsys):
    """Running compare again reuses every finished run: no run folder is retrained, and each run says so in
    one line (its Trainer printout goes to the run's train.log)."""
    out, argv = compared
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/summary.json")}
    capsys.readouterr()
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/summary.json")} == stamps
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("tune ", "final "))]
    assert len(lines) == 8 and all(line.endswith("(reused)") for line in lines), lines
    assert sum(" seed " in line and "test accuracy" in line for line in lines) == 4


def test_final_runs_log_test_scores_as_test_and_choose_no_checkpoint(compared):
    """A final run's evaluations are of the test split and logged as test_*, never as eval_*; no checkpoint
    is picked by them (the adapter is the last step's)."""
    out, _ = compared
    for run in (out / "final").iterdir():
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert any("test_accuracy" in r for r in rows) and not any("eval_accuracy" in r for r in rows
                                                                   if not r.get("after_training"))
        summary = json.loads((run / "summary.json").read_text())
        assert summary["adapter"] == "final" and summary["best_checkpoint"] is None
        assert summary["evaluations"]["best"] is None and summary["evaluations"]["final"]["step"] == 4


def test_heads_share_one_lr_across_arms(compared):
    """Every run trains the head at the same lr (LoRA's base lr), whatever its lr_A."""
    out, _ = compared
    import yaml

    heads = {yaml.safe_load(p.read_text())["loraplus_lr_other"] for p in out.glob("*/*/config.yaml")}
    assert len(heads) == 1


@pytest.fixture(scope="module")
def swept(tmp_path_factory, bert_dir, sentiment):
    out = tmp_path_factory.mktemp("sweep")
    assert main(["sweep", "--model_name_or_path", bert_dir, "--train_file", sentiment["train"], "--output_dir",
                 str(out), "--lr", "1e-3,3e-3", "--ratio", "1,16", *BUDGET]) == 0
    return out


def test_sweep_heatmap_and_best(swept):
    """sweep runs one cell per (lr_A, ratio), writes the heatmap and names the best cell."""
    result = json.loads((swept / "sweep.json").read_text())
    assert len(result["cells"]) == 4 and result["best"] in result["cells"]
    assert (swept / "heatmap.png").stat().st_size > 0


def test_sweep_cell_value_is_the_last_evaluation(swept):
    """A cell's value is its run's metric at the last evaluation step, not the best over the run."""
    for cell in json.loads((swept / "sweep.json").read_text())["cells"]:
        run = swept / f"lr{cell['lr_A']:g}_ratio{cell['ratio']:g}"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        last = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r and r["step"] == 4]
        assert cell["value"] == last[0] and cell["best"] >= cell["value"]


def test_test_curves_hold_only_test_scores(compared):
    """A final run's curve is its periodic test evaluations, one point per eval step; the last equals the
    run's final test score (the validation score taken after training is not one more point)."""
    out, _ = compared
    arms = json.loads((out / "results.json").read_text())["arms"]
    for name, arm in arms.items():
        for seed, curve in arm["curves"].items():
            assert [step for step, _ in curve] == [2, 4]
            summary = json.loads((out / "final" / f"{name}_seed{seed}" / "summary.json").read_text())
            assert curve[-1][1] == pytest.approx(summary["test"]["test_accuracy"])


def test_compare_goes_on_past_a_diverging_tuning_run(tmp_path, bert_dir, sentiment, capsys):
    """A tuning lr that blows up is recorded as diverged (never chosen, not retried); compare still reports."""
    argv = ["compare", "--model_name_or_path", bert_dir, "--train_file", sentiment["train"],
            "--test_file", sentiment["test"], "--output_dir", str(tmp_path), "--lrs", "1e-3,1e30", "--seeds", "1",
            "--methods", "lora", *BUDGET]
    assert main(argv) == 0
    text = (tmp_path / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda name: pytest.fail(f"results.json holds {name}: not JSON"))
    arm = results["arms"]["lora"]
    assert arm["chosen_lr"] == 1e-3 and arm["validation_by_lr"]["1e+30"] is None  # NaN, written as null
    assert (tmp_path / "tune" / "lora_lr1e+30" / "diverged.json").is_file()


def test_compare_refuses_a_run_folder_made_with_other_settings(compared, capsys):
    """A finished run folder is reused only for the same settings: another lora_r is a one-line error."""
    _, argv = compared
    assert main([*argv, "--lora_r", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "other settings" in err and "lora_r" in err and len(err.splitlines()) == 1


def test_a_run_saved_before_a_new_key_is_reused_at_its_default(tmp_path):
    """A finished run whose config.yaml predates a key is the same run when the key is at its default."""
    import yaml

    from loraplus.train.config import TrainConfig
    from loraplus.train.runs import check_reusable

    cfg = TrainConfig(output_dir=str(tmp_path))
    saved = cfg.to_dict()
    del saved["length_micro_batch_cost"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    (tmp_path / "summary.json").write_text("{}")
    assert check_reusable(cfg)
    with pytest.raises(Exception, match="length_micro_batch_cost"):
        check_reusable(TrainConfig(output_dir=str(tmp_path), length_micro_batch_cost=7))


def test_speed_up_on_a_loss_counts_falling_below_lora_final():
    """For a metric where lower is better, 'reaches tuned LoRA's final' means at or below it."""
    from loraplus.experiments.compare import _speedups

    lora = {"final": [1.0, 1.0], "curves": {"1": [(10, 2.0), (20, 1.0)], "2": [(10, 2.0), (20, 1.0)]}}
    plus = {"final": [0.8, 0.8], "curves": {"1": [(10, 0.9), (20, 0.8)], "2": [(10, 1.0), (20, 0.8)]}}
    results = {"protocol": {"greater_is_better": False}, "arms": {"lora": lora, "loraplus_r16": plus}}
    _speedups(results)
    assert (lora["steps_to_lora_final"], plus["steps_to_lora_final"], plus["speedup_vs_lora"]) == (20, 10, 2.0)


def _arm(final, lr):
    return {"ratio": 1.0, "chosen_lr": lr, "final": final, "steps": [100], "curves": {}, "validation_by_lr": {},
            "steps_to_lora_final": None}


def _results(lora_final, plus_final, chosen=(1e-3, 1e-3), lrs=(3e-4, 1e-3, 3e-3)):
    return {"protocol": {"lrs": list(lrs), "greater_is_better": True},
            "arms": {"lora": _arm(lora_final, chosen[0]), "loraplus_r16": _arm(plus_final, chosen[1])}}


@pytest.mark.parametrize("lora_final, plus_final, verdict", [
    ([0.50, 0.51], [0.60, 0.61], "better than tuned LoRA beyond seed noise"),
    ([0.50, 0.51], [0.40, 0.41], "worse than tuned LoRA beyond seed noise"),
    ([0.48, 0.50], [0.47, 0.52], "not distinguishable from seed noise"),
    ([0.50], [0.60], "no noise estimate"),
])
def test_findings_rank_arms_only_beyond_seed_noise(lora_final, plus_final, verdict):
    """The report calls an arm better or worse only when the gap exceeds twice its standard error over seeds."""
    from loraplus.experiments.compare import findings

    (line,) = findings(_results(lora_final, plus_final))
    assert verdict in line


def test_findings_flag_a_chosen_lr_at_the_grid_edge():
    """An arm whose chosen lr is the grid's smallest or largest is flagged as possibly untuned."""
    from loraplus.experiments.compare import findings

    lines = findings(_results([0.5, 0.5], [0.5, 0.5], chosen=(3e-3, 1e-3)))
    assert any("lora: the chosen lr 0.003 is the largest" in line for line in lines)
    assert not any(line.startswith("- loraplus_r16: the chosen") for line in lines)


def test_findings_name_an_lr_that_tied_the_chosen_one_on_validation():
    """When another lr scored exactly the chosen lr's validation metric, the tie-break chose: the report says so."""
    from loraplus.experiments.compare import findings

    results = _results([0.5, 0.5], [0.5, 0.5])
    results["arms"]["lora"]["validation_by_lr"] = {"0.0003": 0.70, "0.001": 0.78, "0.003": 0.78}
    results["arms"]["loraplus_r16"]["validation_by_lr"] = {"0.0003": 0.70, "0.001": 0.78, "0.003": 0.7799}
    tied = [line for line in findings(results) if "tied" in line]
    assert len(tied) == 1 and tied[0].startswith("- lora: lr 0.003 tied the chosen 0.001")


@pytest.mark.parametrize("drops, stalled", [
    ({"1": 0.38, "2": 0.42, "3": 0.01}, ["3"]),   # one seed left at chance while the others learned
    ({"1": 0.28, "2": 0.17, "3": 0.27}, []),      # a slower seed still trained: seed noise, not a stall
    ({"1": 0.01, "2": 0.02}, []),                 # no seed trained: nothing to set a stall against
    ({"1": 0.01}, []),
])
def test_findings_flag_a_seed_that_barely_trained_beside_one_that_did(drops, stalled):
    """A final run whose training loss fell under a quarter of its arm's best seed's drop is named as stalled."""
    from loraplus.experiments.compare import findings

    results = _results([0.8, 0.8, 0.55], [0.8, 0.8, 0.8])
    results["arms"]["lora"]["loss_drop"] = drops
    named = [line.split()[3] for line in findings(results) if "stalled" in line]
    assert named == stalled


def test_a_stalled_lora_seed_is_said_to_lower_the_steps_target_of_every_arm():
    """LoRA's mean final is the target of every arm's steps-to-LoRA's-final, so its stalled seed moves them all."""
    from loraplus.experiments.compare import findings

    results = _results([0.8, 0.8, 0.55], [0.8, 0.8, 0.55])
    for arm in results["arms"].values():
        arm["loss_drop"] = {"1": 0.4, "2": 0.4, "3": 0.01}
    stalled = {line.split()[1]: line for line in findings(results) if "stalled" in line}
    assert sorted(stalled) == ["lora", "loraplus_r16"]
    assert "steps to tuned LoRA's final" in stalled["lora"]
    assert "steps to tuned LoRA's final" not in stalled["loraplus_r16"]


def test_loss_drop_reads_the_training_losses_only(tmp_path):
    """The drop is 1 - last / first logged training loss; evaluation records and a nan loss are skipped."""
    from loraplus.experiments.compare import _loss_drop, _records

    rows = [{"step": 1, "loss": 0.8}, {"step": 1, "test_loss": 0.1}, {"step": 2, "loss": float("nan")},
            {"step": 3, "loss": 0.6}, {"step": 3, "eval_loss": 5.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert _loss_drop(_records(str(tmp_path))) == pytest.approx(0.25)


def _has_riemannian() -> bool:
    try:
        from peft.optimizers import create_riemannian_optimizer  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def all_arms(tmp_path_factory, bert_dir, sentiment):
    """compare with every arm, each with a one-value grid of its own (lora's differs), one seed."""
    from loraplus.experiments.compare import ARMS

    methods = [m for m in ARMS if m != "riemannian" or _has_riemannian()]
    out = tmp_path_factory.mktemp("arms")
    argv = ["compare", "--model_name_or_path", bert_dir, "--train_file", sentiment["train"],
            "--test_file", sentiment["test"], "--output_dir", str(out), "--lrs", "1e-3", "--lrs_lora", "2e-3",
            "--seeds", "1", "--ratios", "8", "--ratios_loraplus_init2", "16", "--methods", ",".join(methods),
            "--tune_max_steps", "2",
            "--loraplus_lr_other", "5e-4", *BUDGET]
    assert main(argv) == 0
    return out, methods


def test_every_arm_runs_with_its_own_grid_and_is_recorded(all_arms):
    """Each arm tunes on its own grid and the report and results.json say its init, optimizer and variant."""
    out, methods = all_arms
    arms = json.loads((out / "results.json").read_text())["arms"]
    expected = {"loraplus": "loraplus_r8", "loraplus_init2": "loraplus_init2_r16"}
    expected = {expected.get(m, m) for m in methods}
    assert set(arms) == expected
    assert arms["lora"]["lrs"] == [2e-3] and arms["loraplus_r8"]["lrs"] == [1e-3]
    assert (arms["loraplus_init2_r16"]["init"], arms["loraplus_r8"]["init"]) == ("B", "A")
    assert arms["lorafa"]["optimizer"] == "lorafa" and arms["dora"]["variant"] == "dora"
    assert arms["rslora"]["variant"] == "rslora" and arms["lora"]["ratio"] == 1
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in expected)


def test_arms_differ_only_in_the_adapters_optimisation(all_arms):
    """The final runs' configs differ only in lr_A, the ratio, the init, the optimizer, the LoRA variant."""
    import yaml

    out, _ = all_arms
    configs = {p.parent.name: yaml.safe_load(p.read_text()) for p in (out / "final").glob("*/config.yaml")}
    adapter_keys = {"learning_rate", "loraplus_lr_ratio", "lora_init", "loraplus_optimizer", "use_rslora", "use_dora",
                    "output_dir"}
    reference = configs["lora_seed1"]
    assert len(configs) >= 6
    for name, config in configs.items():
        differ = {k for k in config.keys() | reference.keys() if config.get(k) != reference.get(k)}
        assert differ <= adapter_keys, (name, differ - adapter_keys)
        assert config["loraplus_lr_other"] == 5e-4  # the head trains at one lr in every arm
    assert configs["loraplus_init2_r16_seed1"]["lora_init"] == "B"
    assert configs["lorafa_seed1"]["loraplus_optimizer"] == "lorafa"


def test_tuning_runs_train_their_own_budget(all_arms):
    """--tune_max_steps: the tuning runs train that many steps, the final runs the config's max_steps."""
    out, _ = all_arms
    tuned = [json.loads(p.read_text())["global_step"] for p in (out / "tune").glob("*/summary.json")]
    finals = [json.loads(p.read_text())["global_step"] for p in (out / "final").glob("*/summary.json")]
    assert tuned and set(tuned) == {2} and finals and set(finals) == {4}
