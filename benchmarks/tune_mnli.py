"""Does tuning the ratio pay at equal compute? `loraplus tune` over (lr_A, ratio) against lr_A alone at ratio 16.

    python benchmarks/tune_mnli.py --data ../shared/data/glue/mnli --out results/tune/mnli.json
        [--work runs/tune_mnli] [--budget STEPS] [--lrs ...] [--ratios ...] [--head_lr 3e-3] [--smoke]

Setup: MiniLM (all-MiniLM-L6-v2), LoRA r=8, alpha=8 on query and value, classifier head trained,
batch 32, linear schedule with 6% warmup, seed 42. train.jsonl is the training data (tune carves its
validation split from it); dev.jsonl is the test split: never read while tuning, scored once per arm.

Arms, at the same tuning budget (optimizer steps over all tuning runs together):
  grid:     successive halving (eta 3) over every (lr_A, ratio) of --lrs x --ratios;
  ratio16:  successive halving (eta 3) over --lrs at ratio 16, the paper's default.
The heads train at --head_lr in every run of both arms, so only the adapter's learning rates differ
(the MNLI baseline's best one-epoch LoRA learning rate, 3e-3, is the default). Each arm's pick is then
trained as `loraplus train tuned_config.yaml` would, for one epoch, and its dev accuracy reported.
The budget defaults to tune's own default for the grid arm (4 epochs' steps); ratio16 gets the same.

--smoke checks the script end to end: 320 training examples, batch 8, a 2 x 2 grid, eta 2, tiny budgets.
Every run has its own folder under --work and is reused when finished, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LRS, RATIOS, HEAD_LR = "1e-4,3e-4,1e-3,3e-3,1e-2", "1,2,4,8,16,32", 3e-3
SMOKE = {"lrs": "1e-3,1e-2", "ratios": "1,16", "eta": 2, "budget": 16, "final_steps": 8,
         "limits": ["--max_train_samples", "320", "--max_eval_samples", "32", "--per_device_train_batch_size", "8"]}


def base_flags(data: Path, head_lr: float, extra: list[str]) -> list[str]:
    """`loraplus train` flags of the MNLI setup (one epoch), shared by both arms' tuning and final runs."""
    return ["--model_name_or_path", "minilm", "--train_file", str(data / "train.jsonl"),
            "--test_file", str(data / "dev.jsonl"), "--text_column", "text", "--text_pair_column", "text_pair",
            "--label_column", "label", "--lora_r", "8", "--lora_alpha", "8", "--lora_target_modules", "query,value",
            "--per_device_train_batch_size", "32", "--num_train_epochs", "1", "--loraplus_lr_other", f"{head_lr:g}",
            "--seed", "42", "--report_to", "none", *extra]


def final_run(tuned_config: str, work: Path, final_steps: int | None) -> dict:
    """Train the tuned config as `loraplus train` does (best checkpoint on validation); its dev accuracy."""
    from loraplus.train.config import parse_train_args
    from loraplus.train.runs import train_or_reuse

    cfg = parse_train_args([tuned_config])
    name = f"lr{cfg.learning_rate:g}_ratio{cfg.loraplus_lr_ratio:g}"  # the same pick trains once
    overrides = ["--output_dir", str(work / "final" / name)]
    if final_steps:
        overrides += ["--max_steps", str(final_steps)]
    cfg = parse_train_args([tuned_config, *overrides])
    summary = train_or_reuse(cfg, role="train")
    return {"learning_rate": cfg.learning_rate, "loraplus_lr_ratio": cfg.loraplus_lr_ratio,
            "dev_accuracy": summary["test"]["test_accuracy"], "validation_accuracy": summary["best_metric"],
            "steps": summary["global_step"], "train_seconds": summary["train_seconds"],
            "run_dir": os.path.relpath(cfg.output_dir, REPO)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "glue" / "mnli",
                        help="folder with train.jsonl and dev.jsonl (text, text_pair, label)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: WORK/result.json)")
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: runs/tune_mnli[_smoke])")
    parser.add_argument("--budget", type=int, default=None, help="tuning steps per arm (default: tune's default)")
    parser.add_argument("--lrs", default=None, help=f"lr_A grid of both arms (default {LRS})")
    parser.add_argument("--ratios", default=None, help=f"ratio grid of the grid arm (default {RATIOS})")
    parser.add_argument("--eta", type=int, default=None, help="successive halving keeps 1/eta (default 3)")
    parser.add_argument("--head_lr", type=float, default=HEAD_LR, help="lr of the classifier head, every run")
    parser.add_argument("--smoke", action="store_true", help="a few minutes end to end: tiny data and budgets")
    args = parser.parse_args(argv)
    for split in ("train.jsonl", "dev.jsonl"):
        if not (args.data / split).is_file():
            parser.error(f"{args.data / split} not found; pass --data with the MNLI folder")

    from loraplus.cli import main as loraplus

    work = args.work or REPO / "runs" / ("tune_mnli_smoke" if args.smoke else "tune_mnli")
    out = args.out or work / "result.json"
    lrs = args.lrs or (SMOKE["lrs"] if args.smoke else LRS)
    ratios = args.ratios or (SMOKE["ratios"] if args.smoke else RATIOS)
    budget = args.budget or (SMOKE["budget"] if args.smoke else None)
    eta = args.eta or (SMOKE["eta"] if args.smoke else 3)
    final_steps = SMOKE["final_steps"] if args.smoke else None
    flags = base_flags(args.data, args.head_lr, SMOKE["limits"] if args.smoke else [])

    start = time.perf_counter()
    arms = {}
    for arm, arm_ratios in (("grid", ratios), ("ratio16", "16")):
        print(f"\n== {arm}: loraplus tune over lr_A {lrs} x ratio {arm_ratios}", flush=True)
        tune_argv = ["tune", *flags, "--lrs", lrs, "--ratios", arm_ratios, "--eta", str(eta),
                     "--output_dir", str(work / arm)] + (["--budget", str(budget)] if budget else [])
        if loraplus(tune_argv) != 0:
            return 2
        result = json.loads((work / arm / "tune.json").read_text())
        budget = result["cost"]["budget"]  # the grid arm's budget, also for ratio16: equal tuning compute
        print(f"== {arm}: training the pick for the final budget", flush=True)
        arms[arm] = {"chosen": result["chosen"], "tune_cost": result["cost"], "rungs": result["rungs"],
                     "final": final_run(result["tuned_config"], work, final_steps)}
    report = {
        "setup": {"data": args.data.name, "model": "minilm", "lora": "r=8, alpha=8, query,value",
                  "batch": 8 if args.smoke else 32,
                  "head_lr": args.head_lr, "lrs": lrs, "ratios": ratios, "eta": eta, "smoke": args.smoke,
                  "final": f"max_steps {final_steps}" if final_steps else "one epoch",
                  "test": "dev.jsonl, never read while tuning"},
        "arms": arms,
        "seconds": round(time.perf_counter() - start, 1),
        "command": " ".join(["python", "benchmarks/tune_mnli.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("\narm       lr_A      ratio  tune runs  tune steps  final steps  dev accuracy")
    for arm, a in arms.items():
        f = a["final"]
        print(f"{arm:<9} {f['learning_rate']:<9g} {f['loraplus_lr_ratio']:<6g} {a['tune_cost']['runs']:<10} "
              f"{a['tune_cost']['optimizer_steps']:<11} {f['steps']:<12} {f['dev_accuracy']:.4f}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
