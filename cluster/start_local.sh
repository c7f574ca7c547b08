#!/usr/bin/env bash
# Start a local Ray head and the embedded S3 gateway (bucket "raysvc"), auth disabled.
#
#   cluster/start_local.sh                 # 2 CPUs, Ray on :6379, dashboard/jobs on :8265, S3 on :9000
#   NUM_CPUS=4 RAY_PORT=6390 DASHBOARD_PORT=8270 S3_PORT=9010 cluster/start_local.sh
#
# Then, in the same shell setup (source the env file it prints):
#   source .ray-local.env
#   ray job submit --working-dir . -- python -m jobs.grid jobs/configs/demo.yaml --out s3://raysvc/demo
# Stop with cluster/stop_local.sh. Ray's session files live in $RAY_TMP (default
# /tmp/raysvc-ray) so the stop script ends exactly this cluster's processes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
RAY=${RAY_BIN:-$(dirname "$PY")/ray}
NUM_CPUS=${NUM_CPUS:-2}
NUM_GPUS=${NUM_GPUS:-}
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
RAY_TMP=${RAY_TMP:-/tmp/raysvc-ray}
S3_ROOT=${S3_ROOT:-$ROOT/.s3}
S3_PORT=${S3_PORT:-9000}
BUCKET=${BUCKET:-raysvc}
ENV_FILE=${ENV_FILE:-$ROOT/.ray-local.env}

export RAY_AUTH_MODE=disabled          # both ends: the head here, clients via $ENV_FILE
export RAY_USAGE_STATS_ENABLED=0
export PATH="$(dirname "$PY"):$PATH"      # jobs' "python" is the project's interpreter

"$PY" -m raysvc.local.s3gateway start --root "$S3_ROOT" --port "$S3_PORT" --bucket "$BUCKET"
# the head (and so every worker and job) inherits the S3 endpoint and credentials
eval "$("$PY" -m raysvc.local.s3gateway env --root "$S3_ROOT" --port "$S3_PORT")"
export RAYSVC_CODE_REVISION=${RAYSVC_CODE_REVISION:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)}

gpu_args=()
[[ -n "$NUM_GPUS" ]] && gpu_args=(--num-gpus "$NUM_GPUS")
"$RAY" start --head --num-cpus "$NUM_CPUS" "${gpu_args[@]}" --disable-usage-stats \
    --port "$RAY_PORT" --node-ip-address 127.0.0.1 \
    --include-dashboard=true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --temp-dir "$RAY_TMP"

{
    echo "export RAY_AUTH_MODE=disabled"
    echo "export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
    "$PY" -m raysvc.local.s3gateway env --root "$S3_ROOT" --port "$S3_PORT"
    echo "export PATH=$(dirname "$PY"):\$PATH"
} > "$ENV_FILE"
echo "Ray head: 127.0.0.1:$RAY_PORT, jobs/dashboard: http://127.0.0.1:$DASHBOARD_PORT, S3: http://127.0.0.1:$S3_PORT (bucket $BUCKET)"
echo "client settings: source $ENV_FILE"
