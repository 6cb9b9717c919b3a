#!/usr/bin/env bash
# On a machine with PyTorch + transformers: train the tiny model briefly, export it to HF layout,
# and compare moetrain's logits with transformers' DeepseekV2ForCausalLM on the same tokens.
# Usage: scripts/hf-parity.sh [workdir]
set -euo pipefail
cd "$(dirname "$0")/.."
w=${1:-$(mktemp -d)}
mkdir -p "$w"
node dist/src/cli/main.js train --device cpu --steps 3 --schedule.warmup_steps 0 --run_dir "$w/run" > "$w/train.log"
node dist/src/cli/main.js convert --format hf --from "$w/run/checkpoints/step-00000003" --to "$w/hf"
node dist/bench/hf_logits.js "$w/hf" "$w/logits.json"
python3 bench/hf_parity.py "$w/hf" "$w/logits.json"
