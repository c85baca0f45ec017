"""Per-step feature changes of every LoRA layer: delta_A = s*B*dA*x, delta_B = s*dB*A*x (s = PEFT scaling).

One optimizer step changes a LoRA layer's feature s*B*A*x by s*(B*dA*x + dB*A*x + dB*dA*x). With one
learning rate for A and B, one of the first two terms vanishes as the model widens: "inefficient
feature learning" (Hayou et al. 2024, sections 3-4); lr_B = ratio * lr_A puts both at the same scale.
`FeatureLearningCallback` measures the terms on a fixed probe batch every K optimizer steps and writes
them to `feature_learning.jsonl`; `loraplus diagnose` (experiments/diagnose.py) reads that file and says
whether the two are balanced.

Every norm is a per-token RMS: the Frobenius norm of the (tokens x out) matrix divided by sqrt(tokens),
padding tokens (attention_mask == 0) left out, so that values do not depend on the probe's size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from loraplus.core.errors import LoraPlusError
from loraplus.train.distributed import is_writer
from loraplus.train.files import json_text, read_jsonl

RECORDS_FILE = "feature_learning.jsonl"
PLOT_FILE = "feature_learning.png"
KEYS = ("delta_A", "delta_B", "cross", "feature", "norm_A", "norm_B")
_NOT_INPUTS = ("labels", "label", "label_ids")  # the probe needs no loss


def lora_linear_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, LoraLayer, adapter) for every trainable adapter whose A and B are linear maps (>= 1, else error).

    That covers nn.Linear, GPT-2's Conv1D (PEFT gives it Linear factors) and quantized bases; LoRA
    on embeddings and convolutions has no B*A*x of this form and is skipped.
    """
    from peft.tuners.lora import LoraLayer

    found = []
    for module_name, layer in model.named_modules():
        for adapter, a in layer.lora_A.items() if isinstance(layer, LoraLayer) else ():
            b = layer.lora_B[adapter] if adapter in layer.lora_B else None
            if isinstance(a, nn.Linear) and isinstance(b, nn.Linear) and (a.weight.requires_grad
                                                                          or b.weight.requires_grad):
                name = module_name.removeprefix("base_model.model.")
                found.append((name if adapter == "default" else f"{name}[{adapter}]", layer, adapter))
    if not found:
        raise LoraPlusError("the feature-learning monitor found no trainable LoRA Linear layer in the model; attach "
                            "LoRA to Linear modules with PEFT, or turn off --feature_learning_steps")
    return found


class _ProbeDone(Exception):
    """Raised by the capture hook to end the probe forward early."""


def _gram(m: torch.Tensor) -> torch.Tensor:
    return m.double().T @ m.double()


class FeatureLearningCallback(TrainerCallback):
    """Record delta_A, delta_B, the cross term and the feature of every LoRA layer every `every` steps.

    Events (each called once per optimizer step, with gradient accumulation too):
    `on_pre_optimizer_step`, when step s = global_step + 1 is due (s % every == 0), copies A and B
    (small) and captures each layer's input x in one no-grad forward of the probe batch (`snapshot`);
    `on_optimizer_step`, right after `optimizer.step()`, computes per layer (`measure`)
        delta_A = s*B0*dA*x,  delta_B = s*dB*A0*x,  cross = s*dB*dA*x,  feature = s*B0*A0*x
    with A0, B0 the factors before step s and dA, dB their change in it (exact: nothing else moves
    them), plus norm_A, norm_B = Frobenius norms of A0, B0; layer "all" is the root of the sum of
    squares over layers. `on_step_end` hands "all" to `trainer.log` (`fl/delta_A`, ...) for TensorBoard.
    x is taken before the step, so a layer's record does not depend on other layers' updates; the
    forward stops once every LoRA layer has its input (no head, no loss). A step the AMP scaler skips
    records zeros. Memory while measuring: probe tokens x sum of in_features. Outside a Trainer, call
    `snapshot(model)` before `optimizer.step()` and `measure(model, step)` after it.

    Training is bitwise unchanged: the probe forward is no-grad, in eval mode (no dropout mask drawn)
    and inside `torch.random.fork_rng`; module train flags are restored one by one. Rank 0 measures
    and writes alone. Not for FSDP or DeepSpeed (sharded factors; DeepSpeed steps inside backward).

    Args:
        every: measure every this many optimizer steps (K).
        probe_batch: a fixed, collated batch of tensors (see `probe_batch_from`); labels are dropped.
        trainer: the Trainer whose log receives the aggregate (None: only the JSON Lines file).
        path: the records file (default: `args.output_dir / feature_learning.jsonl`).
    """

    def __init__(self, every: int, probe_batch: Mapping, *, trainer=None, path=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise LoraPlusError(f"feature_learning_steps must be an integer >= 1, got {every!r}")
        self.every = every
        self.probe = {k: v for k, v in probe_batch.items() if torch.is_tensor(v) and k not in _NOT_INPUTS}
        if not self.probe:
            raise LoraPlusError("the feature-learning probe batch holds no input tensors; give a collated batch")
        self.trainer = trainer
        self.path = None if path is None else Path(path)
        self._before: dict[str, tuple] | None = None
        self._pending: dict | None = None

    @torch.no_grad()
    def snapshot(self, model: nn.Module) -> None:
        """Before a step: copy A and B of every LoRA layer and capture its input x on the probe batch."""
        layers = lora_linear_layers(model)
        device = next(model.parameters()).device
        probe = {k: v.to(device) for k, v in self.probe.items()}
        mask = probe.get("attention_mask")
        inputs: dict[int, list[torch.Tensor]] = {}

        def capture(module, args, kwargs):
            x = (args[0] if args else kwargs["x"]).detach()
            if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
                x = x[mask.bool()]  # padding positions carry no text
            inputs.setdefault(id(module), []).append(x.reshape(-1, x.shape[-1]))
            if len(inputs) == len(modules):
                raise _ProbeDone  # every LoRA input is in: the rest of the forward (head, loss) is waste

        modules = {id(layer): layer for _, layer, _ in layers}
        handles = [m.register_forward_pre_hook(capture, with_kwargs=True) for m in modules.values()]
        modes = [(m, m.training) for m in model.modules()]
        # fork_rng: a probe must not advance any generator the training run draws from.
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        try:
            model.eval()  # no dropout mask drawn, and x is what the model computes at inference
            with torch.random.fork_rng(devices=cuda):
                model(**probe)
        except _ProbeDone:
            pass
        finally:
            for handle in handles:
                handle.remove()
            for m, training in modes:
                m.training = training  # exact restore: some modules may have been in eval on purpose
        self._before = {
            name: (layer, ad, torch.cat(inputs[id(layer)]) if id(layer) in inputs else None,
                   layer.lora_A[ad].weight.detach().clone(), layer.lora_B[ad].weight.detach().clone())
            for name, layer, ad in layers
        }

    @torch.no_grad()
    def measure(self, model: nn.Module, step: int) -> list[dict]:
        """After the step: records of the change since `snapshot`, one per layer, then the aggregate "all"."""
        if self._before is None:
            raise RuntimeError("measure() needs a snapshot() before the optimizer step")
        before, self._before = self._before, None
        rows, names = [], []
        for name, (layer, ad, x, a0, b0) in before.items():
            if x is None:  # the probe forward never reached this layer
                continue
            da, db = layer.lora_A[ad].weight - a0, layer.lora_B[ad].weight - b0
            # Only r-wide products: ||U M^T||_F^2 = <U^T U, M^T M>, so no (tokens, out) matrix is formed.
            gx = _gram(x.to(a0.dtype) @ torch.cat([a0, da]).T)  # blocks of [A0 x, dA x]^T [A0 x, dA x]
            gw = _gram(torch.cat([b0, db], dim=1))  # blocks of [B0, dB]^T [B0, dB]
            old, new = slice(0, a0.shape[0]), slice(a0.shape[0], None)
            sq = torch.stack([(gx[new, new] * gw[old, old]).sum(), (gx[old, old] * gw[new, new]).sum(),
                              (gx[new, new] * gw[new, new]).sum(), (gx[old, old] * gw[old, old]).sum()])
            rms = (sq.clamp(min=0) * float(layer.scaling[ad]) ** 2 / max(x.shape[0], 1)).sqrt()  # clamp: rounding
            rows.append(torch.cat([rms, torch.stack([a0.double().norm(), b0.double().norm()])]))
            names.append(name)
        values = torch.stack(rows).cpu().tolist() if rows else []  # one device sync for all layers
        records = [{"step": step, "layer": name, **dict(zip(KEYS, vals))} for name, vals in zip(names, values)]
        total = {k: math.sqrt(sum(r[k] ** 2 for r in records)) for k in KEYS}
        return records + [{"step": step, "layer": "all", **total}]

    # -- Trainer events ------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if self.path is None:
            self.path = Path(args.output_dir) / RECORDS_FILE
        if is_writer() and self.path.is_file():
            # A fresh run starts empty; a resumed one drops what was measured after its checkpoint.
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= state.global_step]
            self.path.write_text("".join(json_text(r, indent=None) + "\n" for r in kept))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if is_writer() and (state.global_step + 1) % self.every == 0:
            self.snapshot(model)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self._before is None:
            return
        records = self.measure(model, step=state.global_step + 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.writelines(json_text(r, indent=None) + "\n" for r in records)
        self._pending = records[-1]

    def on_step_end(self, args, state, control, **kwargs):
        if self._pending is not None and self.trainer is not None:
            should_log = control.should_log  # Trainer.log clears it, which would drop this step's loss log
            self.trainer.log({f"fl/{k}": self._pending[k] for k in KEYS})
            control.should_log = should_log
        self._pending = None
        return control


def probe_batch_from(dataset, collator, *, size: int = 8) -> dict:
    """The first `size` examples of `dataset`, collated: a fixed probe that costs no RNG draw."""
    if len(dataset) == 0:
        raise LoraPlusError("the training split is empty, so the feature-learning monitor has no probe batch")
    return dict(collator([dataset[i] for i in range(min(size, len(dataset)))]))


def attach_feature_learning(trainer, every: int, *, probe_size: int = 8) -> FeatureLearningCallback:
    """Add a `FeatureLearningCallback` to `trainer`, probing its first `probe_size` training examples."""
    args = trainer.args
    if getattr(args, "deepspeed", None) or getattr(args, "fsdp", None):
        raise LoraPlusError("the feature-learning monitor needs whole LoRA factors and the Trainer's own optimizer "
                            "step; turn off --feature_learning_steps under FSDP or DeepSpeed")
    lora_linear_layers(trainer.model)  # raises when there is nothing to measure
    probe = probe_batch_from(trainer.train_dataset, trainer.data_collator, size=probe_size)
    callback = FeatureLearningCallback(every, probe, trainer=trainer)
    trainer.add_callback(callback)
    return callback
