"""raysvc.service and jobs/ on a real local Ray cluster (2 CPUs) and the real S3 gateway.

Tiny pools (6 images per class) and one CoOp epoch keep each run to seconds; the
feature cache is shared by the whole module.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from grid_events import GridEvents
from local_ray import local_ray, session_root
from ray import tune

from raysvc.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TEST_GRID = REPO / "jobs" / "configs" / "test_small.yaml"
FIXED = {"rounds": 2, "per_class": 6, "test_fraction": 0.25, "learner": "coop", "backbone": "conse-lite0",
         "learner_params": {"epochs": 1}}


# ------------------------------------------------------------- no Ray needed
def test_grid_expands_axes_dotted_keys_and_packs():
    from raysvc.service.driver import trial_runs
    from raysvc.service.gridspec import load_grid

    grid = load_grid({
        "name": "g", "out": "/tmp/x", "cells_per_trial": 4, "fixed": dict(FIXED),
        "grid": {"dataset": ["animal-mnist", "mnist-5k"], "strategy": ["random", "entropy"], "seed": [0, 1],
                 "learner_params.epochs": [1, 2], "budget": 5},
    })
    specs = [plan.spec for plan in grid.plans]
    trials = trial_runs(grid.plans, grid.settings.cells_per_trial)
    assert len(specs) == 16 and len(trials) == 4
    assert all(len(t.plans) == 4 for t in trials)
    assert {s.learner_params["epochs"] for s in specs} == {1, 2}
    assert all(s.budget == 5 and s.rounds == 2 for s in specs)
    assert len(set(grid.run_ids)) == 16
    # consecutive cells share a dataset, so a packed trial reuses its dataset and features
    assert all(len({p.spec.dataset for p in t.plans}) == 1 for t in trials)


def test_trial_names_say_dataset_strategy_and_seeds():
    from raysvc.service.driver import group_name
    from raysvc.spec import RunSpec

    def plan(**values):
        return RunSpec(**{"dataset": "emoji", "strategy": "cb", "seed": 0, "rounds": 8, **values}).resolve()

    assert group_name([plan()]) == "emoji/cb/s0"
    assert group_name([plan(seed=s) for s in (0, 1, 2)]) == "emoji/cb/s0,1,2"
    assert group_name([plan(), plan(strategy="random", seed=1)]) == "emoji/cb/s0+1"


def test_test_small_config_is_the_12_run_grid():
    from raysvc.service.gridspec import load_grid

    grid = load_grid(TEST_GRID)
    assert len(grid.plans) == 12 and grid.settings.cells_per_trial == 6 and grid.settings.train == "local"


@pytest.mark.parametrize("bad, message", [
    ({"grid": {"strategy": []}}, "empty list"),
    ({"grid": {"strategy": ["nope"]}}, "unknown strategy"),
    ({"grid": {"bogus": [1]}}, "run: unknown option 'bogus'"),
    ({"grid": {"seed.x": [1]}}, "dotted"),
    ({"train": "spark"}, "option train='spark': input should be 'local' or 'ray-train'"),
    ({"cells_per_trial": 0}, "cells_per_trial"),
    ({"surprise": 1}, "unknown grid option"),
    ({"ray_train": {"num_workers": 0}}, "num_workers"),
    ({"resources": {"cpu": "lots"}}, "grid resources: option cpu='lots': input should be a valid number"),
    ({"grid": {"learner_params.epochs": ["many"]}}, "learner 'coop': option epochs='many'"),
    ({"grid": {"learner_params.epoch": [5]}}, "unknown option 'epoch' (did you mean 'epochs'?)"),
    ({"grid": {"test_fraction": "0.2"}}, "run: option test_fraction='0.2': input should be a valid number"),
])
def test_grid_config_errors(bad, message):
    from raysvc.service.gridspec import load_grid

    raw = {"name": "g", "fixed": dict(FIXED), "grid": {"strategy": ["random"]}}
    raw.update(bad)
    if raw.get("ray_train"):
        raw["train"] = "ray-train"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_grid(raw)


def test_demo_config_is_valid():
    from raysvc.service.driver import trial_runs
    from raysvc.service.gridspec import load_grid

    grid = load_grid(REPO / "jobs" / "configs" / "demo.yaml", out="/tmp/unused-demo")
    specs = [plan.spec for plan in grid.plans]
    assert len(specs) == 9 and len(trial_runs(grid.plans, grid.settings.cells_per_trial)) == 3
    assert {s.strategy for s in specs} == {"random", "cb", "cbsq"}
    assert all(s.dataset == "emoji" and s.rounds == 8 and s.feature_centering == "pool" for s in specs)


def test_a_retried_trial_waits_twice_as_long_per_failure_up_to_the_cap():
    from raysvc.service.trial import BACKOFF_CAP_SECONDS, backoff_seconds

    assert [backoff_seconds(10.0, n) for n in range(5)] == [0.0, 10.0, 20.0, 40.0, 80.0]
    assert BACKOFF_CAP_SECONDS == 600.0 and backoff_seconds(10.0, 7) == 600.0  # 640 s, capped
    assert backoff_seconds(0.0, 3) == 0.0


def test_grid_credentials_leave_the_environment_for_a_private_file(monkeypatch):
    import botocore.session
    from ray.tune.execution.class_cache import ENV_VARS_TO_PROPAGATE

    from raysvc.service.credentials import credentials_out_of_environment

    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDGRID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "grid-secret-value")
    monkeypatch.setenv("AWS_PROFILE", "grid")
    with credentials_out_of_environment():
        # nothing left for Tune to copy into the trials' runtime environments
        assert not ENV_VARS_TO_PROPAGATE & {k for k in os.environ if k.startswith("AWS_")}
        assert "grid-secret-value" not in repr(dict(os.environ))
        path = Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"])
        assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
        credentials = botocore.session.get_session().get_credentials()  # the profile AWS_PROFILE names
        assert (credentials.access_key, credentials.secret_key) == ("AKIDGRID", "grid-secret-value")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "grid-secret-value"
    assert "AWS_SHARED_CREDENTIALS_FILE" not in os.environ and not path.parent.exists()


# ------------------------------------------------------------- Ray cluster
@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def ray_cluster(s3_gateway, feature_cache):
    """ray.init(num_cpus=2); driver and workers see the gateway and the shared feature cache."""
    env = dict(s3_gateway.env, RAYSVC_CACHE=str(feature_cache), RAYSVC_S3_RETRY_SECONDS="120",
               TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0")
    with local_ray(env) as ray:
        yield ray


def _files_holding(roots, needle: bytes) -> list[str]:
    """The regular files under ``roots`` whose bytes contain ``needle``."""
    found = []
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(str(path))
    return found


def _read_back(s3_gateway, prefix: str):
    """All runs under s3://bucket/prefix, read with plain boto3: ({run_id: manifest}, [rows])."""
    client = s3_gateway.gateway.client()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_gateway.bucket, Prefix=f"{prefix}/runs/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    manifests, rows = {}, []
    for key in keys:
        body = client.get_object(Bucket=s3_gateway.bucket, Key=key)["Body"].read()
        if key.endswith("manifest.json"):
            manifest = json.loads(body)
            manifests[manifest["run_id"]] = manifest
        elif key.endswith("records.parquet"):
            rows += pq.read_table(io.BytesIO(body)).to_pylist()
    return manifests, rows


def _wait_for(predicate, timeout: float, what: str, thread: threading.Thread | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if thread is not None and not thread.is_alive():
            raise AssertionError(f"the grid ended before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _run_in_thread(grid, *callbacks):
    from raysvc.service.driver import run_grid

    box = {}

    def target():
        try:
            box["result"] = run_grid(grid, verbose=0, callbacks=list(callbacks))
        except BaseException as exc:  # re-raised in the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


@pytest.fixture(scope="module")
def small_grid(ray_cluster, s3_gateway, feature_cache, tmp_path_factory):
    """The 12-run test grid (2 datasets x 3 strategies x 2 seeds x 2 rounds, 6 cells per trial)."""
    from raysvc.service.driver import run_grid
    from raysvc.service.gridspec import load_grid

    tune_dir = tmp_path_factory.mktemp("tune")
    grid = load_grid(TEST_GRID, out=f"{s3_gateway.dest}/grid12", storage_path=str(tune_dir),
                     features={"cache_dir": str(feature_cache)})
    start = time.perf_counter()
    result = run_grid(grid, verbose=0)
    elapsed = time.perf_counter() - start
    print(f"\n12-run grid: {elapsed:.1f}s")
    return grid, result, elapsed


@pytest.mark.timeout(420)
def test_grid_writes_every_run_and_round_exactly_once(small_grid, s3_gateway):
    grid, result, elapsed = small_grid
    assert result.ok, (result.missing, result.errors)
    assert result.n_trials == 2  # 12 cells packed 6 per trial
    # the grid's own clock starts inside run_grid (bench.grid divides by it)
    assert 0 < result.wall_seconds <= elapsed
    manifests, rows = _read_back(s3_gateway, "grid12")
    assert sorted(manifests) == sorted(grid.run_ids) and len(manifests) == 12
    pairs = [(r["run_id"], r["round"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == 24
    assert {p for p in pairs} == {(run_id, rnd) for run_id in grid.run_ids for rnd in (1, 2)}
    assert {r["dataset"] for r in rows} == {"animal-mnist", "mnist-5k"}
    assert {r["strategy"] for r in rows} == {"random", "entropy", "cbsq"}
    cells = {m["run_id"]: m for m in manifests.values()}
    for plan in grid.plans:
        manifest = cells[plan.run_id]
        assert manifest["config"] == json.loads(json.dumps(plan.spec.to_dict()))
        assert manifest["n_rows"] == 2 and manifest["schema_version"] == rows[0]["schema_version"]
        assert {"ray", "torch", "raysvc"} <= set(manifest["packages"])
        assert manifest["code_revision"] and manifest["grid"] == "test-small" and manifest["train"] == "local"


def test_no_file_of_the_ray_session_or_the_tune_state_holds_the_secret_key(small_grid, s3_gateway):
    """The driver and the raylet had the key in their environment; Tune copies a driver's
    AWS variables into every trial's runtime environment, which Ray logs, unless the
    driver keeps them out (raysvc.service.credentials)."""
    grid, result, _ = small_grid
    assert result.ok, (result.missing, result.errors)  # the trials wrote: they had the key, from the raylet
    roots = [session_root(), Path(grid.settings.experiment_path)]
    logs = list(session_root().glob("session_*/logs/runtime_env_agent.log"))
    assert logs and list(roots[1].glob("trial_*/result.json")), "nothing to search"
    assert not _files_holding(roots, s3_gateway.secret_key.encode())


def test_one_encoder_pass_per_dataset_and_backbone(small_grid):
    _, result, _ = small_grid
    counts = result.encode_counts
    assert len(counts) == 2, counts  # animal-mnist and mnist-5k subsets, one backbone
    assert set(counts.values()) == {1}
    assert {k.split("|")[1] for k in counts} == {"conse-lite0"}


@pytest.mark.timeout(300)
def test_encoder_service_hands_out_one_shared_read_only_copy(ray_cluster, feature_cache):
    import numpy as np

    from raysvc.backbones import BackboneRef
    from raysvc.experiment import run_dataset
    from raysvc.feature_settings import FeatureSettings
    from raysvc.service.encoders import RayEncode, encode_key, start_encoder_service
    from raysvc.spec import RunSpec

    ray = ray_cluster
    actor = start_encoder_service(FeatureSettings(cache_dir=str(feature_cache)), "raysvc-features-test-share")
    try:
        dataset = run_dataset(RunSpec(dataset="animal-mnist", per_class=6).resolve())
        encode = RayEncode("raysvc-features-test-share")
        backbone = BackboneRef.named("conse-lite0", 112)
        first, second = encode(dataset, backbone), encode(dataset, backbone)
        assert not first.image_features.flags.writeable  # a view on the object store, not a copy
        np.testing.assert_array_equal(first.image_features, second.image_features)
        assert second.encode_seconds == 0.0
        assert ray.get(actor.encode_counts.remote()) == {f"{dataset.fingerprint}|conse-lite0|112": 1}
        # the second request was answered from the pass the first one made, charged to nobody
        assert ray.get(actor.lookup.remote(encode_key(dataset, backbone)))["charged"] is False
    finally:
        ray.kill(actor)


@pytest.mark.timeout(420)
def test_killed_trial_worker_resumes_from_its_checkpoint(ray_cluster, s3_gateway, feature_cache, tmp_path):
    from raysvc.service.gridspec import load_grid

    events = GridEvents()
    grid = load_grid({
        "name": "killed", "out": f"{s3_gateway.dest}/killed", "storage_path": str(tmp_path / "tune"),
        "cells_per_trial": 2, "max_failures": 2, "features": {"cache_dir": str(feature_cache)},
        "checkpoint_seconds": 0, "fixed": dict(FIXED, rounds=6, budget=5, dataset="animal-mnist"),
        "grid": {"strategy": ["random", "entropy"], "seed": [0]},
    })
    thread, box = _run_in_thread(grid, events)
    first_run = grid.run_ids[0]
    # kill once round 2 of the first run is checkpointed: round 1's checkpoint is surely registered
    _wait_for(lambda: any(c[2] == 2 and c[3] == first_run for c in events.checkpoints), 300,
              "a checkpointed round", thread)
    victim = next(r[2] for r in events.results if r[3] == 2 and r[4] == first_run)
    os.kill(victim, signal.SIGKILL)
    thread.join(360)
    assert not thread.is_alive(), "the grid did not finish after the kill"
    if "error" in box:
        raise box["error"]
    result = box["result"]
    assert result.ok, (result.missing, result.errors)

    pids = list(dict.fromkeys(r[2] for r in events.results))
    assert len(pids) == 2 and pids[1] != victim  # retried in a new worker process
    resumed = [r for r in events.results if r[2] != victim and r[4] == first_run and r[3] is not None]
    assert resumed and resumed[0][3] > 1  # not from scratch: its first round after the kill is a later one
    manifests, rows = _read_back(s3_gateway, "killed")
    pairs = [(r["run_id"], r["round"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == 12
    assert set(pairs) == {(run_id, rnd) for run_id in grid.run_ids for rnd in range(1, 7)}
    assert sorted(manifests) == sorted(grid.run_ids)


@pytest.mark.timeout(420)
def test_results_survive_a_gateway_restart_during_the_run(ray_cluster, s3_gateway, feature_cache, tmp_path):
    from raysvc.service.gridspec import load_grid

    events = GridEvents()
    grid = load_grid({
        "name": "gateway-restart", "out": f"{s3_gateway.dest}/restart", "storage_path": str(tmp_path / "tune"),
        "cells_per_trial": 2, "features": {"cache_dir": str(feature_cache)},
        "fixed": dict(FIXED, rounds=1, dataset="mnist-5k"),
        "grid": {"strategy": ["random"], "seed": [0, 1]},
    })
    gateway = s3_gateway.gateway
    thread, box = _run_in_thread(grid, events)
    try:
        _wait_for(lambda: events.starts, 300, "the trial to start", thread)
        gateway.stop()
        # the last round of a run reported: its write comes next
        _wait_for(lambda: any(r[3] == 1 for r in events.results), 300, "a write attempt", thread)
        time.sleep(4)  # the write retries against a dead endpoint
        assert not events.written()
    finally:
        restarted_at = time.time()
        gateway.start()
    thread.join(360)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    result = box["result"]
    assert result.ok, (result.missing, result.errors)
    written = [r[0] for r in events.written()]
    assert len(written) == 2 and min(written) >= restarted_at - 1
    manifests, rows = _read_back(s3_gateway, "restart")
    assert sorted(manifests) == sorted(grid.run_ids)
    assert sorted((r["run_id"], r["round"]) for r in rows) == sorted((r, 1) for r in grid.run_ids)


@pytest.mark.timeout(420)
def test_single_run_job_trains_with_ray_train(ray_cluster, s3_gateway, feature_cache):
    from jobs.run import main

    dest = f"{s3_gateway.dest}/single"
    code = main(["--dataset", "animal-mnist", "--strategy", "entropy", "--rounds", "1", "--per-class", "5",
                 "--epochs", "1", "--train", "ray-train", "--num-workers", "1", "--cpus-per-worker", "1",
                 "--cache", str(feature_cache), "--out", dest])
    assert code == 0
    manifests, rows = _read_back(s3_gateway, "single")
    assert len(manifests) == 1 and len(rows) == 1
    manifest = next(iter(manifests.values()))
    assert manifest["train"] == "ray-train" and manifest["ray_train"]["num_workers"] == 1
    assert rows[0]["strategy"] == "entropy" and rows[0]["train_seconds"] > 0


def test_report_job_reads_the_grid_back_from_object_storage(small_grid, s3_gateway, tmp_path, capsys):
    from jobs.report import main

    assert main([f"{s3_gateway.dest}/grid12", "--out", str(tmp_path / "report")]) == 0
    assert "files, 12 runs)" in capsys.readouterr().out
    aggregate = (tmp_path / "report" / "aggregate.csv").read_text()
    assert aggregate.count("\n") == 2 * 3 * 2 + 1  # datasets x strategies x rounds, plus the header


def _one_cell_grid(name: str, s3_gateway, feature_cache, tmp_path, **settings) -> dict:
    return {
        "name": name, "out": f"{s3_gateway.dest}/{name}", "storage_path": str(tmp_path / "tune"),
        "cells_per_trial": 1, "features": {"cache_dir": str(feature_cache)},
        "fixed": dict(FIXED, rounds=1, dataset="animal-mnist"), "grid": {"strategy": ["random"], "seed": [0]},
        **settings,
    }


def _grid_job(config: Path, *args: str) -> list[str]:
    """``python -m jobs.grid`` for ``config`` on the test's cluster (a driver of its own)."""
    import ray

    return [sys.executable, "-m", "jobs.grid", str(config), "--address", ray.get_runtime_context().gcs_address,
            "--quiet", *args]


def _lease_held(name: str) -> bool:
    import ray

    from raysvc.service.driver import LEASE_PREFIX
    from raysvc.service.encoders import NAMESPACE

    try:
        ray.get_actor(LEASE_PREFIX + name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


@pytest.mark.timeout(420)
def test_a_grid_running_is_refused_to_a_second_driver_and_taken_over_once_its_driver_died(
        ray_cluster, s3_gateway, feature_cache, tmp_path):
    import yaml

    from raysvc.service.driver import run_grid
    from raysvc.service.gridspec import load_grid

    config = tmp_path / "orphan.yaml"
    config.write_text(yaml.safe_dump(_one_cell_grid("orphan", s3_gateway, feature_cache, tmp_path)))
    grid = load_grid(config)
    # its own TMPDIR: killed, it leaves its private credentials file there (see raysvc.service.credentials)
    first = subprocess.Popen(_grid_job(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                             env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        _wait_for(lambda: _lease_held("orphan") or first.poll() is not None, 180, "the first driver's lease")
        assert first.poll() is None
        with pytest.raises(ConfigError) as refused:
            run_grid(grid, verbose=0)
    finally:
        first.kill()
        first.wait()
    assert re.fullmatch(
        rf"grid orphan is running \(driver pid {first.pid} on {re.escape(socket.gethostname())} "
        r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it or pass --name", str(refused.value))
    # the lease belonged to the dead driver's job: Ray ends it with the job, and --resume takes over
    _wait_for(lambda: not _lease_held("orphan"), 60, "the dead driver's lease to end")
    result = run_grid(grid, resume=True, verbose=0)
    assert result.ok, (result.missing, result.errors)
    manifests, _ = _read_back(s3_gateway, "orphan")
    assert sorted(manifests) == grid.run_ids
    assert not _lease_held("orphan")


class _StopGatewayAtTheEnd(tune.Callback):
    """Stops the S3 gateway over ``root`` when the Tune experiment ends (before the driver's
    final listing); holds no credentials, since Tune pickles its callbacks into its state."""

    def __init__(self, root, port: int):
        self.root, self.port = str(root), port

    def on_experiment_end(self, trials, **info):
        from raysvc.local.s3gateway import S3Gateway

        S3Gateway(self.root, self.port).stop()


@pytest.mark.timeout(420)
def test_a_retried_trial_backs_off_and_the_driver_reports_what_it_cannot_confirm(
        ray_cluster, s3_gateway, feature_cache, tmp_path, monkeypatch):
    """The store goes away while the run is written, for longer than the store's retry
    window: the trial fails twice, each retry waiting longer, and the third attempt
    writes. The store goes away again when the experiment ends: the driver still
    returns its report, with the run it could not confirm."""
    from raysvc import storage
    from raysvc.service.gridspec import load_grid

    monkeypatch.setenv("RAYSVC_S3_RETRY_SECONDS", "2")  # the driver's final listing; workers keep their own
    events = GridEvents()
    grid = load_grid(_one_cell_grid("backoff", s3_gateway, feature_cache, tmp_path, max_failures=3,
                                    retry_backoff_seconds=3, checkpoint_seconds=0))
    # the trial's store gives up after 2 s (the workers' own window here is 120 s)
    store = storage.open_store(grid.settings.out, retry_seconds=2)
    grid = dataclasses.replace(grid, plans=tuple(dataclasses.replace(p, dest=store) for p in grid.plans))
    gateway = s3_gateway.gateway
    thread, box = _run_in_thread(grid, events, _StopGatewayAtTheEnd(gateway.root, gateway.port))
    try:
        _wait_for(lambda: events.starts, 300, "the trial to start", thread)
        gateway.stop()
        _wait_for(lambda: len(events.recoveries) >= 2, 300, "two failed attempts to store the run", thread)
        gateway.start()
        thread.join(360)
    finally:
        gateway.start()  # also once the callback stopped it at the end
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    result = box["result"]
    assert not result.ok and result.missing == [] and result.unconfirmed == grid.run_ids
    assert len(result.errors) == 1 and result.errors[0].startswith("cannot confirm the stored runs: "), result.errors
    summary = json.loads(json.dumps(result.summary()))
    assert summary["unconfirmed"] == grid.run_ids and summary["errors"] == result.errors and summary["trials"] == 1
    backoffs = [(r[0], r[6]) for r in events.results if r[6] is not None]
    assert [waited for _, waited in backoffs] == [3.0, 6.0]
    for (failed_at, _), (resumed_at, waited) in zip(events.recoveries, backoffs):
        assert resumed_at - failed_at >= waited
    written = events.written()
    assert len(written) == 1 and written[0][0] > events.recoveries[1][0]
    manifests, rows = _read_back(s3_gateway, "backoff")
    assert sorted(manifests) == grid.run_ids and len(rows) == 1
