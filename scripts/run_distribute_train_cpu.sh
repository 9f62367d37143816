#!/usr/bin/env bash
# Data-parallel training on this machine's CPU: RANK_SIZE processes started by MindSpore's msrun
# (scheduler on 127.0.0.1, loopback only). Each rank reads its own shard of the data, gradients
# are averaged over the ranks, the learning rate is multiplied by RANK_SIZE.
# Usage: bash run_distribute_train_cpu.sh [RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground] [train.py options...]
#   --dry_run: print the msrun command and each rank's environment; start nothing.
#   --foreground: wait for the end (output also on screen); default: run in the background.
#   Working folder: $WARPCTC_RUN_DIR (default <repo>/runs/distribute_train_cpu): msrun.log,
#   logs/worker_<rank>.log, logs/scheduler.log, checkpoint/rank_<rank>/.
#   Scheduler port: $MASTER_PORT (default: a free port).
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_rank_size_launch "$@"
set -- "${TRAIN_OPTIONS[@]}"
rank_size="$RANK_SIZE_ARG"
dataset_path="$DATASET_PATH_ARG"
use_python_for_msrun
command -v msrun > /dev/null || die "msrun not found on PATH (it comes with the mindspore package)"
run_dir="$(run_folder distribute_train_cpu "$((1 - DRY_RUN))")"
echo "dataset: $dataset_path"
echo "ranks: $rank_size (CPU, each reads 1/$rank_size of the data)"
msrun_train CPU "$rank_size" "$dataset_path" "$run_dir" "$@"
