#!/usr/bin/env bash
# Checkpoints for experiments/open_set.py: the MA-VAE and the three baselines, each with its
# CPU preset and the same wall-clock budget (validation excluded), one after another with
# one thread, on Omniglot and on LFW-a. Runs go to runs/os-<dataset>-<method>; checkpoints
# are not committed.
#
#   bash experiments/open_set_train.sh [OMNIGLOT_MINUTES [LFW_MINUTES]]   # default 4 3
#   DATASETS=lfw bash experiments/open_set_train.sh      # one dataset's runs only
#   METHODS="mavae protonet" RUN_TAG=-15min bash experiments/open_set_train.sh 15
#       # some methods only (two such lists side by side use both cores), into
#       # runs/os-<dataset>-<method><RUN_TAG>
set -euo pipefail
cd "$(dirname "$0")/.."
omniglot_minutes=${1:-4}
lfw_minutes=${2:-3}
export OMP_NUM_THREADS=1
train() {  # train DATASET METHOD PRESET MINUTES
  python -m gaussmem train --method "$2" --preset "$3" --max-minutes "$4" \
    --run-dir "runs/os-$1-$2${RUN_TAG:-}" --overwrite --no-progress
}
omniglot_presets=(cpu-quick protonet-cpu matching-cpu kaiser-cpu)
lfw_presets=(lfw-cpu protonet-lfw-cpu matching-lfw-cpu kaiser-lfw-cpu)
methods=(mavae protonet matching kaiser)
datasets=" ${DATASETS:-omniglot lfw} "
chosen=" ${METHODS:-${methods[*]}} "
for i in "${!methods[@]}"; do
  [[ "$chosen" == *" ${methods[$i]} "* ]] || continue
  [[ "$datasets" != *" omniglot "* ]] ||
    train omniglot "${methods[$i]}" "${omniglot_presets[$i]}" "$omniglot_minutes"
  [[ "$datasets" != *" lfw "* ]] || train lfw "${methods[$i]}" "${lfw_presets[$i]}" "$lfw_minutes"
done
