#!/usr/bin/env bash
# Start a local Ray head and the embedded S3 gateway (bucket "raysvc"), auth disabled, every
# listening socket on 127.0.0.1 only.
#
#   cluster/start_local.sh                 # 2 CPUs, Ray on :6379, dashboard/jobs on :8265, S3 on :9000
#   NUM_CPUS=4 RAY_PORT=6390 DASHBOARD_PORT=8270 RAY_CLIENT_PORT=10011 S3_PORT=9010 \
#       RAY_TMP=/tmp/raysvc-ray2 S3_ROOT=.s3-2 ENV_FILE=.ray-local2.env cluster/start_local.sh
#
# Then, in the same shell setup (source the env file it writes):
#   source .ray-local.env
#   ray job submit --working-dir . -- python -m jobs.grid jobs/configs/demo.yaml --out s3://raysvc/demo
#   ray status
# Stop with cluster/stop_local.sh (same RAY_TMP); cluster/stop_local.sh --list shows what it would end.
#
# Settings (environment variables; a port of 0 lets the OS pick a free one):
#   NUM_CPUS=2                  CPUs the head offers
#   NUM_GPUS=                   GPUs the head offers (empty: Ray detects them)
#   RAY_PORT=6379               GCS port; clients use RAY_ADDRESS=127.0.0.1:$RAY_PORT
#   DASHBOARD_PORT=8265         dashboard and job API (RAY_API_SERVER_ADDRESS)
#   RAY_CLIENT_PORT=10001       Ray client server (ray://127.0.0.1:$RAY_CLIENT_PORT)
#   DASHBOARD_AGENT_PORT=0      dashboard agent's HTTP port (Ray's own default is a fixed 52365)
#   DASHBOARD_AGENT_GRPC_PORT=  dashboard agent's gRPC port (empty: Ray's default, any free port)
#   RUNTIME_ENV_AGENT_PORT=     runtime env agent's port (empty: Ray's default, any free port)
#   METRICS_EXPORT_PORT=        Prometheus metrics port (empty: Ray's default, any free port)
#   MIN_WORKER_PORT=0           workers' port range; 0 and 0: any free port each (Ray's own
#   MAX_WORKER_PORT=0             default, 10002-19999, is shared by every cluster on the machine)
#   AUTOSCALER_METRIC_PORT=     read by Ray itself: the autoscaler's and the dashboard's metrics
#   DASHBOARD_METRIC_PORT=        servers (empty: Ray's fixed 44217 and 44227, not checked; a busy
#                                 one costs only those metrics)
#   RAY_TMP=/tmp/raysvc-ray     Ray's session files, this cluster's state file
#                               $RAY_TMP/raysvc-local.pids (what stop_local.sh ends), and
#                               $RAY_TMP/tmp, the TMPDIR of every process of the cluster
#                               (stop_local.sh removes the session and TMPDIR unless KEEP_LOGS=1)
#   S3_ROOT=.s3                 the S3 gateway's data (relative paths: to the repository root),
#                               and its keys: $S3_ROOT/credentials (mode 0600), an AWS shared
#                               credentials file made on the first start with a random secret
#                               (or RAYSVC_S3_ACCESS_KEY / RAYSVC_S3_SECRET_KEY when set)
#   S3_PORT=9000                the S3 gateway's port
#   BUCKET=raysvc               bucket created on start
#   ENV_FILE=.ray-local.env     client settings written on start, removed on stop
#   PYTHON=.venv/bin/python     the project's interpreter; RAY_BIN: its `ray` (default beside it)
#
# Every fixed port is checked before anything starts: a busy one ends the script with one
# line on stderr naming it and its setting. A start that fails later ends what it had
# started (Ray's processes and the gateway) and removes its state and env files.
#
# No secret goes into an environment variable: the head, its workers and jobs, and the
# shells that source the env file find the gateway's keys through AWS_SHARED_CREDENTIALS_FILE
# (Ray Tune copies a driver's AWS_SECRET_ACCESS_KEY into every trial's runtime environment,
# which Ray writes in plain text to the session's logs/runtime_env_agent.log).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROG=cluster/start_local.sh
PY=${PYTHON:-$ROOT/.venv/bin/python}
RAY=${RAY_BIN:-$(dirname "$PY")/ray}
NUM_CPUS=${NUM_CPUS:-2}
NUM_GPUS=${NUM_GPUS:-}
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
RAY_CLIENT_PORT=${RAY_CLIENT_PORT:-10001}
DASHBOARD_AGENT_PORT=${DASHBOARD_AGENT_PORT:-0}
DASHBOARD_AGENT_GRPC_PORT=${DASHBOARD_AGENT_GRPC_PORT:-}
RUNTIME_ENV_AGENT_PORT=${RUNTIME_ENV_AGENT_PORT:-}
METRICS_EXPORT_PORT=${METRICS_EXPORT_PORT:-}
MIN_WORKER_PORT=${MIN_WORKER_PORT:-0}
MAX_WORKER_PORT=${MAX_WORKER_PORT:-0}
RAY_TMP=${RAY_TMP:-/tmp/raysvc-ray}
S3_ROOT=${S3_ROOT:-$ROOT/.s3}
S3_PORT=${S3_PORT:-9000}
BUCKET=${BUCKET:-raysvc}
ENV_FILE=${ENV_FILE:-$ROOT/.ray-local.env}
abs() { case $1 in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }
RAY_TMP=$(abs "$RAY_TMP")
S3_ROOT=$(abs "$S3_ROOT")
ENV_FILE=$(abs "$ENV_FILE")
STATE=$RAY_TMP/raysvc-local.pids
RAY_LOG=$RAY_TMP/raysvc-ray-start.log
CLUSTER_TMPDIR=$RAY_TMP/tmp
CREDENTIALS=$S3_ROOT/credentials
STOP=(env RAY_TMP="$RAY_TMP" PYTHON="$PY" "$ROOT/cluster/stop_local.sh")

die() { echo "$PROG: $*" >&2; exit 1; }

command -v setsid >/dev/null || die "setsid (util-linux) is needed to tell this cluster's processes from others"
[[ -x "$PY" ]] || die "no Python at $PY (run make, or set PYTHON)"

# ---- before anything starts: not already running, every fixed port free
inherited=0
if [[ -s "$STATE" ]]; then
    if [[ -n "$("${STOP[@]}" --list 2>/dev/null)" ]]; then
        die "a local cluster from RAY_TMP=$RAY_TMP is already running; stop it with cluster/stop_local.sh"
    fi
    # left by a cluster whose Ray is gone: a gateway its start started stays ours to stop
    grep -qxF "s3_root $S3_ROOT" "$STATE" && grep -qx "gateway_owned 1" "$STATE" && inherited=1
    rm -f "$STATE"
fi
# the gateway's keys, from $CREDENTIALS (made here on the first start): in shell variables
# handed to the gateway's own commands, never exported
mkdir -p "$S3_ROOT"
mapfile -t keys < <("$PY" - "$CREDENTIALS" <<'EOF'
import configparser, os, secrets, sys
from raysvc.local.s3gateway import DEFAULT_SECRET_KEY, S3Gateway
path = sys.argv[1]
explicit = os.environ.get("RAYSVC_S3_SECRET_KEY")
saved = configparser.ConfigParser()
if not explicit and saved.read(path) and saved.has_option("default", "aws_secret_access_key"):
    print(saved["default"]["aws_access_key_id"], saved["default"]["aws_secret_access_key"], sep="\n")
    sys.exit()
gateway = S3Gateway(os.path.dirname(path))
access = gateway.access_key  # RAYSVC_S3_ACCESS_KEY or the default, as the gateway reads it
if explicit:
    secret = explicit
elif gateway.is_running():
    secret = DEFAULT_SECRET_KEY  # started before this file existed: with the default keys
else:
    secret = secrets.token_urlsafe(24)
with os.fdopen(os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
    fh.write(f"[default]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
os.replace(f"{path}.tmp", path)
print(access, secret, sep="\n")
EOF
)
((${#keys[@]} == 2)) || die "cannot read or make the gateway's credentials file $CREDENTIALS"
gateway() { RAYSVC_S3_ACCESS_KEY=${keys[0]} RAYSVC_S3_SECRET_KEY=${keys[1]} "$PY" -m raysvc.local.s3gateway "$@"; }

# stop_local.sh stops the gateway only if it is ours: one someone else started over S3_ROOT
# is used as it is, and left running
gateway_owned=1
gateway_running=0
if gateway status --root "$S3_ROOT" >/dev/null 2>&1; then
    gateway_running=1
    gateway_owned=$inherited
fi
AUTOSCALER_METRIC_PORT=${AUTOSCALER_METRIC_PORT:-}
DASHBOARD_METRIC_PORT=${DASHBOARD_METRIC_PORT:-}
port_settings=(RAY_PORT DASHBOARD_PORT RAY_CLIENT_PORT DASHBOARD_AGENT_PORT DASHBOARD_AGENT_GRPC_PORT
               RUNTIME_ENV_AGENT_PORT METRICS_EXPORT_PORT MIN_WORKER_PORT MAX_WORKER_PORT
               AUTOSCALER_METRIC_PORT DASHBOARD_METRIC_PORT)
((gateway_running)) || port_settings+=(S3_PORT)
check_args=()
for name in "${port_settings[@]}"; do check_args+=("$name" "${!name}"); done
# one line on stderr for the first problem: not a number, two settings on one port, or in use
# (bound on any address: Ray's GCS listens on all of them)
"$PY" - "${check_args[@]}" <<'EOF' || exit 1
import socket, sys
args = sys.argv[1:]
seen = {}
for name, value in zip(args[::2], args[1::2]):
    if value == "":
        continue
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        sys.exit(f"cluster/start_local.sh: {name}={value!r} is not a port number (0-65535)")
    port = int(value)
    if port == 0 or name.endswith("_WORKER_PORT"):
        continue  # any free port; the worker range is Ray's to search
    if port in seen:
        sys.exit(f"cluster/start_local.sh: {seen[port]} and {name} are both {port}; give each its own port")
    seen[port] = name
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            sys.exit(f"cluster/start_local.sh: port {port} ({name}) is already in use; "
                     f"set {name} to a free port")
EOF

# ---- from here on, a failure ends whatever this script started
mkdir -p "$RAY_TMP" "$CLUSTER_TMPDIR"
started=0
undo() {
    local rc=$?
    trap - EXIT INT TERM
    if ((!started)); then
        echo "$PROG: start failed; stopping what it had started" >&2
        rm -f "$ENV_FILE.tmp"
        "${STOP[@]}" >&2 || true
    fi
    exit "$rc"
}
trap undo EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
{
    echo "# cluster/start_local.sh $(date '+%F %T'): read by cluster/stop_local.sh"
    echo "gateway_owned $gateway_owned"
    echo "s3_root $S3_ROOT"
    echo "env_file $ENV_FILE"
    echo "tmpdir $CLUSTER_TMPDIR"
    echo "ports $RAY_PORT $DASHBOARD_PORT $RAY_CLIENT_PORT $S3_PORT"
} > "$STATE"

export RAY_AUTH_MODE=disabled          # both ends: the head here, clients via $ENV_FILE
export RAY_USAGE_STATS_ENABLED=0
export PATH="$(dirname "$PY"):$PATH"      # jobs' "python" is the project's interpreter
# Ray turns --node-ip-address 127.0.0.1 into the machine's address, and then binds the GCS,
# the raylet and the agents on all interfaces; with this setting of Ray's the node's address
# stays 127.0.0.1 and every listener binds loopback (it also keeps `ray start` in this
# environment from adding a worker node, which a loopback-only head could not take anyway)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# temporary files of the head's processes, workers and jobs (pymp-*, checkpoints on their
# way to Tune) go where stop_local.sh removes them
export TMPDIR=$CLUSTER_TMPDIR

gateway start --root "$S3_ROOT" --port "$S3_PORT" --bucket "$BUCKET"
# the S3 settings without the keys, which the head (and so every worker and job) and the
# shells that source the env file read from $CREDENTIALS
s3_env() {
    gateway env --root "$S3_ROOT" --port "$S3_PORT" | grep -v '^export AWS_\(ACCESS_KEY_ID\|SECRET_ACCESS_KEY\)='
    printf 'export AWS_SHARED_CREDENTIALS_FILE=%q\n' "$CREDENTIALS"
    echo "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_PROFILE"
}
eval "$(s3_env)"
export RAYSVC_CODE_REVISION=${RAYSVC_CODE_REVISION:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)}
# jobs run in an uploaded copy of the checkout: Tune state goes to this checkout's .raysvc/,
# where a later `jobs.grid --resume` finds it (never to the home directory)
export RAYSVC_STATE_DIR=${RAYSVC_STATE_DIR:-$ROOT/.raysvc}
# ... and the datasets built by `make data` (.data/ is ignored, so it is not uploaded)
export RAYSVC_DATA=${RAYSVC_DATA:-$ROOT/.data}

ray_args=(--head --num-cpus "$NUM_CPUS" --disable-usage-stats
    --port "$RAY_PORT" --node-ip-address 127.0.0.1 --temp-dir "$RAY_TMP"
    --include-dashboard=true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT"
    --ray-client-server-port "$RAY_CLIENT_PORT"
    --dashboard-agent-listen-port "$DASHBOARD_AGENT_PORT"
    --min-worker-port "$MIN_WORKER_PORT" --max-worker-port "$MAX_WORKER_PORT")
[[ -n "$NUM_GPUS" ]] && ray_args+=(--num-gpus "$NUM_GPUS")
[[ -n "$DASHBOARD_AGENT_GRPC_PORT" ]] && ray_args+=(--dashboard-agent-grpc-port "$DASHBOARD_AGENT_GRPC_PORT")
[[ -n "$RUNTIME_ENV_AGENT_PORT" ]] && ray_args+=(--runtime-env-agent-port "$RUNTIME_ENV_AGENT_PORT")
[[ -n "$METRICS_EXPORT_PORT" ]] && ray_args+=(--metrics-export-port "$METRICS_EXPORT_PORT")

# `ray start` runs as the leader of a new session whose id goes into the state file first:
# every process it leaves behind (GCS, raylet, dashboard, client server, agents) and every
# worker the raylet starts later carries that session id, which no other process has
echo "starting the Ray head on 127.0.0.1:$RAY_PORT (log: $RAY_LOG)"
if ! setsid -w bash -c 'echo "sid $(ps -o sid= -p $$ | tr -d " ")" >> "$0"; exec "$@"' \
        "$STATE" "$RAY" start "${ray_args[@]}" > "$RAY_LOG" 2>&1; then
    tail -n 25 "$RAY_LOG" >&2
    die "ray start failed (full log: $RAY_LOG)"
fi
# jobs go through the dashboard: wait until it answers
"$PY" - "http://127.0.0.1:$DASHBOARD_PORT/api/version" <<'EOF' || die "the Ray dashboard did not answer on 127.0.0.1:$DASHBOARD_PORT (see $RAY_TMP/session_latest/logs/dashboard.log)"
import sys, time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.25)
EOF
# and until `ray status` has the autoscaler's report (a few seconds after ray start returns)
for ((i = 0; ; i++)); do
    "$RAY" status --address "127.0.0.1:$RAY_PORT" 2>/dev/null | grep -q '^Resources' && break
    ((i < 60)) || die "\`ray status\` did not report this cluster within a minute"
    sleep 0.5
done
# record the head's processes by PID (with their start times, so a reused PID is never taken),
# and its session folder (what stop_local.sh removes)
"${STOP[@]}" --list | sort -n | while read -r pid start comm; do echo "pid $pid $start $comm"; done >> "$STATE"
echo "session $(readlink -f "$RAY_TMP/session_latest")" >> "$STATE"

{
    echo "export RAY_AUTH_MODE=disabled"
    echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0    # clients keep 127.0.0.1: the head listens there only"
    echo "export RAY_ADDRESS=127.0.0.1:$RAY_PORT                        # ray status, ray.init()"
    echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT   # ray job submit/status/logs"
    s3_env
    printf 'export PATH=%q:$PATH\n' "$(dirname "$PY")"
} > "$ENV_FILE.tmp"
mv -f "$ENV_FILE.tmp" "$ENV_FILE"
started=1
echo "Ray head: 127.0.0.1:$RAY_PORT, jobs/dashboard: http://127.0.0.1:$DASHBOARD_PORT," \
     "client: ray://127.0.0.1:$RAY_CLIENT_PORT, S3: http://127.0.0.1:$S3_PORT (bucket $BUCKET)"
stop_cmd=cluster/stop_local.sh
[[ "$RAY_TMP" == /tmp/raysvc-ray ]] || stop_cmd="RAY_TMP=$RAY_TMP $stop_cmd"
echo "$(grep -c '^pid ' "$STATE") processes recorded in $STATE; stop with: $stop_cmd"
echo "client settings: source $ENV_FILE"
