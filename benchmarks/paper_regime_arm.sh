#!/usr/bin/env bash
# One arm of a paper-regime comparison re-run at an lr_A of your choice: does the arm's result depend on
# which lr its tuning picked (a tie, or a near one), or on the seeds (SEEDS, default the protocol's 1,2,3)?
# The tuning run at that lr is reused from benchmarks/paper_regime.sh's kept runs when it has one, so only
# the finals train.
#
#   bash benchmarks/paper_regime_arm.sh TASK METHOD LR_A   # e.g. qqp lora 3e-3: results in results/paper_regime/qqp_lora_lr3e-3/
#   SEEDS=4,5,6 bash benchmarks/paper_regime_arm.sh qnli lora 3e-3   # results in results/paper_regime/qnli_lora_lr3e-3_seeds4-6/
#
# Resumable like paper_regime.sh (kept runs in results/paper_regime/<name>/runs/; FRESH=1 reruns all).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 3 ] || { echo "usage: bash benchmarks/paper_regime_arm.sh TASK METHOD LR_A (e.g. qqp lora 3e-3)" >&2; exit 2; }
task=$1 method=$2 lr=$3
. benchmarks/paper_regime_protocol.sh
paper_regime_task "$task"
seeds=${SEEDS:-1,2,3}
name=${task}_${method}_lr$lr
[ "$seeds" = 1,2,3 ] || name=${name}_seeds${seeds//,/-}
runs=runs/paper_regime/$name
kept=results/paper_regime/$name/runs
. benchmarks/kept_runs.sh
start_runs "$runs" "$kept"
# the LoRA+ arms train at the protocol's ratio; compare names such an arm METHOD_rRATIO
ratio=""
case $method in loraplus) ratio=$ratio_loraplus ;; loraplus_init2) ratio=$ratio_loraplus_init2 ;; esac
arm=$method${ratio:+_r$ratio}
# ... and a tuning run ARM_lrLR with the lr as Python's :g prints it (3e-3 -> 0.003)
tuned=$(.venv/bin/python -c "import sys; print(f'{sys.argv[1]}_lr{float(sys.argv[2]):g}')" "$arm" "$lr")
shared=results/paper_regime/$task/runs/tune/$tuned
if [ -f "$shared/summary.json" ] && [ ! -e "$runs/tune/$tuned" ]; then mkdir -p "$runs/tune"; cp -r "$shared" "$runs/tune/"; fi
( while sleep 60; do keep_runs "$runs" "$kept"; done ) & keeper=$!
trap 'kill $keeper 2>/dev/null; keep_runs "$runs" "$kept"' EXIT
.venv/bin/loraplus compare "results/paper_regime/$task.yaml" --seeds "$seeds" --tune_max_steps "$tune_steps" \
  --methods "$method" --lrs "$lr" ${ratio:+--ratios "$ratio"} --output_dir "$runs"
cp "$runs/report.md" "$runs/curves.png" "$runs/results.json" "results/paper_regime/$name/"
