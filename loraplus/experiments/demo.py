"""`loraplus demo`: LoRA vs LoRA+ on the packaged MiniLM and Rotten Tomatoes snippets, offline.

Both arms get the same data, seed, steps, schedule and head learning rate; only the adapter's
learning rates differ: LoRA trains A and B at LORA_LR, LoRA+ trains A at LORA_LR / 2 (the paper's
advice, section 4) and B at 16x that. The demo shows the tool; the tuned comparison is `compare`.
"""

from __future__ import annotations

from pathlib import Path

from loraplus.train.config import TrainConfig
from loraplus.core.errors import LoraPlusError

LORA_LR = 1e-3  # MiniLM is small: its useful LoRA learning rates are high (results/glue: 3e-3 tuned best)
ARMS = {
    "LoRA": {"learning_rate": LORA_LR, "loraplus_lr_ratio": 1.0},
    "LoRA+": {"learning_rate": LORA_LR / 2, "loraplus_lr_ratio": 16.0},
}


def parse_demo_args(argv: list[str]) -> dict:
    """--output_dir D, and --max_steps / --max_train_samples / --max_eval_samples / --eval_steps N to shrink it."""
    known = {"--output_dir": str, "--max_steps": int, "--max_train_samples": int, "--max_eval_samples": int,
             "--eval_steps": int}
    out, i = {}, 0
    while i < len(argv):
        flag = argv[i]
        if flag not in known or i + 1 >= len(argv):
            raise LoraPlusError(f"demo takes {', '.join(known)} with a value each; got '{flag}'")
        try:
            out[flag[2:]] = known[flag](argv[i + 1])
        except ValueError as e:
            raise LoraPlusError(f"bad value for {flag}: {argv[i + 1]!r}") from e
        i += 2
    return out


# Half an epoch of the 10,248 training snippets at batch 32: both arms fit in 10 minutes on 2 CPU cores.
DEMO_STEPS = 160


def demo_configs(output_dir: str = "loraplus-demo", max_steps: int = DEMO_STEPS, max_train_samples: int | None = None,
                 max_eval_samples: int | None = None, eval_steps: int | None = 40) -> dict[str, TrainConfig]:
    """The two arms' configs: identical but for the adapter learning rates."""
    configs = {}
    for name, arm in ARMS.items():
        configs[name] = TrainConfig(
            model_name_or_path="minilm", dataset_name="rotten_tomatoes", task="classification",
            output_dir=str(Path(output_dir) / name.lower().replace("+", "plus")),
            num_train_epochs=1.0, max_steps=max_steps, max_train_samples=max_train_samples,
            max_eval_samples=max_eval_samples,
            per_device_train_batch_size=32, lora_r=8, lora_alpha=8, lora_dropout=0.0,
            lora_target_modules=["query", "value"], loraplus_lr_other=LORA_LR, eval_steps=eval_steps,
            logging_steps=10, warmup_ratio=0.06, seed=42, overwrite_output_dir=True, report_to=["none"],
            **arm,
        )
    return configs


def run_demo(output_dir: str = "loraplus-demo", **budget) -> int:
    """Train both arms, print the side-by-side table, write both learning curves to one PNG."""
    from loraplus.train.pipeline import train
    from loraplus.train.plots import learning_curves, read_metrics

    configs = demo_configs(output_dir, **budget)
    rows = []
    for name, cfg in configs.items():
        print(f"training {name}: lr_A {cfg.learning_rate:g}, lr_B {cfg.learning_rate * cfg.loraplus_lr_ratio:g}",
              flush=True)
        summary = train(cfg)
        rows.append((name, cfg, summary))
    print()
    print(f"{'method':8} {'lr_A':>8} {'lr_B':>8} {'test acc':>9} {'best val':>9} {'steps':>6} {'train s':>8}")
    for name, cfg, s in rows:
        print(f"{name:8} {cfg.learning_rate:8.2g} {cfg.learning_rate * cfg.loraplus_lr_ratio:8.2g} "
              f"{s['test']['test_accuracy']:9.4f} {s['best_metric']:9.4f} {s['global_step']:6d} "
              f"{s['train_seconds']:8.1f}")
    png = learning_curves({name: read_metrics(Path(cfg.output_dir) / "metrics.jsonl") for name, cfg, _ in rows},
                          "eval_accuracy", Path(output_dir) / "lora_vs_loraplus.png",
                          title="MiniLM on Rotten Tomatoes: LoRA vs LoRA+ (same steps, data, seed)")
    print(f"\nlearning curves: {png}")
    return 0
