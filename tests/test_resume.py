"""Resumes tell the truth: other settings or data are refused, a finished run trains nothing, Ctrl-C names the
resume command, and metrics.jsonl keeps every line it ever held."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import save_tiny_bert, write_sentiment_csvs

from loraplus.cli import main
from loraplus.train.plots import read_metrics

MAX_STEPS = 5  # 3 steps per epoch: the last checkpoint falls mid-epoch


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tokenizer):
    """A finished run of 5 steps (3 per epoch), checkpoints at steps 2, 4 and 5 (all kept)."""
    root = tmp_path_factory.mktemp("resume")
    save_tiny_bert(root / "bert", tokenizer)
    write_sentiment_csvs(root, sizes=(("train", 24), ("dev", 8)))
    out = root / "run"
    assert main(args(root, out)) == 0
    return root, out


def args(root, out, *extra, train="train.csv"):
    return ["train", "--model_name_or_path", str(root / "bert"), "--train_file", str(root / train),
            "--validation_file", str(root / "dev.csv"), "--output_dir", str(out), "--max_steps", str(MAX_STEPS),
            "--eval_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "8",
            "--save_total_limit", "10", "--report_to", "none", *extra]


def copy_run(finished, name, *, drop=("summary.json",), keep_up_to=MAX_STEPS):
    """A copy of the finished run as a crash would have left it: without `drop`, checkpoints after keep_up_to."""
    root, out = finished
    copy = root / name
    shutil.copytree(out, copy)
    for n in drop:
        (copy / n).unlink()
    for ckpt in copy.glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > keep_up_to:
            shutil.rmtree(ckpt)
    return copy


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("change, needle", [(["--learning_rate", "3e-3"], "learning_rate"),
                                            (["--max_steps", "8"], "max_steps"),
                                            (["--loraplus_lr_ratio", "4"], "loraplus_lr_ratio")])
def test_resume_with_other_settings_is_refused(finished, capsys, change, needle):
    """Resuming with a setting the checkpoint did not train with: one line naming it, and nothing changed."""
    run = copy_run(finished, f"other-{needle}", keep_up_to=4)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main([*args(*finished[:1], run), "--resume_from_checkpoint", "latest", *change]) == 2
    line = one_error_line(capsys)
    assert "checkpoint-4 was trained with other settings" in line and needle in line, line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_on_edited_data_is_refused(finished, capsys):
    """The same settings on a training file whose content changed since the checkpoint: refused."""
    root, _ = finished
    run = copy_run(finished, "edited-data", keep_up_to=4)
    edited = root / "train-edited.csv"
    edited.write_text((root / "train.csv").read_text().replace("negative", "positive", 1))
    saved = (root / "train.csv").read_bytes()
    shutil.copy(edited, root / "train.csv")
    try:
        assert main([*args(root, run), "--resume_from_checkpoint", "latest"]) == 2
    finally:
        (root / "train.csv").write_bytes(saved)
    assert "other data (train_file changed" in one_error_line(capsys)


def test_resuming_a_finished_run_trains_nothing(finished, caplog):
    """A finished run resumed: no step, and not a byte of its folder changed."""
    root, out = finished
    files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main([*args(root, out), "--resume_from_checkpoint", "latest"]) == 0
    assert "finished run; nothing to resume" in caplog.text
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_resume_from_the_final_checkpoint_takes_no_extra_step(finished):
    """Killed after its last checkpoint (step 5, mid-epoch: transformers alone would train step 6), the resumed
    run ends at max_steps with the same adapter."""
    from safetensors.torch import load_file

    root, out = finished
    run = copy_run(finished, "final-checkpoint", drop=("summary.json", "adapter_model.safetensors"))
    assert main([*args(root, run), "--resume_from_checkpoint", "latest"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == MAX_STEPS and summary["resumed_from"] == f"checkpoint-{MAX_STEPS}"
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) == MAX_STEPS
    a, b = load_file(out / "adapter_model.safetensors"), load_file(run / "adapter_model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)


def test_resume_keeps_every_metrics_line_and_reads_the_replayed_history(finished):
    """Resuming from checkpoint-2 of a run that logged up to step 5: the old lines stay, byte for byte, a
    resumed_from record follows, and read_metrics gives the steps once each, as an uninterrupted run logs them."""
    root, out = finished
    run = copy_run(finished, "from-two", keep_up_to=2)
    old = (run / "metrics.jsonl").read_text()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a line a crash tore in half
    assert main([*args(root, run), "--resume_from_checkpoint", "latest"]) == 0
    text = (run / "metrics.jsonl").read_text()
    assert text.startswith(old + '{"step": 7, "lo\n{"step": 2, "resumed_from": "checkpoint-2"}\n')
    replayed, reference = read_metrics(run / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    key = lambda r: (r["step"], "loss" in r, "eval_loss" in r)  # noqa: E731
    assert sorted(map(key, replayed)) == sorted(map(key, reference))
    # wall-clock fields differ; train_loss averages over the last train() call only (the Trainer's rule)
    drop = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "eval_runtime",
            "eval_samples_per_second", "eval_steps_per_second", "train_loss")
    clean = lambda rs: sorted(({k: v for k, v in r.items() if k not in drop} for r in rs), key=key)  # noqa: E731
    assert clean(replayed) == clean(reference)


def test_ctrl_c_prints_the_resume_command(finished, capsys, monkeypatch):
    """Ctrl-C after a checkpoint: exit 130 and the command that continues the run; running it finishes the
    run at the uninterrupted run's adapter."""
    import shlex

    from safetensors.torch import load_file

    from loraplus.train.run_trainer import RunTrainer

    root, out = finished
    run = root / "ctrl-c"
    real_step = RunTrainer.training_step

    def interrupted_at_step_4(self, *a, **k):
        if self.state.global_step == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(RunTrainer, "training_step", interrupted_at_step_4)
    assert main(args(root, run)) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "checkpoint-2 is kept, continue with: loraplus train " in err, err
    monkeypatch.undo()
    command = shlex.split(err.split("continue with: ", 1)[1])
    assert command[:2] == ["loraplus", "train"] and command[-2:] == ["--resume_from_checkpoint", "latest"]
    assert main(command[1:]) == 0
    a, b = load_file(out / "adapter_model.safetensors"), load_file(run / "adapter_model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    assert Path(run / "summary.json").is_file()
