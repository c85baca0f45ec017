"""One finetuning run: config -> model + data -> LoRA+ Trainer -> adapter, metrics, summary, curves.

Everything a user can get wrong (config, output_dir, model path, data, columns, labels, target
modules) is checked before the output directory is touched, so a bad run writes nothing.
"""

from __future__ import annotations

import logging
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loraplus.core.errors import LoraPlusError
from loraplus.train.config import (RESUME_FREE_KEYS, TrainConfig, changed_settings, check_training_arguments,
                                   describe_changes, training_arguments_kwargs)
from loraplus.train.distributed import has_cuda
from loraplus.train.files import as_os_error, check_writable, follow_umask, os_error_line

logger = logging.getLogger("loraplus")

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "learning_curves.png", "labels.json",
             "adapter_config.json", "adapter_model.safetensors", "feature_learning.jsonl", "feature_learning.png",
             "training_args.bin")
CONFIG_HEADER = "# resolved config of a run"  # first line of the config.yaml a run writes (TrainConfig.save)
# What a run has written before its first checkpoint: the Trainer's TensorBoard logs go to runs/.
STARTED_RUN_FILES = ("config.yaml", "metrics.jsonl", "runs", "diverged.json")


@dataclass
class PreparedData:
    """Tokenised splits and what the task learned about its labels."""

    splits: object  # datasets.DatasetDict
    label_names: list[str] | None = None
    is_regression: bool = False
    label_words: list[str] | None = None


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


def _clear_run(out: Path) -> None:
    """Remove what an earlier run of ours left (never anything else in the folder)."""
    for name in RUN_FILES + STARTED_RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for old in out.glob("checkpoint-*"):
        shutil.rmtree(old, ignore_errors=True)


def prepare_data(cfg: TrainConfig, tokenizer, label_names: list[str] | None = None, *,
                 drop_test: bool = False, test_file_only: bool = False) -> PreparedData:
    """Load the splits named by `cfg` and tokenise them for its task (without the test split if drop_test).

    test_file_only: read cfg.test_file alone, as its only split, "test" (scoring a trained run with its
    label_names: the training data need not exist any more).
    """
    from datasets import DatasetDict

    from loraplus.train import data

    if test_file_only:
        test = data.load_file(cfg.test_file, "test", cfg.task == "causal_lm")
        if cfg.max_eval_samples:
            test = test.select(range(min(cfg.max_eval_samples, len(test))))
        splits = DatasetDict({"test": test})
    else:
        splits = data.load_splits(
        dataset_name=None if cfg.train_file else cfg.dataset_name, dataset_config_name=cfg.dataset_config_name,
        train_file=cfg.train_file, validation_file=cfg.validation_file, test_file=cfg.test_file,
        validation_split_ratio=cfg.validation_split_ratio, seed=cfg.seed,
        max_train_samples=cfg.max_train_samples, max_eval_samples=cfg.max_eval_samples,
        text_files=cfg.task == "causal_lm",
        )
    if drop_test:  # tuning runs: the test split is never tokenised, evaluated or seen
        splits.pop("test", None)
    common = dict(text_column=cfg.text_column, max_length=cfg.max_length)
    if cfg.task == "classification":
        tok, names, regression = data.prepare_classification(
            splits, tokenizer, text_pair_column=cfg.text_pair_column, label_column=cfg.label_column,
            label_names=label_names, **common)
        return PreparedData(tok, names, regression)
    if cfg.task == "label_words":
        tok, names, words = data.prepare_label_words(
            splits, tokenizer, text_pair_column=cfg.text_pair_column, label_column=cfg.label_column,
            label_words=cfg.label_words, prompt_template=cfg.prompt_template, label_names=label_names, **common)
        return PreparedData(tok, names, False, words)
    if cfg.task == "sft":
        return PreparedData(data.prepare_sft(splits, tokenizer, prompt_column=cfg.prompt_column,
                                             response_column=cfg.response_column,
                                             messages_column=cfg.messages_column, max_length=cfg.max_length))
    return PreparedData(data.prepare_causal_lm(splits, tokenizer, **common))


def build_model(cfg: TrainConfig, model_path: str, prepared: PreparedData, tokenizer):
    """The base model for the task with LoRA attached (PEFT)."""
    from loraplus.train.models import attach_lora, load_model, name_base_model

    id2label = dict(enumerate(prepared.label_names)) if prepared.label_names else None
    model = load_model(model_path, task=cfg.task, num_labels=len(id2label) if id2label else None,
                       id2label=id2label, problem_type="regression" if prepared.is_regression else None,
                       pad_token_id=tokenizer.pad_token_id, allow_pickle=cfg.allow_pickle)
    model = attach_lora(model, task=cfg.task, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        target_modules=cfg.lora_target_modules, use_dora=cfg.use_dora,
                        use_rslora=cfg.use_rslora, modules_to_save=cfg.modules_to_save, init=cfg.lora_init)
    name_base_model(model, cfg.model_name_or_path)  # the card names the model, not the folder it loaded from
    if cfg.fast_cpu_dropout:  # same dropout, cheaper masks on CPUs; GPUs keep torch's own (fast_dropout.py)
        from loraplus.speed.fast_dropout import use_cpu_dropout

        use_cpu_dropout(model.get_base_model())
    if cfg.packed_sequences:  # encoders only; other models keep micro-batches (packing.py, sampling.py)
        from loraplus.speed.packing import enable_packing

        enable_packing(model.get_base_model())
    return model


@dataclass
class Evaluation:
    """How the Trainer evaluates a task: its metric functions and the metric that picks the best checkpoint."""

    compute_metrics: object = None  # Trainer(compute_metrics=...); None: eval_loss only
    preprocess_logits: object = None  # Trainer(preprocess_logits_for_metrics=...)
    metric: str = "loss"
    greater_is_better: bool = False


def evaluation_for(cfg: TrainConfig, prepared: PreparedData, tokenizer) -> Evaluation:
    """Classification: accuracy (Pearson for regression). Label words: accuracy when each word is one token
    (scored in the Trainer's own evaluation), else eval loss. Language modelling: eval loss."""
    from loraplus.train.metrics import compute_metrics_for, label_word_eval_for, label_word_ids

    if cfg.task == "classification":
        compute = compute_metrics_for(cfg.task, prepared.is_regression, len(prepared.label_names or []) or None)
        return Evaluation(compute, None, "pearson" if prepared.is_regression else "accuracy", True)
    if cfg.task == "label_words":
        scored = label_word_eval_for(label_word_ids(tokenizer, prepared.label_words))
        if scored:
            return Evaluation(scored[1], scored[0], "accuracy", True)
    return Evaluation()


def _sorted_by_length(dataset):
    """The split ordered by length: eval batches then pad to near their own length (metrics ignore order)."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def score(cfg: TrainConfig, model, tokenizer, dataset, prepared: PreparedData, trainer=None, prefix="test",
          logged: dict | None = None) -> dict:
    """Metrics of `model` on a prepared split: Trainer evaluation, plus label-word accuracy.

    logged: this model's metrics on this split as the training loop already logged them (see
    `logged_evaluation`); the Trainer evaluation is then not run again.
    """
    from loraplus.train.metrics import classification_metrics, score_label_words

    metrics = logged if logged is not None else (
        trainer.evaluate(dataset, metric_key_prefix=prefix) if trainer is not None else {})
    if cfg.task == "label_words" and f"{prefix}_accuracy" not in metrics:  # not scored in the evaluation
        predictions = score_label_words(model, tokenizer, dataset, prepared.label_words,
                                        batch_size=cfg.per_device_eval_batch_size)
        labels = [int(y) for y in dataset["label"]]  # a datasets Column, not an array
        scored = classification_metrics(predictions, labels, len(prepared.label_names))
        metrics.update({f"{prefix}_{k}": v for k, v in scored.items()})
    return metrics


def _loop_entry(trainer, step: int, prefix: str) -> dict | None:
    """The training loop's evaluation at `step` (keys `prefix`_*), or None when none fell on that step."""
    for entry in reversed(trainer.state.log_history):
        if entry.get("step") == step and f"{prefix}_loss" in entry:
            return {key: value for key, value in entry.items() if key.startswith(f"{prefix}_")}
    return None


def logged_evaluation(trainer, prefix: str) -> dict | None:
    """The training loop's own evaluation of the weights the trainer holds now (its keys `prefix`_*).

    The model after training is the last step's, or the best checkpoint's when the Trainer loaded it at the
    end; the loop has evaluated it on its eval split if an evaluation fell on that step. Evaluating it again
    costs a full pass for the same numbers (a minute a run for SmolLM2's label words on a CPU).
    None when no evaluation fell on that step.
    """
    state = trainer.state
    step = state.global_step
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint:
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    return _loop_entry(trainer, step, prefix)


def loop_evaluations(trainer, prefix: str, chosen_by: str | None) -> dict:
    """{"final": the loop's evaluation at the last step, "best": at the checkpoint chosen by `chosen_by`},
    each with its step; "best" is None when no checkpoint is chosen (compare's final runs, scored on test)."""
    state = trainer.state
    final = _loop_entry(trainer, state.global_step, prefix)
    found = {"final": {"step": state.global_step, **final} if final else None, "best": None}
    if chosen_by and state.best_model_checkpoint:
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
        best = _loop_entry(trainer, step, prefix)
        found["best"] = {"step": step, **best} if best else None
    return found


def train(cfg: TrainConfig, *, tuning: bool = False, eval_on_test: bool = False) -> dict:
    """Run one LoRA+ finetune as configured; write the run folder; return its summary.

    tuning: drop the test split entirely (runs whose validation metric chooses a learning rate).
    eval_on_test: evaluate on the test split while training (logged as test_*) and keep the final model;
    no checkpoint is ever chosen by a test score (the re-runs at an already chosen learning rate whose
    test curves a comparison reports).
    """
    from transformers import set_seed

    from loraplus.train.data import data_fingerprint
    from loraplus.train.models import check_max_length, load_tokenizer, resolve_model
    from loraplus.train.distributed import check_engine_settings, cpu_only_launch, is_writer

    cfg.validate()
    kwargs = training_arguments_kwargs(cfg)  # checks optim / scheduler names before any loading
    if cpu_only_launch():  # torchrun on CPUs: DDP over gloo, not N independent runs writing one folder
        kwargs.setdefault("use_cpu", True)
    check_training_arguments(kwargs)
    check_engine_settings(kwargs)  # FSDP / DeepSpeed settings that would erase lr_B = ratio * lr_A
    resume = check_output_dir(cfg)
    fingerprint = data_fingerprint(dataset_name=None if cfg.train_file else cfg.dataset_name,
                                   train_file=cfg.train_file, validation_file=cfg.validation_file,
                                   test_file=None if tuning else cfg.test_file)  # tuning never reads the test file
    if resume is not None:
        check_resume_matches(cfg, resume, fingerprint)
        finished = Path(cfg.output_dir) / "summary.json"
        if finished.is_file():  # the run ended: resuming it trains nothing
            import json

            if is_writer():
                logger.warning("%s holds a finished run; nothing to resume", cfg.output_dir)
            return json.loads(finished.read_text())
        if is_writer():
            logger.warning("resuming from %s", resume)
    model_path = resolve_model(cfg.model_name_or_path)
    # A max_length the model cannot embed is refused here, not in the first training step. Not capped:
    # config.yaml must say what trained, and a rerun of the same config must be the same run.
    check_max_length(model_path, cfg.max_length)
    tokenizer = load_tokenizer(model_path)
    prepared = prepare_data(cfg, tokenizer, drop_test=tuning)
    if eval_on_test and "test" not in prepared.splits:
        raise LoraPlusError("this run evaluates on a test split but the data has none; pass --test_file")
    for split in ("validation", "test"):
        if split in prepared.splits:
            prepared.splits[split] = _sorted_by_length(prepared.splits[split])
    if len(prepared.splits["train"]) == 0:
        raise LoraPlusError("the training split is empty after preprocessing; check --train_file and --max_length")
    set_seed(cfg.seed)  # LoRA's A init draws from the global generator
    model = build_model(cfg, model_path, prepared, tokenizer)
    if cfg.task == "classification":
        # Sequence classifiers take **kwargs but average their loss over their own batch, ignoring the
        # num_items_in_batch the Trainer passes. Believing otherwise (transformers 5 reads
        # `accepts_loss_kwargs`, else the forward signature), the Trainer skips its division by
        # gradient_accumulation_steps and multiplies by the process count (Trainer.training_step,
        # compute_loss): gradients and logged loss came out accumulation steps x processes too large.
        model.get_base_model().accepts_loss_kwargs = False
    evaluation = evaluation_for(cfg, prepared, tokenizer)
    if eval_on_test:  # the final model is kept and scored; no checkpoint is chosen on test
        kwargs.setdefault("load_best_model_at_end", False)
        kwargs.setdefault("metric_for_best_model", None)
    else:
        kwargs.setdefault("load_best_model_at_end", True)
        kwargs.setdefault("metric_for_best_model", evaluation.metric)
    kwargs.setdefault("greater_is_better", evaluation.greater_is_better)
    kwargs.setdefault("save_total_limit", 2)
    kwargs.setdefault("disable_tqdm", not sys.stderr.isatty())
    kwargs.setdefault("dataloader_pin_memory", has_cuda())
    kwargs.pop("resume_from_checkpoint", None)
    from loraplus.core.trainer import LoraPlusTrainingArguments

    args = LoraPlusTrainingArguments(**kwargs, loraplus_lr_ratio=cfg.loraplus_lr_ratio,
                                     loraplus_lr_embedding=cfg.loraplus_lr_embedding,
                                     loraplus_lr_other=cfg.loraplus_lr_other, loraplus_optimizer=cfg.lora_optimizer)
    run_record = {"settings": {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE_KEYS},
                  "data": fingerprint}
    out = Path(cfg.output_dir)
    with _failures_leave_nothing_to_block(out, args):
        return _train_in_folder(cfg, out, args, model, tokenizer, prepared, evaluation, resume, run_record,
                                tuning=tuning, eval_on_test=eval_on_test)


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


class _failures_leave_nothing_to_block:  # noqa: N801 - used as a context manager, named for what it ensures
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


def _train_in_folder(cfg: TrainConfig, out: Path, args, model, tokenizer, prepared: PreparedData,
                     evaluation: Evaluation, resume: str | None, run_record: dict, *, tuning: bool,
                     eval_on_test: bool) -> dict:
    """Train in the run folder and write its files (every check has passed)."""
    from loraplus.train.data import collator_for
    from loraplus.speed.packing import is_packed
    from loraplus.train.distributed import is_writer, wait_for_everyone
    from loraplus.train.files import write_json
    from loraplus.train.reliability import CheckpointCompleteCallback, drop_newer_checkpoints
    from loraplus.train.run_trainer import RunTrainer
    from loraplus.train.metrics_log import JsonlMetricsCallback

    # Under torchrun / accelerate launch every rank runs this function: the writer (distributed.is_writer,
    # rank 0) alone prepares the folder, after every rank has passed check_output_dir and before any goes
    # on (no rank may see a half-cleared folder, or refuse the config.yaml rank 0 just wrote as "another run").
    wait_for_everyone(args)
    if is_writer():
        out.mkdir(parents=True, exist_ok=True)
        if resume is None:
            _clear_run(out)
        else:  # checkpoints after the resume point that failed validation: written again, into clean folders
            drop_newer_checkpoints(out, resume)
        cfg.save(str(out / "config.yaml"))
    wait_for_everyone(args)
    trainer = RunTrainer(
        model=model, args=args, train_dataset=prepared.splits["train"],
        eval_dataset=prepared.splits["test" if eval_on_test else "validation"],
        data_collator=collator_for(cfg.task, tokenizer),
        compute_metrics=evaluation.compute_metrics, preprocess_logits_for_metrics=evaluation.preprocess_logits,
        processing_class=tokenizer,
        callbacks=[JsonlMetricsCallback(out / "metrics.jsonl", resumed_from=resume),
                   CheckpointCompleteCallback(run_record)],
        # a packed encoder pays for real tokens only: a batch gains nothing from micro-batches
        length_micro_batches=1 if is_packed(model) else cfg.length_micro_batches,
        length_micro_batch_cost=cfg.length_micro_batch_cost,
    )
    looped = "test" if eval_on_test else "validation"  # the split the training loop evaluates
    prefixes = {"validation": "eval", "test": "test"}
    trainer.loop_eval_prefix = prefixes[looped]
    if cfg.feature_learning_steps:
        from loraplus.train.feature_learning import attach_feature_learning

        attach_feature_learning(trainer, cfg.feature_learning_steps)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - start

    metric = evaluation.metric
    evaluations = loop_evaluations(trainer, prefixes[looped], metric if not eval_on_test else None)
    summary = {
        "model": cfg.model_name_or_path, "task": cfg.task, "learning_rate": cfg.learning_rate,
        "loraplus_lr_ratio": cfg.loraplus_lr_ratio, "global_step": result.global_step,
        "train_loss": result.training_loss, "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(_tokens_seen(prepared.splits["train"], result.global_step, args) / train_seconds, 1),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_metric": trainer.state.best_metric, "metric": metric,
        "role": "tune" if tuning else "final" if eval_on_test else "train",
        "resumed_from": Path(resume).name if resume else None,
        # which weights the top-level adapter (and `validation` / `test` below) are: the best checkpoint's
        # when the Trainer loaded it at the end, else the last step's
        "adapter": "best" if args.load_best_model_at_end and trainer.state.best_model_checkpoint else "final",
        "evaluations": evaluations,
    }
    # read before any evaluation below appends its own entries to the log
    logged = {looped: logged_evaluation(trainer, prefixes[looped])}
    for split, prefix in prefixes.items():
        if split in prepared.splits:
            summary[split] = score(cfg, trainer.model, tokenizer, prepared.splits[split], prepared, trainer, prefix,
                                   logged=logged.get(split))
    summary["peak_memory_mb"] = round(_peak_memory_mb(), 1)

    # Every process takes part: under FSDP the Trainer gathers the full state dict, under ZeRO-3 the
    # partitions (stage3_gather_16bit_weights_on_model_save), and the writer alone writes the adapter.
    trainer.save_model(str(out))
    if is_writer():
        follow_umask(out.iterdir())
        if prepared.label_names:
            write_json(out / "labels.json", {"label_names": prepared.label_names, "label_words": prepared.label_words})
        _plot(out, cfg, metric, prefixes[looped])
        write_json(out / "summary.json", summary)  # last: a folder with summary.json holds a finished run
    return summary


def _tokens_seen(train_dataset, global_step: int, args) -> float:
    """Real (unpadded) tokens processed: mean example length x examples seen."""
    lengths = [len(ids) for ids in train_dataset["input_ids"]]
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    return sum(lengths) / len(lengths) * per_step * global_step


def _plot(out: Path, cfg: TrainConfig, metric: str, prefix: str = "eval") -> None:
    from loraplus.train.plots import learning_curves, read_metrics

    key = f"{prefix}_{metric}"
    learning_curves({f"ratio {cfg.loraplus_lr_ratio:g}": read_metrics(out / "metrics.jsonl")}, key,
                    out / "learning_curves.png", title=f"{cfg.model_name_or_path}, lr_A {cfg.learning_rate:g}")
