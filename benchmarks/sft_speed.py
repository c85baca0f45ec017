"""Causal-LM SFT speed: `loraplus train --task sft` against TRL's SFTTrainer and plain PEFT + Trainer, side by side.

    python benchmarks/sft_speed.py [--steps 40] [--repeats 3] [--batch 8] [--max_length 512]
        [--arms loraplus,loraplus_micro,trl_default,trl_padding_free,trl_packing,peft_trainer] [--data MIX.jsonl]
        [--packing_rows R] [--glue ../shared/data/glue] [--work bench-runs/sft_speed]
        [--out results/sft_speed/sft_speed.json]

A CPU benchmark (float32). Every arm trains SmolLM2-135M-Instruct (the CLI alias `smollm2-135m`: the very
folder `loraplus.train.models.resolve_model` converts from the packaged GGUF, weights and tokenizer alike) on the
same data, with the same LoRA (r=8, alpha=16, dropout 0 by default, on q_proj,k_proj,v_proj,o_proj), the same
batch, max_length, steps, seed, optimizer (adamw_torch, weight decay 0, gradient clipping at 1), learning rate
(2e-4) and schedule (linear, 6% warmup), in float32 without gradient checkpointing, logging every step, no
evaluation or checkpoint while training. LoRA+ ratio 1 in the loraplus arm: plain LoRA, the algorithm of the
other arms, so only speed differs (a ratio other than 1 only changes two group learning rates; the
optimizer step costs the same).

Data: a Flan-style instruction mixture (benchmarks/sft_mixture.py: MNLI, QNLI, QQP, SST-2 from --glue and
Rotten Tomatoes, a few templates per task, answers from a bare label word to a sentence with a
justification), built once per run with its seed unless --data names one. Examples whose chat-rendered
length exceeds --max_length are dropped before any arm sees the data, so no arm truncates and every arm
trains on the same sequences; 16 of them are held out as the validation file `loraplus train` needs (it
evaluates them once after training, outside the timing; no other arm evaluates).

Every example is the chat template's rendering of one user turn (the prompt) and one assistant turn (the
completion): SmolLM2's template adds its default system turn, the prompt is `<|im_start|>user ...<|im_end|>`
followed by the generation prompt `<|im_start|>assistant\\n`, and the completion is the response text,
`<|im_end|>` and the template's newline. Arms, each in a fresh process, and what their loss covers:

- `loraplus`: `loraplus train --task sft` on the prompt/completion JSONL (`--prompt_column prompt
  --response_column completion`). The CLI renders the chat template and labels the response's tokens (by
  character offsets: the completion above) and -100 elsewhere. Its own speed paths stay on: the decoder runs
  packed (every layer but attention on the batch's real tokens only, attention per group of rows of similar
  length; before that speed path, each random batch ran as up to 4 sorted micro-batches), and logits are
  computed at target positions only. Its "computed / real" counts the positions given to the model, padding
  included; a packed model's linear layers compute the real tokens only.
- `trl_default`: TRL's `SFTTrainer` + `SFTConfig` on the same rows as a conversational prompt-completion
  dataset (prompt and completion as lists of turns), `peft_config` the same LoRA, TRL's own tokenisation,
  default collator (`DataCollatorForLanguageModeling`: each batch padded to its longest row) and default
  completion-only loss: the tokens after the common prefix of the rendered prompt (with generation prompt)
  and the rendered prompt + completion, i.e. the completion above. TRL's SFTConfig defaults that would change
  the computation are set like the other arms': gradient_checkpointing False (TRL: True) and bf16 False
  (TRL: True), learning rate, logging and the optimizer as above. The loss runs through TRL's fused LM head
  (chunked log-probabilities, entropy and top-1 accuracy for its metrics), which on a CPU projects every
  position onto the vocabulary.
- `trl_padding_free`: the same with `padding_free=True`: each batch is flattened into one row of its real
  tokens (position ids restart per example, so attention is block-diagonal; transformers builds that mask
  from the position ids under sdpa, so it runs on a CPU). TRL refuses a max_length with padding_free and no
  packing, so max_length is None there (no example exceeds it anyway). Loss: the completion above; TRL also
  masks each example's first token, a prompt token already.
- `trl_packing`: `packing=True` (TRL's default strategy "bfd", which implies padding-free): examples packed
  best-fit decreasing into rows of up to max_length tokens, --packing_rows rows per step (default --batch),
  drawn in the Trainer's own random order: a step holds several times the examples and tokens of a step in
  the other arms. Loss: the completion above of every packed example. Compare it on tokens/s, not per step.
- `peft_trainer`: plain PEFT (`get_peft_model`) + transformers `Trainer`, the way it is written by hand:
  the chat template applied to the prompt (with generation prompt) and to prompt + completion, tokenised,
  labels -100 on the prompt, `DataCollatorForSeq2Seq` padding each batch to its longest row, labels -100 on
  padding. Loss: the completion above.

Every arm's loss is the mean over the step's completion tokens (the Trainer's num_items_in_batch).
Data order: the non-packing baselines draw the same batches as `loraplus train` (its sampler's seeded
permutation cut into batches, loraplus.speed.sampling.sorted_within_batches), so at every step they see the same
examples and their real-token counts and losses can be compared step by step; `--trainer_order` gives them
their Trainer's own random order instead (tokens/s still compares, per-step counts no longer agree).
With LoRA dropout 0 and SmolLM2 without dropout, step 1 (B = 0: the base model) must give the same loss in
those arms.

Timing: a TrainerCallback in every arm (added to the `loraplus train` Trainer by wrapping
`transformers.Trainer.train` in its process, which then runs the CLI's own entry point, `loraplus.cli.main`,
what `.venv/bin/loraplus` calls) stamps the end of every optimizer step. The timed span is from the end of
step 1 to the end of the last step: steps 2..N, each including its batch's collation; set-up, the first step
(allocations, kernel selection) and anything after training are left out. A forward pre-hook on the
PeftModel counts, per step, the real tokens (non-padding tokens through the model, prompt + completion), the
computed positions (padding included) and the target tokens. Also recorded: step 1's time, the wall-clock
of `trainer.train()` (what `loraplus train` writes as `train_seconds` in summary.json: loop set-up and step 1
included, so not the timed quantity; both are in the JSON, with the Trainer's own train_runtime), and
summary.json's tokens_per_second (the mean example length x examples seen / train_seconds, an estimate).

Reported per arm, medians over repeats: seconds per timed step, real tokens per second, the speed ratio to
`trl_default` (ratio of median tokens/s), achieved FLOP/s on real tokens as a share of the float32 matmul
rate measured in the same run (2048^3, median of 5, before and after the arms, as train_speed.py), and the
final training loss (last step) with the mean loss, so a reader sees that the arms trained comparably.
FLOPs per LoRA step ~ 4 x non-embedding parameters x real tokens, train_speed.py's convention: forward 2N,
backward to the activations 2N, no weight gradients for the frozen weights. N excludes the tied embedding /
LM head, so LM-head work (every position in TRL and PEFT, target positions only in loraplus) and attention
scores are work beyond the count.

Repeats: repeat r runs every arm once, in the order given, then repeat r + 1 (a drifting machine or a warm
page cache favours no arm). Torch threads: torch's default in every arm. The arms' output goes to
WORK/logs/; results (strict JSON) to --out, a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_mixture import build_mixture, write_jsonl  # noqa: E402  (the benchmark folder is not a package)
from train_speed import matmul_gflops  # noqa: E402  (one measure of the matmul rate for both benchmarks)

MODEL = "smollm2-135m"
LR, WARMUP = 2e-4, 0.06  # transformers 5: a fractional warmup_steps is the warmup ratio
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA_R, LORA_ALPHA = 8, 16
N_DEV = 16

ARMS = {
    "loraplus": "`loraplus train --task sft` (packed decoder, target-position logits)",
    "loraplus_micro": "`loraplus train --task sft --packed_sequences false` (sorted micro-batches, target logits)",
    "trl_default": "TRL SFTTrainer, default collator (pad to batch's longest)",
    "trl_padding_free": "TRL SFTTrainer, padding_free=True",
    "trl_packing": "TRL SFTTrainer, packing=True (bfd), rows of max_length",
    "peft_trainer": "PEFT + Trainer, dynamic padding",
}


# ---------------------------------------------------------------------------------------------- data


def model_path() -> str:
    from loraplus.train.models import resolve_model

    return resolve_model(MODEL)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def chat_ids(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids with the generation prompt, prompt + completion ids), each tokenised whole."""
    user = [{"role": "user", "content": prompt}]
    before = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": completion}], tokenize=False)
    return (tokenizer(before, add_special_tokens=False)["input_ids"],
            tokenizer(full, add_special_tokens=False)["input_ids"])


def prepare_data(args) -> dict:
    """Write WORK/data/train.jsonl and dev.jsonl: the mixture without examples longer than max_length."""
    if args.data:
        rows = [json.loads(line) for line in open(args.data) if line.strip()]
        source = str(args.data)
    else:
        rows = build_mixture(args.glue, per_task=args.per_task, seed=args.data_seed)
        source = f"sft_mixture.build_mixture(glue={args.glue}, per_task={args.per_task}, seed={args.data_seed})"
    tokenizer = load_tokenizer(model_path())
    kept, lengths, targets = [], [], []
    for row in rows:
        prompt_ids, ids = chat_ids(tokenizer, row["prompt"], row["completion"])
        if len(ids) <= args.max_length:
            kept.append(row)
            lengths.append(len(ids))
            targets.append(len(ids) - len(prompt_ids))
    if len(kept) < N_DEV + args.batch * args.steps:
        raise SystemExit(f"error: {len(kept)} examples fit max_length {args.max_length}; need "
                         f"{N_DEV + args.batch * args.steps}")
    folder = args.work / "data"
    train, dev = folder / "train.jsonl", folder / "dev.jsonl"
    write_jsonl(kept[N_DEV:], train)
    write_jsonl(kept[:N_DEV], dev)
    n = len(kept) - N_DEV
    return {"source": source, "examples": len(rows), "dropped_longer_than_max_length": len(rows) - len(kept),
            "train_examples": n, "dev_examples": N_DEV, "train_file": str(train), "dev_file": str(dev),
            "mean_tokens_per_example": sum(lengths[N_DEV:]) / n, "mean_completion_tokens": sum(targets[N_DEV:]) / n,
            "max_tokens_per_example": max(lengths[N_DEV:])}


def read_rows(path: str) -> list[dict]:
    return [json.loads(line) for line in open(path) if line.strip()]


# ------------------------------------------------------------------------------------------- meter


class StepMeter:
    """Stamps each optimizer step's end and counts the tokens of the forwards in it (a callback and a hook)."""

    def __init__(self):
        from transformers import TrainerCallback

        meter = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if meter.begin is None:
                    meter.begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                meter.ends.append(time.perf_counter())
                meter.per_step.append(dict(meter.counts))
                meter.counts = dict.fromkeys(meter.counts, 0)

            def on_log(self, args, state, control, logs=None, **kwargs):
                logs = logs or {}
                if "loss" in logs:
                    meter.losses.append(float(logs["loss"]))
                if "train_runtime" in logs:
                    meter.train_runtime = float(logs["train_runtime"])

        self.callback = Callback()
        self.begin, self.ends, self.per_step, self.losses = None, [], [], []
        self.counts = {"real": 0, "computed": 0, "targets": 0, "sequences": 0, "forwards": 0}
        self.train_runtime = self.train_call_seconds = None
        self.info = {}

    def hook(self, module, args, kwargs):
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask, labels, positions = kwargs.get("attention_mask"), kwargs.get("labels"), kwargs.get("position_ids")
        self.counts["computed"] += ids.numel()
        self.counts["real"] += int(mask.sum()) if mask is not None else ids.numel()  # padding-free: no padding
        if mask is None and positions is not None:  # flattened rows: an example starts where its position is 0
            self.counts["sequences"] += int((positions == 0).sum())
        else:
            self.counts["sequences"] += ids.shape[0]
        if labels is not None:
            self.counts["targets"] += int((labels[..., 1:] != -100).sum())  # position t predicts token t + 1
        self.counts["forwards"] += 1

    def attach(self, trainer) -> None:
        trainer.add_callback(self.callback)
        trainer.model.register_forward_pre_hook(self.hook, with_kwargs=True)
        base = trainer.model.get_base_model()
        params = {id(p): p for n, p in base.named_parameters() if "lora_" not in n}
        heads = (base.get_input_embeddings(), base.get_output_embeddings())
        embeddings = {id(m.weight) for m in heads if m is not None}
        self.info = {"non_embedding_params": sum(p.numel() for i, p in params.items() if i not in embeddings),
                     "attn_implementation": base.config._attn_implementation,
                     "dtype": str(next(base.parameters()).dtype),
                     "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
                     "trainer": type(trainer).__name__}

    def timed_train(self, trainer):
        start = time.perf_counter()
        try:
            return trainer.train()
        finally:
            self.train_call_seconds = time.perf_counter() - start

    def result(self) -> dict:
        if len(self.ends) < 2:
            raise RuntimeError(f"only {len(self.ends)} optimizer steps ran; the timing needs at least 2")
        per = {k: [s[k] for s in self.per_step] for k in self.counts}
        return {"steps": len(self.ends), "timed_steps": len(self.ends) - 1,
                "timed_seconds": self.ends[-1] - self.ends[0], "first_step_seconds": self.ends[0] - self.begin,
                "step_seconds": [b - a for a, b in zip(self.ends, self.ends[1:])],
                "train_call_seconds": self.train_call_seconds, "train_runtime": self.train_runtime,
                "real_tokens_per_step": per["real"], "computed_tokens_per_step": per["computed"],
                "target_tokens_per_step": per["targets"], "sequences_per_step": per["sequences"],
                "forwards_per_step": per["forwards"], "losses": self.losses,
                "final_loss": self.losses[-1] if self.losses else None,
                "mean_loss": statistics.mean(self.losses) if self.losses else None, **self.info}


# -------------------------------------------------------------------------------------------- arms


def lora_config():
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=ARGS.lora_dropout,
                      target_modules=list(TARGET_MODULES))


def common_args(out: Path) -> dict:
    """The TrainingArguments every baseline shares (what the loraplus arm's flags say too)."""
    return dict(output_dir=str(out), per_device_train_batch_size=ARGS.batch, max_steps=ARGS.steps,
                learning_rate=LR, lr_scheduler_type="linear", warmup_steps=WARMUP, weight_decay=0.0,
                optim=ARGS.optim, max_grad_norm=1.0, logging_steps=1, eval_strategy="no", save_strategy="no",
                report_to=[], seed=ARGS.seed, disable_tqdm=True, dataloader_pin_memory=False, bf16=False,
                gradient_checkpointing=False)


class FixedOrder(torch.utils.data.Sampler):
    """Indices in a given order (epoch 0 of loraplus' GlobalBatchSampler; these runs stay inside one epoch)."""

    def __init__(self, order: list[int]):
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        return iter(self.order)


def same_order(trainer_cls):
    """`trainer_cls` drawing loraplus' batches: its seeded permutation cut into batches, each sorted by length."""
    if ARGS.trainer_order:
        return trainer_cls
    from loraplus.speed.sampling import sorted_within_batches

    class SameOrder(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(ids) for ids in dataset["input_ids"]]
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * max(self.args.world_size, 1)
            return FixedOrder(sorted_within_batches(lengths, batch, torch.Generator().manual_seed(self.args.seed)))

    SameOrder.__name__ = f"SameOrder{trainer_cls.__name__}"
    return SameOrder


def load_base(path: str):
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(ARGS.seed)  # as loraplus: seeded before the model loads and LoRA's A is drawn
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def peft_trainer_arm(out: Path, meter: StepMeter) -> dict:
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    path = model_path()
    tokenizer = load_tokenizer(path)

    def encode(ex):
        prompt_ids, ids = chat_ids(tokenizer, ex["prompt"], ex["completion"])
        if ids[:len(prompt_ids)] != prompt_ids:
            raise RuntimeError("the tokenised prompt is not a prefix of prompt + completion")
        return {"input_ids": ids, "attention_mask": [1] * len(ids),
                "labels": [-100] * len(prompt_ids) + ids[len(prompt_ids):]}

    rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in read_rows(ARGS.train_file)]
    dataset = Dataset.from_list(rows).map(encode, remove_columns=["prompt", "completion"])
    model = get_peft_model(load_base(path), lora_config())
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = same_order(Trainer)(model=model, args=TrainingArguments(**common_args(out)), train_dataset=dataset,
                                  data_collator=collator)
    meter.attach(trainer)
    result = meter.timed_train(trainer)
    return {"train_loss": result.training_loss}


def trl_arm(out: Path, meter: StepMeter, variant: str) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    path = model_path()
    tokenizer = load_tokenizer(path)
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in read_rows(ARGS.train_file)]
    extra = {"default": {"max_length": ARGS.max_length},
             # TRL refuses max_length with padding_free unless packing; no example exceeds it (prepare_data)
             "padding_free": {"padding_free": True, "max_length": None},
             "packing": {"packing": True, "max_length": ARGS.max_length,
                         "per_device_train_batch_size": ARGS.packing_rows or ARGS.batch}}[variant]
    config = SFTConfig(**{**common_args(out), **extra})
    cls = SFTTrainer if variant == "packing" else same_order(SFTTrainer)  # packed rows: TRL's own order
    trainer = cls(model=load_base(path), args=config, train_dataset=Dataset.from_list(rows),
                  processing_class=tokenizer, peft_config=lora_config())
    meter.attach(trainer)
    result = meter.timed_train(trainer)
    return {"train_loss": result.training_loss, "train_rows": len(trainer.train_dataset),
            "completion_only_loss": trainer.completion_only_loss, "padding_free": trainer.padding_free,
            "collator": type(trainer.data_collator).__name__}


def loraplus_argv(out: Path, packed: bool = True) -> list[str]:
    return ["train", "--task", "sft", "--model_name_or_path", MODEL, "--train_file", ARGS.train_file,
            "--validation_file", ARGS.dev_file, "--prompt_column", "prompt", "--response_column", "completion",
            "--output_dir", str(out), "--overwrite_output_dir", "--max_length", str(ARGS.max_length),
            "--learning_rate", str(LR), "--loraplus_lr_ratio", "1", "--lora_r", str(LORA_R),
            "--lora_alpha", str(LORA_ALPHA), "--lora_dropout", str(ARGS.lora_dropout),
            "--lora_target_modules", ",".join(TARGET_MODULES), "--per_device_train_batch_size", str(ARGS.batch),
            "--max_steps", str(ARGS.steps), "--warmup_ratio", str(WARMUP), "--lr_scheduler_type", "linear",
            "--weight_decay", "0", "--optim", ARGS.optim, "--seed", str(ARGS.seed), "--logging_steps", "1",
            "--report_to", "none", "--bf16", "false",
            # train alone, as the baselines: no evaluation or checkpoint inside the timing
            "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
            *([] if packed else ["--packed_sequences", "false"]), *shlex.split(ARGS.loraplus_args or "")]


def loraplus_arm(out: Path, meter: StepMeter, packed: bool = True) -> dict:
    """The CLI's own entry point in this process, with the meter added to the Trainer it builds."""
    import transformers

    from loraplus.cli import main as loraplus_main

    original = transformers.Trainer.train

    def train(self, *a, **k):
        meter.attach(self)
        start = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            meter.train_call_seconds = time.perf_counter() - start

    transformers.Trainer.train = train
    argv = loraplus_argv(out, packed)
    code = loraplus_main(argv)
    if code != 0:
        raise RuntimeError(f"loraplus {' '.join(argv)} exited {code}")
    summary = json.loads((out / "summary.json").read_text())
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"train_loss": summary["train_loss"], "cli": ["loraplus", *argv],
            "summary_train_seconds": summary["train_seconds"],
            "summary_tokens_per_second": summary["tokens_per_second"],
            "metrics_jsonl_losses": [r["loss"] for r in logged if "loss" in r and "train_runtime" not in r]}


def run_one_arm(arm: str, out: Path) -> dict:
    meter = StepMeter()
    if arm in ("loraplus", "loraplus_micro"):
        extra = loraplus_arm(out, meter, packed=arm == "loraplus")
    elif arm == "peft_trainer":
        extra = peft_trainer_arm(out, meter)
    else:
        extra = trl_arm(out, meter, arm.removeprefix("trl_"))
    return {"arm": arm, **meter.result(), **extra, "threads": torch.get_num_threads()}


def run_arm_in_fresh_process(arm: str, repeat: int, args) -> dict:
    """One arm in its own interpreter: no allocator, thread pool or cache carried between arms."""
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{arm}_r{repeat}.log"
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--one_arm", arm, "--run_dir", str(Path(tmp) / "run"),
                   "--result", str(result), "--train_file", args.train_file, "--dev_file", args.dev_file,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--max_length", str(args.max_length),
                   "--seed", str(args.seed), "--optim", args.optim, "--lora_dropout", str(args.lora_dropout),
                   "--packing_rows", str(args.packing_rows or args.batch)]
        if args.trainer_order:
            command.append("--trainer_order")
        if args.loraplus_args:
            command.append(f"--loraplus_args={args.loraplus_args}")
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}  # what `loraplus` sets; the same for every arm
        with open(log, "w") as f:
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
            raise SystemExit(f"error: arm {arm} (repeat {repeat}) exited {done.returncode}; {log} ends:\n{tail}")
        out = json.loads(result.read_text())
    out["repeat"], out["log"] = repeat, str(log)
    return out


# ------------------------------------------------------------------------------------------ report


def summarise(runs: list[dict], gflops: float, n: int) -> dict:
    for r in runs:
        timed_real = sum(r["real_tokens_per_step"][1:])
        r["tokens_per_second"] = timed_real / r["timed_seconds"]
        r["seconds_per_step"] = r["timed_seconds"] / r["timed_steps"]
        r["gflops_on_real_tokens"] = 4 * n * r["tokens_per_second"] / 1e9
    med = {k: statistics.median(r[k] for r in runs) for k in ("tokens_per_second", "seconds_per_step",
                                                               "first_step_seconds", "train_call_seconds")}
    real = [sum(r["real_tokens_per_step"][1:]) / r["timed_steps"] for r in runs]
    computed = [sum(r["computed_tokens_per_step"][1:]) / r["timed_steps"] for r in runs]
    return {"runs": runs, **med, "real_tokens_per_step": statistics.median(real),
            "computed_per_real_token": statistics.median(c / t for c, t in zip(computed, real)),
            "gflops_on_real_tokens": 4 * n * med["tokens_per_second"] / 1e9,
            "fraction_of_matmul_rate": 4 * n * med["tokens_per_second"] / 1e9 / gflops,
            "final_loss": statistics.median(r["final_loss"] for r in runs),
            "mean_loss": statistics.median(r["mean_loss"] for r in runs)}


def check_same_batches(results: dict, arms: list[str]) -> dict:
    """Whether the arms that draw loraplus' batches saw the same real and target tokens at every step (repeat 1)."""
    same = [] if ARGS.trainer_order else [a for a in arms if a != "trl_packing"]
    out = {"arms": same}
    if len(same) < 2:
        return out
    for key in ("real_tokens_per_step", "target_tokens_per_step"):
        per_arm = {a: results[a]["runs"][0][key] for a in same}
        out[key] = per_arm
        out[f"{key}_agree"] = len({tuple(v) for v in per_arm.values()}) == 1
    out["first_step_losses"] = {a: results[a]["runs"][0]["losses"][0] for a in same}
    return out


def table(results: dict, arms: list[str]) -> str:
    lines = ["| arm | s / step | real tokens / step | computed / real | real tokens/s | vs trl_default | "
             "GFLOP/s | of matmul rate | final loss | mean loss | runs |", "|---|" + "---|" * 10]
    for arm in arms:
        r = results["arms"][arm]
        ratio = r.get("speed_vs_trl_default")
        lines.append(f"| {ARMS[arm]} | {r['seconds_per_step']:.2f} | {r['real_tokens_per_step']:.0f} | "
                     f"{r['computed_per_real_token']:.2f} | {r['tokens_per_second']:.0f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | {r['gflops_on_real_tokens']:.1f} | "
                     f"{100 * r['fraction_of_matmul_rate']:.0f}% | {r['final_loss']:.4f} | {r['mean_loss']:.4f} | "
                     f"{len(r['runs'])} |")
    return "\n".join(lines)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "loraplus"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


ARGS = None  # the parsed options; the arms read them


def main(argv=None) -> int:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (steps 2..N are timed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, interleaved; medians are reported")
    parser.add_argument("--batch", type=int, default=8, help="examples per step (packing: packed rows per step)")
    parser.add_argument("--max_length", type=int, default=512, help="longer examples are dropped from the data")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--data", type=Path, default=None,
                        help="a prompt/completion JSONL (benchmarks/sft_mixture.py); default: build the mixture")
    parser.add_argument("--glue", type=Path, default=Path("../shared/data/glue"), help="GLUE folder for the mixture")
    parser.add_argument("--per_task", type=int, default=800, help="mixture examples per task")
    parser.add_argument("--data_seed", type=int, default=0, help="the mixture's seed")
    parser.add_argument("--seed", type=int, default=42, help="training seed (LoRA init, data order), every arm")
    parser.add_argument("--optim", default="adamw_torch", help="optimizer of every arm (loraplus' default)")
    parser.add_argument("--packing_rows", type=int, default=None,
                        help="trl_packing: packed rows of max_length per step (default --batch; a row holds several "
                             "examples, so --batch rows hold several times the tokens of a --batch step elsewhere)")
    parser.add_argument("--lora_dropout", type=float, default=0.0)
    parser.add_argument("--trainer_order", action="store_true",
                        help="baselines draw batches in their Trainer's own random order, not loraplus'")
    parser.add_argument("--loraplus_args", default="",
                        help="more `loraplus train` flags for the loraplus arm, e.g. '--length_micro_batch_cost 512'")
    parser.add_argument("--work", type=Path, default=Path("bench-runs/sft_speed"))
    parser.add_argument("--out", type=Path, default=Path("results/sft_speed/sft_speed.json"))
    # internal: run one arm in this process and write its result
    for flag in ("--one_arm", "--run_dir", "--result", "--train_file", "--dev_file"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    ARGS = args
    if args.steps < 2:
        parser.error("--steps must be at least 2: steps 2..N are timed")
    if args.one_arm:
        result = run_one_arm(args.one_arm, Path(args.run_dir))
        Path(args.result).write_text(json.dumps(result, allow_nan=False))
        return 0

    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if len(set(arms)) < len(arms):
        parser.error("an arm is named twice in --arms; --repeats runs each arm several times")
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args)
    args.train_file, args.dev_file = data["train_file"], data["dev_file"]
    print(f"data: {data['train_examples']} training examples, {data['mean_tokens_per_example']:.1f} tokens each "
          f"on average ({data['mean_completion_tokens']:.1f} in the completion); "
          f"{data['dropped_longer_than_max_length']} longer than {args.max_length} dropped", file=sys.stderr)
    torch.manual_seed(0)
    rates = [matmul_gflops()]
    runs = {arm: [] for arm in arms}
    for repeat in range(args.repeats):
        for arm in arms:
            print(f"repeat {repeat + 1}/{args.repeats}: {arm} ...", file=sys.stderr, flush=True)
            runs[arm].append(run_arm_in_fresh_process(arm, repeat, args))
            r = runs[arm][-1]
            print(f"  {r['timed_seconds'] / r['timed_steps']:.2f} s / step, "
                  f"{sum(r['real_tokens_per_step'][1:]) / r['timed_seconds']:.0f} real tokens/s, "
                  f"final loss {r['final_loss']:.4f}", file=sys.stderr, flush=True)
    rates.append(matmul_gflops())  # before and after: a drifting machine shows up as two different rates
    gflops = statistics.mean(rates)
    n = runs[arms[0]][0]["non_embedding_params"]
    results = {
        # the home folder as "~": results name no folder of the machine they ran on
        "model": MODEL, "model_path": model_path().replace(str(Path.home()), "~"),
        "threads": torch.get_num_threads(), "steps": args.steps,
        "repeats": args.repeats, "batch": args.batch, "packing_rows": args.packing_rows or args.batch,
        "max_length": args.max_length, "seed": args.seed,
        "learning_rate": LR, "warmup_ratio": WARMUP, "lr_scheduler_type": "linear", "optim": args.optim,
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": args.lora_dropout, "target_modules": TARGET_MODULES},
        "loraplus_lr_ratio": 1, "loraplus_args": args.loraplus_args, "precision": "float32", "data": data,
        "data_order": "the Trainer's own" if args.trainer_order else "loraplus' batches (packing: TRL's own)",
        "timed": "end of optimizer step 1 to end of the last step (steps 2..N), per a TrainerCallback in every arm",
        "flops_convention": "4 x non-embedding params x real tokens per step (train_speed.py)",
        "non_embedding_params": n, "matmul_gflops_fp32": gflops, "matmul_gflops_fp32_before_after": rates,
        "versions": versions(), "arms": {},
    }
    for arm in arms:
        results["arms"][arm] = {"description": ARMS[arm], **summarise(runs[arm], gflops, n)}
    base = results["arms"].get("trl_default")
    for arm in arms:
        r = results["arms"][arm]
        r["speed_vs_trl_default"] = r["tokens_per_second"] / base["tokens_per_second"] if base else None
        if base:  # the same ratio per repeat (arms of one repeat ran back to back), then its median
            r["speed_vs_trl_default_paired"] = statistics.median(
                a["tokens_per_second"] / b["tokens_per_second"] for a, b in zip(r["runs"], base["runs"]))
    results["same_batches"] = check_same_batches(results["arms"], arms)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    print(table(results, arms))
    same = results["same_batches"]
    if "real_tokens_per_step_agree" in same:
        print(f"same batches ({', '.join(same['arms'])}): real tokens per step agree: "
              f"{same['real_tokens_per_step_agree']}, target tokens agree: {same['target_tokens_per_step_agree']}; "
              f"step-1 losses: " + ", ".join(f"{a} {v:.4f}" for a, v in same["first_step_losses"].items()))
    print(f"float32 matmul rate {rates[0]:.1f} / {rates[1]:.1f} GFLOP/s (before / after); results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
