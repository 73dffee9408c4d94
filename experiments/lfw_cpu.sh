#!/usr/bin/env bash
# LFW-a (Table 3) on a 2-core CPU: train the MA-VAE's lfw-cpu preset (60 minutes) and
# the three baselines' <method>-lfw-cpu presets (5 minutes each) one after another, each
# alone on the machine, then evaluate every checkpoint on the same fixed test episodes
# (5/20/80-way, 1/5-shot, 1,000 episodes, seed 0) and regenerate results/lfw.md and the
# README table. Runs go to runs/lfw-<tag>, results to results/lfw/<tag>/*.json.
#
#   bash experiments/lfw_cpu.sh [--skip-train]
set -euo pipefail
cd "$(dirname "$0")/.."
presets=(lfw-cpu protonet-lfw-cpu matching-lfw-cpu kaiser-lfw-cpu)
tags=(mavae-cpu60-style2048 protonet-cpu5 matching-cpu5 kaiser-cpu5)
minutes=(60 5 5 5)
bench() {  # bench INDEX --skip-eval | --skip-train
  python experiments/train_cpu_quick.py --preset "${presets[$1]}" --run-dir "runs/lfw-${tags[$1]}" \
    --tag "${tags[$1]}" "$2" \
    --note "${presets[$1]} preset, ${minutes[$1]}-minute wall-clock training budget (validation excluded)"
}
if [ "${1:-}" != "--skip-train" ]; then
  for i in "${!tags[@]}"; do bench "$i" --skip-eval; done
fi
for i in "${!tags[@]}"; do bench "$i" --skip-train; done
python scripts/update_readme.py
