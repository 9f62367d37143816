#!/usr/bin/env bash
# The product in one command: evaluate the released checkpoint on the test set and read a few
# captchas it has never seen.
# Usage: bash run_demo.sh [CHECKPOINT_PATH]   (default: <repo>/pretrained/warpctc.ckpt)
#   Renders <repo>/data/test (10,000 images) first if it is missing; fresh captchas go to
#   $WARPCTC_RUN_DIR (default <repo>/runs/demo).
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ $# -gt 1 ]]; then
    echo "Usage: bash $(basename "$0") [CHECKPOINT_PATH]" >&2
    exit 2
fi
checkpoint_path="$(resolve_path file "${1:-$REPO_DIR/pretrained/warpctc.ckpt}")"
if [[ ! -d "$REPO_DIR/data/test" ]]; then
    "$PYTHON" "$REPO_DIR/process_data.py" --output_dir "$REPO_DIR/data" --splits test --quiet
fi
bash "$SCRIPTS_DIR/run_eval.sh" "$REPO_DIR/data/test" "$checkpoint_path" CPU
run_dir="${WARPCTC_RUN_DIR:-$REPO_DIR/runs/demo}"
# A seed the test set never used: these captchas are new to the model.
"$PYTHON" "$REPO_DIR/process_data.py" --output_dir "$run_dir" --splits test --test_count 8 \
    --seed "$(date +%s)" --quiet
echo "fresh captchas (true digits in the file name) -> what the model reads:"
"$PYTHON" "$REPO_DIR/predict.py" --checkpoint_path "$checkpoint_path" "$run_dir/test"
