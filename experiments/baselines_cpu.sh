#!/usr/bin/env bash
# Train the three baselines' Omniglot CPU presets one after another (each a timed run
# with the machine's threads and nothing else running), then evaluate each on the
# MA-VAE's fixed test episodes (all eight cells with 1,000 episodes, plus the online
# protocol) and regenerate results/omniglot.md and README's tables.
#
#   bash experiments/baselines_cpu.sh [minutes]      # default 5
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-5}"
bench() {  # bench METHOD EXTRA_ARGS...
  local method="$1"; shift
  python experiments/train_cpu_quick.py --preset "$method-cpu" \
    --run-dir "runs/$method-cpu$minutes" --tag "$method-cpu$minutes" \
    --set "budget.max_minutes=$minutes" \
    --note "$method-cpu preset, $minutes-minute wall-clock training budget (validation excluded), nothing else running" \
    "$@"
}
for method in protonet matching kaiser; do bench "$method" --skip-eval; done
for method in protonet matching kaiser; do bench "$method" --skip-train; done
python scripts/update_readme.py
