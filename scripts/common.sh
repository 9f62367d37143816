#!/usr/bin/env bash
# Helpers shared by the launchers in this folder; sourced, never run directly.
# Paths given to a launcher are resolved against the caller's folder first and, for the
# original model zoo's habit of running from scripts/ with ../data/..., against scripts/.

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPTS_DIR")"
PYTHON="${PYTHON:-python3}"
PLATFORMS="Ascend GPU CPU"

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

# run_logged FOREGROUND LOG_FILE COMMAND... : run in the foreground (output also to the log,
# exit status passed through) or in the background (output only to the log).
run_logged() {
    local foreground="$1" log="$2"
    shift 2
    if [[ "$foreground" == 1 ]]; then
        set +e
        "$@" 2>&1 | tee "$log"
        local status=${PIPESTATUS[0]}
        set -e
        return "$status"
    fi
    nohup "$@" > "$log" 2>&1 &
    echo "started in the background as PID $!; follow it with: tail -f '$log'"
}
