"""The architecture's two rules (README, "Architecture"): imports only run down the layers, and the core works
with what `pip install loraplus` installs, without the cli extra."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def test_imports_run_down_the_layers_only():
    """cli > experiments > train > speed > core: import-linter's contracts in pyproject.toml are all kept."""
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                             "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def _install_closure(extras: tuple[str, ...] = ()) -> set[str]:
    """The distributions `pip install loraplus[extras]` brings: loraplus' requirements, followed recursively."""
    wanted, seen = [Requirement(r) for r in importlib.metadata.requires("loraplus")], set()
    while wanted:
        req = wanted.pop()
        environment = {"extra": ""}
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen or name == "loraplus":
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:  # an optional platform dependency not installed here
            continue
        wanted += [Requirement(r) for r in (dist.requires or [])
                   if Requirement(r).marker is None or Requirement(r).marker.evaluate(environment)]
    return seen


def _site(folder: Path, distributions) -> Path:
    """A site folder holding only these distributions (links into this environment's own), and loraplus' metadata."""
    site = folder
    for name in ["loraplus", *distributions]:
        dist = importlib.metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            if name == "loraplus" and not top.endswith(".dist-info"):  # the code comes from this repository
                continue
            source = Path(dist.locate_file(top))
            if top not in ("..", "__pycache__") and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return site


@pytest.fixture(scope="module")
def core_install(tmp_path_factory) -> Path:
    """What `pip install loraplus` installs."""
    return _site(tmp_path_factory.mktemp("core-site"), _install_closure())


def _run_isolated(site: Path, code: str) -> subprocess.CompletedProcess:
    """`code` in a Python that sees the core install and this repository, nothing else (-S: no site-packages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, cwd=REPO)


def test_core_install_leaves_out_the_application_packages(core_install):
    """The emulated install really lacks the cli extra (else the next test would prove nothing)."""
    for module in ("datasets", "sklearn", "matplotlib", "tensorboard", "gguf"):
        result = _run_isolated(core_install, f"import {module}")
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module


def test_core_install_builds_an_optimizer_and_the_cli_names_its_extra(core_install):
    """`pip install loraplus` alone: the core builds a LoRA+ optimizer, and `loraplus train` says in one line to
    install the cli extra (.ci/check_core_install.py, which `make check-core` runs in a real fresh install)."""
    script = (REPO / ".ci" / "check_core_install.py").read_text()
    result = _run_isolated(core_install, script)
    assert result.returncode == 0 and "core install ok" in result.stdout, result.stderr[-3000:]


def test_the_cli_runs_without_the_packages_one_feature_needs(tmp_path):
    """Without gguf (the smollm2-135m alias) and tensorboard (--report_to tensorboard) every other command still
    starts: the missing-extra line is not printed, the command's own error is (its config file is missing)."""
    from loraplus.cli import NEEDED_BY_ONE_FEATURE

    site = _site(tmp_path, _install_closure(("cli",)) - set(NEEDED_BY_ONE_FEATURE))
    result = _run_isolated(site, "import sys; from loraplus.cli import main; sys.exit(main(['sweep', 'config.yaml']))")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "loraplus[cli]" not in result.stderr and "config file not found" in result.stderr, result.stderr[-3000:]
