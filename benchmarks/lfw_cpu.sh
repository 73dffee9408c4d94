#!/usr/bin/env bash
# LFW-a (Table 3) on a 2-core CPU: train the MA-VAE's lfw-cpu preset (15 minutes) and
# the three baselines' <method>-lfw-cpu presets (5 minutes each) one after another, each
# alone on the machine, then evaluate every checkpoint on the same fixed test episodes
# (5/20/80-way, 1/5-shot, 1,000 episodes, seed 0) and regenerate results/lfw.md.
#
#   bash benchmarks/lfw_cpu.sh [--skip-train]
set -euo pipefail
cd "$(dirname "$0")/.."
skip_train="${1:-}"
bench() {  # bench PRESET TAG NOTE EXTRA_ARGS...
  local preset="$1" tag="$2" note="$3"; shift 3
  python benchmarks/train_cpu_quick.py --preset "$preset" --run-dir "runs/$tag" --tag "$tag" \
    --note "$note" "$@"
}
if [ "$skip_train" != "--skip-train" ]; then
  bench lfw-cpu lfw-cpu-seed0 "lfw-cpu preset, 15-minute wall-clock training budget (validation excluded)" --skip-eval
  for method in protonet matching kaiser; do
    bench "$method-lfw-cpu" "$method-lfw-cpu5" "$method-lfw-cpu preset, 5-minute wall-clock training budget (validation excluded)" --skip-eval
  done
fi
for tag in lfw-cpu-seed0 protonet-lfw-cpu5 matching-lfw-cpu5 kaiser-lfw-cpu5; do
  preset="${tag%5}"; preset="${preset%-seed0}"
  bench "$preset" "$tag" "$(python -c "import json,sys; print(json.load(open('results/lfw-$tag-training.json'))['note'])")" --skip-train
done
python scripts/update_readme.py
