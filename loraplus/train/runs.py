"""Use a run folder: train it or reuse it when finished, reload base + adapter, score it, or merge it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

from loraplus.train.config import RUN_ONLY_KEYS, TrainConfig, changed_settings, parse_train_args
from loraplus.core.errors import LoraPlusError
from loraplus.train.distributed import has_cuda, is_writer
from loraplus.train.files import write_json

DIVERGED = "diverged.json"  # in a run folder: the run met a NaN/Inf gradient (its record, so it is not retried)


def run_cell(cfg: TrainConfig, *, role: str) -> dict:
    """One run of an experiment (compare, sweep, tune): reused when finished, recorded when it diverges.

    A folder holding a finished run made with other settings is refused (it is not this run). A run
    stopped by a NaN/Inf gradient is one diverged cell, not the end of the experiment: its summary has
    `"diverged"` (the reason) and no metrics, and is written to diverged.json so it is not retried.
    """
    from loraplus.train.guard import NonFiniteGradientError

    run = Path(cfg.output_dir)
    if check_reusable(cfg) and (run / DIVERGED).is_file():
        return json.loads((run / DIVERGED).read_text())
    start = time.perf_counter()
    try:
        return train_or_reuse(cfg, role=role)
    except NonFiniteGradientError as e:
        summary = {"metric": None, "global_step": e.step,  # the step it stopped at, computed but not applied
                   "validation": {}, "best_metric": None, "train_seconds": round(time.perf_counter() - start, 2),
                   "diverged": str(e)}
        if is_writer():
            write_json(run / DIVERGED, summary)
        return summary


def check_reusable(cfg: TrainConfig) -> bool:
    """Whether cfg's run folder holds a finished run; refuse one made with other settings (not the same run)."""
    run = Path(cfg.output_dir)
    if not (run / "summary.json").is_file() and not (run / DIVERGED).is_file():
        return False
    saved = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    differ = [key for key, _, _ in changed_settings(saved, cfg, RUN_ONLY_KEYS)]
    if differ:
        raise LoraPlusError(f"{run} holds a finished run with other settings ({', '.join(differ[:3])}); "
                            "use another --output_dir, or delete that folder to retrain it")
    return True


def train_or_reuse(cfg: TrainConfig, *, role: str) -> dict:
    """One training run, reused when its folder already holds a finished summary.json.

    role "tune": the test split is dropped (a run that helps choose hyperparameters); "final": it is
    evaluated on the test split while training; anything else: a plain `loraplus train` run. A folder
    with checkpoints but no summary resumes.
    """
    from loraplus.train.pipeline import train

    summary_file = Path(cfg.output_dir) / "summary.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    has_checkpoint = any(Path(cfg.output_dir).glob("checkpoint-*"))
    cfg = dataclasses.replace(cfg, overwrite_output_dir=True,
                              resume_from_checkpoint="latest" if has_checkpoint else None)
    return train(cfg, tuning=role == "tune", eval_on_test=role == "final")


def load_run_config(run_dir: str, overrides: list[str] = ()) -> tuple[TrainConfig, dict]:
    """The run's resolved config (with `--key value` overrides) and its labels.json content."""
    run = Path(run_dir)
    if not (run / "adapter_config.json").is_file() or not (run / "config.yaml").is_file():
        raise LoraPlusError(f"{run_dir} is not a finished loraplus run (no adapter_config.json / config.yaml); "
                            "give the output_dir of a completed `loraplus train`")
    cfg = parse_train_args([str(run / "config.yaml"), *overrides])
    labels_file = run / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.is_file() else {}
    return cfg, labels


def load_trained(run_dir: str, cfg: TrainConfig, labels: dict):
    """(PeftModel with the run's adapter on its base model, tokenizer), in eval mode."""
    from peft import PeftModel

    from loraplus.train.models import load_model, load_tokenizer, resolve_model

    tokenizer = load_tokenizer(run_dir)
    names = labels.get("label_names")
    regression = cfg.task == "classification" and not names
    base = load_model(resolve_model(cfg.model_name_or_path), task=cfg.task,
                      num_labels=len(names) if names else None,
                      id2label=dict(enumerate(names)) if names else None,
                      problem_type="regression" if regression else None, pad_token_id=tokenizer.pad_token_id,
                      allow_pickle=cfg.allow_pickle)
    model = PeftModel.from_pretrained(base, run_dir)
    return model.eval(), tokenizer


def evaluate_run(run_dir: str, overrides: list[str] = ()) -> dict:
    """Metrics of a trained adapter on the test split of its data (or of --test_file / the validation split)."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from loraplus.train.data import collator_for
    from loraplus.train.data import prepare_data
    from loraplus.train.evaluation import evaluation_for, score

    cfg, labels = load_run_config(run_dir, overrides)
    model, tokenizer = load_trained(run_dir, cfg, labels)
    # Scoring a given test file needs nothing else: not the training data, not the folder the run was made in.
    prepared = prepare_data(cfg, tokenizer, label_names=labels.get("label_names"), test_file_only=bool(cfg.test_file))
    if labels.get("label_words"):
        prepared.label_words = labels["label_words"]
    split = "test" if "test" in prepared.splits else "validation"
    evaluation = evaluation_for(cfg, prepared, tokenizer)
    # The Trainer only evaluates here: its output_dir is never written (a temporary folder, removed after).
    scratch = tempfile.mkdtemp(prefix="loraplus-eval-")
    args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=cfg.per_device_eval_batch_size,
                             report_to=[], use_cpu=not has_cuda())
    trainer = Trainer(model=model, args=args, data_collator=collator_for(cfg.task, tokenizer),
                      compute_metrics=evaluation.compute_metrics,
                      preprocess_logits_for_metrics=evaluation.preprocess_logits)
    for noisy in (PrinterCallback, ProgressCallback):  # the CLI prints the metrics once, itself
        trainer.remove_callback(noisy)
    try:
        metrics = score(cfg, model, tokenizer, prepared.splits[split], prepared, trainer, prefix=split)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    data = cfg.test_file if split == "test" and cfg.test_file else cfg.validation_file if split == "validation" \
        and cfg.validation_file else cfg.train_file or cfg.dataset_name
    result = {"split": split, "data": data, "examples": len(prepared.splits[split]), **metrics}
    _record_evaluation(Path(run_dir), result)
    return result


EVALUATIONS = "evaluations.jsonl"  # in a run folder: one line per `loraplus eval`, never rewritten


def _record_evaluation(run: Path, result: dict) -> None:
    """Append an evaluation to the run's evaluations.jsonl; a run folder we may not write keeps its printout."""
    import logging

    from loraplus.train.files import os_error_line
    from loraplus.train.files import json_text

    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    try:
        with open(run / EVALUATIONS, "a") as f:
            f.write(json_text(record, indent=None) + "\n")
    except OSError as e:
        logging.getLogger("loraplus").warning("metrics not recorded in %s (%s)", run / EVALUATIONS, os_error_line(e))


def merge_run(run_dir: str, out_dir: str) -> Path:
    """Write W0 + (alpha/r)·B·A merged into a plain model folder that AutoModel*.from_pretrained loads."""
    from loraplus.train.files import check_writable, follow_umask, umask_mode

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LoraPlusError(f"{out_dir} already holds files; choose an empty or new folder for the merged model")
    check_writable(out, "merge target")
    cfg, labels = load_run_config(run_dir)
    model, tokenizer = load_trained(run_dir, cfg, labels)
    merged = model.merge_and_unload()
    # Written beside the target, then renamed: a full disk halfway leaves no half model (a 0-byte config.json
    # would block the rerun and look like a model).
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tmp.chmod(umask_mode(directory=True))  # mkdtemp makes it private; the model folder follows the umask
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        follow_umask(tmp.rglob("*"))
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def run_log(path: Path):
    """Send one run's Trainer printout, info logs and library warnings to its train.log.

    The terminal keeps one line per run; loraplus warnings (a skipped checkpoint, ...) still reach stderr.
    """
    if is_writer():
        path.parent.mkdir(parents=True, exist_ok=True)
    else:  # every process prints the same: the writer's log is the run's
        path = Path(os.devnull)
    logger = logging.getLogger("loraplus")
    propagate = logger.propagate
    with open(path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), warnings.catch_warnings():
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: f.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        to_file, to_terminal = logging.StreamHandler(f), logging.StreamHandler(sys.stderr)
        to_terminal.setLevel(logging.WARNING)
        for handler in (to_file, to_terminal):
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.propagate = False
        try:
            yield
        finally:
            logger.propagate = propagate
            logger.removeHandler(to_file)
            logger.removeHandler(to_terminal)
