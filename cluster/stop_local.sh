#!/usr/bin/env bash
# Stop what cluster/start_local.sh started: the Ray head whose session lives in $RAY_TMP
# (only its processes, found by that path, not every Ray on the machine) and the S3 gateway.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
RAY_TMP=${RAY_TMP:-/tmp/raysvc-ray}
S3_ROOT=${S3_ROOT:-$ROOT/.s3}

pids=$(pgrep -u "$(id -u)" -f -- "$RAY_TMP" || true)
# the agents rename themselves (ray::DashboardAgent, ray::RuntimeEnvAgent): take the
# raylet's children too, and the workers it started
children=""
for p in $pids; do children="$children $(pgrep -P "$p" || true)"; done
pids=$(echo $pids $children | tr ' ' '\n' | sort -un | tr '\n' ' ')
if [[ -n "$pids" ]]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 50); do
        alive=""
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
        [[ -z "$alive" ]] && break
        sleep 0.2
    done
    # shellcheck disable=SC2086
    [[ -n "${alive:-}" ]] && kill -KILL $alive 2>/dev/null
    echo "Ray head ($RAY_TMP) stopped"
else
    echo "no Ray head running from $RAY_TMP"
fi
"$PY" -m raysvc.local.s3gateway stop --root "$S3_ROOT"
