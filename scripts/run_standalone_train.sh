#!/usr/bin/env bash
# Train on one device.
# Usage: bash run_standalone_train.sh [DATASET_PATH] [PLATFORM] [--foreground] [train.py options...]
#   DATASET_PATH: a labelled folder, or - to train on captchas rendered on the fly (--synthetic_images N).
#   PLATFORM: Ascend, GPU or CPU. Runs in the background unless --foreground is given (anywhere
#   after PLATFORM, among the train.py options too).
#   Working folder: $WARPCTC_RUN_DIR (default <repo>/runs/standalone_train): checkpoints, and the log
#   train.log, which every run appends to after a dated line (an earlier run's log is kept).
set -euo pipefail
source "$(dirname "$0")/common.sh"
usage="Usage: bash $(basename "$0") [DATASET_PATH] [PLATFORM] [--foreground] [train.py options...]"
if [[ $# -lt 2 ]]; then
    echo "$usage" >&2
    exit 2
fi
dataset_path="$(resolve_dataset "$1")"
set_dataset_option "$dataset_path"
platform="$2"
check_platform "$platform"
shift 2
take_launcher_options standalone "$@"
set -- "${TRAIN_OPTIONS[@]}"
run_dir="$(run_folder standalone_train)"
log="$run_dir/train.log"
echo "dataset: $dataset_path"
echo "platform: $platform"
echo "log: $(log_line "$log")"
echo "checkpoints: $run_dir/checkpoint (unless --save_checkpoint_path says otherwise)"
cd "$run_dir"
run_logged "$FOREGROUND" "$log" "$PYTHON" "$REPO_DIR/train.py" "${DATASET_OPTION[@]}" \
    --platform "$platform" "$@"
