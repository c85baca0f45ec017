"""The long evidence scripts resume on any checkout from the runs kept in results/ (benchmarks/kept_runs.sh)."""

import os
import subprocess
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parents[1] / "benchmarks" / "kept_runs.sh"


def _shell(checkout, script, **env):
    """Run SCRIPT in bash inside CHECKOUT with the helpers sourced; FRESH only when the test sets it, never
    inherited from the shell that runs the tests."""
    inherited = {k: v for k, v in os.environ.items() if k != "FRESH"}
    subprocess.run(["bash", "-c", f'set -euo pipefail; . "{HELPERS}"; {script}'], cwd=checkout, check=True,
                   env={**inherited, **env})


def _finished_run(run_dir, checkout):
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"train_file: {checkout}/data/train.jsonl\n"
                                         f"model_name_or_path: {checkout.parent}/models/m\n")
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (run_dir / "adapter_model.safetensors").write_bytes(b"weights")


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "work" / "repo"
    root.mkdir(parents=True)
    return root


def test_a_finished_run_is_kept_without_weights_and_with_paths_named_from_the_checkout(checkout):
    _finished_run(checkout / "runs" / "final" / "lora_seed1", checkout)
    (checkout / "runs" / "final" / "lora_seed2").mkdir()  # unfinished: no summary.json yet
    _shell(checkout, "keep_runs runs kept")
    kept = checkout / "kept" / "final"
    assert sorted(p.name for p in kept.iterdir()) == ["lora_seed1"]
    assert sorted(p.name for p in (kept / "lora_seed1").iterdir()) == ["config.yaml", "metrics.jsonl",
                                                                        "summary.json"]
    config = (kept / "lora_seed1" / "config.yaml").read_text()
    assert config == "train_file: ./data/train.jsonl\nmodel_name_or_path: ../models/m\n"


def test_kept_runs_come_back_on_a_fresh_checkout_without_replacing_a_local_finished_run(checkout):
    _finished_run(checkout / "kept" / "tune" / "lora_lr0.001", checkout)
    _finished_run(checkout / "kept" / "tune" / "lora_lr0.003", checkout)
    local = checkout / "runs" / "tune" / "lora_lr0.003"
    _finished_run(local, checkout)
    (local / "summary.json").write_text('{"local": true}')
    _shell(checkout, "start_runs runs kept")
    assert (checkout / "runs" / "tune" / "lora_lr0.001" / "summary.json").read_text() == "{}"
    assert (local / "summary.json").read_text() == '{"local": true}'


def test_fresh_starts_over_from_no_runs_at_all(checkout):
    _finished_run(checkout / "kept" / "tune" / "lora_lr0.001", checkout)
    _finished_run(checkout / "runs" / "final" / "lora_seed1", checkout)
    _shell(checkout, "start_runs runs kept", FRESH="1")
    assert not (checkout / "runs").exists() and not (checkout / "kept").exists()
