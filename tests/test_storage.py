"""raysvc.storage against local folders and a real JuiceFS S3 gateway on loopback."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pyarrow as pa
import pytest
from ports import free_port

from raysvc import provenance, storage
from raysvc.errors import CorruptRunError, StorageError
from raysvc.local.s3gateway import S3Gateway, find_juicefs
from raysvc.records import COLUMNS, SCHEMA_VERSION, to_table


def rows(run_id: str, n: int = 3, acc: float = 0.5) -> pa.Table:
    base = dict(
        run_id=run_id, dataset="toy", strategy="random", learner="linear", backbone="clip",
        student="", teacher="", seed=0, budget=10, pool_size=100, n_classes=4,
        schema_version=SCHEMA_VERSION, n_pseudo=0, pseudo_acc=float("nan"), zeroshot_acc=0.3,
        teacher_acc=float("nan"), select_seconds=0.1, train_seconds=0.2, encode_seconds=0.0,
        test_acc_base=float("nan"), test_acc_novel=float("nan"), test_acc_hm=float("nan"),
    )  # fmt: skip
    return to_table(
        [dict(base, round=r, n_labeled=10 * r, n_queried=10 * r, test_acc=acc + r / 100) for r in range(n)]
    )


def same(a: pa.Table, b: pa.Table) -> bool:
    """Equal schema and values, NaN equal to NaN."""
    return a.schema.equals(b.schema) and a.to_pandas().equals(b.to_pandas())


def manifest(run_id: str) -> dict:
    return provenance.manifest({"run_id": run_id, "dataset": "toy", "budget": 10})


@pytest.fixture
def s3(s3_gateway, monkeypatch):
    """An s3:// destination with a fresh prefix, the env pointing at the session gateway."""
    for k, v in s3_gateway.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAYSVC_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("RAYSVC_S3_RETRY_SECONDS", "5")
    return f"{s3_gateway.dest}/t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["local", "s3"])
def dest(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "results")
    return request.getfixturevalue("s3")


def test_round_trip(dest):
    storage.check_writable(dest)
    assert storage.list_runs(dest) == []
    stored = storage.write_run(dest, "r1", rows("r1"), manifest("r1"))
    storage.write_run(dest, "r2", rows("r2", n=2), manifest("r2"))
    assert storage.list_runs(dest) == ["r1", "r2"]

    runs = storage.read_runs(dest)
    assert [r.run_id for r in runs] == ["r1", "r2"]
    run_id, table, m = runs[0]
    assert same(table, rows("r1"))
    assert table.column_names == COLUMNS
    assert m == stored
    assert m["config"] == {"run_id": "r1", "dataset": "toy", "budget": 10}
    assert m["schema_version"] == SCHEMA_VERSION and m["n_rows"] == 3
    assert "pyarrow" in m["packages"] and m["code_revision"] and m["finished_at"]

    df = storage.read_table(dest).to_pandas()
    assert len(df) == 5 and sorted(df.run_id.unique()) == ["r1", "r2"]

    assert storage.delete_run(dest, "r1") is True
    assert storage.delete_run(dest, "r1") is False
    assert storage.list_runs(dest) == ["r2"]


def test_rerun_replaces(dest):
    storage.write_run(dest, "r1", rows("r1", n=4, acc=0.1), manifest("r1"))
    storage.write_run(dest, "r1", rows("r1", n=2, acc=0.9), manifest("r1"))
    (run,) = storage.read_runs(dest)
    assert run.table.num_rows == 2 and run.manifest["n_rows"] == 2
    assert min(run.table.column("test_acc").to_pylist()) >= 0.9
    assert storage.read_table(dest).num_rows == 2


def test_rows_of_another_run_refused(tmp_path):
    with pytest.raises(StorageError, match="carry run_id"):
        storage.write_run(tmp_path, "r1", rows("other"), {})


class CrashBeforeManifest(storage.ObjectStore):
    """A real store whose process dies (an exception) when it is about to put a manifest."""

    def __init__(self, inner: storage.ObjectStore):
        self.inner = inner

    def put(self, key, data, content_type="application/octet-stream"):
        if key.endswith(storage.MANIFEST):
            raise RuntimeError("crash before manifest")
        self.inner.put(key, data, content_type)

    def get(self, key):
        return self.inner.get(key)

    def delete(self, key):
        self.inner.delete(key)

    def list(self, prefix):
        return self.inner.list(prefix)

    def check_writable(self):
        self.inner.check_writable()


def test_run_invisible_until_manifest_written(dest):
    """Interrupt a write between records and manifest: readers must not see the run."""
    storage.write_run(dest, "old", rows("old"), manifest("old"))
    crashing = CrashBeforeManifest(storage.open_store(dest))
    with pytest.raises(RuntimeError):
        storage.write_run(crashing, "new", rows("new"), manifest("new"))
    # a crashed rewrite of an existing run hides it rather than pairing new rows with an old manifest
    with pytest.raises(RuntimeError):
        storage.write_run(crashing, "old", rows("old", n=1), manifest("old"))

    assert storage.list_runs(dest) == []
    assert storage.read_runs(dest) == []
    assert storage.read_run(dest, "new") is None
    # the records of the interrupted write are there, but do not count
    assert storage.open_store(dest).get(storage.run_key("new", storage.RECORDS)) is not None
    storage.write_run(dest, "new", rows("new"), manifest("new"))
    assert storage.list_runs(dest) == ["new"]


def test_records_manifest_mismatch_detected(tmp_path):
    dest = tmp_path / "res"
    storage.write_run(dest, "r1", rows("r1"), manifest("r1"))
    mpath = dest / "runs" / "r1" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["records_sha256"] = "0" * 64
    mpath.write_text(json.dumps(m))
    with pytest.raises(CorruptRunError, match="does not match the checksum in its manifest") as info:
        storage.read_runs(dest)
    assert info.value.run_id == "r1" and "\n" not in str(info.value)


def test_unwritable_local_destination(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageError) as e:
        storage.check_writable(blocker / "results")
    assert "not writable" in str(e.value) and "\n" not in str(e.value)
    # checking a destination that does not exist yet creates nothing
    storage.check_writable(tmp_path / "a" / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    with pytest.raises(StorageError):
        storage.write_run(blocker / "results", "r1", rows("r1"), {})


def test_bad_destinations():
    for bad in ["", "s3://", "gs://bucket/x"]:
        with pytest.raises(StorageError):
            storage.open_store(bad)
    for bad_id in ["", ".hidden", "a/b", "../x"]:
        with pytest.raises(StorageError, match="invalid run_id"):
            storage.write_run("/tmp/unused", bad_id, rows("x"), {})


def test_missing_bucket(s3, s3_gateway):
    dest = "s3://no-such-bucket-raysvc/prefix"
    for call in (
        lambda: storage.check_writable(dest),
        lambda: storage.write_run(dest, "r1", rows("r1"), {}),
        lambda: storage.list_runs(dest),
    ):
        with pytest.raises(StorageError) as e:
            call()
        msg = str(e.value)
        assert "no-such-bucket-raysvc" in msg and "does not exist" in msg and "\n" not in msg


def test_wrong_credentials(s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong")
    with pytest.raises(StorageError, match="access denied"):
        storage.check_writable(s3)


def test_store_down_gives_up_after_retry_window(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="still unavailable after 1s"):
        storage.write_run(s3, "r1", rows("r1"), {}, retry_seconds=1)
    assert time.monotonic() - t0 < 10


@pytest.mark.skipif(find_juicefs() is None, reason="juicefs binary not found")
def test_write_survives_gateway_restart(tmp_path, monkeypatch, capsys):
    gw = S3Gateway(tmp_path / "gw", free_port(), "restart-key", "restart-secret")
    with gw:
        gw.ensure_bucket("results")
        for k, v in gw.env.items():
            monkeypatch.setenv(k, v)
        dest = "s3://results/exp"
        storage.write_run(dest, "before", rows("before"), manifest("before"))
        gw.stop()
        assert not gw.answers()

        outcome = {}

        def write():
            try:
                outcome["manifest"] = storage.write_run(
                    dest, "during", rows("during", n=5), manifest("during"), retry_seconds=60
                )
            except BaseException as e:  # pragma: no cover - reported below
                outcome["error"] = e

        t = threading.Thread(target=write)
        t.start()
        time.sleep(3)
        assert t.is_alive(), outcome  # still retrying
        gw.start()
        t.join(60)
        assert not t.is_alive() and "error" not in outcome, outcome

        runs = {r.run_id: r for r in storage.read_runs(dest)}
        assert sorted(runs) == ["before", "during"]
        # the outage was said once when the retries started and once when the store answered
        notices = [line for line in capsys.readouterr().err.splitlines() if line.startswith("raysvc: S3 store")]
        assert len(notices) == 2, notices
        assert "unavailable" in notices[0] and "retrying for up to 60s" in notices[0]
        assert "answers again after" in notices[1]
        assert same(runs["during"].table, rows("during", n=5))
        assert same(runs["before"].table, rows("before"))


def test_gateway_start_is_idempotent_and_reports_failures(s3_gateway, tmp_path):
    gw = s3_gateway.gateway
    assert gw.start() is gw and gw.answers()  # already running: no-op
    # a second gateway on the same port fails with a one-line error
    other = S3Gateway(tmp_path / "other", s3_gateway.gateway.port)
    with pytest.raises(StorageError, match="already in use"):
        other.start()
    # a binary that is not there
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYSVC_JUICEFS", str(tmp_path / "nope"))
        with pytest.raises(StorageError, match="juicefs binary not found"):
            S3Gateway(tmp_path / "x", free_port()).start()


def test_gateway_that_dies_reports_its_log(tmp_path, monkeypatch):
    fake = tmp_path / "juicefs"
    fake.write_text('#!/bin/sh\n[ "$1" = format ] && exit 0\necho "fatal: cannot open the volume"\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("RAYSVC_JUICEFS", str(fake))
    gw = S3Gateway(tmp_path / "gw", free_port())
    with pytest.raises(StorageError) as e:
        gw.start(timeout=10)
    msg = str(e.value)
    assert "exited while starting" in msg and "cannot open the volume" in msg and "\n" not in msg
    assert not gw.is_running() and not gw.pid_path.exists()
