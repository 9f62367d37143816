#!/usr/bin/env bash
# Data-parallel training on CPU: RANK_SIZE processes started by MindSpore's msrun, on this machine
# (scheduler on 127.0.0.1, loopback only) or, with --nodes, on several. Each rank reads its own
# shard of the data, gradients are averaged over the ranks, the learning rate is multiplied by RANK_SIZE.
# Usage: bash run_distribute_train_cpu.sh [RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground]
#            [--nodes N --node_rank K --master_addr HOST] [--master_port P] [train.py options...]
#   DATASET_PATH: a labelled folder, or - to train on captchas rendered on the fly (--synthetic_images N).
#   --dry_run: print the msrun command and each rank's environment (per machine); start nothing.
#   --foreground: wait for the end (output also on screen); default: run in the background.
#   The launcher's options (these and the machine options below) may also come after the train.py options.
#   --nodes N --node_rank K --master_addr HOST: RANK_SIZE ranks on N machines, RANK_SIZE / N on
#   this one (machine K: global ranks K * RANK_SIZE / N + local rank). Run the launcher on every
#   machine with the same RANK_SIZE, N, HOST and port, each with its own K; the msrun of the
#   machine whose address is HOST starts the scheduler.
#   Working folder: $WARPCTC_RUN_DIR (default <repo>/runs/distribute_train_cpu): msrun.log
#   (msrun_node<K>.log with --nodes), logs/worker_<global rank>.log, logs/scheduler.log (on the
#   scheduler's machine), checkpoint/rank_<global rank>/.
#   Scheduler port: --master_port, else $MASTER_PORT, else a free port (one machine) or 8118 (several).
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_rank_size_launch 0 "$@"
set -- "${TRAIN_OPTIONS[@]}"
rank_size="$RANK_SIZE_ARG"
dataset_path="$DATASET_PATH_ARG"
use_python_for_msrun
command -v msrun > /dev/null || die "msrun not found on PATH (it comes with the mindspore package)"
run_dir="$(run_folder distribute_train_cpu "$((1 - DRY_RUN))")"
echo "dataset: $dataset_path"
describe_ranks CPU "$rank_size"
msrun_train CPU "$rank_size" "$dataset_path" "$run_dir" "$@"
