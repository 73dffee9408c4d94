#!/usr/bin/env bash
# The paper's Omniglot presets on one CUDA GPU, each under a wall-clock training budget,
# evaluated on the test cells of its table, in one go that fits a ~10-minute slot:
#
#   GAUSSMEM_DATA=DATA_DIR bash benchmarks/gpu_presets.sh OUT_DIR [MINUTES] [PRECISION]
#
# MINUTES per preset (default 1; the cosine schedule decays over it), PRECISION
# float32 (default) or bfloat16; PRESETS="omniglot-5way ..." runs a subset (default: the
# four Omniglot presets below, ~2.2 minutes each with validation, evaluation and
# start-up, so split them over two calls where one call may last 10 minutes; lfw-5way,
# Table 3, only when named, and it needs DATA_DIR/lfw). The first run also builds the
# preprocessed cache (GAUSSMEM_CACHE, default .cache) from the zips. First runs the GPU tests (`pytest -m gpu`) so a broken
# CUDA path stops it before any training. Writes OUT_DIR/gpu_presets.log and
# OUT_DIR/gpu_results.tar.gz: the results/<dataset>-<preset>-gpu-*.json records
# (training record + one per cell, each with command, seed, checkpoint hash, device and
# GPU name) to unpack into results/ and render with scripts/make_results_table.py.
# Without gaussmem installed it runs from src/ (PYTHONPATH), so a machine that has
# torch, numpy, pillow, tqdm and safetensors needs nothing else. DEVICE=cpu (and a tiny
# MINUTES) dry-runs the whole script on a CPU before a GPU is spent on it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: gpu_presets.sh OUT_DIR [MINUTES] [PRECISION]}"
minutes="${2:-1}"
precision="${3:-float32}"
device="${DEVICE:-cuda}"
presets="${PRESETS:-omniglot-5way omniglot-20way omniglot-5way-to-20way omniglot-parallel}"
tag_suffix=$([ "$device" = cpu ] && echo cpu-dryrun || echo gpu)
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export GAUSSMEM_CACHE="${GAUSSMEM_CACHE:-$PWD/.cache}"
log="$out/gpu_presets.log"
results="$PWD/runs/gpu-results"
mkdir -p "$results"

: >"$log"
if [ "$device" != cpu ]; then
  python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; \
print('GPU:', torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee -a "$log"
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_device.py 2>&1 | tee -a "$log"
fi

bench() {  # bench PRESET CELLS (a run directory this script made before is replaced)
  local preset="$1" cells="$2"
  case " $presets " in *" $preset "*) ;; *) return 0 ;; esac
  rm -rf "runs/gpu/$preset-$tag_suffix"
  python3 benchmarks/train_cpu_quick.py --preset "$preset" --run-dir "runs/gpu/$preset-$tag_suffix" \
    --tag "${preset#omniglot-}-$tag_suffix" --results "$results" --cells "$cells" \
    --set "budget.max_minutes=$minutes" --set "precision=$precision" --set "device=$device" \
    --set validation.every_steps=2000 \
    --note "$preset preset, device $device, $minutes-minute wall-clock training budget (validation excluded), precision $precision" \
    2>&1 | grep -v '^+' | tee -a "$log"
}
bench omniglot-5way 5w1s,5w5s,20w1s,20w5s
bench omniglot-20way 5w1s,5w5s,20w1s,20w5s
bench omniglot-5way-to-20way 20w1s,20w5s
bench omniglot-parallel 100w1s,100w5s,400w1s,400w5s
bench lfw-5way 5w1s,5w5s,20w1s,20w5s,80w1s,80w5s
tar -czf "$out/gpu_results.tar.gz" -C "$results" .
echo "wrote $out/gpu_results.tar.gz" | tee -a "$log"
