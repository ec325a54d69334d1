#!/usr/bin/env bash
# One-command check of a GPU machine: mixed-precision training, export, speed.
#
#   benchmarks/gpu_check.sh [OUTPUT_JSON]        # default results/gpu_check.json
#
# Trains MNIST for 2 epochs under mixed_float16 with `python -m apps.train`
# (loss scaling by Keras's LossScaleOptimizer), checks that the training loss
# fell, that the dynamic loss scale is in the checkpoint and that the exported
# SavedModel serves float32 images as the Keras model predicts them, then
# times a `natural` and the default (`sq_free`) train step and PGD-40 in
# images/s (benchmarks/gpu_check.py). Writes one JSON file and exits non-zero
# if a check fails. Nothing is installed beyond requirements.txt. Sized to
# stay well under 8 minutes on one GPU (full MNIST, 2 epochs; not yet timed
# on one). MNIST comes from $SQ_KERAS_DATA_DIR (default ../shared/data beside
# the repository, as in .ci/run).
#
# Smaller sizes, e.g. to try it on a CPU, where float16 is emulated and slow
# (measured: 21 minutes on 2 cores shared with other jobs, load average ~10,
# all checks passed, with the sizes below):
#   GPU_CHECK_TRAIN_EXAMPLES=256 GPU_CHECK_EVAL_EXAMPLES=200 GPU_CHECK_BATCH_SIZE=32 \
#   GPU_CHECK_ATTACK_EXAMPLES=16 GPU_CHECK_TIMED_STEPS=1 GPU_CHECK_REPEATS=1 \
#     benchmarks/gpu_check.sh /tmp/gpu_check_cpu.json
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SQ_KERAS_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export SQ_KERAS_DATA_DIR="$(cd ../shared/data && pwd)"
fi

args=(--output="${1:-results/gpu_check.json}")
[ -n "${GPU_CHECK_TRAIN_EXAMPLES:-}" ] && args+=(--train_examples="$GPU_CHECK_TRAIN_EXAMPLES")
[ -n "${GPU_CHECK_EVAL_EXAMPLES:-}" ] && args+=(--eval_examples="$GPU_CHECK_EVAL_EXAMPLES")
[ -n "${GPU_CHECK_ATTACK_EXAMPLES:-}" ] && args+=(--attack_examples="$GPU_CHECK_ATTACK_EXAMPLES")
[ -n "${GPU_CHECK_BATCH_SIZE:-}" ] && args+=(--batch_size="$GPU_CHECK_BATCH_SIZE")
[ -n "${GPU_CHECK_TIMED_STEPS:-}" ] && args+=(--timed_steps="$GPU_CHECK_TIMED_STEPS")
[ -n "${GPU_CHECK_REPEATS:-}" ] && args+=(--repeats="$GPU_CHECK_REPEATS")
[ -n "${GPU_CHECK_EPOCHS:-}" ] && args+=(--epochs="$GPU_CHECK_EPOCHS")

exec python benchmarks/gpu_check.py "${args[@]}"
