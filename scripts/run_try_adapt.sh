#!/usr/bin/env bash
# Adaptation in one command, on nothing but this repository: render 250 labelled captchas of a style
# no release was trained on (1-5 lower-case letters and digits, 50 pixels high, in DejaVu Serif, which the
# universal base never saw), read them zero-shot, adapt the universal base to them with the README's
# command, and read 200 more with the adapted checkpoint.
# Usage: bash run_try_adapt.sh [STEPS]   (default 500: about 7 min on 2 cores; configs/adapt.yaml's 1,000 do better)
#   Works in $WARPCTC_RUN_DIR (default <repo>/runs/try_adapt); a second run there starts afresh.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ $# -gt 1 ]]; then
    echo "Usage: bash $(basename "$0") [STEPS]" >&2
    exit 2
fi
steps="${1:-500}"
[[ "$steps" =~ ^[1-9][0-9]*$ ]] || die "STEPS must be a positive whole number, got '$steps'"
base="$REPO_DIR/pretrained/crnn_universal.ckpt"
alphabet=0123456789abcdefghijklmnopqrstuvwxyz
work="$(run_folder try_adapt)"
rm -rf -- "$work/data" "$work/checkpoint"
"$PYTHON" "$REPO_DIR/process_data.py" --output_dir "$work/data" --train_count 250 --test_count 200 \
    --charset "$alphabet" --max_captcha_digits 5 --captcha_width 200 --captcha_height 50 \
    --fonts dejavu-serif --text_layout varied --seed 20261207 --quiet
echo "== zero-shot: the universal base, told the alphabet, on the 200 test captchas"
"$PYTHON" "$REPO_DIR/eval.py" --checkpoint_path "$base" --dataset_path "$work/data/test" \
    --read_charset "$alphabet" --quiet
echo "== adapting it to the 250 labelled ones ($steps steps)"
log="$work/train.log"
"$PYTHON" "$REPO_DIR/train.py" --dataset_path "$work/data/train" --init_checkpoint "$base" \
    --config_path "$REPO_DIR/configs/adapt.yaml" --train_steps "$steps" \
    --save_checkpoint_path "$work/checkpoint" 2>&1 | tee "$log" | grep -E "^(fine-tuning|step |training finished)" || true
[[ "${PIPESTATUS[0]}" -eq 0 ]] || die "train.py failed; its output is in $log"
adapted="$(sed -n 's/^training finished in .* s; last checkpoint //p' "$log" | tail -n 1)"
[[ -f "$adapted" ]] || die "train.py named no last checkpoint; its output is in $log"
echo "== adapted: $adapted, on the same 200 test captchas"
"$PYTHON" "$REPO_DIR/eval.py" --checkpoint_path "$adapted" --dataset_path "$work/data/test" --quiet
echo "== a few of them (true label in the file name) -> what the adapted model reads:"
"$PYTHON" "$REPO_DIR/predict.py" --checkpoint_path "$adapted" --quiet \
    "$(ls -d "$work/data/test/"*.png | head -n 1)" "$(ls -d "$work/data/test/"*.png | tail -n 1)"
