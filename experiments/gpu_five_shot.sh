#!/usr/bin/env bash
# MA-VAE variants aimed at Omniglot 5-way 5-shot (the one cell of Kaiser et al.'s numbers
# the 128-channel recipe trails), on one CUDA GPU in one call that fits a ~10-minute slot:
#
#   GAUSSMEM_DATA=DATA_DIR bash experiments/gpu_five_shot.sh OUT_DIR
#
# Everything trains side by side on the device, each run for a step budget with no wall
# clock (sharing the device changes only its speed, not what it trains):
# 1. Validation runs (train split): experiments/mavae_tuning.py --steps STEPS (2200) for
#    VARIANTS (default: the 128-channel recipe and its 5-shot variants), training seed
#    0; the recipe again with seed 1 (the spread between seeds a variant has to beat);
#    the recipe at LONG_STEPS (4400; more steps). Their rows are merged into
#    results/tuning/mavae_tuning_five_shot.json (the benchmarks take turns under a lock; each
#    row counts all the script's trainings as sharing the device).
# 2. As each validation run ends: its last checkpoint (the train + val runs below keep
#    their last one) on validation 5-way 5-shot x 10,000 episodes
#    (experiments/episode_errors.py) ->
#    results/episode_errors/val/episode_errors-<run>-last-val-5w5s-10000episodes.json.
# 3. The same variants (and the LONG_STEPS recipe) trained on train + val (the 1,200
#    characters), no validation: the runs for the test table, of which only the one
#    validation picks gets evaluated (python experiments/train_cpu_quick.py --skip-train
#    --keep-record ..., no GPU needed). Tag: cpu-quick-trainval-<steps>steps-<variant
#    without "512classes-latent1-">-gpu.
# OUT_DIR receives sweep.tar.gz (the validation runs without checkpoints, their logs,
# results/tuning/mavae_tuning_five_shot.* and the episode_errors JSONs), one
# trainval-<tag>.tar.gz per train + val run (run directory with last.ckpt, log, training
# record under runs/five-shot/records), and gpu_five_shot.log; unpack the archives at
# the repository root (then `python experiments/make_five_shot_table.py` ->
# results/five_shot_sweep.md).
# A lent machine returns few files, hence one archive per checkpoint.
# WORK_SECONDS (480) caps the training and evaluation; what finished is packed anyway.
# ERROR_EPISODES (10000) sets step 2's episodes.
# DEVICE=cpu with e.g. STEPS=4 LONG_STEPS=8 VALIDATE_EVERY=2 VARIANTS=<one> dry-runs it
# on a CPU, its records under runs/five-shot-dryrun instead of results/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: gpu_five_shot.sh OUT_DIR}"
device="${DEVICE:-cuda}"
steps="${STEPS:-2200}"
long_steps="${LONG_STEPS:-4400}"
every="${VALIDATE_EVERY:-275}"
error_episodes="${ERROR_EPISODES:-10000}"
baseline=512classes-latent1-hidden128
variants="${VARIANTS:-$baseline $baseline-10steps $baseline-3drawings $baseline-temperature4}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GAUSSMEM_CACHE="${GAUSSMEM_CACHE:-$PWD/.cache}"
log="$out/gpu_five_shot.log"
: >"$log"
if [ "$device" = cpu ]; then
  base=runs/five-shot-dryrun; report="$base/mavae_tuning.json"; errors_dir="$base"
  graph=(); on_gpu=""
else
  base=runs/five-shot; report=results/tuning/mavae_tuning_five_shot.json; errors_dir=results/episode_errors
  graph=(--cuda-graph); on_gpu="-gpu"
  python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; \
print('GPU:', torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee -a "$log"
fi
tuning_runs="$base/tuning"
records="$base/records"
rm -rf "$base"
mkdir -p "$tuning_runs" "$records" "$errors_dir"
read -r -a variant_list <<<"$variants"
# Trainings on the device at once: the validation runs, the seed-1 and long runs, and
# the train + val runs (one per variant and the long one).
concurrent=$(( 2 * ${#variant_list[@]} + 3 - 1 ))

tuning() {  # tuning STEPS EVERY SEED VARIANT...: one mavae_tuning benchmark
  local budget="$1" interval="$2" seed="$3"; shift 3
  python3 experiments/mavae_tuning.py --steps "$budget" --device "$device" "${graph[@]}" \
    --parallel "$#" --other-trainings "$((concurrent + 1 - $#))" --threads 1 \
    --validate-every "$interval" --runs "$tuning_runs" \
    --json "$report" --seed "$seed" --only "$@"
}

trainval() {  # trainval STEPS VARIANT: the variant on train + val, no validation
  local budget="$1" variant="$2" overrides=() tag
  tag="cpu-quick-trainval-${budget}steps-${variant#512classes-latent1-}$on_gpu"
  for override in $(python3 experiments/mavae_tuning.py --print-overrides "$variant"); do
    overrides+=(--set "$override")
  done
  if [ "$device" != cpu ]; then overrides+=(--set cuda_graph=true); fi
  python3 experiments/train_cpu_quick.py --preset cpu-quick --run-dir "$base/$tag" \
    --tag "$tag" --seed 0 --results "$records" --skip-eval --concurrent-runs "$concurrent" \
    "${overrides[@]}" --set budget.max_minutes=none --set "budget.max_steps=$budget" \
    --set data.train_subset=trainval --set data.val_subset=none --set "device=$device" \
    --set num_threads=1 \
    --note "experiments/gpu_five_shot.sh: mavae_tuning variant $variant on train + val, \
$budget steps; $concurrent other trainings shared the device" >"$base/$tag.log" 2>&1 \
    || echo "FAILED: trainval $variant ($base/$tag.log)" >>"$log"
}

validation_5w5s() {  # validation_5w5s RUN_DIR PID: once the run ends, its 5w5s episodes
  local run_dir="$1" pid="$2"
  while [ ! -f "$run_dir/summary.json" ] && kill -0 "$pid" 2>/dev/null; do sleep 5; done
  if [ ! -f "$run_dir/summary.json" ]; then
    echo "no summary: $run_dir" >>"$log"; return 0
  fi
  OMP_NUM_THREADS=2 python3 experiments/episode_errors.py \
    --checkpoint "$run_dir/checkpoints/last.ckpt" --split val --cells 5w5s \
    --episodes "$error_episodes" --json \
    "$errors_dir/episode_errors-$(basename "$run_dir")-last-val-5w5s-${error_episodes}episodes.json" \
    >>"$log" 2>&1 || echo "FAILED: episode_errors $run_dir" >>"$log"
}

work() {
  local pids=() watchers=()
  tuning "$steps" "$every" 0 "${variant_list[@]}" >>"$log" 2>&1 & pids+=($!)
  local main_tuning=$!
  tuning "$steps" "$every" 1 "$baseline" >>"$log" 2>&1 & pids+=($!)
  local seed1_tuning=$!
  tuning "$long_steps" "$((2 * every))" 0 "$baseline" >>"$log" 2>&1 & pids+=($!)
  local long_tuning=$!
  for variant in "${variant_list[@]}"; do
    trainval "$steps" "$variant" & pids+=($!)
  done
  trainval "$long_steps" "$baseline" & pids+=($!)
  for variant in "${variant_list[@]}"; do
    validation_5w5s "$tuning_runs/${steps}steps$on_gpu-$variant" "$main_tuning" &
    watchers+=($!)
  done
  validation_5w5s "$tuning_runs/${steps}steps$on_gpu-$baseline-seed1" "$seed1_tuning" &
  watchers+=($!)
  validation_5w5s "$tuning_runs/${long_steps}steps$on_gpu-$baseline" "$long_tuning" &
  watchers+=($!)
  wait "${pids[@]}" "${watchers[@]}" || true
}

export -f tuning trainval validation_5w5s work
export device steps long_steps every error_episodes baseline variants base report errors_dir on_gpu \
  tuning_runs records log concurrent
# Arrays do not cross `export`; work() rebuilds them from these strings.
export graph_flag="${graph[*]:-}"
timeout --signal=TERM "${WORK_SECONDS:-480}" bash -c '
  graph=(); if [ -n "$graph_flag" ]; then graph=($graph_flag); fi
  read -r -a variant_list <<<"$variants"
  work' || echo "work ended with $? (124: WORK_SECONDS ran out)" >>"$log"

# Pack what finished: the validation runs without checkpoints, then one archive per
# train + val run with its last checkpoint.
tar -czf "$out/sweep.tar.gz" --exclude='*.ckpt' "$tuning_runs" "$report" \
  "${report%.json}.md" $(ls "$errors_dir"/episode_errors-*last-val-5w5s-*episodes.json \
  2>/dev/null || true)
for run_dir in "$base"/cpu-quick-trainval-*; do
  [ -d "$run_dir" ] || continue
  tag="$(basename "$run_dir")"
  tar -czf "$out/trainval-$tag.tar.gz" --exclude=best.ckpt "$run_dir" "$base/$tag.log" \
    $(ls "$records"/omniglot/"$tag"/training.json 2>/dev/null || true)
done
ls -la "$out" >>"$log"
