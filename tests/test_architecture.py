"""The architecture's two rules (README, "Architecture"): imports only run down the layers, and the core works
with what `pip install loraplus` installs, without the cli extra."""

import importlib.metadata
import os
import subprocess
import sys
import textwrap
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


@pytest.fixture(scope="module")
def core_install(tmp_path_factory) -> Path:
    """A site folder holding only the core install's distributions (links into this environment's own)."""
    site = tmp_path_factory.mktemp("core-site")
    for name in ["loraplus", *_install_closure()]:
        dist = importlib.metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            if name == "loraplus" and not top.endswith(".dist-info"):  # the code comes from this repository
                continue
            source = Path(dist.locate_file(top))
            if top not in ("..", "__pycache__") and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return site


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


def test_core_builds_an_optimizer_without_the_cli_extra(core_install):
    """`pip install loraplus` alone: the core and its Trainer import and build a LoRA+ optimizer."""
    result = _run_isolated(core_install, textwrap.dedent("""
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import BertConfig, BertForSequenceClassification

        import loraplus

        base = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                        num_attention_heads=2, intermediate_size=32))
        model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"]))
        optimizer = loraplus.create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=8)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        assert lrs["lora_B"] == 8 * lrs["lora_A"], lrs
        assert loraplus.LoraPlusTrainer and loraplus.LoraPlusTrainingArguments
        print("core ok")
    """))
    assert result.returncode == 0 and "core ok" in result.stdout, result.stderr[-3000:]


def test_cli_without_the_extra_names_it_in_one_line(core_install):
    """The `loraplus` command without the cli extra: exit 2 and one line saying what to install."""
    result = _run_isolated(core_install, "import sys; from loraplus.cli import main; sys.exit(main(['train']))")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "loraplus[cli]" in lines[0], result.stderr
