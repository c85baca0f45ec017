#!/usr/bin/env bash
# LoRA vs LoRA+ on GLUE tasks, each method at its own tuned lr (`loraplus compare`), 2 seeds.
#
#   bash benchmarks/glue_compare.sh [mnli qqp sst2 qnli]     (default: all four)
#   LRS=3e-5,1e-4,3e-4 bash benchmarks/glue_compare.sh mnli_smollm2   (another lr_A grid)
#
# Runs go to runs/glue/TASK (resumable: rerun the same command after an interruption); report.md,
# curves.png and results.json are copied into results/glue/TASK/. Config per task: results/glue/TASK.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(mnli qqp sst2 qnli)
lrs=${LRS:-3e-4,1e-3,3e-3,1e-2}  # one grid for both methods, a factor ~3 apart
for t in "${tasks[@]}"; do
  .venv/bin/loraplus compare "results/glue/$t.yaml" --lrs "$lrs" --ratios 16 --seeds 1,2 \
    --output_dir "runs/glue/$t"
  mkdir -p "results/glue/$t"
  cp "runs/glue/$t/report.md" "runs/glue/$t/curves.png" "runs/glue/$t/results.json" "results/glue/$t/"
done
