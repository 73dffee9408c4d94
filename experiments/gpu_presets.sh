#!/usr/bin/env bash
# The paper's Omniglot presets on one CUDA GPU, each under a wall-clock training budget,
# in two calls that each fit a ~10-minute slot on a lent GPU machine:
#
#   GAUSSMEM_DATA=DATA_DIR PHASE=check bash experiments/gpu_presets.sh OUT_DIR
#   GAUSSMEM_DATA=DATA_DIR PHASE=train bash experiments/gpu_presets.sh OUT_DIR [MINUTES]
#
# PHASE=check (~2 minutes): the GPU tests (`pytest -m gpu`), so a broken CUDA path
# stops before any training, then the training-step and embedding throughput on the
# GPU (benchmarks/train_step_speed.py: 80 classes per step as in the paper's presets,
# 512 as in cpu-quick, 2048) -> OUT_DIR/speed-gpu.json.
#
# PHASE=train (~MINUTES + 2.5 minutes): first omniglot-5way alone for SOLO_MINUTES
# (default 1.5), validated every 1,000 steps: its record gives the GPU's images/s and
# minutes to 97% validation 5-way 1-shot with nothing else on the device. Then the
# other runs side by side for MINUTES each (default 4): omniglot-20way,
# omniglot-parallel, and cpu-quick and cpu-quick at 1,024 classes per step on the GPU.
# (omniglot-5way-to-20way trains exactly as omniglot-5way does, and only its test is
# 20-way, so the 5way run serves both rows of Table 1; PRESETS=5way-to-20way still
# trains it under its own name.) PRESETS=parallel-20way trains omniglot-parallel-20way
# (Table 2's 400-way model: 20-way tasks, batch 20), not run by default. The paper's
# presets take 160-800 images per step, far too few to keep a GPU busy, so several runs
# on one device train more steps in the same minutes than one after another; their
# records say that the device was shared (`concurrent_runs`). PRESETS="..." picks a subset of the run names below;
# PRESETS=cpu-quick-solo with MINUTES 2 trains cpu-quick alone on the device (its speed
# without sharing; validated every 1,000 steps); cpu-quick-affine is cpu-quick with the
# random affine distortions of the training images (augment.*), cpu-quick-trainval is
# cpu-quick trained on train + val (no validation, last checkpoint kept), and
# cpu-quick-lake on Kaiser et al.'s split (the same); none of these runs by default.
# NAME-tuned (5way-tuned, 20way-tuned, parallel-tuned, parallel-20way-tuned) trains that
# paper preset under the tag of the `-tuned` rows: cpu-quick's model and optimizer, the
# presets' own since 2026-11-27 (the plain names' older rows trained the library
# defaults; docs/model.md).
# CUDA_GRAPH=1 trains every run with `cuda_graph=true` (the step recorded once as a
# CUDA graph and replayed; PHASE=check times it first). SPEED_CLASSES (PHASE=check)
# picks the step sizes timed; VALIDATE_EVERY (default 2000) the validation and checkpoint
# interval of the side-by-side runs. A whole 30,000-step budget: MINUTES is only a cap,
# so e.g. `CUDA_GRAPH=1 VALIDATE_EVERY=3000 PRESETS="20way parallel-20way"` with
# MINUTES 6 trains both to 30,000 steps if the device is fast enough. SEEDS (default
# "0") trains each side-by-side run once per training seed: a seed S other than 0 adds
# "-seedS" to its tag, run directory and archive (the rows "Across training seeds" in
# results/omniglot.md averages), e.g. `SEEDS="1 2" PRESETS="20way-tuned"`.
# PRESETS=lfw-5way trains Table 3's paper preset (LFW-a faces, 30,000 steps); a lent
# machine gets no archive, so GAUSSMEM_DATA must hold the faces' pack (docs/lfw.md,
# "Machines without the archive"). Its record goes to results/lfw/<tag>/.
#
# Training only: each run writes its training record (results/omniglot/<tag>/training
# .json, with the GPU's name) and leaves its best checkpoint; OUT_DIR/<run>.tar.gz holds
# both (the run directory without last.ckpt, its log, the record), to unpack at the
# repository root (`tar -xzf RUN.tar.gz`) and evaluate anywhere with
#   python experiments/train_cpu_quick.py --skip-train --keep-record --run-dir runs/gpu/RUN \
#       --tag TAG --cells ...
# Evaluation needs no GPU: the memory of an evaluation episode lives on the CPU.
# Without gaussmem installed it runs from src/ (PYTHONPATH), so a machine that has
# torch, numpy, pillow, tqdm and safetensors needs nothing else. DEVICE=cpu (and tiny
# MINUTES and SOLO_MINUTES) dry-runs it on a CPU before a GPU is spent on it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: PHASE=check|train gpu_presets.sh OUT_DIR [MINUTES]}"
minutes="${2:-4}"
solo_minutes="${SOLO_MINUTES:-1.5}"
phase="${PHASE:?set PHASE=check or PHASE=train}"
device="${DEVICE:-cuda}"
presets="${PRESETS:-5way 20way parallel cpu-quick cpu-quick-1024}"
suffix=$([ "$device" = cpu ] && echo cpu-dryrun || echo gpu)
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GAUSSMEM_CACHE="${GAUSSMEM_CACHE:-$PWD/.cache}"
log="$out/gpu_presets-$phase.log"
# A CPU dry run keeps its records out of results/.
results_dir=$([ "$device" = cpu ] && echo runs/gpu-dryrun-results || echo results)
mkdir -p "$results_dir"
results="$PWD/$results_dir"
: >"$log"

if [ "$phase" = check ]; then
  if [ "$device" != cpu ]; then
    python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; \
print('GPU:', torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee -a "$log"
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_device.py \
      tests/test_cuda_graphs.py 2>&1 | tee -a "$log"
  fi
  python3 benchmarks/train_step_speed.py --device "$device" --classes "${SPEED_CLASSES:-80,512,2048}" \
    --steps "${SPEED_STEPS:-30}" --json "$out/speed-$suffix.json" >>"$log"
  python3 - "$out/speed-$suffix.json" <<'EOF' | tee -a "$log"
import json, sys
report = json.load(open(sys.argv[1]))
for row in report["training"]:
    print(f"{row['classes_per_step']:5d} classes/step  {row['variant']:<52}"
          f"{row['images_per_second']['median']:>10.0f} images/s")
for row in report["embedding"]:
    print(f"embed batch {row['embed_batch_size']:4d}  {row['images_per_second']['median']:.0f} images/s")
EOF
  exit 0
fi

preset_of() {  # run name -> "preset tag overrides..."
  case "$1" in
    5way|20way|5way-to-20way|parallel|parallel-20way) echo "omniglot-$1 $1-$suffix" ;;
    # cpu-quick's validation every 150 steps would cost more than its training here.
    cpu-quick) echo "cpu-quick cpu-quick-$suffix validation.every_steps=1000" ;;
    cpu-quick-1024) echo "cpu-quick cpu-quick-1024-$suffix validation.every_steps=1000 \
episodes.n_way=64" ;;
    # cpu-quick alone on the device (PRESETS=cpu-quick-solo): the GPU's own speed.
    cpu-quick-solo) echo "cpu-quick cpu-quick-solo-$suffix validation.every_steps=1000 \
checkpoint_every=1000" ;;
    # cpu-quick with random affine distortions (PRESETS=cpu-quick-affine): they scored
    # lower on validation after 15 and 40 CPU minutes (~2,200 and ~5,700 steps).
    cpu-quick-affine) echo "cpu-quick cpu-quick-affine-$suffix validation.every_steps=1000 \
augment.max_rotation_degrees=10 augment.max_scale=0.1 augment.max_shift=0.07" ;;
    # cpu-quick trained on train + val (PRESETS=cpu-quick-trainval): the paper's 1,200
    # characters, no validation, the last checkpoint kept.
    cpu-quick-trainval) echo "cpu-quick cpu-quick-trainval-$suffix \
data.train_subset=trainval data.val_subset=none" ;;
    # cpu-quick on Kaiser et al.'s split (PRESETS=cpu-quick-lake): their training and
    # test classes, no validation, the last checkpoint kept.
    cpu-quick-lake) echo "cpu-quick cpu-quick-lake-$suffix data.scheme=lake \
data.val_subset=none" ;;
    # The `-tuned` rows' runs (PRESETS=20way-tuned etc.): trained with cpu-quick's
    # settings spelled out as --set before they became the presets' own; now the preset.
    5way-tuned|20way-tuned|parallel-tuned|parallel-20way-tuned) echo "omniglot-${1%-tuned} \
$1-$suffix" ;;
    # Table 3's paper preset on faces (PRESETS=lfw-5way).
    lfw-5way) echo "lfw-5way lfw-5way-$suffix" ;;
    *) echo "unknown run $1" >&2; return 1 ;;
  esac
}

seed_suffix() {  # training seed -> "" for seed 0, else "-seedS" (tag, run and archive)
  if [ "$1" != 0 ]; then echo "-seed$1"; fi
}

train_run() {  # train_run NAME MINUTES CONCURRENT VALIDATE_EVERY SEED
  local name="$1" run_minutes="$2" concurrent="$3" every="$4" seed="$5" preset tag extra=()
  read -r preset tag rest <<<"$(preset_of "$name")"
  local dataset=omniglot
  case "$preset" in lfw-*) dataset=lfw ;; esac
  tag="$tag$(seed_suffix "$seed")"; name="$name$(seed_suffix "$seed")"
  extra=(--set "validation.every_steps=$every" --set "checkpoint_every=$every")
  if [ -n "${CUDA_GRAPH:-}" ]; then extra+=(--set cuda_graph=true); fi
  for override in ${rest:-}; do extra+=(--set "$override"); done
  rm -rf "runs/gpu/$name-$suffix"
  mkdir -p runs/gpu
  python3 experiments/train_cpu_quick.py --preset "$preset" --run-dir "runs/gpu/$name-$suffix" \
    --tag "$tag" --seed "$seed" --results "$results" --skip-eval --concurrent-runs "$concurrent" \
    --set "budget.max_minutes=$run_minutes" --set "device=$device" \
    --set "num_threads=${THREADS:-3}" "${extra[@]}" \
    --note "$preset preset on device $device, $run_minutes-minute wall-clock training budget (validation excluded); $concurrent other trainings shared the device" \
    >"runs/gpu/$name-$suffix.log" 2>&1 || {
      cp "runs/gpu/$name-$suffix.log" "$out/"; echo "FAILED: $name" >>"$log"; return 0; }
  # The run without last.ckpt (the best checkpoint is what gets evaluated), its log and
  # its record: one file per run (a lent machine returns few files). A run without
  # validation has no best checkpoint, and one stopped by the wall clock before its step
  # budget is resumed from its last one: those keep last.ckpt.
  local run_dir="runs/gpu/$name-$suffix" keep_last=(--exclude=last.ckpt)
  if [ ! -f "$run_dir/checkpoints/best.ckpt" ] || python3 -c "import json, sys
steps = json.load(open(sys.argv[1]))['step']
sys.exit(steps >= json.load(open(sys.argv[2]))['budget']['max_steps'])" \
      "$run_dir/summary.json" "$run_dir/config.json"; then
    keep_last=()
  fi
  tar -czf "$out/$name.tar.gz" "${keep_last[@]}" "runs/gpu/$name-$suffix" \
    "runs/gpu/$name-$suffix.log" "$results_dir/$dataset/$tag/training.json"
  echo "done: $name -> $name.tar.gz" >>"$log"
}

wanted() { case " $presets " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if wanted 5way; then train_run 5way "$solo_minutes" 0 1000 0; fi
side_by_side=()
for name in 20way 5way-to-20way parallel parallel-20way cpu-quick cpu-quick-1024 cpu-quick-solo \
    cpu-quick-affine cpu-quick-trainval cpu-quick-lake 5way-tuned 20way-tuned parallel-tuned \
    parallel-20way-tuned lfw-5way; do
  if wanted "$name"; then
    for seed in ${SEEDS:-0}; do side_by_side+=("$name $seed"); done
  fi
done
others=$(( ${#side_by_side[@]} - 1 ))
for run in "${side_by_side[@]}"; do
  read -r name seed <<<"$run"
  # Parameters that pass the step at every_steps=2000 in a few minutes validate ~3 times.
  train_run "$name" "$minutes" "$others" "${VALIDATE_EVERY:-2000}" "$seed" &
done
wait
trained=()
if wanted 5way; then trained+=(5way); fi
for run in "${side_by_side[@]}"; do
  read -r name seed <<<"$run"
  trained+=("$name$(seed_suffix "$seed")")
done
for name in "${trained[@]}"; do
  run_log="runs/gpu/$name-$suffix.log"
  if [ -f "$run_log" ]; then tail -n 4 "$run_log" | sed "s/^/[$name] /" >>"$log"; fi
done
cat "$log"
