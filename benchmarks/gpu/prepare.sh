#!/usr/bin/env bash
# bash benchmarks/gpu/prepare.sh [GLUE_DIR]   (GLUE_DIR default: ../shared/data/glue, relative to the repository)
#
# Builds gpu-bundle/ (git-ignored) for benchmarks/gpu/run.sh on a machine with one GPU and no network:
#   minilm/  all-MiniLM-L6-v2 (the built-in `minilm`) in float16 safetensors with its tokenizer; config.json says
#            float32, so from_pretrained (dtype "auto" in transformers 5) upcasts it on load and training runs in
#            float32 weights as it does here
#   mnli/    train.jsonl and dev.jsonl of the GLUE MNLI subset
#   wheels/  what that machine's Python 3.12 lacks: datasets and deepspeed with their missing dependencies, and
#            loraplus itself (for the `loraplus` command; run.sh imports the package from the working tree)
# Run it with the project's virtualenv (PYTHON=... to use another interpreter). Needs PyPI.
set -euo pipefail
GLUE=${1:+$(realpath -m "$1")}  # a given folder is relative to where the command runs
cd "$(dirname "$0")/../.."
ROOT=$PWD
GLUE=${GLUE:-$ROOT/../shared/data/glue}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
BUNDLE=gpu-bundle
MAX_MIB=60  # the working tree and carried folders travel together, 64 MiB at most

# The GPU machine has Python 3.12 with torch, transformers, peft, accelerate, pyarrow, pandas, fsspec, xxhash,
# requests, httpx, aiohttp, ninja, msgpack, py-cpuinfo, psutil, einops and nvidia-ml-py, but not these.
# Two datasets releases: 5.2 needs pyarrow >= 24, 4.8 runs on pyarrow >= 21 with huggingface-hub < 2; run.sh
# lets pip pick the one the machine's packages allow, so fsspec travels in the versions each one accepts.
DEEPSPEED=deepspeed==0.19.8
WHEELS_PY312=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5
              annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 fsspec==2026.9.0)
ALTERNATIVES=(datasets==4.8.5 fsspec==2026.2.0)

[ -f "$GLUE/mnli/train.jsonl" ] && [ -f "$GLUE/mnli/dev.jsonl" ] || {
  echo "error: no MNLI train.jsonl/dev.jsonl under $GLUE/mnli; pass the GLUE folder as the first argument" >&2; exit 2; }

STAGE=$(mktemp -d)  # built aside, moved into place whole: an interrupted run leaves the old bundle
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/mnli" "$STAGE/wheels"

echo "== model"
"$PYTHON" - "$STAGE/minilm" <<'EOF'
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from loraplus.train.models import resolve_model

source, target = resolve_model("minilm"), Path(sys.argv[1])
AutoModel.from_pretrained(source, dtype=torch.float16).save_pretrained(target, safe_serialization=True)
AutoTokenizer.from_pretrained(source).save_pretrained(target)
config = json.loads((target / "config.json").read_text())
config["dtype"] = config["torch_dtype"] = "float32"  # transformers 5 reads "dtype", 4.x "torch_dtype"
(target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
EOF

echo "== MNLI"
cp "$GLUE/mnli/train.jsonl" "$GLUE/mnli/dev.jsonl" "$STAGE/mnli/"

echo "== wheels"
PIP=("$PYTHON" -m pip --disable-pip-version-check -q)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"${PIP[@]}" download --no-deps "${TARGET[@]}" -d "$STAGE/wheels" "${WHEELS_PY312[@]}"
for alternative in "${ALTERNATIVES[@]}"; do
  "${PIP[@]}" download --no-deps "${TARGET[@]}" -d "$STAGE/wheels" "$alternative"
done
# PyPI ships deepspeed as source only; without its C++/CUDA ops (DS_BUILD_OPS=0) the wheel is pure Python,
# and the ZeRO stages with a torch optimizer need none of them.
DS_BUILD_OPS=0 "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$STAGE/wheels" "$DEEPSPEED"
# loraplus from a copy, so the build leaves no build/ folder in the working tree.
mkdir "$STAGE/src"
cp -r pyproject.toml README.md loraplus "$STAGE/src/"
"${PIP[@]}" wheel --no-deps --no-build-isolation -w "$STAGE/wheels" "$STAGE/src"
rm -rf "$STAGE/src"

size=$(du -sm "$STAGE" | cut -f1)
if [ "$size" -gt "$MAX_MIB" ]; then
  echo "error: the bundle is $size MiB, over $MAX_MIB MiB; the GPU machine takes 64 MiB with the working tree" >&2
  exit 1
fi
rm -rf "$BUNDLE"
mv "$STAGE" "$BUNDLE"
trap - EXIT
du -sh "$BUNDLE"/*; du -sh "$BUNDLE"
ls "$BUNDLE/wheels"
