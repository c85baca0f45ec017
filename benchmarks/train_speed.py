"""Wall-clock of one LoRA epoch: `loraplus train` against plain PEFT + Trainer baselines, side by side.

    python benchmarks/train_speed.py --data ../shared/data/glue/mnli [--seeds 42,43] [--max_steps N]
        [--no_dropout] [--out F]

Runs, one after another on the same machine, each arm and seed in a fresh process (seed by seed, the
arms interleaved, so a drifting machine or a warm allocator favours no arm): the float32 matmul rate
(2048^3, median of 5, before and after the arms), a plain PEFT + Trainer baseline written as HF's
run_glue does (pad every example to 128 tokens), the same baseline with dynamic padding, `loraplus
train` (random batches; the encoder's layers run on real tokens only, packed; cheaper CPU dropout
masks), and three ablations: `loraplus train` without packing (each batch sorted by length and cut into
at most 4 micro-batches padded to their own longest), with torch's own dropout (what the cheaper masks
give), and with transformers' length grouping across batches (faster, but batches are no longer
random draws). Same model (minilm), LoRA r=8 alpha=8 on
query+value, batch 32, one epoch, learning rate and schedule; ratio 1 so all arms run the same
algorithm and only speed differs. The dynamic baseline and loraplus run every seed (accuracy: mean
and std over seeds; time: median); the padded baseline and the ablations are timing references and
run the first seed only. Training time excludes evaluation; dev accuracy is measured after
training for each run. Achieved FLOP/s counts ~4 x non-embedding parameters x real (unpadded) tokens
per LoRA step: forward 2N, backward to activations 2N; frozen weights need no weight gradients.

--no_dropout turns the model's own dropout off in every arm (a copy of minilm's config with hidden,
attention and classifier dropout 0; LoRA dropout is 0 throughout). The arms then differ only in how
they order floating-point sums, so at the same seed their dev accuracies must agree: this is the
check that the speed costs no accuracy, which seed-to-seed dropout noise (several points after one
epoch) would otherwise hide.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LR, BATCH, MAX_LENGTH = 3e-3, 32, 128


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Median float32 matmul rate of this machine, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def load_mnli(data: Path):
    from datasets import load_dataset

    files = {"train": str(data / "train.jsonl"), "dev": str(data / "dev.jsonl")}
    return load_dataset("json", data_files=files)


def baseline(data: Path, out: Path, model: str, *, pad_to_max: bool, max_steps: int, seed: int) -> dict:
    """Plain PEFT + Trainer, written the way users write it today (HF run_glue style)."""
    import numpy as np
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, default_data_collator, set_seed)

    set_seed(seed)
    path = model
    raw = load_mnli(data)
    names = sorted(set(raw["train"]["label"]))
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(batch):
        enc = tokenizer(batch["text"], batch["text_pair"], truncation=True, max_length=MAX_LENGTH,
                        padding="max_length" if pad_to_max else False)
        enc["labels"] = [names.index(y) for y in batch["label"]]
        return enc

    ds = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=8, lora_dropout=0.0,
                                             target_modules=["query", "value"]))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, per_device_eval_batch_size=64,
                             learning_rate=LR, num_train_epochs=1, max_steps=max_steps, warmup_steps=0.06,
                             lr_scheduler_type="linear", eval_strategy="no", save_strategy="no", report_to=[],
                             logging_steps=50, seed=seed, disable_tqdm=True, dataloader_pin_memory=False)
    collator = default_data_collator if pad_to_max else DataCollatorWithPadding(tokenizer)

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["dev"],
                      data_collator=collator, compute_metrics=accuracy)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    dev = trainer.evaluate()
    real = sum(sum(m) for m in ds["train"]["attention_mask"])
    out = {"train_seconds": seconds, "steps": result.global_step, "dev_accuracy": dev["eval_accuracy"],
           "examples_per_epoch": len(ds["train"]), "real_tokens": real}
    if pad_to_max:  # with dynamic padding the computed positions depend on the random batches: not counted
        out["computed_tokens"] = len(ds["train"]) * MAX_LENGTH
    return out


def loraplus_run(data: Path, out: Path, model: str, *, max_steps: int, seed: int, extra: list[str] = ()) -> dict:
    """`loraplus train` with the same settings (ratio 1: plain LoRA, same algorithm as the baselines)."""
    from loraplus.train.config import parse_train_args
    from loraplus.train.pipeline import train

    argv = ["--model_name_or_path", model, "--train_file", str(data / "train.jsonl"),
            "--validation_file", str(data / "dev.jsonl"), "--text_pair_column", "text_pair",
            "--output_dir", str(out), "--overwrite_output_dir", "--learning_rate", str(LR),
            "--loraplus_lr_ratio", "1", "--lora_r", "8", "--lora_alpha", "8", "--lora_dropout", "0",
            "--lora_target_modules", "query,value", "--per_device_train_batch_size", str(BATCH),
            "--num_train_epochs", "1", "--max_steps", str(max_steps), "--warmup_ratio", "0.06",
            "--seed", str(seed), "--report_to", "none", "--logging_steps", "50",
            # time training alone, like the baselines: evaluate once after training
            "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false", *extra]
    summary = train(parse_train_args(argv))
    return {"train_seconds": summary["train_seconds"], "steps": summary["global_step"],
            "dev_accuracy": summary["validation"]["eval_accuracy"], "tokens_per_second": summary["tokens_per_second"]}


def non_embedding_params() -> int:
    from transformers import AutoModel

    from loraplus.train.models import resolve_model

    model = AutoModel.from_pretrained(resolve_model("minilm"))
    embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    return sum(p.numel() for p in model.parameters()) - embed


ARMS = {
    "padded": "PEFT + Trainer, pad to 128 (run_glue style)",
    "dynamic": "PEFT + Trainer, dynamic padding",
    "loraplus": "`loraplus train` (random batches, packed encoder, CPU dropout masks)",
    # ablations: packing against length-sorted micro-batches (loraplus/speed/packing.py, sampling.py), what the
    # cheaper CPU dropout masks give (loraplus/speed/fast_dropout.py), and what length grouping across
    # batches would add (transformers' group_by_length)
    "loraplus_micro": "`loraplus train --packed_sequences false` (up to 4 length-sorted micro-batches)",
    "loraplus_torch_dropout": "`loraplus train --fast_cpu_dropout false` (torch's own dropout)",
    "loraplus_grouped": "`loraplus train --group_by_length true` (batches of similar lengths)",
}
ABLATION_FLAGS = {"loraplus_micro": ["--packed_sequences", "false"],
                  "loraplus_torch_dropout": ["--fast_cpu_dropout", "false"],
                  "loraplus_grouped": ["--group_by_length", "true"]}
# one seed each: timing references, not accuracy claims
TIMING_ONLY = ("padded", "loraplus_micro", "loraplus_torch_dropout", "loraplus_grouped")


def run_arm(arm: str, data: Path, work: Path, model: str, *, max_steps: int, seed: int) -> dict:
    out = work / f"{arm}_seed{seed}"
    if arm.startswith("loraplus"):
        return loraplus_run(data, out, model, max_steps=max_steps, seed=seed, extra=ABLATION_FLAGS.get(arm, []))
    return baseline(data, out, model, pad_to_max=arm == "padded", max_steps=max_steps, seed=seed)


def model_without_dropout(work: Path) -> str:
    """A folder that loads as minilm with its dropout off: the weights linked, the config edited."""
    from loraplus.train.models import resolve_model

    source, folder = Path(resolve_model("minilm")), work / "minilm-no-dropout"
    folder.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        target = folder / file.name
        if file.name == "config.json":
            config = json.loads(file.read_text())
            config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
            target.write_text(json.dumps(config, indent=1))
        elif file.is_file() and not target.exists():
            target.symlink_to(file.resolve())
    return str(folder)


def run_arm_in_fresh_process(arm: str, args, model: str, seed: int) -> dict:
    """One arm and seed in its own interpreter: no allocator, thread pool or cache carried between arms."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--data", str(args.data), "--work", str(args.work),
                   "--max_steps", str(args.max_steps), "--one_arm", arm, "--model", model,
                   "--seeds", str(seed), "--out", str(result)]
        subprocess.run(command, check=True)
        return json.loads(result.read_text())


def summarise(runs: list[dict]) -> dict:
    """One arm over its seeds: median train seconds (timing), mean and std of dev accuracy."""
    accuracy = [r["dev_accuracy"] for r in runs]
    return {"runs": runs, "train_seconds": statistics.median(r["train_seconds"] for r in runs),
            "steps": runs[0]["steps"], "dev_accuracy_mean": statistics.mean(accuracy),
            "dev_accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with train.jsonl and dev.jsonl (MNLI)")
    parser.add_argument("--max_steps", type=int, default=-1, help="cut the epoch short (smoke runs)")
    parser.add_argument("--work", type=Path, default=Path("bench-runs"))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default="42,43",
                        help="every arm but the timing references runs each seed (accuracy: mean and std; "
                             "time: median)")
    parser.add_argument("--no_dropout", action="store_true",
                        help="the model's dropout off in every arm: same seed, same computation, same accuracy")
    parser.add_argument("--one_arm", help=argparse.SUPPRESS)  # internal: run one arm here, write --out
    parser.add_argument("--model", default="minilm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seeds = [int(v) for v in args.seeds.split(",")]
    if args.one_arm:
        result = run_arm(args.one_arm, args.data, args.work, args.model, max_steps=args.max_steps, seed=seeds[0])
        args.out.write_text(json.dumps(result))
        return 0
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    model = model_without_dropout(args.work) if args.no_dropout else "minilm"
    torch.manual_seed(0)
    rates = [matmul_gflops()]
    results = {"threads": torch.get_num_threads(), "seeds": seeds, "lr": LR, "batch": BATCH,
               "model_dropout": not args.no_dropout}
    runs = {arm: [] for arm in arms}
    for i, seed in enumerate(seeds):
        for arm in arms:
            if i and arm in TIMING_ONLY:
                continue
            print(f"running {arm}, seed {seed} ...", file=sys.stderr, flush=True)
            runs[arm].append(run_arm_in_fresh_process(arm, args, model, seed))
    for arm in arms:
        results[arm] = summarise(runs[arm])
    rates.append(matmul_gflops())  # before and after: a drifting machine shows up as two different rates
    results["matmul_gflops_fp32"] = statistics.mean(rates)
    results["matmul_gflops_fp32_before_after"] = rates
    n = non_embedding_params()
    results["non_embedding_params"] = n
    real = next((results[a]["runs"][0]["real_tokens"] for a in arms if "real_tokens" in results[a]["runs"][0]), None)
    if real is None:
        run = results["loraplus"]["runs"][0]
        real = run["tokens_per_second"] * run["train_seconds"]
    if args.max_steps > 0:  # a cut epoch sees a fraction of the tokens
        examples = next(results[a]["runs"][0]["examples_per_epoch"] for a in arms
                        if "examples_per_epoch" in results[a]["runs"][0])
        real *= args.max_steps * BATCH / examples
    results["real_tokens"] = real
    for arm in arms:
        r = results[arm]
        r["gflops_on_real_tokens"] = 4 * n * real / r["train_seconds"] / 1e9
        r["fraction_of_matmul_rate"] = r["gflops_on_real_tokens"] / results["matmul_gflops_fp32"]
    if "loraplus" in results:
        for arm in arms:
            results[arm]["speedup_of_loraplus"] = results[arm]["train_seconds"] / results["loraplus"]["train_seconds"]
    print(json.dumps(results, indent=1))
    print(table(results, arms))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


def table(results: dict, arms: list[str]) -> str:
    """The Markdown table of the results README."""
    lines = ["| arm | train s / epoch (median) | speed-up of loraplus | dev accuracy (mean ± std) | seeds | "
             "GFLOP/s on real tokens | of matmul rate |", "|---|---|---|---|---|---|---|"]
    for arm in arms:
        r = results[arm]
        lines.append(f"| {ARMS.get(arm, arm)} | {r['train_seconds']:.1f} | {r.get('speedup_of_loraplus', 0):.2f}x | "
                     f"{100 * r['dev_accuracy_mean']:.1f}% ± {100 * r['dev_accuracy_std']:.1f} | {len(r['runs'])} | "
                     f"{r['gflops_on_real_tokens']:.1f} | {100 * r['fraction_of_matmul_rate']:.0f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
