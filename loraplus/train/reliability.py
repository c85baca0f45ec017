"""Crash-safe checkpoints and exact resume: completion markers, checkpoint validation, one writer per run.

transformers' Trainer writes `checkpoint-N/` file by file, in place (`Trainer._save_checkpoint`), so a
`kill -9`, an OOM kill or a power cut during a save leaves a folder that looks like a checkpoint and is
not one; `get_last_checkpoint` would pick it. Here every checkpoint gets a marker written last (after
its files are fsynced, atomically: temp file + fsync + `os.replace`), listing each file with its size,
and `--resume_from_checkpoint latest` takes the newest checkpoint whose marker and files check out.

Exact resume also needs the same data order: `sampling.GlobalBatchSampler` seeds each epoch's order
from `(data_seed or seed) + epoch`, not from the global RNG that dropout draws from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

from transformers import TrainerCallback

from loraplus.train.distributed import is_writer, wait_for_everyone
from loraplus.train.files import follow_umask, json_text, write_text_atomic

MARKER = "loraplus_checkpoint_complete.json"
NO_MARKER = "no completion marker: its save was interrupted (or it predates loraplus' markers)"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR + "-N"


# -- completion markers ---------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(folder: str | os.PathLike, step: int, run: dict | None = None) -> Path:
    """Flush every file of `folder` to disk, then write its marker (file -> size) atomically, last.

    run: what trained the checkpoint (settings and data fingerprint), so a resume can refuse other ones.
    """
    folder = Path(folder)
    files = {}
    follow_umask(folder.rglob("*"))
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = path.stat().st_size
    for directory in {p.parent for p in folder.rglob("*")} | {folder}:
        _fsync(directory)  # the directory entries themselves, so no file vanishes after a power cut
    record = {"step": step, "files": files, **({"run": run} if run is not None else {})}
    write_text_atomic(folder / MARKER, json_text(record, indent=0))
    _fsync(folder)
    return folder / MARKER


class CheckpointCompleteCallback(TrainerCallback):
    """Write the completion marker into each checkpoint right after the Trainer has saved it (`on_save`).

    run: recorded in each marker (`checkpoint_run_record`): the settings and data the checkpoint trained on.
    """

    def __init__(self, run: dict | None = None):
        self.run = run

    def on_save(self, args, state, control, **kwargs):
        # Every rank writes its own part (rng_state_{rank}.pth; FSDP and DeepSpeed shards), so all of
        # them must be done before the one writer declares the checkpoint complete.
        wait_for_everyone(args)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if is_writer() and folder.is_dir():
            mark_complete(folder, state.global_step, self.run)
        return control


def checkpoint_run_record(folder: str | os.PathLike) -> dict | None:
    """The settings and data fingerprint a checkpoint's marker recorded, or None (no marker, or an older one)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        return None


# -- validation -------------------------------------------------------------------------------------------


def _check_safetensors(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (header, or data shorter than the header says), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"{path.name} is truncated"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return f"{path.name} has an unreadable header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return f"{path.name} is truncated" if 8 + n + end > size else None


def _check_torch_file(path: Path) -> str | None:
    """Why a torch.save file (a zip archive with a CRC per entry) is damaged, or None; nothing is unpickled."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        return f"{path.name} is truncated or not a torch file"
    return f"{path.name} is damaged ({bad} fails its CRC)" if bad else None


def check_checkpoint(folder: str | os.PathLike, *, require_marker: bool = True) -> str | None:
    """Why `folder` cannot be resumed from (one short phrase), or None when it is complete and readable.

    Complete: our marker is there, and every file it lists has the recorded size (require_marker=False
    accepts a folder without one, e.g. from a plain Trainer run, and checks the files it holds). Readable:
    trainer_state.json parses and names the folder's step, safetensors headers parse and cover their
    data, torch files pass their zip CRCs, and an optimizer state exists (else resume is not exact).
    """
    folder = Path(folder)
    try:
        listed = json.loads((folder / MARKER).read_text())["files"]
    except FileNotFoundError:
        if require_marker:
            return NO_MARKER
        listed = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    except (ValueError, KeyError, TypeError):
        return "its completion marker is unreadable"
    for name, size in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except ValueError:
        return "trainer_state.json is unreadable"
    match = _CHECKPOINT.match(folder.name)
    if match and state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json is for step {state.get('global_step')}"
    names = set(listed)
    if not any(n.endswith(".safetensors") or n.startswith(("pytorch_model", "global_step")) for n in names):
        return "it holds no model weights"
    # optimizer.pt (Trainer), optimizer_0/ (FSDP sharded), global_step*/ (DeepSpeed)
    if not any(n.startswith(("optimizer", "global_step")) for n in names):
        return "it holds no optimizer state (saved with save_only_model?)"
    for name in sorted(names):
        path = folder / name
        if path.parent != folder:
            continue  # shards of FSDP / DeepSpeed: size-checked above
        if name.endswith(".safetensors"):
            reason = _check_safetensors(path)
        elif name.endswith((".pt", ".pth", ".bin")):
            reason = _check_torch_file(path)
        else:
            continue
        if reason:
            return reason
    return None


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, newest (largest N) first."""
    out = Path(output_dir)
    found = [p for p in out.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)] if out.is_dir() else []
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), reverse=True)


def latest_valid_checkpoint(output_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest checkpoint that passes `check_checkpoint`, [(each newer one skipped, why)])."""
    skipped = []
    for folder in checkpoints(output_dir):
        reason = check_checkpoint(folder)
        if reason is None:
            return folder, skipped
        skipped.append((folder, reason))
    return None, skipped


def drop_newer_checkpoints(output_dir: str | os.PathLike, resume: str | os.PathLike) -> list[Path]:
    """Remove the invalid checkpoints of `output_dir` after `resume`: the resumed run writes them again, cleanly.

    Without this, a half-written checkpoint-N would receive the resumed run's files for step N on top
    of its own leftovers. Valid ones are kept (resuming an earlier checkpoint on purpose).
    """
    resume = Path(resume)
    match = _CHECKPOINT.match(resume.name)
    if match is None or resume.resolve().parent != Path(output_dir).resolve():
        return []
    removed = []
    for folder in checkpoints(output_dir):
        if int(_CHECKPOINT.match(folder.name).group(1)) > int(match.group(1)) and check_checkpoint(folder):
            (folder / MARKER).unlink(missing_ok=True)  # first: a deletion cut short leaves an unmarked folder
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
