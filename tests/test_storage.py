"""raysvc.storage against local folders and a real JuiceFS S3 gateway on loopback."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
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
    """Interrupt a write between its files and its manifest: readers must not see the run, and a
    crashed rewrite of an existing run leaves the old run whole."""
    storage.write_run(dest, "old", rows("old"), manifest("old"))
    crashing = CrashBeforeManifest(storage.open_store(dest))
    with pytest.raises(RuntimeError):
        storage.write_run(crashing, "new", rows("new"), manifest("new"))
    with pytest.raises(RuntimeError):
        storage.write_run(crashing, "old", rows("old", n=1), manifest("old"))

    assert storage.list_runs(dest) == ["old"]
    (old,) = storage.read_runs(dest)
    assert same(old.table, rows("old"))  # the old rows with the old manifest, not the crashed rewrite's
    assert storage.read_run(dest, "new") is None
    # the files of the interrupted write are there, but do not count: named as incomplete
    assert any(k.endswith(storage.RECORDS) for k in storage.open_store(dest).list("runs/new/"))
    stored = storage.stored_runs(dest)
    assert stored.complete == ["old"] and list(stored.incomplete) == ["new"]
    assert "did not finish" in stored.incomplete["new"]
    storage.write_run(dest, "new", rows("new"), manifest("new"))
    assert storage.list_runs(dest) == ["new", "old"]


def test_records_manifest_mismatch_detected(tmp_path):
    dest = tmp_path / "res"
    storage.write_run(dest, "r1", rows("r1"), manifest("r1"))
    mpath = dest / "runs" / "r1" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["files"]["records.parquet"]["sha256"] = "0" * 64
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


def test_attempt_timeouts_fit_in_what_is_left_of_the_window():
    from raysvc.storage.s3 import attempt_timeouts

    assert attempt_timeouts(60, 60) == (5, 30)  # half the window: a moment's freeze is tried again
    assert attempt_timeouts(600, 600) == (5, 120)  # never above the usual read timeout
    assert attempt_timeouts(60, 10.7) == (5, 10)  # late in the window: what is left, in whole seconds
    assert attempt_timeouts(4, 4) == (2, 2)
    assert attempt_timeouts(60, 0.3) == (1, 1)  # the last attempt still gets a second


def test_frozen_store_holds_a_call_no_longer_than_its_window(s3, monkeypatch, capsys):
    import socket

    # accepts connections (the kernel completes them from the backlog) and never answers
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(64)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{frozen.getsockname()[1]}")
        monkeypatch.setenv("RAYSVC_S3_RETRY_SECONDS", "3")
        store = storage.open_store(s3)
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="still unavailable after 3s") as error:
            store.get("runs/r1/manifest.json")
        elapsed = time.monotonic() - t0
    assert 3 <= elapsed < 3 + 2.5, elapsed  # not botocore's 60 s, nor the 120 s read timeout
    assert "timeout" in str(error.value).lower() and "\n" not in str(error.value)
    assert "retrying for up to 3s" in capsys.readouterr().err


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


# ------------------------------------------------------------- one writer per run
def _racing_writer(dest: str, env: dict, writer: int, rounds: int, barrier) -> None:
    """A process that writes run "race" ``rounds`` times, each write starting with the other
    writer's (a barrier): its rows carry ``writer`` in test_acc, its manifest in "writer"."""
    import os

    os.environ.update(env)
    for _ in range(rounds):
        barrier.wait(60)
        table = rows("race", n=2 + writer, acc=float(writer))
        storage.write_run(dest, "race", table, dict(manifest("race"), writer=writer))
        barrier.wait(60)  # the test reads the final state here
        barrier.wait(60)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_writers_of_one_run_leave_one_whole_run(where, request, tmp_path):
    """Two processes write one run id at the same moment, 40 times: every final state is
    readable and holds one writer's rows with that same writer's manifest."""
    import multiprocessing

    if where == "s3":
        dest, env = request.getfixturevalue("s3"), dict(request.getfixturevalue("s3_gateway").env)
    else:
        dest, env = str(tmp_path / "results"), {}
    rounds = 40
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    writers = [context.Process(target=_racing_writer, args=(dest, env, w, rounds, barrier)) for w in (0, 1)]
    for w in writers:
        w.start()
    winners = []
    try:
        for _ in range(rounds):
            barrier.wait(60)  # both start writing
            barrier.wait(120)  # both are done
            run = storage.read_run(dest, "race")
            writer = run.manifest["writer"]
            assert set(run.table.column("test_acc").to_pylist()) <= {float(writer) + r / 100 for r in range(3)}
            assert run.table.num_rows == 2 + writer == run.manifest["n_rows"]
            assert storage.stored_runs(dest).complete == ["race"]
            winners.append(writer)
            barrier.wait(60)
    finally:
        for w in writers:
            w.join(60)
            if w.is_alive():
                w.kill()
    assert all(w.exitcode == 0 for w in writers)
    assert len(winners) == rounds


def test_skip_existing_counts_complete_runs_only(dest):
    storage.write_run(dest, "whole", rows("whole"), manifest("whole"))
    storage.write_run(dest, "cut", rows("cut"), manifest("cut"))
    store = storage.open_store(dest)
    m = json.loads(store.get("runs/cut/manifest.json"))
    path = f"runs/cut/{m['files']['records.parquet']['path']}"
    store.put(path, store.get(path)[:100])  # truncated behind its manifest's back
    with pytest.raises(RuntimeError):
        storage.write_run(CrashBeforeManifest(store), "dead", rows("dead"), manifest("dead"))
    stored = storage.stored_runs(dest)
    assert stored.complete == ["whole"]
    assert sorted(stored.incomplete) == ["cut", "dead"]
    assert "records.parquet has 100 bytes" in stored.incomplete["cut"]


def test_extra_run_files_are_stored_and_verified(dest):
    selections = pa.table({"round": [1, 1], "position": [4, 7]})
    storage.write_run(dest, "r1", rows("r1"), manifest("r1"), files={"selections.parquet": selections})
    run = storage.read_run(dest, "r1")
    assert pq.read_table(pa.BufferReader(storage.read_run_file(dest, run, "selections.parquet"))).equals(selections)
    assert storage.read_run_file(dest, run, "probs.npy") is None
    store = storage.open_store(dest)
    store.put(f"runs/r1/{run.manifest['files']['selections.parquet']['path']}", b"edited")
    with pytest.raises(CorruptRunError, match="selections.parquet does not match the checksum"):
        storage.read_run_file(dest, run, "selections.parquet")
    with pytest.raises(StorageError, match="may not be called"):
        storage.write_run(dest, "r2", rows("r2"), {}, files={"manifest.json": b"{}"})


def test_a_run_of_the_first_storage_format_reads_and_a_rerun_replaces_it(tmp_path):
    """Format 1: records.parquet beside the manifest, records_sha256 in it."""
    import hashlib
    import io

    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    pq.write_table(rows("r1"), buffer)
    (folder / "records.parquet").write_bytes(buffer.getvalue())
    old = dict(manifest("r1"), run_id="r1", n_rows=3, storage_format=1,
               records_sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(old))
    assert same(storage.read_run(tmp_path, "r1").table, rows("r1"))
    assert storage.stored_runs(tmp_path).complete == ["r1"]
    storage.write_run(tmp_path, "r1", rows("r1", n=1), manifest("r1"))
    assert storage.read_run(tmp_path, "r1").table.num_rows == 1
    assert not (folder / "records.parquet").exists()  # the replaced format-1 records are gone


def test_a_rerun_removes_the_attempt_it_replaced_and_stale_ones(tmp_path, monkeypatch):
    storage.write_run(tmp_path, "r1", rows("r1"), manifest("r1"))
    storage.write_run(tmp_path, "r1", rows("r1"), manifest("r1"))
    assert len([p for p in (tmp_path / "runs" / "r1").iterdir() if p.is_dir()]) == 1
    stale = tmp_path / "runs" / "r1" / "20000101T000000Z-0123456789ab"
    stale.mkdir()
    (stale / "records.parquet").write_bytes(b"left by a writer that died")
    storage.write_run(tmp_path, "r1", rows("r1"), manifest("r1"))
    assert not stale.exists()
