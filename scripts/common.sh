#!/usr/bin/env bash
# Helpers shared by the launchers in this folder; sourced, never run directly.
# Paths given to a launcher are resolved against the caller's folder first and, for the
# original model zoo's habit of running from scripts/ with ../data/..., against scripts/.

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPTS_DIR")"
PYTHON="${PYTHON:-python3}"
# The launchers cd into their run folder, where a relative interpreter path would not resolve.
if [[ "$PYTHON" == */* && "$PYTHON" != /* ]]; then
    PYTHON="$(pwd)/$PYTHON"
fi
# The platform list lives once, in src/runtime.py (PLATFORMS = ("Ascend", "GPU", "CPU")); read it
# from there rather than starting Python (a launcher's $PYTHON may not be able to import the project).
PLATFORMS="$(sed -n 's/^PLATFORMS = (\(.*\))$/\1/p' "$REPO_DIR/src/runtime.py" | tr -d '",')"
[[ -n "$PLATFORMS" ]] || { echo "common.sh: error: no PLATFORMS tuple in $REPO_DIR/src/runtime.py" >&2; exit 2; }

die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 2
}

# resolve_path KIND PATH -> absolute path on stdout (KIND: dir or file); dies with a clear message.
resolve_path() {
    local kind="$1" given="$2" candidate
    for candidate in "$given" "$SCRIPTS_DIR/$given"; do
        if [[ "$given" = /* && "$candidate" != "$given" ]]; then
            continue
        fi
        if [[ "$kind" == dir && -d "$candidate" ]] || [[ "$kind" == file && -f "$candidate" ]]; then
            (cd "$(dirname "$candidate")" && printf '%s/%s\n' "$(pwd)" "$(basename "$candidate")")
            return 0
        fi
    done
    if [[ "$kind" == dir ]]; then
        die "$given: no such folder"
    fi
    die "$given: no such file"
}

check_platform() {
    local p
    for p in $PLATFORMS; do
        [[ "$1" == "$p" ]] && return 0
    done
    die "unknown platform '$1' (expected one of: $PLATFORMS)"
}

# log_header LOG_FILE COMMAND... : append the dated line that opens a run's part of a log. Logs
# are only ever appended to, so a second run in the same folder keeps the first run's log.
log_header() {
    local log="$1"
    shift
    {
        [[ -s "$log" ]] && echo
        echo "===== $(date '+%Y-%m-%d %H:%M:%S %z') $(basename "$0"): $(quote_cmd "$@")"
    } 2> /dev/null >> "$log" || die "cannot write the log $log"
}

# run_logged FOREGROUND LOG_FILE COMMAND... : run in the foreground (output also to the log,
# exit status passed through) or in the background (output only to the log), appending to the
# log after a log_header line.
run_logged() {
    local foreground="$1" log="$2"
    shift 2
    log_header "$log" "$@"
    if [[ "$foreground" == 1 ]]; then
        set +e
        "$@" 2>&1 | tee -a "$log"
        local status=${PIPESTATUS[0]}
        set -e
        return "$status"
    fi
    nohup "$@" >> "$log" 2>&1 &
    echo "started in the background as PID $!; follow it with: tail -f '$log'"
}

# log_line LOG_FILE -> "LOG_FILE", plus a note when earlier runs' output is already in it.
log_line() {
    if [[ -s "$1" ]]; then
        printf '%s (appending: earlier runs stay above)\n' "$1"
    else
        printf '%s\n' "$1"
    fi
}

# ---- distributed launchers (run_distribute_train*.sh) ----

# quote_cmd WORD... -> the words as one shell-quoted line (what a user could paste).
quote_cmd() {
    local out="" word
    for word in "$@"; do
        out+="$(printf '%q' "$word") "
    done
    printf '%s\n' "${out% }"
}

# check_rank_size VALUE: a positive integer, else a one-line error.
check_rank_size() {
    [[ "$1" =~ ^[0-9]+$ && "$1" -ge 1 ]] || die "RANK_SIZE must be a positive integer, got '$1'"
}

# parse_launcher_flags ARGS... : reads the leading --dry_run / --foreground flags into
# DRY_RUN and FOREGROUND (0/1) and sets FLAG_COUNT to how many words they took.
parse_launcher_flags() {
    DRY_RUN=0
    FOREGROUND=0
    FLAG_COUNT=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dry_run) DRY_RUN=1 ;;
            --foreground) FOREGROUND=1 ;;
            *) break ;;
        esac
        FLAG_COUNT=$((FLAG_COUNT + 1))
        shift
    done
}

# check_train_options OPTION... : the options forwarded to train.py must not override what the
# launcher sets for every rank, and must start with "--" (catches e.g. a stray PLATFORM word).
check_train_options() {
    local opt
    if [[ $# -gt 0 && "$1" != --* ]]; then
        die "unexpected argument '$1' (extra train.py options start with --)"
    fi
    for opt in "$@"; do
        case "$opt" in
            --dataset_path|--dataset_path=*|--platform|--platform=*|--run_distribute|--device_id|--device_id=*)
                die "${opt%%=*} is set by this launcher; do not pass it" ;;
        esac
    done
}

# parse_rank_size_launch ARGS... : the command line of the RANK_SIZE launchers,
# [RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground] [train.py options...]. Sets RANK_SIZE_ARG,
# DATASET_PATH_ARG (absolute), DRY_RUN, FOREGROUND and the array TRAIN_OPTIONS; usage or a
# one-line error otherwise.
parse_rank_size_launch() {
    if [[ $# -lt 2 ]]; then
        echo "Usage: bash $(basename "$0") [RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground] [train.py options...]" >&2
        exit 2
    fi
    RANK_SIZE_ARG="$1"
    check_rank_size "$RANK_SIZE_ARG"
    DATASET_PATH_ARG="$(resolve_path dir "$2")"
    shift 2
    parse_launcher_flags "$@"
    shift "$FLAG_COUNT"
    check_train_options "$@"
    TRAIN_OPTIONS=("$@")
}

# run_folder DEFAULT_NAME -> absolute working folder ($WARPCTC_RUN_DIR or <repo>/runs/DEFAULT_NAME);
# created unless CREATE is 0 (a dry run creates nothing).
run_folder() {
    local dir="${WARPCTC_RUN_DIR:-$REPO_DIR/runs/$1}" create="${2:-1}"
    if [[ "$create" == 1 ]]; then
        mkdir -p "$dir" 2> /dev/null || die "cannot create the working folder $dir"
        (cd "$dir" && pwd)
        return 0
    fi
    if [[ "$dir" != /* ]]; then
        dir="$(pwd)/$dir"
    fi
    printf '%s\n' "${dir%/}"
}

# use_python_for_msrun: msrun starts every worker as the `python3` (or `python`) it finds on
# PATH, so put the folder of $PYTHON first on PATH; sets MSRUN_PYTHON to that command name.
use_python_for_msrun() {
    local py dir
    py="$(command -v "$PYTHON" 2>/dev/null)" || die "python interpreter '$PYTHON' not found"
    dir="$(cd "$(dirname "$py")" && pwd)"
    if [[ -x "$dir/python3" ]]; then
        MSRUN_PYTHON=python3
    elif [[ -x "$dir/python" ]]; then
        MSRUN_PYTHON=python
    else
        die "msrun starts workers with 'python3' or 'python' from PATH, but $dir has neither (set PYTHON)"
    fi
    PATH="$dir:$PATH"
    export PATH
}

# master_port -> $MASTER_PORT if set (checked), else a free loopback port chosen by python.
master_port() {
    if [[ -n "${MASTER_PORT:-}" ]]; then
        [[ "$MASTER_PORT" =~ ^[0-9]+$ && "$MASTER_PORT" -ge 1024 && "$MASTER_PORT" -le 65535 ]] \
            || die "MASTER_PORT must be a port number in 1024..65535, got '$MASTER_PORT'"
        printf '%s\n' "$MASTER_PORT"
        return 0
    fi
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
        || die "could not find a free port; set MASTER_PORT"
}

# msrun_train PLATFORM RANK_SIZE DATASET_PATH RUN_DIR TRAIN_OPTION... : data-parallel training
# of RANK_SIZE processes on this machine through MindSpore's msrun (loopback scheduler).
# Honors DRY_RUN and FOREGROUND; the caller has run use_python_for_msrun.
msrun_train() {
    local platform="$1" rank_size="$2" dataset_path="$3" run_dir="$4" port r status
    shift 4
    port="$(master_port)"
    local cmd=(msrun "--worker_num=$rank_size" "--local_worker_num=$rank_size" --master_addr=127.0.0.1
               "--master_port=$port" "--log_dir=$run_dir/logs" --join=True
               "$MSRUN_PYTHON" "$REPO_DIR/train.py" --dataset_path "$dataset_path" --platform "$platform"
               --run_distribute --save_checkpoint_path "$run_dir/checkpoint" "$@")
    if [[ "$DRY_RUN" == 1 ]]; then
        echo "dry run: nothing is started. msrun would run (PATH starts with $(dirname "$(command -v "$MSRUN_PYTHON")")):"
        echo "cd $(quote_cmd "$run_dir") && $(quote_cmd "${cmd[@]}") > $(quote_cmd "$run_dir/msrun.log") 2>&1"
        for ((r = 0; r < rank_size; r++)); do
            echo "rank $r: env (set by msrun) MS_ROLE=MS_WORKER MS_WORKER_NUM=$rank_size MS_SCHED_HOST=127.0.0.1" \
                 "MS_SCHED_PORT=$port MS_NODE_ID=$r RANK_ID=$r RANK_SIZE=$rank_size DEVICE_ID=$r;" \
                 "log $run_dir/logs/worker_$r.log; checkpoints $run_dir/checkpoint/rank_$r"
        done
        echo "scheduler: the same command with MS_ROLE=MS_SCHED (it only coordinates); log $run_dir/logs/scheduler.log"
        return 0
    fi
    echo "msrun: $rank_size $platform worker(s), scheduler on 127.0.0.1:$port"
    echo "launcher log: $run_dir/msrun.log"
    echo "worker logs: $run_dir/logs/worker_<rank>.log (0..$((rank_size - 1)))"
    echo "checkpoints: $run_dir/checkpoint/rank_<rank> (unless --save_checkpoint_path says otherwise)"
    cd "$run_dir"
    status=0
    run_logged "$FOREGROUND" "$run_dir/msrun.log" "${cmd[@]}" || status=$?
    if [[ "$status" != 0 ]]; then
        echo "$(basename "$0"): error: training failed (msrun exit status $status); see $run_dir/logs/worker_<rank>.log" >&2
        exit "$status"
    fi
}
