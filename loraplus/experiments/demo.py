"""`loraplus demo`: LoRA vs LoRA+ on the packaged MiniLM and Rotten Tomatoes snippets, offline.

Both arms get the same data, seed, steps, schedule and head learning rate; only the adapter's
learning rates differ: LoRA trains A and B at LORA_LR, LoRA+ trains A at LORA_LR / 2 (the paper's
advice, section 4) and B at 16x that. The demo shows the tool; the tuned comparison is `compare`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from loraplus.train.config import TrainConfig
from loraplus.train.arguments import parse_command

LORA_LR = 1e-3  # MiniLM is small: its useful LoRA learning rates are high (results/glue: 3e-3 tuned best)
ARMS = {
    "LoRA": {"learning_rate": LORA_LR, "loraplus_lr_ratio": 1.0},
    "LoRA+": {"learning_rate": LORA_LR / 2, "loraplus_lr_ratio": 16.0},
}


# Half an epoch of the 10,248 training snippets at batch 32: both arms fit in 10 minutes on 2 CPU cores.
DEMO_STEPS = 160


@dataclasses.dataclass
class DemoArguments:
    """`loraplus demo` flags: where it writes, and how to shrink it."""

    output_dir: str = dataclasses.field(default="loraplus-demo", metadata={
        "help": "one run folder per arm, and the plot"})
    max_steps: int = dataclasses.field(default=DEMO_STEPS, metadata={"help": "optimizer steps of each arm"})
    max_train_samples: int | None = dataclasses.field(default=None, metadata={"help": "none = all 10,248"})
    max_eval_samples: int | None = dataclasses.field(default=None, metadata={"help": "none = all"})
    eval_steps: int | None = dataclasses.field(default=40, metadata={"help": "evaluate every this many steps"})


def parse_demo_args(argv: list[str]) -> DemoArguments:
    """`--output_dir D` and the --max_steps / --max_train_samples / --max_eval_samples / --eval_steps N flags."""
    return parse_command(DemoArguments, argv, "demo")[0]


def demo_configs(args: DemoArguments | None = None) -> dict[str, TrainConfig]:
    """The two arms' configs: identical but for the adapter learning rates."""
    args = args or DemoArguments()
    configs = {}
    for name, arm in ARMS.items():
        configs[name] = TrainConfig(
            model_name_or_path="minilm", dataset_name="rotten_tomatoes", task="classification",
            output_dir=str(Path(args.output_dir) / name.lower().replace("+", "plus")),
            num_train_epochs=1.0, max_steps=args.max_steps, max_train_samples=args.max_train_samples,
            max_eval_samples=args.max_eval_samples,
            per_device_train_batch_size=32, lora_r=8, lora_alpha=8, lora_dropout=0.0,
            lora_target_modules=["query", "value"], loraplus_lr_other=LORA_LR, eval_steps=args.eval_steps,
            logging_steps=10, warmup_ratio=0.06, seed=42, overwrite_output_dir=True, report_to=["none"],
            **arm,
        )
    return configs


def run_demo(args: DemoArguments | None = None) -> int:
    """Train both arms, print the side-by-side table, write both learning curves to one PNG."""
    from loraplus.train.pipeline import train
    from loraplus.train.plots import learning_curves, read_metrics

    args = args or DemoArguments()
    configs = demo_configs(args)
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
                          "eval_accuracy", Path(args.output_dir) / "lora_vs_loraplus.png",
                          title="MiniLM on Rotten Tomatoes: LoRA vs LoRA+ (same steps, data, seed)")
    print(f"\nlearning curves: {png}")
    return 0
