#!/usr/bin/env bash
# Data-parallel training on RANK_SIZE GPUs (NCCL): started by Open MPI's mpirun when it is on PATH
# (as the original), else by MindSpore's msrun. Several machines: --hostfile FILE (mpirun starts
# every machine's ranks from here), or --nodes N --node_rank K --master_addr HOST (msrun, run on
# every machine).
# Usage: bash run_distribute_train_for_gpu.sh [RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground]
#            [--nodes N --node_rank K --master_addr HOST] [--master_port P] [--hostfile FILE] [train.py options...]
#   DATASET_PATH: a labelled folder, or - to train on captchas rendered on the fly (--synthetic_images N).
#   (also available as run_distribute_train_gpu.sh)
#   --dry_run: print the launcher command and each rank's environment (per machine); start nothing.
#   --foreground: wait for the end (output also on screen); default: run in the background.
#   The launcher's options (these and the machine options below) may also come after the train.py options.
#   --hostfile FILE: Open MPI hostfile, one "host slots=<GPUs>" line per machine, passed to mpirun;
#   ranks fill the hosts in file order.
#   --nodes N --node_rank K --master_addr HOST [--master_port P]: msrun (even where mpirun is on
#   PATH), RANK_SIZE / N ranks on this machine, global ranks K * RANK_SIZE / N + local rank; the
#   same RANK_SIZE, N, HOST and port on every machine, each with its own K.
#   Working folder: $WARPCTC_RUN_DIR (default <repo>/runs/distribute_train_gpu): train.log (mpirun)
#   or msrun.log (msrun_node<K>.log with --nodes), per-rank logs under log_output/ (mpirun) or
#   logs/worker_<global rank>.log (msrun), checkpoint/rank_<global rank>/. msrun's scheduler port:
#   --master_port, else $MASTER_PORT, else a free port (one machine) or 8118 (several).
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_rank_size_launch 1 "$@"
set -- "${TRAIN_OPTIONS[@]}"
rank_size="$RANK_SIZE_ARG"
dataset_path="$DATASET_PATH_ARG"
set_dataset_option "$dataset_path"

# mpirun only when it is Open MPI: MindSpore reads the rank from Open MPI's OMPI_COMM_WORLD_* variables.
# --nodes asks for msrun on each machine, so mpirun is not looked for then.
launcher=""
mpirun_note=""
if [[ -z "$NODES" ]] && command -v mpirun > /dev/null; then
    if mpirun --version 2>&1 | grep -qi "open mpi\|open-mpi\|openrte"; then
        launcher=mpirun
    else
        mpirun_note="the mpirun on PATH is not Open MPI"
    fi
fi
if [[ -n "$HOSTFILE_ARG" && -z "$launcher" ]]; then
    die "--hostfile is passed to Open MPI's mpirun, but ${mpirun_note:-mpirun is not on PATH}"
fi
if [[ -z "$launcher" ]]; then
    use_python_for_msrun
    if command -v msrun > /dev/null; then
        launcher=msrun
    elif [[ -n "$NODES" ]]; then
        die "--nodes starts MindSpore's msrun on each machine, but msrun is not on PATH" \
            "(it comes with the mindspore package)"
    elif [[ -n "$mpirun_note" ]]; then
        die "$mpirun_note (MindSpore needs Open MPI's) and msrun is not on PATH; install Open MPI or MindSpore's msrun"
    else
        die "neither mpirun (Open MPI) nor msrun is on PATH; install Open MPI, or put MindSpore's msrun (it comes with the mindspore package) on PATH"
    fi
fi
run_dir="$(run_folder distribute_train_gpu "$((1 - DRY_RUN))")"
echo "dataset: $dataset_path"
if [[ -n "$HOSTFILE_ARG" ]]; then
    echo "ranks: $rank_size on the ${#HOST_NAMES[@]} machine(s) of $HOSTFILE_ARG (GPU, each reads 1/$rank_size of the data)"
else
    describe_ranks GPU "$rank_size"
fi
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
if [[ -n "$HOSTFILE_ARG" ]]; then
    cmd+=(--hostfile "$HOSTFILE_ARG")
fi
cmd+=(--output-filename "$run_dir/log_output" --merge-stderr-to-stdout
      "$PYTHON" "$REPO_DIR/train.py" "${DATASET_OPTION[@]}" --platform GPU --run_distribute
      --save_checkpoint_path "$run_dir/checkpoint" "$@")
if [[ "$DRY_RUN" == 1 ]]; then
    echo "dry run: nothing is started. mpirun would run:"
    echo "cd $(quote_cmd "$run_dir") && $(quote_cmd "${cmd[@]}") > $(quote_cmd "$run_dir/train.log") 2>&1"
    # mpirun's default placement fills each host's slots in hostfile order; without one, all ranks are here.
    if [[ -n "$HOSTFILE_ARG" ]]; then
        hosts=("${HOST_NAMES[@]}")
        slots=("${HOST_SLOTS[@]}")
    else
        hosts=("")
        slots=("$rank_size")
    fi
    rank=0
    for i in "${!slots[@]}"; do
        [[ "$rank" -lt "$rank_size" ]] || break
        count=$((slots[i] < rank_size - rank ? slots[i] : rank_size - rank))
        if [[ -n "$HOSTFILE_ARG" ]]; then
            echo "host ${hosts[$i]} (slots ${slots[$i]}): global ranks $rank..$((rank + count - 1));" \
                 "their logs and checkpoints at these paths on that machine"
        fi
        for ((local_rank = 0; local_rank < count; local_rank++, rank++)); do
            echo "rank $rank: env (set by mpirun) OMPI_COMM_WORLD_RANK=$rank OMPI_COMM_WORLD_SIZE=$rank_size" \
                 "OMPI_COMM_WORLD_LOCAL_RANK=$local_rank (MindSpore turns it into RANK_ID=$rank DEVICE_ID=$local_rank);" \
                 "log $run_dir/log_output/<job>/rank.$rank/stdout; checkpoints $run_dir/checkpoint/rank_$rank"
        done
    done
    exit 0
fi
if [[ -n "$HOSTFILE_ARG" ]]; then
    echo "mpirun: $rank_size GPU process(es) on the machines of $HOSTFILE_ARG"
else
    echo "mpirun: $rank_size GPU process(es)"
fi
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
