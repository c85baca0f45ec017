"""Install into TARGET the carried wheels that this machine's Python lacks, offline; pip chooses which.

python3 benchmarks/gpu/install_wheels.py WHEELS TARGET [REQUIREMENT ...]   (default: datasets deepspeed)

`pip install --target` ignores what is already installed, so pip is first asked to resolve the requirements
against this environment (`--dry-run --report`, nothing but WHEELS as an index): it picks only what is
missing or too old, and between two carried releases (datasets 5.2 / 4.8) the one the installed packages
allow. Those wheels then go into TARGET with --no-deps. loraplus goes in without its dependencies (gguf
is needed only for the smollm2-135m alias). If pip cannot resolve, every carried distribution not installed
here goes in, newest release of each, and the import check that follows says what is still wrong.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse


def dist_name(wheel: Path) -> str:
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


def wheel_version(wheel: Path):
    from packaging.version import Version

    return Version(wheel.name.split("-")[1])


def installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def resolved_by_pip(wheels: Path, requirements: list[str]) -> list[Path] | None:
    """The carried wheels pip would install here for `requirements`, or None when it cannot resolve."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index",
                               "--disable-pip-version-check", "--find-links", str(wheels), "--report", str(report),
                               *requirements], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"pip could not resolve {' '.join(requirements)} here:\n{done.stderr.strip()[-1500:]}")
            return None
        chosen = json.loads(report.read_text()).get("install", [])
    return [Path(unquote(urlparse(item["download_info"]["url"]).path)) for item in chosen]


def newest_missing(wheels: Path) -> list[Path]:
    """Fallback: the newest carried release of each distribution that is not installed."""
    newest: dict[str, Path] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        name = dist_name(wheel)
        if name != "loraplus" and not installed(name):
            if name not in newest or wheel_version(wheel) > wheel_version(newest[name]):
                newest[name] = wheel
    return list(newest.values())


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.splitlines()[2])
        return 2
    wheels, target = Path(argv[0]).resolve(), Path(argv[1])
    requirements = argv[2:] or ["datasets", "deepspeed"]
    chosen = resolved_by_pip(wheels, requirements)
    if chosen is None:
        chosen = newest_missing(wheels)
    chosen += sorted(wheels.glob("loraplus-*.whl"))
    for wheel in chosen:
        print(f"installing {wheel.name}")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(target),
                           *map(str, chosen)])
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
