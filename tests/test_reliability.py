"""Crash-safe resume (kill -9, then `--resume_from_checkpoint latest`), checkpoint validation, safe loading
and the NaN guard, through the `loraplus train` command on a tiny local BERT (dropout on, default
batching: random batches run as length-sorted micro-batches)."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_bert, write_sentiment_csvs
from safetensors.torch import load_file

from loraplus.cli import main
from loraplus.train.reliability import MARKER, NO_MARKER, check_checkpoint, latest_valid_checkpoint, mark_complete

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 12  # 32 examples / batch 8 = 4 steps per epoch: kills land in epochs 0, 1 and 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny BERT (hidden and attention dropout 0.1) and sentiment CSVs whose texts differ in length."""
    from loraplus.train.models import load_tokenizer, resolve_model

    root = tmp_path_factory.mktemp("reliability")
    tokenizer = load_tokenizer(resolve_model("minilm"))
    save_tiny_bert(root / "bert", tokenizer)
    write_sentiment_csvs(root)
    return root


def train_args(root, out, *extra):
    """`loraplus train` flags: eval and save every 2 steps, LoRA dropout 0.1, default batching."""
    return ["--model_name_or_path", str(root / "bert"), "--train_file", str(root / "train.csv"),
            "--validation_file", str(root / "dev.csv"), "--output_dir", str(out), "--max_steps", str(MAX_STEPS),
            "--eval_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "8",
            "--learning_rate", "1e-2", "--lora_dropout", "0.1", "--report_to", "none", *extra]


def launch(root, out, *extra):
    """Start `python -m loraplus.cli train ...` in a child process (stdout + stderr to a log file)."""
    log = open(out.parent / f"{out.name}-{time.monotonic_ns()}.log", "w+")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "loraplus.cli", "train", *train_args(root, out, *extra)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root), log


def read_log(log) -> str:
    log.seek(0)
    return log.read()


def max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


@pytest.fixture(scope="module")
def reference(setup):
    """The uninterrupted run."""
    out = setup / "reference"
    proc, log = launch(setup, out)
    assert proc.wait(timeout=300) == 0, read_log(log)[-3000:]
    log.close()
    return out


def _step(folder: Path) -> int:
    return int(folder.name.split("-")[1])


def logged(out, step, key):
    """Whether metrics.jsonl holds a record of `step` with `key`."""
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return any(f'"step": {step},' in line and f'"{key}"' in line for line in lines)


# Kill k: wait for checkpoint-N (written by this child: absent at launch, but for kill 4, whose damaged
# checkpoint-8 the child removes and writes again), then for the condition, then sleep, then SIGKILL.
# Steps 1-4 are epoch 0, 5-8 epoch 1, 9-12 epoch 2.
KILLS = [
    (4, lambda out: True, lambda rng: 0.0),  # checkpoint-4 being written
    (6, lambda out: logged(out, 7, "loss"), lambda rng: rng.uniform(0, 0.01)),  # inside step 8
    (8, lambda out: (out / "checkpoint-8" / MARKER).exists(), lambda rng: 0.0),  # right after a complete save
    (8, lambda out: logged(out, 10, "eval_loss"), lambda rng: 0.0),  # between evaluation 10 and its save
    (12, lambda out: True, lambda rng: rng.uniform(0, 1.5)),  # last save, final evaluation, run folder
]


@pytest.fixture(scope="module")
def interrupted(setup):
    """The same run killed (SIGKILL) at the five KILLS points, resumed with `latest` after each.

    Before the fourth resume the newest complete checkpoint (8) has its adapter cut in half, so that
    resume must skip it and replay from the one before. Returns the folder, the logs, the damaged folder.
    """
    rng = random.Random(20240229)
    out = setup / "interrupted"
    logs, damaged = [], None
    for attempt in range(len(KILLS) + 1):
        if attempt == 3:
            damaged, _ = latest_valid_checkpoint(out)
            assert damaged.name == "checkpoint-8"
            adapter = damaged / "adapter_model.safetensors"
            adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
        proc, log = launch(setup, out, *(["--resume_from_checkpoint", "latest"] if attempt else []))
        if attempt < len(KILLS):
            step, condition, delay = KILLS[attempt]
            assert attempt == 3 or not (out / f"checkpoint-{step}").exists(), f"kill {attempt} came too late"
            while proc.poll() is None and not ((out / f"checkpoint-{step}").exists() and condition(out)):
                time.sleep(0.005)
            time.sleep(delay(rng))
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=300)
        assert code in ((-signal.SIGKILL, 0) if attempt < len(KILLS) else (0,)), read_log(log)[-3000:]
        logs.append(read_log(log))
        log.close()
    return {"out": out, "logs": logs, "damaged": damaged}


def test_resume_after_kills_matches_uninterrupted_run(reference, interrupted):
    """Five kill -9s and resumes end with the adapter (final and at the last step) of the uninterrupted run."""
    out = interrupted["out"]
    assert (out / "summary.json").is_file()
    for name in ("adapter_model.safetensors", f"checkpoint-{MAX_STEPS}/adapter_model.safetensors"):
        assert max_diff(reference / name, out / name) == 0.0  # bit for bit, as the README says


def test_damaged_checkpoint_skipped_with_one_warning(interrupted):
    """A checkpoint whose adapter was cut in half is skipped with one warning naming it, and the earlier one used."""
    damaged, log = interrupted["damaged"], interrupted["logs"][3]
    lines = [line for line in log.splitlines() if line.startswith("skipping") and str(damaged) in line]
    assert len(lines) == 1 and "adapter_model.safetensors has" in lines[0], log[-3000:]


def test_metrics_hold_each_record_once(reference, interrupted):
    """read_metrics of the resumed run gives the uninterrupted run's records, each once, same values; the
    file itself lost nothing: each resume appended its resumed_from record after every line logged so far."""
    from loraplus.train.plots import read_metrics

    def records(run):
        # wall-clock fields differ; train_loss averages over the last train() call only (the Trainer's rule)
        return [{k: v for k, v in r.items() if "runtime" not in k and "per_second" not in k and k != "train_loss"}
                for r in read_metrics(run / "metrics.jsonl")]

    assert records(interrupted["out"]) == records(reference)
    lines = (interrupted["out"] / "metrics.jsonl").read_text().splitlines()
    resumes = [json.loads(line) for line in lines if '"resumed_from"' in line]
    assert len(resumes) == len(KILLS)
    assert all(r["resumed_from"] == f"checkpoint-{r['step']}" for r in resumes)
    assert len(lines) > len((reference / "metrics.jsonl").read_text().splitlines()) + len(KILLS)


def damage_marker(folder):
    (folder / MARKER).unlink()


def damage_adapter(folder):
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def damage_header(folder):  # same size, so only parsing the header finds it
    path = folder / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[8] = ord("x")
    path.write_bytes(bytes(data))


def damage_optimizer(folder):  # same size, one byte flipped in the tensor data: the zip CRC finds it
    path = folder / "optimizer.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_state(folder):
    path = folder / "trainer_state.json"
    path.write_text("x" + path.read_text()[1:])


def remove_rng(folder):
    (folder / "rng_state.pth").unlink()


@pytest.mark.parametrize("damage,reason", [
    (damage_marker, NO_MARKER),
    (damage_adapter, "adapter_model.safetensors has 100 bytes"),
    (damage_header, "adapter_model.safetensors has an unreadable header"),
    (damage_optimizer, "optimizer.pt is damaged"),
    (damage_state, "trainer_state.json is unreadable"),
    (remove_rng, "rng_state.pth is missing"),
])
def test_check_checkpoint_names_the_damage(reference, tmp_path, damage, reason):
    """check_checkpoint passes a complete checkpoint and names what is wrong with a damaged one."""
    folder = tmp_path / f"checkpoint-{MAX_STEPS}"
    shutil.copytree(reference / f"checkpoint-{MAX_STEPS}", folder)
    assert check_checkpoint(folder) is None
    damage(folder)
    assert check_checkpoint(folder).startswith(reason)


def test_mark_complete_lists_every_file(tmp_path):
    """The marker lists every file of the folder with its size, and is the only new file."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("abc")
    (tmp_path / "sub" / "b.bin").write_bytes(b"12345")
    marker = mark_complete(tmp_path, 7)
    assert json.loads(marker.read_text()) == {"step": 7, "files": {"a.txt": 3, "sub/b.bin": 5}}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.txt", "sub", MARKER])


def test_latest_without_complete_checkpoint_exits_2(setup, reference, tmp_path, capsys):
    """`latest` with no complete checkpoint exits 2 with one line naming why; nothing is written."""
    out = tmp_path / "run"
    shutil.copytree(reference / f"checkpoint-{MAX_STEPS}", out / "checkpoint-4")  # wrong step: 12 inside
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["train", *train_args(setup, out, "--resume_from_checkpoint", "latest")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --resume_from_checkpoint latest: no checkpoint in")
    assert "trainer_state.json is for step 12" in err[-1]
    assert sorted(p.name for p in out.rglob("*")) == before


def test_explicit_damaged_checkpoint_exits_2(setup, reference, tmp_path, capsys):
    """An explicitly named damaged checkpoint is refused in one line (exit 2), not half-loaded."""
    folder = tmp_path / "run" / f"checkpoint-{MAX_STEPS}"
    shutil.copytree(reference / f"checkpoint-{MAX_STEPS}", folder)
    damage_optimizer(folder)
    assert main(["train", *train_args(setup, tmp_path / "run", "--resume_from_checkpoint", str(folder))]) == 2
    assert capsys.readouterr().err.strip().endswith("give an earlier checkpoint-N folder or 'latest'")


def test_pickle_weights_refused_by_cli(setup, tmp_path, capsys):
    """Only pytorch_model.bin in the model folder: refused without --allow_pickle, exit 2, one line, nothing written."""
    model = tmp_path / "pickled"
    shutil.copytree(setup / "bert", model)
    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(weights, model / "pytorch_model.bin")
    out = tmp_path / "out"
    args = train_args(setup, out)
    args[args.index("--model_name_or_path") + 1] = str(model)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow_pickle" in err[0] and not out.exists()


def test_yaml_tags_never_run(setup, tmp_path, capsys):
    """A config YAML with a python object tag is refused (safe_load) and its command never runs."""
    sentinel = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"learning_rate: !!python/object/apply:os.system ['touch {sentinel}']\n")
    assert main(["train", str(config), "--output_dir", str(tmp_path / "out")]) == 2
    assert not sentinel.exists() and capsys.readouterr().err.startswith("error: cannot parse")


def test_remote_code_never_runs(setup, tmp_path, capsys):
    """A model folder whose config points at its own Python code is refused; that code is never imported."""
    model = tmp_path / "remote"
    shutil.copytree(setup / "bert", model)
    sentinel = tmp_path / "imported"
    (model / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                               "AutoModelForSequenceClassification": "modeling_evil.EvilModel"})
    (model / "config.json").write_text(json.dumps(config))
    args = train_args(setup, tmp_path / "out")
    args[args.index("--model_name_or_path") + 1] = str(model)
    assert main(["train", *args]) == 2
    assert not sentinel.exists() and capsys.readouterr().err.startswith("error: ")


def test_diverging_run_exits_2_with_one_line(setup, tmp_path, capsys):
    """A run whose gradients turn NaN (lr 1e30) stops with exit 2 and the NaN guard's one line."""
    args = train_args(setup, tmp_path / "out", "--learning_rate", "1e30")
    args[args.index("--max_steps") + 1] = "6"
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.match(r"error: non-finite (loss|gradient) at step \d+", err[-1])


def test_json_files_stay_valid_json_with_non_finite_metrics(tmp_path):
    """A NaN or Inf metric is written as null, so summary.json (and every JSON file of a run) parses strictly."""
    from loraplus.train.files import write_json

    path = tmp_path / "summary.json"
    write_json(path, {"train_loss": float("nan"), "validation": {"eval_loss": float("inf")},
                      "steps": [1, float("-inf")]})
    strict = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert strict == {"train_loss": None, "validation": {"eval_loss": None}, "steps": [1, None]}
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary file left
