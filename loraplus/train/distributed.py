"""Several processes, one run: which process writes, waiting for the others, CPU-only launches, and the
FSDP / DeepSpeed settings that would erase lr_B = ratio * lr_A. Every helper is a no-op in one process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from loraplus.core.errors import LoraPlusError


def has_cuda() -> bool:
    """Whether this process sees a CUDA GPU (pinned memory and fp16 only help there)."""
    import torch

    return torch.cuda.is_available()


def wait_for_everyone(args) -> None:
    """Block until every process of the run reaches this call (a no-op in a single process)."""
    state = getattr(args, "distributed_state", None)  # accelerate's PartialState, set up by TrainingArguments
    if state is not None and args.world_size > 1:
        state.wait_for_everyone()


def cpu_only_launch() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started several processes on a machine without a GPU.

    accelerate 1.x sets up DDP over gloo on CPU only when asked (`use_cpu`); otherwise each process
    trains alone on all the data and every one of them writes the same run folder.
    """
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    return not (accelerator.is_available() if accelerator is not None else torch.cuda.is_available())


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _mapping(value, key: str) -> dict:
    """A config given inline (dict) or as the path of a JSON file, or a one-line error naming `key`."""
    if isinstance(value, dict):
        return value
    try:
        return json.loads(Path(value).read_text())
    except (OSError, ValueError) as e:
        raise LoraPlusError(f"cannot read --{key} {value} ({type(e).__name__}); give the path of a JSON file") from e


def check_engine_settings(kwargs: dict) -> None:
    """Refuse, before anything is written, FSDP / DeepSpeed settings that would erase lr_B = ratio * lr_A.

    `kwargs` are the TrainingArguments keyword arguments. DeepSpeed builds its own optimizer (one lr
    for all parameters) when its config has an "optimizer" section, and its schedulers set one lr on
    every group; without those sections the Trainer builds the LoRA+ optimizer and scales each group.
    FSDP1 without use_orig_params flattens parameters (groups.py refuses that too, but only once
    training starts); accelerate's FSDP1 plugin defaults it to false, transformers' to true.
    """
    ds = kwargs.get("deepspeed")
    if ds:
        conf, name = _mapping(ds, "deepspeed"), ("the deepspeed config" if isinstance(ds, dict) else ds)
        for section, why in (("optimizer", "DeepSpeed would build its own optimizer, one lr for every parameter"),
                             ("scheduler", "DeepSpeed's schedulers set one lr on every parameter group")):
            if section in conf:
                raise LoraPlusError(f"{name} has an '{section}' section: {why}, erasing lr_B = ratio * lr_A; "
                                    "delete it (the Trainer then builds the LoRA+ optimizer from --optim and "
                                    "--lr_scheduler_type)")
    if kwargs.get("fsdp"):
        conf = _mapping(kwargs.get("fsdp_config") or {}, "fsdp_config")
        version = int(conf.get("version", conf.get("fsdp_version", 2)))
        flat = version == 1 and not _truthy(conf.get("use_orig_params", conf.get("fsdp_use_orig_params", "true")))
    else:  # accelerate launch --config_file with an FSDP section exports it as environment variables
        flat = (_truthy(os.environ.get("ACCELERATE_USE_FSDP", "false")) and os.environ.get("FSDP_VERSION", "1") == "1"
                and not _truthy(os.environ.get("FSDP_USE_ORIG_PARAMS", "false")))
    if flat:
        raise LoraPlusError("FSDP1 without use_orig_params flattens parameters, so LoRA A and B cannot be told apart; "
                            "set use_orig_params: true (fsdp_config, or fsdp_use_orig_params in the accelerate "
                            "config), or use FSDP2")


def is_writer() -> bool:
    """Whether this process writes the files of a run, compare, sweep or tune: global rank 0, and only it.

    Under torchrun / accelerate launch every process runs the same command; all of them train, one writes.
    Before a process group exists the launcher's RANK says which one this is.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
