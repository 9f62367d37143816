#!/usr/bin/env bash
# Data-parallel training on the Ascend devices of an HCCL rank table: one process per device of
# this server, each with RANK_TABLE_FILE, RANK_SIZE, RANK_ID and DEVICE_ID exported, in its own
# working folder with its own log. The device count is read from the table.
# Usage: bash run_distribute_train.sh [RANK_TABLE_FILE] [DATASET_PATH] [--dry_run] [--foreground] [train.py options...]
#   DATASET_PATH: a labelled folder, or - to train on captchas rendered on the fly (--synthetic_images N).
#   --dry_run: print each rank's folder, environment and command; start nothing.
#   --foreground: wait for every rank and fail if one fails; default: run in the background.
#   --dry_run and --foreground may also come after the train.py options.
#   Working folder: $WARPCTC_RUN_DIR (default <repo>/runs/distribute_train): rank_<rank>/train.log,
#   checkpoint/rank_<rank>/. A table listing several servers needs SERVER_ID=<this server's server_id>.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="Usage: bash $(basename "$0") [RANK_TABLE_FILE] [DATASET_PATH] [--dry_run] [--foreground] [train.py options...]"
if [[ $# -lt 2 ]]; then
    echo "$usage" >&2
    exit 2
fi
if [[ ! -e "$1" && ! -e "$SCRIPTS_DIR/$1" ]]; then
    die "rank table $1: does not exist"
fi
rank_table="$(resolve_path file "$1")"
dataset_path="$(resolve_dataset "$2")"
set_dataset_option "$dataset_path"
shift 2
take_launcher_options table "$@"
set -- "${TRAIN_OPTIONS[@]}"
check_train_options "$@"

server_args=()
if [[ -n "${SERVER_ID:-}" ]]; then
    server_args=(--server_id "$SERVER_ID")
fi
if ! table="$("$PYTHON" "$REPO_DIR/tools/hccl_rank_table.py" "$rank_table" "${server_args[@]}" 2>&1)"; then
    die "$(printf '%s\n' "$table" | tail -n 1)"
fi
rank_size="$(printf '%s\n' "$table" | sed -n 's/^rank_size \([0-9][0-9]*\)$/\1/p')"
[[ -n "$rank_size" ]] || die "rank table $rank_table: could not be read"
ranks=()
devices=()
while read -r rank device; do
    ranks+=("$rank")
    devices+=("$device")
done < <(printf '%s\n' "$table" | sed -n '2,$p')

run_dir="$(run_folder distribute_train "$((1 - DRY_RUN))")"
echo "rank table: $rank_table ($rank_size device(s) in all, ${#ranks[@]} on this server)"
echo "dataset: $dataset_path"
if [[ "$DRY_RUN" == 1 ]]; then
    echo "dry run: nothing is started. Each rank would run, in the background:"
fi

pids=()
for i in "${!ranks[@]}"; do
    rank="${ranks[$i]}"
    rank_dir="$run_dir/rank_$rank"
    log="$rank_dir/train.log"
    launch=(env "RANK_TABLE_FILE=$rank_table" "RANK_SIZE=$rank_size" "RANK_ID=$rank" "DEVICE_ID=${devices[$i]}"
            "$PYTHON" "$REPO_DIR/train.py" "${DATASET_OPTION[@]}" --platform Ascend --run_distribute
            --save_checkpoint_path "$run_dir/checkpoint" "$@")
    if [[ "$DRY_RUN" == 1 ]]; then
        echo "rank $rank: device ${devices[$i]}, folder $rank_dir, log $log, checkpoints $run_dir/checkpoint/rank_$rank"
        echo "  cd $(quote_cmd "$rank_dir") && nohup $(quote_cmd "${launch[@]}") >> $(quote_cmd "$log") 2>&1 < /dev/null &"
        continue
    fi
    mkdir -p "$rank_dir"
    log_header "$log" "${launch[@]}"
    (cd "$rank_dir" && exec nohup "${launch[@]}" >> "$log" 2>&1 < /dev/null) &
    pids+=("$!")
    echo "rank $rank: device ${devices[$i]}, PID $!, log $log"
done
if [[ "$DRY_RUN" == 1 ]]; then
    exit 0
fi
echo "checkpoints: $run_dir/checkpoint/rank_<rank> (unless --save_checkpoint_path says otherwise)"
if [[ "$FOREGROUND" != 1 ]]; then
    echo "started in the background; follow rank 0 with: tail -f '$run_dir/rank_${ranks[0]}/train.log'"
    exit 0
fi
trap 'kill "${pids[@]}" 2> /dev/null; exit 130' INT TERM
failed=()
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        failed+=("${ranks[$i]}")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "$(basename "$0"): error: rank(s) ${failed[*]} failed; see $run_dir/rank_<rank>/train.log" >&2
    exit 1
fi
echo "all ${#pids[@]} rank(s) finished"
