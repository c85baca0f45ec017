"""Training-step time of a causal LM scoring label words: LM head at every position vs at targets only.

    python benchmarks/target_logits.py [--model smollm2-135m] [--data ../shared/data/glue/mnli] [--repeats 10]

Builds the MNLI label-word batches `loraplus train --task label_words` trains on (results/glue/mnli_smollm2.yaml:
prompt, one answer token per example, batch 8), attaches LoRA (r=8, q_proj and v_proj), and times one forward
and backward per batch both ways, alternating, on the same batches: with full logits (what the model does by
default) and with `logits_to_keep` at the target positions (loraplus.speed.target_logits); then the same for an
evaluation forward (no gradients). Reports the median time of each and their ratio, and checks that the two
losses agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


def label_word_batches(model_path: str, data: Path, n_batches: int, batch_size: int):
    from datasets import DatasetDict, load_dataset

    from loraplus.train.data import _LMCollator, prepare_label_words
    from loraplus.train.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    raw = load_dataset("json", data_files={"train": str(data / "train.jsonl")})["train"]
    raw = raw.shuffle(seed=0).select(range(n_batches * batch_size))
    splits, _, _ = prepare_label_words(DatasetDict(train=raw), tokenizer, text_pair_column="text_pair",
                                       label_words=["no", "yes", "maybe"], max_length=192,
                                       label_names=["contradiction", "entailment", "neutral"])
    rows = list(splits["train"])
    collate = _LMCollator(tokenizer)
    return [collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/glue/mnli"))
    parser.add_argument("--repeats", type=int, default=10, help="batches, each timed both ways")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args(argv)

    from loraplus.train.models import load_model, resolve_model
    from loraplus.train.lora import attach_lora
    from loraplus.speed.target_logits import with_target_positions

    path = resolve_model(args.model)
    batches = label_word_batches(path, args.data, args.repeats + 1, args.batch_size)
    model = attach_lora(load_model(path, task="label_words"), task="label_words", r=8, alpha=16, dropout=0.0,
                        target_modules=["q_proj", "v_proj"])

    def train_step(inputs) -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        return time.perf_counter() - start, loss.item()

    @torch.no_grad()
    def eval_step(inputs) -> tuple[float, float]:
        start = time.perf_counter()
        loss = model(**inputs).loss
        return time.perf_counter() - start, loss.item()

    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches[1:])
    print(f"model {args.model}, batch {args.batch_size}, {tokens:.0f} tokens per batch, {args.repeats} batches, "
          f"{torch.get_num_threads()} threads")
    for label, step, mode in (("forward+backward", train_step, model.train), ("eval forward", eval_step, model.eval)):
        mode()
        step(batches[0]), step(with_target_positions(batches[0]))  # warm-up
        full, kept, gaps = [], [], []
        for i, batch in enumerate(batches[1:]):
            ways = [("full", batch), ("kept", with_target_positions(batch))]
            if i % 2:
                ways.reverse()  # neither way always runs first
            losses = {}
            for name, inputs in ways:
                seconds, losses[name] = step(inputs)
                (full if name == "full" else kept).append(seconds)
            gaps.append(abs(losses["full"] - losses["kept"]))
        full_s, kept_s = statistics.median(full), statistics.median(kept)
        print(f"{label}: full logits {full_s:.3f} s, logits at targets {kept_s:.3f} s "
              f"(medians); speed-up {full_s / kept_s:.2f}x (median of per-batch "
              f"ratios {statistics.median(f / k for f, k in zip(full, kept)):.2f}x); largest loss difference "
              f"{max(gaps):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
