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
# The platform list lives once, in src/run/runtime.py (PLATFORMS = ("Ascend", "GPU", "CPU")); read it
# from there rather than starting Python (a launcher's $PYTHON may not be able to import the project).
PLATFORMS="$(sed -n 's/^PLATFORMS = (\(.*\))$/\1/p' "$REPO_DIR/src/run/runtime.py" | tr -d '",')"
[[ -n "$PLATFORMS" ]] || { echo "common.sh: error: no PLATFORMS tuple in $REPO_DIR/src/run/runtime.py" >&2; exit 2; }

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

# resolve_dataset GIVEN : a training launcher's DATASET_PATH: a folder (printed absolute), or "-"
# for captchas rendered on the fly (then train.py's --synthetic_images N says how many per epoch).
resolve_dataset() {
    if [[ "$1" == "-" ]]; then
        echo "-"
        return 0
    fi
    resolve_path dir "$1"
}

# set_dataset_option DATASET : DATASET_OPTION, the array of train.py options for a resolved DATASET.
set_dataset_option() {
    DATASET_OPTION=()
    if [[ "$1" != "-" ]]; then
        DATASET_OPTION=(--dataset_path "$1")
    fi
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

# take_launcher_options KIND ARGS... : the launcher's own options, wherever they stand among the
# train.py options: train.py's parser never takes a word starting with -- as an option's value,
# so such a word is an option, never a value. KIND says which options are the launcher's:
# standalone (--foreground), table (--dry_run too) or nodes (--dry_run and the node flags, each
# with its value, too); another launcher's option is a one-line error, not a word for train.py.
# Sets FOREGROUND and DRY_RUN (0/1), NODES, NODE_RANK, MASTER_ADDR_ARG, MASTER_PORT_ARG,
# HOSTFILE_ARG (empty unless given) and the array TRAIN_OPTIONS (the other words, in order).
take_launcher_options() {
    local kind="$1" name
    shift
    FOREGROUND=0
    DRY_RUN=0
    NODES=""
    NODE_RANK=""
    MASTER_ADDR_ARG=""
    MASTER_PORT_ARG=""
    HOSTFILE_ARG=""
    TRAIN_OPTIONS=()
    while [[ $# -gt 0 ]]; do
        name="${1%%=*}"
        case "$name" in
            --foreground)
                [[ "$1" == "$name" ]] || die "--foreground takes no value"
                FOREGROUND=1 ;;
            --dry_run)
                [[ "$1" == "$name" ]] || die "--dry_run takes no value"
                [[ "$kind" != standalone ]] \
                    || die "--dry_run is an option of the distributed launchers (run_distribute_train*.sh); this one" \
                           "has no dry run and starts train.py at once"
                DRY_RUN=1 ;;
            --nodes|--node_rank|--master_addr|--master_port|--hostfile)
                [[ "$kind" == nodes ]] \
                    || die "$name is an option of run_distribute_train_cpu.sh and run_distribute_train_for_gpu.sh," \
                           "not of this launcher"
                if [[ "$1" == *=* ]]; then
                    set_node_flag "$name" "${1#*=}"
                else
                    [[ $# -ge 2 && "$2" != --* ]] || die "$1 needs a value"
                    set_node_flag "$1" "$2"
                    shift
                fi ;;
            *) TRAIN_OPTIONS+=("$1") ;;
        esac
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

# parse_rank_size_launch HOSTFILE_OK ARGS... : the command line of the RANK_SIZE launchers,
# [RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground] [--nodes N --node_rank K --master_addr HOST]
# [--master_port P] [--hostfile FILE (only where HOSTFILE_OK is 1)] [train.py options...], the
# launcher's options anywhere after DATASET_PATH. Sets RANK_SIZE_ARG, DATASET_PATH_ARG (absolute,
# or - for on the fly), DRY_RUN, FOREGROUND, the array TRAIN_OPTIONS and the multi-node settings
# (see check_nodes); usage or a one-line error otherwise.
parse_rank_size_launch() {
    local hostfile_ok="$1" usage_hostfile=""
    shift
    [[ "$hostfile_ok" == 1 ]] && usage_hostfile=" [--hostfile FILE]"
    if [[ $# -lt 2 ]]; then
        echo "Usage: bash $(basename "$0") [RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground]" \
             "[--nodes N --node_rank K --master_addr HOST] [--master_port P]$usage_hostfile [train.py options...]" >&2
        exit 2
    fi
    RANK_SIZE_ARG="$1"
    check_rank_size "$RANK_SIZE_ARG"
    DATASET_PATH_ARG="$(resolve_dataset "$2")"
    shift 2
    take_launcher_options nodes "$@"
    check_train_options "${TRAIN_OPTIONS[@]}"
    if [[ -n "$HOSTFILE_ARG" && "$hostfile_ok" != 1 ]]; then
        die "--hostfile is for mpirun (run_distribute_train_for_gpu.sh);" \
            "here give --nodes N --node_rank K --master_addr HOST on each machine"
    fi
    check_nodes "$RANK_SIZE_ARG"
}

# set_node_flag FLAG VALUE : store one multi-node flag; a flag given twice is an error.
set_node_flag() {
    local var
    case "$1" in
        --nodes) var=NODES ;;
        --node_rank) var=NODE_RANK ;;
        --master_addr) var=MASTER_ADDR_ARG ;;
        --master_port) var=MASTER_PORT_ARG ;;
        --hostfile) var=HOSTFILE_ARG ;;
    esac
    [[ -z "${!var}" ]] || die "$1 is given twice"
    [[ -n "$2" ]] || die "$1 needs a value"
    printf -v "$var" '%s' "$2"
}

# check_nodes RANK_SIZE : check the multi-node flags against each other and RANK_SIZE. Without
# --nodes and --hostfile NODES stays empty (one machine, as before). With --nodes: NODES,
# NODE_RANK (0 by default for one node), LOCAL_RANKS (ranks per machine), MASTER_IP and
# MASTER_IS_HERE (1 when this machine has that address: its msrun starts the scheduler).
# With --hostfile: HOSTFILE_ARG (absolute) and the arrays HOST_NAMES / HOST_SLOTS.
check_nodes() {
    local rank_size="$1" resolved
    if [[ -n "$MASTER_PORT_ARG" ]]; then
        [[ "$MASTER_PORT_ARG" =~ ^[1-9][0-9]*$ && "$MASTER_PORT_ARG" -ge 1024 && "$MASTER_PORT_ARG" -le 65535 ]] \
            || die "--master_port must be a port number in 1024..65535, got '$MASTER_PORT_ARG'"
    fi
    if [[ -n "$HOSTFILE_ARG" ]]; then
        [[ -z "$NODES$NODE_RANK$MASTER_ADDR_ARG$MASTER_PORT_ARG" ]] \
            || die "--hostfile (mpirun starts every machine's ranks from here) and" \
                   "--nodes/--node_rank/--master_addr/--master_port (msrun on each machine) do not mix; give one"
        read_hostfile "$HOSTFILE_ARG" "$rank_size"
        return 0
    fi
    if [[ -z "$NODES" ]]; then
        [[ -z "$NODE_RANK" ]] || die "--node_rank needs --nodes"
        [[ -z "$MASTER_ADDR_ARG" ]] || die "--master_addr needs --nodes"
        return 0
    fi
    [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$NODES'"
    [[ -n "$MASTER_ADDR_ARG" ]] \
        || die "--nodes needs --master_addr" \
               "(the address of the machine that runs the scheduler, the same on every machine)"
    (( rank_size % NODES == 0 )) \
        || die "RANK_SIZE $rank_size is not divisible by --nodes $NODES (every machine runs RANK_SIZE / N ranks)"
    if [[ -z "$NODE_RANK" ]]; then
        [[ "$NODES" == 1 ]] || die "--nodes $NODES needs --node_rank (this machine's number, 0..$((NODES - 1)))"
        NODE_RANK=0
    fi
    [[ "$NODE_RANK" =~ ^(0|[1-9][0-9]*)$ && "$NODE_RANK" -lt "$NODES" ]] \
        || die "--node_rank must be in 0..$((NODES - 1)) (--nodes $NODES), got '$NODE_RANK'"
    LOCAL_RANKS=$((rank_size / NODES))
    resolved="$(resolve_master "$MASTER_ADDR_ARG")"
    MASTER_IP="${resolved% *}"
    MASTER_IS_HERE="${resolved##* }"
    if [[ "$NODES" -gt 1 && ( "$MASTER_IP" == 127.* || "$MASTER_IP" == ::1 ) ]]; then
        local is="is a loopback address"
        [[ "$MASTER_IP" == "$MASTER_ADDR_ARG" ]] || is="resolves to the loopback address $MASTER_IP"
        die "--master_addr $MASTER_ADDR_ARG $is, which the other machines cannot reach;" \
            "give the scheduler machine's network address"
    fi
}

# resolve_master HOST -> "IP LOCAL": the address msrun will use for HOST (the first of
# getaddrinfo, as msrun does) and 1 when this machine has it, else 0; dies when it does not resolve.
resolve_master() {
    local out status=0
    out="$("$PYTHON" - "$1" 2> /dev/null <<'PY'
import socket
import sys

try:
    family, _, _, _, address = socket.getaddrinfo(sys.argv[1], None, socket.AF_UNSPEC, socket.SOCK_STREAM)[0]
except (socket.gaierror, UnicodeError):
    sys.exit(3)
ip = address[0]
# The source address the kernel picks to reach ip is ip itself only when ip is one of ours.
probe = socket.socket(family, socket.SOCK_DGRAM)
try:
    probe.connect((ip, 9))
    local = probe.getsockname()[0] == ip
except OSError:
    local = False
print(ip, int(local))
PY
)" || status=$?
    case "$status" in
        0) printf '%s\n' "$out" ;;
        3) die "--master_addr $1: does not resolve to an address" ;;
        *) die "cannot check --master_addr $1: python interpreter '$PYTHON' failed (exit status $status)" ;;
    esac
}

# read_hostfile FILE RANK_SIZE : Open MPI hostfile lines "host slots=N [...]" (# comments) into
# HOST_NAMES / HOST_SLOTS (a host listed twice adds up), HOSTFILE_ARG made absolute; dies when the
# file is missing, a line has no slots=N, or the slots add up to fewer than RANK_SIZE.
read_hostfile() {
    local file="$1" rank_size="$2" line number=0 host slots word i total=0 words
    [[ -f "$file" || -f "$SCRIPTS_DIR/$file" ]] || die "--hostfile $file: no such file"
    HOSTFILE_ARG="$(resolve_path file "$file")"
    HOST_NAMES=()
    HOST_SLOTS=()
    while IFS= read -r line || [[ -n "$line" ]]; do
        number=$((number + 1))
        read -r -a words <<< "${line%%#*}"
        [[ ${#words[@]} -gt 0 ]] || continue
        host="${words[0]}"
        slots=""
        for word in "${words[@]:1}"; do
            [[ "$word" == slots=* ]] && slots="${word#slots=}"
        done
        # Without slots=N Open MPI counts the host's CPU cores, not its GPUs.
        [[ -n "$slots" ]] \
            || die "--hostfile $file line $number: $host has no slots=N (give each machine slots=<its GPU count>)"
        [[ "$slots" =~ ^[0-9]+$ && "$slots" -ge 1 ]] \
            || die "--hostfile $file line $number: slots must be a positive integer, got '$slots'"
        for i in "${!HOST_NAMES[@]}"; do
            if [[ "${HOST_NAMES[$i]}" == "$host" ]]; then
                HOST_SLOTS[i]=$((HOST_SLOTS[i] + slots))
                continue 2
            fi
        done
        HOST_NAMES+=("$host")
        HOST_SLOTS+=("$slots")
    done < "$HOSTFILE_ARG" || die "--hostfile $file: cannot read it"
    for slots in "${HOST_SLOTS[@]}"; do
        total=$((total + slots))
    done
    [[ "$total" -ge "$rank_size" ]] \
        || die "--hostfile $file lists $total slot(s) in all, fewer than RANK_SIZE $rank_size"
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

# master_port -> --master_port, else $MASTER_PORT if set (checked), else msrun's default 8118 for
# several machines (they must agree on it), else a free loopback port chosen by python.
master_port() {
    if [[ -n "$MASTER_PORT_ARG" ]]; then
        printf '%s\n' "$MASTER_PORT_ARG"
        return 0
    fi
    if [[ -n "${MASTER_PORT:-}" ]]; then
        [[ "$MASTER_PORT" =~ ^[0-9]+$ && "$MASTER_PORT" -ge 1024 && "$MASTER_PORT" -le 65535 ]] \
            || die "MASTER_PORT must be a port number in 1024..65535, got '$MASTER_PORT'"
        printf '%s\n' "$MASTER_PORT"
        return 0
    fi
    if [[ -n "$NODES" ]]; then
        printf '8118\n'
        return 0
    fi
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
        || die "could not find a free port; set MASTER_PORT"
}

# describe_ranks PLATFORM RANK_SIZE -> the launcher's "ranks:" line.
describe_ranks() {
    if [[ -z "$NODES" ]]; then
        echo "ranks: $2 ($1, each reads 1/$2 of the data)"
    else
        echo "ranks: $2 on $NODES machine(s), $LOCAL_RANKS on this one (node $NODE_RANK: global ranks" \
             "$((NODE_RANK * LOCAL_RANKS))..$(((NODE_RANK + 1) * LOCAL_RANKS - 1))); $1, each reads 1/$2 of the data"
    fi
}

# msrun_train PLATFORM RANK_SIZE DATASET_PATH RUN_DIR TRAIN_OPTION... : data-parallel training
# through MindSpore's msrun: RANK_SIZE processes on this machine (loopback scheduler), or with
# --nodes this machine's RANK_SIZE / N of them, global ranks NODE_RANK * RANK_SIZE / N + local rank.
# Honors DRY_RUN and FOREGROUND; the caller has run use_python_for_msrun.
msrun_train() {
    local platform="$1" rank_size="$2" dataset_path="$3" run_dir="$4" port status node first r where
    shift 4
    port="$(master_port)"
    set_dataset_option "$dataset_path"
    local common=("--master_port=$port" "--log_dir=$run_dir/logs" --join=True
                  "$MSRUN_PYTHON" "$REPO_DIR/train.py" "${DATASET_OPTION[@]}" --platform "$platform"
                  --run_distribute --save_checkpoint_path "$run_dir/checkpoint" "$@")
    local nodes="${NODES:-1}" this="${NODE_RANK:-0}" local_ranks="${LOCAL_RANKS:-$rank_size}"
    local sched_host="${MASTER_IP:-127.0.0.1}"
    if [[ "$DRY_RUN" == 1 ]]; then
        echo "dry run: nothing is started. msrun would run (PATH starts with $(dirname "$(command -v "$MSRUN_PYTHON")")):"
        for ((node = 0; node < nodes; node++)); do
            first=$((node * local_ranks))
            if [[ -n "$NODES" ]]; then
                where=""
                [[ "$node" == "$this" ]] && where=" (this machine)"
                echo "node $node/$nodes$where: global ranks $first..$((first + local_ranks - 1))"
            fi
            msrun_command "$node" "$rank_size" "${common[@]}"
            echo "cd $(quote_cmd "$run_dir") && $(quote_cmd "${MSRUN_CMD[@]}")" \
                 "> $(quote_cmd "$run_dir/$(launcher_log_name "$node")") 2>&1"
            for ((r = first; r < first + local_ranks; r++)); do
                echo "rank $r: env (set by msrun) MS_ROLE=MS_WORKER MS_WORKER_NUM=$rank_size MS_SCHED_HOST=$sched_host" \
                     "MS_SCHED_PORT=$port MS_NODE_ID=$r RANK_ID=$r RANK_SIZE=$rank_size DEVICE_ID=$((r - first));" \
                     "log $run_dir/logs/worker_$r.log; checkpoints $run_dir/checkpoint/rank_$r"
            done
        done
        if [[ -z "$NODES" ]]; then
            echo "scheduler: the same command with MS_ROLE=MS_SCHED (it only coordinates); log $run_dir/logs/scheduler.log"
        else
            echo "scheduler: $sched_host:$port, started by the msrun of the machine with that address" \
                 "($(scheduler_where)) with MS_ROLE=MS_SCHED (it only coordinates); log logs/scheduler.log there"
            echo "every machine runs the launcher with the same RANK_SIZE, --nodes, --master_addr and --master_port" \
                 "and its own --node_rank; the paths above are this machine's"
        fi
        return 0
    fi
    first=$((this * local_ranks))
    if [[ -z "$NODES" ]]; then
        echo "msrun: $rank_size $platform worker(s), scheduler on 127.0.0.1:$port"
    else
        echo "msrun: node $this/$nodes, global ranks $first..$((first + local_ranks - 1)) of $rank_size ($platform);" \
             "scheduler on $sched_host:$port ($(scheduler_where))"
    fi
    echo "launcher log: $run_dir/$(launcher_log_name "$this")"
    echo "worker logs: $run_dir/logs/worker_<rank>.log ($first..$((first + local_ranks - 1)))"
    echo "checkpoints: $run_dir/checkpoint/rank_<rank> (unless --save_checkpoint_path says otherwise)"
    msrun_command "$this" "$rank_size" "${common[@]}"
    cd "$run_dir"
    status=0
    run_logged "$FOREGROUND" "$run_dir/$(launcher_log_name "$this")" "${MSRUN_CMD[@]}" || status=$?
    if [[ "$status" != 0 ]]; then
        echo "$(basename "$0"): error: training failed (msrun exit status $status); see $run_dir/logs/worker_<rank>.log" >&2
        exit "$status"
    fi
}

# scheduler_where -> whether this machine's msrun starts the scheduler (it has MASTER_IP).
scheduler_where() {
    if [[ "$MASTER_IS_HERE" == 1 ]]; then
        echo "this machine"
    else
        echo "another machine, whose launcher starts it"
    fi
}

# launcher_log_name NODE_RANK -> msrun.log on one machine; msrun_node<K>.log on several, so that
# machines sharing a run folder (a network file system) keep their launcher logs apart.
launcher_log_name() {
    if [[ -z "$NODES" ]]; then
        echo msrun.log
    else
        echo "msrun_node$1.log"
    fi
}

# msrun_command NODE_RANK RANK_SIZE ARG... : the msrun command of machine NODE_RANK (ARG... after
# its placement flags) into the array MSRUN_CMD.
msrun_command() {
    local node="$1" rank_size="$2"
    shift 2
    if [[ -z "$NODES" ]]; then
        MSRUN_CMD=(msrun "--worker_num=$rank_size" "--local_worker_num=$rank_size" --master_addr=127.0.0.1 "$@")
    else
        MSRUN_CMD=(msrun "--worker_num=$rank_size" "--local_worker_num=$LOCAL_RANKS" "--node_rank=$node"
                   "--master_addr=$MASTER_ADDR_ARG" "$@")
    fi
}
