#!/usr/bin/env bash
# Data-parallel training on RANK_SIZE GPUs of this machine (NCCL): started by Open MPI's mpirun
# when it is on PATH (as the original), else by MindSpore's msrun.
# Usage: bash run_distribute_train_for_gpu.sh [RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground] [train.py options...]
#   (also available as run_distribute_train_gpu.sh)
#   --dry_run: print the launcher command and each rank's environment; start nothing.
#   --foreground: wait for the end (output also on screen); default: run in the background.
#   Working folder: $WARPCTC_RUN_DIR (default <repo>/runs/distribute_train_gpu): train.log (mpirun) or
#   msrun.log, per-rank logs under log_output/ (mpirun) or logs/worker_<rank>.log (msrun),
#   checkpoint/rank_<rank>/. msrun's scheduler port: $MASTER_PORT (default: a free port).
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_rank_size_launch "$@"
set -- "${TRAIN_OPTIONS[@]}"
rank_size="$RANK_SIZE_ARG"
dataset_path="$DATASET_PATH_ARG"

# mpirun only when it is Open MPI: MindSpore reads the rank from Open MPI's OMPI_COMM_WORLD_* variables.
launcher=""
mpirun_note=""
if command -v mpirun > /dev/null; then
    if mpirun --version 2>&1 | grep -qi "open mpi\|open-mpi\|openrte"; then
        launcher=mpirun
    else
        mpirun_note="the mpirun on PATH is not Open MPI"
    fi
fi
if [[ -z "$launcher" ]]; then
    use_python_for_msrun
    if command -v msrun > /dev/null; then
        launcher=msrun
    elif [[ -n "$mpirun_note" ]]; then
        die "$mpirun_note (MindSpore needs Open MPI's) and msrun is not on PATH; install Open MPI or MindSpore's msrun"
    else
        die "neither mpirun (Open MPI) nor msrun is on PATH; install Open MPI, or put MindSpore's msrun (it comes with the mindspore package) on PATH"
    fi
fi
run_dir="$(run_folder distribute_train_gpu "$((1 - DRY_RUN))")"
echo "dataset: $dataset_path"
echo "ranks: $rank_size (GPU, each reads 1/$rank_size of the data)"
if [[ -n "$mpirun_note" ]]; then
    echo "note: $mpirun_note; using msrun"
fi
if [[ "$launcher" == msrun ]]; then
    msrun_train GPU "$rank_size" "$dataset_path" "$run_dir" "$@"
    exit 0
fi

cmd=(mpirun -n "$rank_size")
if [[ "$(id -u)" == 0 ]]; then
    cmd+=(--allow-run-as-root)
fi
cmd+=(--output-filename "$run_dir/log_output" --merge-stderr-to-stdout
      "$PYTHON" "$REPO_DIR/train.py" --dataset_path "$dataset_path" --platform GPU --run_distribute
      --save_checkpoint_path "$run_dir/checkpoint" "$@")
if [[ "$DRY_RUN" == 1 ]]; then
    echo "dry run: nothing is started. mpirun would run:"
    echo "cd $(quote_cmd "$run_dir") && $(quote_cmd "${cmd[@]}") > $(quote_cmd "$run_dir/train.log") 2>&1"
    for ((r = 0; r < rank_size; r++)); do
        echo "rank $r: env (set by mpirun) OMPI_COMM_WORLD_RANK=$r OMPI_COMM_WORLD_SIZE=$rank_size" \
             "OMPI_COMM_WORLD_LOCAL_RANK=$r (MindSpore turns it into RANK_ID=$r DEVICE_ID=$r);" \
             "log $run_dir/log_output/<job>/rank.$r/stdout; checkpoints $run_dir/checkpoint/rank_$r"
    done
    exit 0
fi
echo "mpirun: $rank_size GPU process(es)"
echo "launcher log: $run_dir/train.log (all ranks)"
echo "rank logs: $run_dir/log_output/<job>/rank.<rank>/stdout"
echo "checkpoints: $run_dir/checkpoint/rank_<rank> (unless --save_checkpoint_path says otherwise)"
cd "$run_dir"
status=0
run_logged "$FOREGROUND" "$run_dir/train.log" "${cmd[@]}" || status=$?
if [[ "$status" != 0 ]]; then
    echo "$(basename "$0"): error: training failed (mpirun exit status $status); see $run_dir/train.log" >&2
    exit "$status"
fi
