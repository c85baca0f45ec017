"""OS errors a user can cause (a path below a file, a folder they may not write, a full disk, a missing
logger) end in one line and exit 2, and leave nothing behind that blocks the corrected rerun."""

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_bert, write_sentiment_csvs

from loraplus.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("os-errors")
    save_tiny_bert(root / "bert", tokenizer)
    write_sentiment_csvs(root)
    return root


def args(root, out, *extra):
    return ["train", "--model_name_or_path", str(root / "bert"), "--train_file", str(root / "train.csv"),
            "--validation_file", str(root / "dev.csv"), "--output_dir", str(out), "--max_steps", "4",
            "--eval_steps", "2", "--per_device_train_batch_size", "8", "--report_to", "none", *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_output_dir_below_a_file(setup, capsys):
    """An output_dir below a regular file is refused before anything is written."""
    (setup / "a-file").write_text("x")
    assert main(args(setup, setup / "a-file" / "run")) == 2
    assert "is a file, not a folder" in one_error_line(capsys)
    assert (setup / "a-file").read_text() == "x"


def test_output_dir_in_a_folder_without_write_permission(setup, capsys, monkeypatch):
    """A folder the user may not write into is refused in one line, and nothing is created in it."""
    locked = setup / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits: answer as the kernel would for anyone else
        real_access = os.access
        monkeypatch.setattr("loraplus.train.files.os.access",
                            lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    try:
        assert main(args(setup, locked / "run")) == 2
        assert "not writable" in one_error_line(capsys)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_missing_logger_refused_before_the_run_folder(setup, capsys):
    """--report_to naming a logger whose package is not installed: one line, and no run folder."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    missing = next(n for n in ("wandb", "neptune", "clearml", "comet_ml", "swanlab", "trackio")
                   if n in INTEGRATION_TO_CALLBACK and n not in get_available_reporting_integrations())
    out = setup / "with-logger"
    assert main([*args(setup, out)[:-2], "--report_to", missing]) == 2
    assert f"report_to '{missing}'" in one_error_line(capsys)
    assert not out.exists()


def _train_under_file_size_limit(root, out, limit_bytes):
    """`loraplus train` in a child whose files may not grow past limit_bytes: writes past it fail with EFBIG,
    as on a full disk (SIGXFSZ ignored, so the write fails instead of killing the process)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_DATASETS_CACHE": str(root / "datasets-cache")}  # a small cache, so only the run's files hit the limit
    cmd = [sys.executable, "-m", "loraplus.cli", *args(root, out, "--save_steps", "2")]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, preexec_fn=limit, timeout=300)


def test_full_disk_at_the_first_checkpoint_leaves_nothing(setup):
    """A write that fails at the first checkpoint (the tokenizer file is larger than the limit; tokenizers'
    Rust writer raises it as a plain exception saying "os error 27"): exit 2, one line naming the run folder
    and the limit, the run folder gone, and the same command then trains."""
    out = setup / "full-disk"
    size = (setup / "bert" / "tokenizer.json").stat().st_size
    done = _train_under_file_size_limit(setup, out, size // 2)
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error: ")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"{out}" in lines[0] and "ulimit -f" in lines[0] and "nothing of this run was kept" in lines[0], lines[0]
    assert not out.exists()
    assert main(args(setup, out)) == 0  # the rerun, with room to write
    assert (out / "summary.json").is_file()


def test_full_disk_after_a_checkpoint_keeps_it_and_says_how_to_resume(setup, capsys, monkeypatch):
    """An OS error once checkpoints exist: one line naming the file and the resume, the checkpoints kept, and
    the resume then finishes the run without training again."""
    import loraplus.train.pipeline

    out = setup / "full-disk-late"

    def full(out_dir, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out_dir) / "learning_curves.png"))

    monkeypatch.setattr(loraplus.train.pipeline, "_plot", full)
    assert main(args(setup, out)) == 2
    line = one_error_line(capsys)
    assert "learning_curves.png: No space left on device" in line and "--resume_from_checkpoint latest" in line
    assert (out / "checkpoint-4").is_dir() and not (out / "summary.json").exists()
    monkeypatch.undo()
    assert main(args(setup, out, "--resume_from_checkpoint", "latest")) == 0
    assert (out / "summary.json").is_file() and (out / "learning_curves.png").is_file()
    import json

    assert json.loads((out / "summary.json").read_text())["global_step"] == 4


def test_a_run_stopped_before_its_first_checkpoint_does_not_block_the_rerun(setup, capsys, monkeypatch):
    """A run killed before its first checkpoint leaves config.yaml and metrics.jsonl; the same command then
    starts afresh instead of refusing the folder. A folder holding anything else is still refused."""
    out = setup / "stopped-early"
    out.mkdir()
    assert main(args(setup, out, "--max_steps", "1")) == 0
    for name in list(out.iterdir()):  # what a kill -9 during step 1 leaves
        if name.name not in ("config.yaml", "metrics.jsonl"):
            import shutil

            shutil.rmtree(name) if name.is_dir() else name.unlink()
    assert main(args(setup, out)) == 0
    assert (out / "summary.json").is_file()
    mine = setup / "users-own"
    mine.mkdir()
    (mine / "config.yaml").write_text("learning_rate: 0.1\n")  # the user's config, not a run's
    assert main(args(setup, mine)) == 2
    assert "already holds files" in one_error_line(capsys)
    assert (mine / "config.yaml").read_text() == "learning_rate: 0.1\n"


def test_run_files_follow_the_umask(setup):
    """Every file and folder of a run, checkpoints and markers included, has the mode the umask gives."""
    out = setup / "umask"
    cmd = [sys.executable, "-m", "loraplus.cli", *args(setup, out, "--save_steps", "2")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=setup, timeout=300,
                          preexec_fn=lambda: os.umask(0o027))
    assert done.returncode == 0, done.stderr[-3000:]
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o750 if (out / name).is_dir() else 0o640)}
    assert "checkpoint-2/loraplus_checkpoint_complete.json" in modes and not wrong, wrong
