"""The file system a user points us at: checked before a run writes, written atomically, errors in one line.

A full disk, a read-only folder or an output path below a regular file are user errors like a wrong
column: `os_error_line` turns each into one line naming the path and the fix (the CLI prints it and
exits 2), and `check_writable` finds most of them before anything is written, so a refused run leaves
nothing behind that would block the corrected rerun. Light: no torch or transformers at import.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path

from loraplus.core.errors import LoraPlusError

# errno -> what to do about it; the message names the path and the error itself
_FIXES = {
    errno.ENOSPC: "free space on that disk, or choose a folder on another one",
    errno.EDQUOT: "free space within your quota, or choose a folder on another disk",
    errno.EFBIG: "a file size limit (ulimit -f) stops the write; raise it or choose another disk",
    errno.EACCES: "you may not write there; choose a folder you can write to",
    errno.EPERM: "you may not write there; choose a folder you can write to",
    errno.EROFS: "that file system is read-only; choose a folder on a writable one",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "that path is a folder, not a file; give a file path",
    errno.ENOENT: "it does not exist; check the path",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
}


def os_error_line(error: OSError) -> str:
    """One line for an OS error: the path, the system's reason, and what to do."""
    where = error.filename if error.filename is not None else ""
    reason = error.strerror or type(error).__name__
    fix = _FIXES.get(error.errno, "fix the file system problem and rerun")
    return f"{where}: {reason}; {fix}" if where else f"{reason}; {fix}"


def as_os_error(error: BaseException) -> OSError | None:
    """`error` as an OSError, if it is one: Python's own, or one the Rust writers of tokenizers and safetensors
    raise as a plain exception whose message ends in "(os error N)"; else None."""
    if isinstance(error, OSError):
        return error
    found = re.search(r"\(os error (\d+)\)", str(error))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def umask_mode(directory: bool = False) -> int:
    """The mode the umask gives a new file (0o666 masked) or folder (0o777 masked)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def follow_umask(paths) -> None:
    """Give files the mode the umask gives: safetensors writes its files private (0o600) whatever the umask."""
    mode = umask_mode()
    for path in paths:
        path = Path(path)
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def check_writable(path: str | os.PathLike, what: str = "output_dir") -> None:
    """Refuse a path we could not create or write, before anything is written anywhere.

    The nearest existing ancestor must be a folder we may write into (a regular file there, a read-only
    mount or a folder without write permission ends the run here, not halfway through its first save).
    """
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LoraPlusError(f"{what} {path} lies below {existing}, which is a file, not a folder; "
                            "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "is on a read-only file system" if _read_only_mount(existing) else "is not writable by you"
        raise LoraPlusError(f"{what} {path}: {existing} {reason}; choose a folder you can write to")


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on this platform
        return False


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half of one.

    The temporary file is opened with open(), not mkstemp, so the result follows the umask as any other
    file the run writes; on failure (a full disk) it is removed and the old file stays.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def finite_or_null(value):
    """`value` with every NaN / Inf float replaced by None, so that it serialises as valid JSON (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def json_text(value, indent: int | None = 1) -> str:
    """Strict JSON (non-finite floats as null; other non-JSON values as their str)."""
    return json.dumps(finite_or_null(value), indent=indent, allow_nan=False, default=str)


def write_json(path: str | os.PathLike, value, indent: int | None = 1) -> None:
    """Write `value` as strict JSON, atomically (a reader sees the old file or the new one, never half of one)."""
    write_text_atomic(path, json_text(value, indent) + "\n")


def read_jsonl(path) -> list[dict]:
    """The records of a JSON Lines file; a torn last line (a run still writing) is skipped."""
    lines = Path(path).read_text().splitlines()
    records = [json.loads(line) for line in lines[:-1] if line.strip()]
    try:
        return records + ([json.loads(lines[-1])] if lines and lines[-1].strip() else [])
    except json.JSONDecodeError:
        return records
