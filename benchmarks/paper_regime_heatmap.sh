#!/usr/bin/env bash
# The (lr_A, ratio) heatmap on MNLI for each initialisation, the evidence for the CLI's default ratio and init:
# PEFT's Init[1] (A random, B = 0: --lora_init A) and the paper's Init[2] (A = 0, B random: --lora_init B).
# Same model, LoRA and data as results/paper_regime/mnli.yaml; each cell one seed-1 run of one epoch of the
# carved training split (250 steps), scored on that validation split at its last evaluation.
#
#   bash benchmarks/paper_regime_heatmap.sh    # 24 runs, about 6,000 optimizer steps; resumable
#
# Resumable across machines as benchmarks/paper_regime.sh is: finished runs are kept in
# results/paper_regime/mnli_heatmap/init_*/ and put back before each sweep starts (FRESH=1 reruns them all).
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/kept_runs.sh
for init in A B; do
  runs=runs/paper_regime/mnli_heatmap/init_$init
  kept=results/paper_regime/mnli_heatmap/init_$init
  start_runs "$runs" "$kept"
  ( while sleep 60; do keep_runs "$runs" "$kept"; done ) & keeper=$!
  trap 'kill $keeper 2>/dev/null; keep_runs "$runs" "$kept"' EXIT
  .venv/bin/loraplus sweep results/paper_regime/mnli.yaml --lora_init "$init" --seed 1 --max_steps 250 \
    --lr 3e-4,1e-3,3e-3 --ratio 1,4,16,64 --output_dir "$runs"
  kill $keeper 2>/dev/null; trap - EXIT
  keep_runs "$runs" "$kept"
  cp "$runs/sweep.json" "$runs/heatmap.png" "$kept/"
done
