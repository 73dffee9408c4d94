#!/usr/bin/env bash
# Train the three baselines' CPU presets one after another (each a timed run with the
# machine's threads and nothing else running), then evaluate them on the MA-VAE's fixed
# test episodes, two 1-thread evaluations side by side, and regenerate
# results/omniglot.md.
#
#   bash benchmarks/baselines_cpu.sh [minutes]      # default 5
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-5}"
table1="5w1s,5w5s,20w1s,20w5s"
table2="100w1s,100w5s,400w1s,400w5s"
bench() {  # bench METHOD EXTRA_ARGS...
  local method="$1"; shift
  python benchmarks/train_cpu_quick.py --preset "$method-cpu" \
    --run-dir "runs/$method-cpu$minutes" --tag "$method-cpu$minutes" \
    --set "budget.max_minutes=$minutes" \
    --note "$method-cpu preset, $minutes-minute wall-clock training budget (validation excluded); evaluations ran as two 1-thread processes side by side" \
    "$@"
}
for method in protonet matching kaiser; do
  bench "$method" --skip-eval
done
bench protonet --skip-train --eval-threads 1 --cells "$table1,$table2" &
bench matching --skip-train --eval-threads 1 --cells "$table1,$table2" &
wait
bench kaiser --skip-train --eval-threads 1 --cells "$table1,online" &
bench kaiser --skip-train --eval-threads 1 --cells "$table2" &
wait
python scripts/make_results_table.py
