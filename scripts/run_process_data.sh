#!/usr/bin/env bash
# Render the captcha dataset into <repo>/data/train (50,000) and <repo>/data/test (10,000).
# Usage: bash run_process_data.sh [process_data.py options, e.g. --train_count 1000 --charset 0123456789ABCDEF]
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    exec "$PYTHON" "$REPO_DIR/process_data.py" --help
fi
"$PYTHON" "$REPO_DIR/process_data.py" --output_dir "$REPO_DIR/data" "$@"
