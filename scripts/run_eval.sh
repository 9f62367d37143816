#!/usr/bin/env bash
# Evaluate a checkpoint; prints result: {'WarpCTCAccuracy': ..., 'CER': ...} and passes eval.py's exit status through.
# Usage: bash run_eval.sh [DATASET_PATH] [CHECKPOINT_PATH] [PLATFORM] [eval.py options...]
#   Working folder: $WARPCTC_RUN_DIR (default <repo>/runs/eval), log eval.log there.
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="Usage: bash $(basename "$0") [DATASET_PATH] [CHECKPOINT_PATH] [PLATFORM] [eval.py options...]"
if [[ $# -lt 3 ]]; then
    echo "$usage" >&2
    exit 2
fi
dataset_path="$(resolve_path dir "$1")"
checkpoint_path="$(resolve_path file "$2")"
platform="$3"
check_platform "$platform"
shift 3
run_dir="${WARPCTC_RUN_DIR:-$REPO_DIR/runs/eval}"
mkdir -p "$run_dir"
run_dir="$(cd "$run_dir" && pwd)"
log="$run_dir/eval.log"
echo "dataset: $dataset_path"
echo "checkpoint: $checkpoint_path"
echo "platform: $platform"
echo "log: $(log_line "$log")"
cd "$run_dir"
run_logged 1 "$log" "$PYTHON" "$REPO_DIR/eval.py" --dataset_path "$dataset_path" \
    --checkpoint_path "$checkpoint_path" --platform "$platform" "$@"
