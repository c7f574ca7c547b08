#!/usr/bin/env bash
# Stop what cluster/start_local.sh started, and nothing else: the processes recorded in
# $RAY_TMP/raysvc-local.pids, and the S3 gateway it started; then remove that state file,
# the env file start wrote, the cluster's Ray session folder (logs, spilled objects, Tune's
# staging) and its TMPDIR ($RAY_TMP/tmp), unless KEEP_LOGS=1.
#
#   cluster/stop_local.sh               # stop (exit 0, also when nothing runs)
#   KEEP_LOGS=1 cluster/stop_local.sh   # stop, keeping the session folder and TMPDIR
#   cluster/stop_local.sh --list        # print "PID START_TIME NAME" of each process it would end
#
# What "this cluster's processes" are: the PIDs start recorded (each checked against its
# recorded start time, so a reused PID is never signalled), every process in the session
# that `ray start` led (Ray's daemons, and the workers and job drivers started since), and
# the descendants of all of these. Other Ray clusters on the machine, the same user's
# included, are left alone. They end as `ray stop` ends them: the raylet first, then the
# rest, the GCS last; SIGTERM, then SIGKILL after STOP_GRACE seconds.
#
# Settings (environment variables):
#   RAY_TMP=/tmp/raysvc-ray   the same as start's (relative paths: to the repository root)
#   STOP_GRACE=10             seconds each step waits after SIGTERM before SIGKILL
#   KEEP_LOGS=                1: keep the session folder and TMPDIR (for their logs)
#   PYTHON=.venv/bin/python   the project's interpreter (for python -m raysvc.local.s3gateway stop)
#   S3_ROOT, ENV_FILE         come from the state file; these settings (defaults .s3 and
#                             .ray-local.env) count only when there is none
# The gateway is stopped (by its pidfile) unless start found it already running; with no
# state file at all, the gateway over S3_ROOT is stopped.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
abs() { case $1 in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }
RAY_TMP=$(abs "${RAY_TMP:-/tmp/raysvc-ray}")
S3_ROOT=$(abs "${S3_ROOT:-$ROOT/.s3}")
ENV_FILE=""
STOP_GRACE=${STOP_GRACE:-10}
KEEP_LOGS=${KEEP_LOGS:-}
STATE=$RAY_TMP/raysvc-local.pids
LIST=0
case "${1:-}" in
    "") ;;
    --list) LIST=1 ;;
    *) echo "usage: cluster/stop_local.sh [--list]" >&2; exit 2 ;;
esac

# ---- the state file: "sid N", "pid PID START NAME", "gateway_owned 0|1", "s3_root P", "env_file P",
# "session P", "tmpdir P"
sid=""
recorded=()
session=""
tmpdir=""
gateway_owned=1
have_state=0
if [[ -f "$STATE" ]]; then
    have_state=1
    while read -r key rest; do
        case $key in
            sid) sid=$rest ;;
            pid) read -r p st _ <<< "$rest"; recorded+=("$p:$st") ;;
            gateway_owned) gateway_owned=$rest ;;
            s3_root) S3_ROOT=$rest ;;
            env_file) ENV_FILE=$rest ;;
            session) session=$rest ;;
            tmpdir) tmpdir=$rest ;;
        esac
    done < "$STATE"
fi
[[ "$sid" =~ ^[0-9]+$ ]] || sid=""

proc_start() {  # start time (clock ticks after boot) of a live PID; fails for a gone or zombie one
    local stat tasks
    { stat=$(< "/proc/$1/stat"); } 2>/dev/null || return 1
    if [[ ${stat##*) } == Z* ]]; then  # a zombie, unless only its main thread has exited
        tasks=(/proc/"$1"/task/*)
        ((${#tasks[@]} > 1)) || return 1
    fi
    set -- ${stat##*) }              # fields 3.. (the name, field 2, may hold spaces)
    echo "${20}"                     # field 22
}

collect() {  # "PID START NAME" for each live process of this cluster
    local seeds="" e p st name
    for e in "${recorded[@]}"; do
        p=${e%%:*}; st=${e#*:}
        [[ "$(proc_start "$p")" == "$st" ]] && seeds="$seeds $p"
    done
    [[ -z "$seeds" && -z "$sid" ]] && return 0
    ps -e -o pid=,ppid=,sid=,stat=,nlwp=,comm= | awk -v sid="$sid" -v seeds="$seeds" -v self=$$ '
        $4 !~ /^Z/ || $5 > 1 { ppid[$1] = $2; s[$1] = $3; name[$1] = $6; all[++n] = $1 }
        END {
            k = split(seeds, a, " ")
            for (i = 1; i <= k; i++) if (a[i] in ppid) take[a[i]] = 1
            if (sid != "") for (i = 1; i <= n; i++) if (s[all[i]] == sid) take[all[i]] = 1
            do {  # and their descendants
                more = 0
                for (i = 1; i <= n; i++) {
                    p = all[i]
                    if (!(p in take) && (ppid[p] in take)) { take[p] = 1; more = 1 }
                }
            } while (more)
            for (p = self; p in ppid && p > 1; p = ppid[p]) delete take[p]  # never this script
            for (p in take) print p, name[p]
        }' | while read -r p name; do
        st=$(proc_start "$p") && echo "$p $st $name"
    done
}

if ((LIST)); then
    collect
    exit 0
fi

alive_of() {  # the entries ("PID:START") of $@ still alive
    local e
    for e in "$@"; do [[ "$(proc_start "${e%%:*}")" == "${e#*:}" ]] && echo "$e"; done
}

end_procs() {  # SIGTERM this cluster's processes that $1 picks (raylet|not-gcs|all), wait, SIGKILL
    local entries e i left
    mapfile -t entries < <(collect | awk -v pick="$1" '
        pick == "all" || (pick == "raylet" && $3 == "raylet") || (pick == "not-gcs" && $3 != "gcs_server") {
            print $1 ":" $2 }')
    ((${#entries[@]})) || return 0
    for e in "${entries[@]}"; do kill -TERM "${e%%:*}" 2>/dev/null; done
    for ((i = 0; i < STOP_GRACE * 10; i++)); do
        mapfile -t left < <(alive_of "${entries[@]}")
        ((${#left[@]})) || return 0
        sleep 0.1
    done
    echo "still running after ${STOP_GRACE}s, killing: $(for e in "${left[@]}"; do printf '%s ' "${e%%:*}"; done)"
    for e in "${left[@]}"; do kill -KILL "${e%%:*}" 2>/dev/null; done
    for ((i = 0; i < 50; i++)); do
        mapfile -t left < <(alive_of "${left[@]}")
        ((${#left[@]})) || return 0
        sleep 0.1
    done
}

status=0
total=0
if ((have_state)) && total=$(collect | wc -l) && ((total)); then
    end_procs raylet      # first, so the agents and workers that fate-share with it go quietly
    end_procs not-gcs     # then everything but the GCS
    end_procs all         # then the GCS, and anything started meanwhile
    left=$(collect)
    if [[ -n "$left" ]]; then
        echo "cluster/stop_local.sh: could not end these processes (PID START NAME): $left" | tr '\n' ' ' >&2
        echo >&2
        status=1
    else
        echo "Ray head ($RAY_TMP) stopped: $total process(es)"
    fi
else
    echo "no local Ray cluster running from $RAY_TMP"
fi

if ((gateway_owned)); then
    "$PY" -m raysvc.local.s3gateway stop --root "$S3_ROOT" || status=1
else
    echo "S3 gateway over $S3_ROOT was running before cluster/start_local.sh: left running" \
         "(stop it with: python -m raysvc.local.s3gateway stop --root $S3_ROOT)"
fi

remove_session() {  # the recorded session folder and TMPDIR, and Ray's files once no session is left
    local removed=()
    if [[ "$session" == "$RAY_TMP"/session_* && -d "$session" ]]; then
        rm -rf "$session" && removed+=("$session")
        [[ "$(readlink -f "$RAY_TMP/session_latest")" == "$session" ]] && rm -f "$RAY_TMP/session_latest"
    fi
    if [[ "$tmpdir" == "$RAY_TMP/tmp" && -d "$tmpdir" ]]; then
        rm -rf "$tmpdir" && removed+=("$tmpdir")
    fi
    rm -f "$RAY_TMP/raysvc-ray-start.log"
    if ! compgen -G "$RAY_TMP/session_*" >/dev/null; then
        rm -f "$RAY_TMP/ray_current_cluster" "$RAY_TMP/prom_metrics_service_discovery.json"
    fi
    ((${#removed[@]})) && echo "removed ${removed[*]} (KEEP_LOGS=1 keeps them)"
    return 0
}

if ((status == 0)); then
    [[ -n "$ENV_FILE" ]] && rm -f "$ENV_FILE"
    [[ "$KEEP_LOGS" == 1 ]] || remove_session
    rm -f "$STATE"
    rmdir "$RAY_TMP" 2>/dev/null
fi
exit $status
