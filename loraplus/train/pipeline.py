"""One finetuning run: config -> model + data -> LoRA+ Trainer -> adapter, metrics, summary, curves.

Everything a user can get wrong (config, output_dir, model path, data, columns, labels, target
modules) is checked before the output directory is touched, so a bad run writes nothing.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path

from loraplus.core.errors import LoraPlusError
from loraplus.train.config import (RESUME_FREE_KEYS, TrainConfig, check_training_arguments,
                                   training_arguments_kwargs)
from loraplus.train.data import PreparedData, prepare_data
from loraplus.train.distributed import has_cuda
from loraplus.train.evaluation import (Evaluation, evaluation_for, logged_evaluation, loop_evaluations, score,
                                      sorted_by_length)
from loraplus.train.files import follow_umask
from loraplus.train.run_folder import (check_output_dir, check_resume_matches, clear_run,
                                      failures_leave_nothing_to_block)

logger = logging.getLogger("loraplus")


def build_model(cfg: TrainConfig, model_path: str, prepared: PreparedData, tokenizer):
    """The base model for the task with LoRA attached (PEFT)."""
    from loraplus.train.models import load_model, name_base_model
    from loraplus.train.lora import attach_lora

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
    if cfg.packed_sequences:  # BERT-like encoders, Llama-family decoders; others keep micro-batches (speed/)
        from loraplus.speed.packing import enable_packing

        enable_packing(model.get_base_model())
    return model


def train(cfg: TrainConfig, *, tuning: bool = False, eval_on_test: bool = False) -> dict:
    """Run one LoRA+ finetune as configured; write the run folder; return its summary.

    tuning: drop the test split entirely (runs whose validation metric chooses a learning rate).
    eval_on_test: evaluate on the test split while training (logged as test_*) and keep the final model;
    no checkpoint is ever chosen by a test score (the re-runs at an already chosen learning rate whose
    test curves a comparison reports).
    """
    from transformers import set_seed

    from loraplus.train.sources import data_fingerprint
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
            prepared.splits[split] = sorted_by_length(prepared.splits[split])
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
    from loraplus.core.settings import loraplus_settings
    from loraplus.core.trainer import LoraPlusTrainingArguments

    args = LoraPlusTrainingArguments(**kwargs, **loraplus_settings(cfg))
    run_record = {"settings": {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE_KEYS},
                  "data": fingerprint}
    out = Path(cfg.output_dir)
    with failures_leave_nothing_to_block(out, args):
        return _train_in_folder(cfg, out, args, model, tokenizer, prepared, evaluation, resume, run_record,
                                tuning=tuning, eval_on_test=eval_on_test)


def _train_in_folder(cfg: TrainConfig, out: Path, args, model, tokenizer, prepared: PreparedData,
                     evaluation: Evaluation, resume: str | None, run_record: dict, *, tuning: bool,
                     eval_on_test: bool) -> dict:
    """Train in the run folder and write its files (every check has passed)."""
    from loraplus.train.distributed import is_writer, wait_for_everyone
    from loraplus.train.files import write_json
    from loraplus.train.reliability import drop_newer_checkpoints
    from loraplus.train.run_trainer import build_trainer

    # Under torchrun / accelerate launch every rank runs this function: the writer (distributed.is_writer,
    # rank 0) alone prepares the folder, after every rank has passed check_output_dir and before any goes
    # on (no rank may see a half-cleared folder, or refuse the config.yaml rank 0 just wrote as "another run").
    wait_for_everyone(args)
    if is_writer():
        out.mkdir(parents=True, exist_ok=True)
        if resume is None:
            clear_run(out)
        else:  # checkpoints after the resume point that failed validation: written again, into clean folders
            drop_newer_checkpoints(out, resume)
        cfg.save(str(out / "config.yaml"))
    wait_for_everyone(args)
    trainer = build_trainer(cfg, args, model, tokenizer, prepared, evaluation, out=out, resume=resume,
                            run_record=run_record, eval_on_test=eval_on_test)
    looped = "test" if eval_on_test else "validation"  # the split the training loop evaluates
    prefixes = {"validation": "eval", "test": "test"}
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


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
