#!/usr/bin/env bash
# OUT=results-folder bash benchmarks/gpu/run.sh   (from the repository root, gpu-bundle/ there: see prepare.sh)
#
# On a machine with one GPU and no network, in about 8 minutes at most:
#   a. engines: LoRA+ optimizer groups under FSDP1 (use_orig_params), FSDP2, DeepSpeed ZeRO-2 and ZeRO-3, each a
#      short `loraplus train` run launched as the README says (check_engines.py) -> engines.json, engines.log
#   b. MNLI compare: `loraplus compare`, tuned LoRA vs LoRA+ (ratio 16) on MiniLM, r=8, alpha=8, query+value,
#      batch 32, 3 epochs, one lr grid for both, seeds 1,2,3; train.jsonl trains (10% carved out for
#      validation), dev.jsonl is the test split -> report.md, results.json, curves.png, compare.log, runs.tar.gz
# a and b share the GPU at once: MiniLM keeps an H200 far from busy, and a runs beside b in its own processes.
# b's wall-clock numbers are therefore not speed measurements; its accuracies are what it is for.
#
# Time estimate for b on an H200 (bf16): 254 steps per epoch, 762 per run; a step of MiniLM at batch 32 costs
# ~15 ms (kernel launches, not FLOPs), so ~12 s of training, ~5 s for 12 evaluations and checkpoints, ~7 s to
# load, tokenise and score: ~25 s a run. Each method is one lane of 5 tuning + 3 final runs (~3.5 min); the two
# lanes run side by side. a: 4 engines x ~40 s (launcher, imports, DeepSpeed set-up) ~2.5 min, beside b.
# Guards: a is cut at ENGINE_BUDGET_S, b at what is left of BUDGET_S less a minute to write its report, so a's
# result is saved whatever b does. Settings below can be overridden from the environment (e.g. LRS=...).
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the folder that receives the results}"
BUNDLE=${BUNDLE:-gpu-bundle}
SITE=${SITE:-/tmp/site}
WORK=${WORK:-/tmp/loraplus-gpu}
BUDGET_S=${BUDGET_S:-480}
ENGINE_BUDGET_S=${ENGINE_BUDGET_S:-300}
ENGINES=${ENGINES:-fsdp1,fsdp2,zero2,zero3}
LRS=${LRS:-2e-4,6e-4,2e-3,6e-3,2e-2}   # factor ~3 over 100x, meant to bracket both arms' best lr_A
HEAD_LR=${HEAD_LR:-3e-3}               # classifier head, both arms (LoRA's best one-epoch lr on CPU, results/speed)
SEEDS=${SEEDS:-1,2,3}
EPOCHS=${EPOCHS:-3}
# For a rehearsal on a CPU: PYTHON=.venv/bin/python DEVICE=cpu COMPARE_EXTRA="--max_train_samples 64 --max_steps 4"
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
read -r -a COMPARE_EXTRA <<<"${COMPARE_EXTRA:-}"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

[ -d "$BUNDLE/wheels" ] && [ -d "$BUNDLE/minilm" ] && [ -d "$BUNDLE/mnli" ] || {
  echo "error: no $BUNDLE/ with wheels/, minilm/ and mnli/; build it with benchmarks/gpu/prepare.sh and carry it" >&2
  exit 2; }
mkdir -p "$OUT" "$WORK"
"$PYTHON" benchmarks/gpu/install_wheels.py "$BUNDLE/wheels" "$SITE" || exit 1
# The working tree comes first: loraplus runs as checked out; the wheel brings the `loraplus` command.
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$WORK/hf"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg

"$PYTHON" - "$BUNDLE/minilm" <<'EOF' 2>&1 | tee "$OUT/engines.log"
import importlib.metadata as metadata
import sys

import torch

from loraplus.train.models import load_model, load_tokenizer

print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available()
      else "NO GPU", "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for dist in ("transformers", "peft", "accelerate", "datasets", "deepspeed", "pyarrow"):
    try:
        print(dist, metadata.version(dist))
    except metadata.PackageNotFoundError:
        print(dist, "MISSING")
# The bundle's weights are float16; training must see float32 weights (config.json asks for them).
model = load_model(sys.argv[1], task="classification", num_labels=3)
print("minilm loads as", model.dtype, "with a", type(load_tokenizer(sys.argv[1])).__name__)
sys.exit(0 if model.dtype == torch.float32 else 1)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "error: the environment check failed (see above)" >&2; exit 1; }

echo "== a. engines (in the background, at most ${ENGINE_BUDGET_S} s)"
timeout -k 15 "$ENGINE_BUDGET_S" "$PYTHON" benchmarks/gpu/check_engines.py --model "$BUNDLE/minilm" \
  --data "$BUNDLE/mnli" --device "$DEVICE" --engines "$ENGINES" --out "$OUT" --work "$WORK/engines" --timeout 150 \
  >>"$OUT/engines.log" 2>&1 &
ENGINES_PID=$!

echo "== b. MNLI compare, lanes lora and loraplus"
COMPARE=(--model_name_or_path "$BUNDLE/minilm" --train_file "$BUNDLE/mnli/train.jsonl"
         --test_file "$BUNDLE/mnli/dev.jsonl" --text_pair_column text_pair --lora_r 8 --lora_alpha 8
         --lora_target_modules query,value --per_device_train_batch_size 32 --num_train_epochs "$EPOCHS"
         --eval_steps 64 --learning_rate "$HEAD_LR" --loraplus_lr_other "$HEAD_LR" --report_to none
         --lrs "$LRS" --seeds "$SEEDS" --ratios 16 --output_dir "$WORK/compare" "${COMPARE_EXTRA[@]}")
COMPARE_BUDGET=$(( BUDGET_S - $(elapsed) - 60 ))
lane() {  # one method's compare: its tuning runs, then its final runs; disjoint folders in one compare folder
  OMP_NUM_THREADS=4 timeout -k 15 "$COMPARE_BUDGET" loraplus compare "${COMPARE[@]}" --methods "$1" \
    >"$WORK/lane-$1.log" 2>&1
}
lane lora & LORA_PID=$!
lane loraplus & LORAPLUS_PID=$!
wait "$LORA_PID"; lora_status=$?
wait "$LORAPLUS_PID"; loraplus_status=$?
{ for method in lora loraplus; do echo "== lane $method"; cat "$WORK/lane-$method.log"; done; } >"$OUT/compare.log"
if [ "$lora_status" -eq 0 ] && [ "$loraplus_status" -eq 0 ]; then
  # Every run has its summary.json now, so this trains nothing: it reads both lanes and writes one report.
  timeout 60 loraplus compare "${COMPARE[@]}" --methods lora,loraplus >>"$OUT/compare.log" 2>&1
  cp "$WORK/compare/report.md" "$WORK/compare/results.json" "$WORK/compare/curves.png" "$OUT/" 2>/dev/null
  compare_status=$?
else
  echo "compare incomplete (lane exits: lora $lora_status, loraplus $loraplus_status; 124 = out of time)" \
    | tee -a "$OUT/compare.log"
  compare_status=1
fi
# Every run's config, metrics and summary (not its checkpoints), finished or not.
(cd "$WORK/compare" 2>/dev/null && find . -name summary.json -o -name metrics.jsonl -o -name config.yaml \
  | tar -czf "$OUT/runs.tar.gz" -T -)

wait "$ENGINES_PID"; engines_status=$?
echo "== a. engines (exit $engines_status)"; grep -E "^(PASS|FAIL) " "$OUT/engines.log"
echo "== b. compare (exit $compare_status)"; [ -f "$OUT/report.md" ] && cat "$OUT/report.md"
echo "done in $(elapsed) s; results in $OUT"
[ "$engines_status" -eq 0 ] && [ "$compare_status" -eq 0 ]
