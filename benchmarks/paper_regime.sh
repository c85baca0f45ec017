#!/usr/bin/env bash
# LoRA, LoRA+ (Init[1], ratio 4), LoRA+ (Init[2], ratio 16) and PEFT's Riemannian preconditioning on a GLUE
# task in the paper's regime (results/paper_regime/<task>.yaml: 3 epochs, SST-2 10, 3 seeds), each arm at its own lr_A
# tuned on a validation split carved from the training data, tuning runs about one epoch (250 steps; SST-2 176).
#
#   bash benchmarks/paper_regime.sh [mnli|qnli|qqp|sst2]   # default mnli; MNLI about 2.2 h alone on 2 CPU cores
#
# Resumable across machines: every finished run's config.yaml, summary.json and metrics.jsonl are kept
# in results/paper_regime/<task>/runs/ and put back into runs/ before compare starts, which then reuses
# them. Run it again after an interruption (FRESH=1 reruns everything instead); report.md, curves.png and results.json land in
# results/paper_regime/<task>/ when every run has finished.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:-mnli}
. benchmarks/paper_regime_protocol.sh
paper_regime_task "$task"
runs=runs/paper_regime/$task
kept=results/paper_regime/$task/runs
. benchmarks/kept_runs.sh
start_runs "$runs" "$kept"
( while sleep 60; do keep_runs "$runs" "$kept"; done ) & keeper=$!
trap 'kill $keeper 2>/dev/null; keep_runs "$runs" "$kept"' EXIT
.venv/bin/loraplus compare "results/paper_regime/$task.yaml" --seeds 1,2,3 --tune_max_steps "$tune_steps" \
  --methods lora,loraplus_init2,loraplus,riemannian \
  --lrs_lora 3e-4,1e-3,3e-3,1e-2 --lrs_riemannian 1e-3,3e-3,1e-2,3e-2 \
  --lrs_loraplus 3e-4,1e-3,3e-3 --ratios_loraplus "$ratio_loraplus" \
  --lrs_loraplus_init2 3e-4,1e-3,3e-3 --ratios_loraplus_init2 "$ratio_loraplus_init2" \
  --output_dir "$runs"
cp "$runs/report.md" "$runs/curves.png" "$runs/results.json" "results/paper_regime/$task/"
