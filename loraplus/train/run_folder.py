"""A run's folder before and around training: refused when it holds something else, cleared when a run stopped
before its first checkpoint, a resume checked against the checkpoint's settings and data, and a failed run
leaving nothing that would block the corrected rerun."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from loraplus.core.errors import LoraPlusError
from loraplus.train.config import RESUME_FREE_KEYS, TrainConfig, changed_settings, describe_changes
from loraplus.train.files import as_os_error, check_writable, os_error_line

logger = logging.getLogger("loraplus")


RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "learning_curves.png", "labels.json",
             "adapter_config.json", "adapter_model.safetensors", "feature_learning.jsonl", "feature_learning.png",
             "training_args.bin")


CONFIG_HEADER = "# resolved config of a run"  # first line of the config.yaml a run writes (TrainConfig.save)


# What a run has written before its first checkpoint: the Trainer's TensorBoard logs go to runs/.
STARTED_RUN_FILES = ("config.yaml", "metrics.jsonl", "runs", "diverged.json")


def check_output_dir(cfg: TrainConfig) -> str | None:
    """Refuse an output_dir holding another run; return the checkpoint to resume from, if any."""
    out = Path(cfg.output_dir)
    check_writable(out)
    resume = cfg.resume_from_checkpoint
    if resume:
        # Checkpoints are validated, not just found: a save cut short by a crash leaves a folder that
        # looks complete (reliability.py). Under torchrun every rank runs this; rank 0 alone warns.
        from loraplus.train.distributed import is_writer
        from loraplus.train.reliability import MARKER, NO_MARKER, check_checkpoint, latest_valid_checkpoint

        if resume == "latest":
            found, skipped = latest_valid_checkpoint(out)
            for folder, why in skipped if is_writer() else ():
                logger.warning("skipping %s: %s", folder, why)
            if found is None and skipped:
                oldest, why = skipped[-1]
                raise LoraPlusError(f"--resume_from_checkpoint latest: no checkpoint in {out} is usable (oldest, "
                                    f"{oldest.name}: {why}); start afresh with --overwrite_output_dir")
            if found is None:
                raise LoraPlusError(f"--resume_from_checkpoint latest: no checkpoint-* folder in {out}; "
                                    "train without it to start a fresh run")
            return str(found)
        if not Path(resume).is_dir():
            raise LoraPlusError(f"checkpoint folder {resume} does not exist; give a checkpoint-N folder or 'latest'")
        why = check_checkpoint(resume, require_marker=False)
        if why:
            raise LoraPlusError(f"cannot resume from {resume}: {why}; give an earlier checkpoint-N folder or 'latest'")
        if not (Path(resume) / MARKER).is_file() and is_writer():
            logger.warning("%s has %s; its files look whole, so resuming from it as asked", resume, NO_MARKER)
        return resume
    if out.exists() and not out.is_dir():
        raise LoraPlusError(f"output_dir {out} is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite_output_dir:
        if stopped_before_first_checkpoint(out):  # nothing to resume or lose: the rerun replaces it
            from loraplus.train.distributed import is_writer

            if is_writer():
                logger.warning("%s holds a run that stopped before its first checkpoint; starting it afresh", out)
            return None
        held = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise LoraPlusError(f"output_dir {out} already holds files ({held}); pass --overwrite_output_dir to "
                            "replace that run, --resume_from_checkpoint latest to continue it, or another --output_dir")
    return None


def stopped_before_first_checkpoint(out: Path) -> bool:
    """Whether `out` holds only what a run of ours writes before its first checkpoint (config.yaml, metrics,
    TensorBoard logs, a divergence record): a run that failed or was killed with nothing to resume."""
    names = {p.name for p in out.iterdir()}
    if "config.yaml" not in names or not names <= set(STARTED_RUN_FILES):
        return False
    with open(out / "config.yaml", encoding="utf-8", errors="replace") as f:  # ours, not a user's own config
        return f.readline().startswith(CONFIG_HEADER)


def clear_run(out: Path) -> None:
    """Remove what an earlier run of ours left (never anything else in the folder)."""
    for name in RUN_FILES + STARTED_RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for old in out.glob("checkpoint-*"):
        shutil.rmtree(old, ignore_errors=True)


def check_resume_matches(cfg: TrainConfig, resume: str, fingerprint: dict) -> None:
    """Refuse to resume a checkpoint with settings or data other than those it was trained with.

    Resuming restores the checkpoint's optimizer, scheduler and data position: a new learning rate,
    max_steps or training file would be written into config.yaml while training followed the old ones.
    The checkpoint's marker records what trained it; an older checkpoint without that record is
    compared with the run's config.yaml.
    """
    import yaml

    from loraplus.train.reliability import checkpoint_run_record

    record = checkpoint_run_record(resume)
    if record is not None:
        saved, saved_data = record.get("settings", {}), record.get("data")
    else:
        config_file = Path(cfg.output_dir) / "config.yaml"
        saved = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
        saved_data = None
        if saved is None:
            return  # a checkpoint from elsewhere, without a record: nothing to compare with
    changes = changed_settings(saved, cfg, RESUME_FREE_KEYS)
    if changes:
        raise LoraPlusError(f"{resume} was trained with other settings ({describe_changes(changes)}); resume with "
                            "the run's own settings (its config.yaml), or start a new run in another --output_dir")
    if saved_data is not None and saved_data != fingerprint:
        edited = sorted(k for k in fingerprint.keys() | saved_data.keys() if fingerprint.get(k) != saved_data.get(k))
        raise LoraPlusError(f"{resume} was trained on other data ({', '.join(edited)} changed since); resume "
                            "with the same files, or start a new run in another --output_dir")


class failures_leave_nothing_to_block:  # noqa: N801 - used as a context manager, named for what it ensures
    """A run that fails before its first checkpoint leaves nothing behind (the rerun starts cleanly); one
    that fails later keeps its checkpoints, and says so. An OS error (full disk, permissions) becomes one
    line naming the path, what to do, and what was kept. A NaN/Inf stop keeps its record (metrics.jsonl,
    diverged.json) for the reader; the next run replaces it (`stopped_before_first_checkpoint`)."""

    def __init__(self, out: Path, args):
        self.out, self.args = out, args
        self.created = not out.exists()
        self.before = {p.name for p in out.iterdir()} if out.is_dir() else set()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        from loraplus.train.guard import NonFiniteGradientError
        from loraplus.train.distributed import is_writer
        from loraplus.train.reliability import latest_valid_checkpoint

        if error is None or isinstance(error, NonFiniteGradientError):
            return False
        kept, _ = latest_valid_checkpoint(self.out)
        if kept is None and is_writer():
            self._remove_what_this_run_wrote()
        os_error = as_os_error(error)
        if os_error is not None:
            if os_error.filename is None:  # the Rust writers do not say which file: the run's folder, then
                os_error.filename = str(self.out)
            what = (f"{kept.name} is kept: fix that, then continue with --resume_from_checkpoint latest"
                    if kept is not None else "nothing of this run was kept")
            raise LoraPlusError(f"{os_error_line(os_error)}; {what}") from error
        return False

    def _remove_what_this_run_wrote(self) -> None:
        if not self.out.is_dir():
            return
        for path in self.out.iterdir():
            if path.name in self.before and path.name not in RUN_FILES + STARTED_RUN_FILES:
                continue  # not ours, or there before the run: never touched
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if self.created and not any(self.out.iterdir()):
            self.out.rmdir()
