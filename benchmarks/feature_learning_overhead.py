"""Overhead of the feature-learning monitor: training time with it (every K steps) / without it.

Run: .venv/bin/python benchmarks/feature_learning_overhead.py
     [--steps 60] [--every 10] [--repeats 3] [--batch 16] [--threads 1]

A tiny random Llama (hidden 128, 4 layers, LoRA r=8 on q,k,v,o), batch 16 x 64 tokens (a typical
GLUE batch), 60 steps; runs with and without the monitor alternate, and each side
reports its median of `repeats` runs. The probe is 8 examples (the monitor's default), so one
measurement costs a no-grad forward of half a batch, about 1/6 of a step, once every K steps
(--batch 8 is the worst case: about 1/3 of a step). The ratio is taken on process CPU time with one
torch thread: on a shared machine wall time swung by 10x between identical runs (2-core box under
load), while CPU time counts the work the monitor adds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def _model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))


def train_seconds(steps: int, every: int | None, batch: int = 16) -> tuple[float, float, float]:
    """(CPU, wall, monitor CPU) seconds of `trainer.train()`, monitor every `every` steps (None: off)."""
    from transformers import PrinterCallback

    from loraplus.train.feature_learning import attach_feature_learning
    from loraplus.core.trainer import LoraPlusTrainer, LoraPlusTrainingArguments

    ids = torch.randint(0, 512, (steps * batch, 64), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    with tempfile.TemporaryDirectory() as out:
        args = LoraPlusTrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch,
                                         learning_rate=1e-3, logging_steps=10, save_strategy="no",
                                         report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
        trainer = LoraPlusTrainer(model=_model(), args=args, train_dataset=data)
        trainer.remove_callback(PrinterCallback)  # keeps the output to the result lines
        spent = [0.0]
        if every:
            callback = attach_feature_learning(trainer, every)
            for event in ("on_train_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end"):
                setattr(callback, event, _timed(getattr(callback, event), spent))
        cpu, wall = time.process_time(), time.perf_counter()
        trainer.train()
        return time.process_time() - cpu, time.perf_counter() - wall, spent[0]


def _timed(method, spent: list[float]):
    """`method`, adding the CPU time of each call to spent[0]: the monitor's own cost, free of run-to-run noise."""

    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return method(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    train_seconds(5, opts.every, opts.batch)  # warm-up: imports, first-call allocations
    off, on = [], []
    for _ in range(opts.repeats):  # interleaved, so drift in machine load hits both sides alike
        off.append(train_seconds(opts.steps, None, opts.batch))
        on.append(train_seconds(opts.steps, opts.every, opts.batch))
    for label, runs in (("without monitor", off), (f"with monitor every {opts.every}", on)):
        print(f"{label}: CPU {statistics.median(r[0] for r in runs):.2f} s, wall "
              f"{statistics.median(r[1] for r in runs):.2f} s (median of {len(runs)}; CPU runs: "
              f"{', '.join(f'{r[0]:.2f}' for r in runs)})")
    ratio = statistics.median(r[0] for r in on) / statistics.median(r[0] for r in off)
    print(f"overhead ratio (CPU time): {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")
    own = statistics.median(r[2] / r[0] for r in on)
    print(f"monitor's own CPU time inside its events: {own * 100:.1f}% of the monitored runs (median)")

if __name__ == "__main__":
    main()
