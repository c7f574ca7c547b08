"""Encoding on Ray Data and the shared feature store in object storage (issue 12).

Real local Ray (2 CPUs), the real S3 gateway and the real conse-lite0 backbone on a
60-image Animal-MNIST pool; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid

import numpy as np
import pytest
from experiments import cache_at
from local_ray import local_ray

from raysvc.backbones import BackboneRef
from raysvc.errors import ConfigError
from raysvc.experiment import run_dataset
from raysvc.featurecache import feature_key
from raysvc.spec import RunSpec

BACKBONE = BackboneRef.named("conse-lite0", 112)
FIXED = {"rounds": 1, "per_class": 6, "test_fraction": 0.25, "learner": "coop", "backbone": "conse-lite0",
         "learner_params": {"epochs": 1}, "dataset": "animal-mnist"}
# float16 keeps 11 significant bits: two float32 values a hair apart may round to neighbouring
# float16 values, which below 1 are at most 2**-11 apart
FLOAT16_ROUNDING = 2.0**-11


@pytest.fixture(scope="module")
def pool():
    return run_dataset(RunSpec(dataset="animal-mnist", per_class=6).resolve())


@pytest.fixture(scope="module")
def backbone():
    return BACKBONE.load()


@pytest.fixture(scope="module")
def local_half(pool, tmp_path_factory):
    """The single-process path's float16 features of the pool."""
    return cache_at(tmp_path_factory.mktemp("local16"), dtype="float16", encoder="local").encode(pool, BACKBONE)


@pytest.fixture
def s3_env(s3_gateway, monkeypatch):
    for key, value in s3_gateway.env.items():
        monkeypatch.setenv(key, value)
    return f"{s3_gateway.dest}/features-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def ray_cluster(s3_gateway):
    """A 2-CPU local Ray whose workers see the gateway (token auth off, no dashboard)."""
    env = dict(s3_gateway.env, RAYSVC_S3_RETRY_SECONDS="120", RAY_AUTH_MODE="disabled",
               TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0")
    with local_ray(env) as ray:
        yield ray


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def _entry(store, key) -> np.ndarray:
    """The entry's rows as the feature cache reads them: verified shard by shard."""
    from raysvc.storage.features import read_manifest, read_rows

    return np.concatenate(list(read_rows(store, read_manifest(store, key))))


def _shifted(rows: np.ndarray) -> np.ndarray:
    """A valid array of the same shape and dtype whose rows are those of the next image."""
    return np.roll(np.asarray(rows), 1, axis=0)


def _npy(rows: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rows)
    return buffer.getvalue()


def _notices(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("raysvc: feature")]


# ------------------------------------------------------------------ content hash
def test_feature_digest_is_sha256_of_dtype_shape_and_rows_however_they_are_split():
    from raysvc.storage.features import FeatureDigest

    rows = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float16)
    by_hand = hashlib.sha256(b'{"dtype": "<f2", "shape": [3, 2]}' + rows.tobytes()).hexdigest()
    whole, split = FeatureDigest(rows.shape, rows.dtype), FeatureDigest(rows.shape, rows.dtype)
    whole.update(rows)
    split.update(rows[:1])
    split.update(rows[1:].tobytes())  # raw bytes, as a file holds them
    assert whole.hexdigest() == split.hexdigest() == by_hand
    other = FeatureDigest((2, 3), rows.dtype)  # the same bytes as another shape
    other.update(rows.tobytes())
    assert other.hexdigest() != by_hand


# ------------------------------------------------------------------ shard protocol
def test_entry_is_sharded_with_the_manifest_listing_shape_dtype_and_hashes(s3_env):
    from raysvc.storage.features import FeatureDigest, open_feature_store, write_entry

    store = open_feature_store(s3_env)
    features = np.random.default_rng(0).standard_normal((70, 12)).astype(np.float16)
    assert write_entry(store, "k1", features, rows_per_shard=32)
    assert store.list("k1/") == ["k1/manifest.json", "k1/shard-00000.npy", "k1/shard-00001.npy",
                                 "k1/shard-00002.npy"]
    manifest = json.loads(store.get("k1/manifest.json"))
    assert manifest["shape"] == [70, 12] and manifest["dtype"] == "float16"
    assert [s["rows"] for s in manifest["shards"]] == [32, 32, 6]
    assert [s["sha256"] for s in manifest["shards"]] == [
        hashlib.sha256(store.get(f"k1/{s['name']}")).hexdigest() for s in manifest["shards"]]
    digest = FeatureDigest(features.shape, features.dtype)
    digest.update(features)
    assert manifest["sha256"] == digest.hexdigest()
    back = _entry(store, "k1")
    assert back.dtype == np.float16 and np.array_equal(back, features)
    assert not write_entry(store, "k1", features)  # complete already: nothing rewritten


def test_entry_that_disagrees_with_its_manifest_is_named(s3_env):
    from raysvc.storage.features import BadEntry, open_feature_store, write_entry

    store = open_feature_store(s3_env)
    features = np.arange(40, dtype=np.float16).reshape(10, 4)
    for key in ("shifted", "missing", "garbage", "old"):
        write_entry(store, key, features, rows_per_shard=4)
    store.put("shifted/shard-00001.npy", _npy(_shifted(features[4:8])))  # a valid array, wrong rows
    store.delete("missing/shard-00002.npy")
    store.put("garbage/shard-00000.npy", b"not an array")
    old = json.loads(store.get("old/manifest.json"))
    store.put("old/manifest.json", json.dumps({k: v for k, v in old.items() if k != "sha256"} | {"format": 1}).encode())
    where = s3_env.rstrip("/")
    for key, message in [("shifted", f"shard {where}/shifted/shard-00001.npy does not match its sha256"),
                         ("missing", f"shard {where}/missing/shard-00002.npy is missing"),
                         ("garbage", f"shard {where}/garbage/shard-00000.npy does not match its sha256"),
                         ("old", f"entry {where}/old has a manifest of another format (1,")]:
        with pytest.raises(BadEntry, match=re.escape(message)):
            _entry(store, key)


def test_manifest_whose_rows_disagree_with_its_whole_hash_is_refused_after_the_last_shard(tmp_path):
    from raysvc.storage.features import BadEntry, open_feature_store, read_manifest, read_rows, write_entry

    store = open_feature_store(str(tmp_path / "store"))
    features = np.arange(40, dtype=np.float16).reshape(10, 4)
    write_entry(store, "k", features, rows_per_shard=5)
    manifest = json.loads(store.get("k/manifest.json"))
    manifest["shards"].reverse()  # every shard matches its own hash, in the wrong order
    store.put("k/manifest.json", json.dumps(manifest).encode())
    rows = read_rows(store, read_manifest(store, "k"))
    assert len(next(rows)) == 5 and len(next(rows)) == 5  # both shards verify on their own
    with pytest.raises(BadEntry, match="its rows do not match the manifest's sha256"):
        next(rows)


def test_feature_store_destination_errors_are_one_line():
    from raysvc.service.gridspec import load_grid

    with pytest.raises(ConfigError, match=re.escape("feature store 'gs://x/f': use a local folder or s3://")):
        cache_at("/tmp/unused", store="gs://x/f")
    with pytest.raises(ConfigError, match="option encoder='spark': input should be 'auto', 'local' or 'ray-data'"):
        cache_at("/tmp/unused", encoder="spark")
    with pytest.raises(ConfigError, match="grid features: feature store 'gs://x'"):
        load_grid({"name": "g", "fixed": FIXED, "grid": {"strategy": ["random"]}, "features": {"store": "gs://x"}})
    with pytest.raises(ConfigError, match="option actors=0"):
        load_grid({"name": "g", "fixed": FIXED, "grid": {"strategy": ["random"]}, "features": {"ray_data": {"actors": 0}}})


# ------------------------------------------------------------------ two tiers
def test_remote_hit_fills_the_local_cache_and_encodes_nothing(pool, local_half, s3_env, tmp_path):
    node_a = cache_at(tmp_path / "a", dtype="float16", store=s3_env, rows_per_shard=16)
    first = node_a.encode(pool, BACKBONE)
    assert first.source == "local" and first.encode_seconds > 0
    assert first.key == local_half.key
    node_b = cache_at(tmp_path / "b", dtype="float16", store=s3_env)
    second = node_b.encode(pool, BACKBONE)
    assert second.source == "store" and second.encode_seconds == 0.0
    assert node_b.path(second.key).exists()  # the local cache in front is filled
    assert np.array_equal(second.image_features, first.image_features)
    third = node_b.encode(pool, BACKBONE)
    assert third.source == "cache" and third.encode_seconds == 0.0


def test_half_written_remote_entry_is_ignored_and_reencoded(pool, local_half, s3_env, tmp_path):
    from raysvc.storage.features import has_entry, open_feature_store

    remote = open_feature_store(s3_env)
    key = local_half.key
    # a writer that died after its shards: no manifest, and one shard of garbage
    remote.put(f"{key}/shard-00000.npy", b"garbage")
    remote.put(f"{key}/shard-00001.npy", b"garbage")
    assert not has_entry(remote, key)
    store = cache_at(tmp_path, dtype="float16", store=s3_env, rows_per_shard=32)
    encoded = store.encode(pool, BACKBONE)
    assert encoded.source == "local" and encoded.encode_seconds > 0
    back = _entry(remote, key)
    assert back is not None and np.array_equal(back, np.asarray(encoded.image_features))
    assert _max_diff(back, local_half.image_features) == 0.0


def test_local_entry_is_published_to_the_shared_store(pool, local_half, s3_env, tmp_path):
    from raysvc.storage.features import open_feature_store

    cache = tmp_path / "warm"
    cache_at(cache, dtype="float16", encoder="local").encode(pool, BACKBONE)
    again = cache_at(cache, dtype="float16", store=s3_env).encode(pool, BACKBONE)
    assert again.source == "cache"
    assert np.array_equal(_entry(open_feature_store(s3_env), again.key), np.asarray(again.image_features))


# ------------------------------------------------------------------ entries that do not verify
def test_local_file_with_shifted_rows_is_named_reencoded_and_bit_identical(pool, local_half, tmp_path, capsys):
    cache = cache_at(tmp_path, dtype="float16", encoder="local")
    first = cache.encode(pool, BACKBONE)
    path = cache.path(first.key)
    good = np.asarray(first.image_features).copy()
    status = path.stat()
    np.save(path, _shifted(good))  # a valid .npy of the same shape: only the hash tells
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))  # even with its old mtime
    capsys.readouterr()
    again = cache.encode(pool, BACKBONE)
    assert _notices(capsys) == [f"raysvc: feature cache file {path} does not match its recorded sha256 "
                                "(its rows changed since it was written): treated as absent and replaced"]
    assert again.source == "local" and again.sha256 == first.sha256 == local_half.sha256
    assert np.array_equal(np.asarray(again.image_features), np.asarray(local_half.image_features))
    assert np.array_equal(np.load(path), good)  # replaced on disk
    assert cache.encode(pool, BACKBONE).source == "cache" and _notices(capsys) == []


def test_truncated_local_file_is_named_and_replaced_not_a_traceback(pool, local_half, tmp_path, capsys):
    cache = cache_at(tmp_path, dtype="float16", encoder="local")
    path = cache.path(cache.encode(pool, BACKBONE).key)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    capsys.readouterr()
    again = cache.encode(pool, BACKBONE)
    assert _notices(capsys) == [f"raysvc: feature cache file {path} is truncated ({size - 100} of {size} bytes): "
                                "treated as absent and replaced"]
    assert again.source == "local" and path.stat().st_size == size
    assert np.array_equal(np.asarray(again.image_features), np.asarray(local_half.image_features))


def test_local_file_touched_but_unchanged_is_hashed_once_and_kept(pool, tmp_path, capsys):
    cache = cache_at(tmp_path, dtype="float16", encoder="local")
    first = cache.encode(pool, BACKBONE)
    record = json.loads(cache.hash_path(first.key).read_text())
    os.utime(cache.path(first.key))  # same bytes, new status: hashed, found equal, recorded
    capsys.readouterr()
    again = cache.encode(pool, BACKBONE)
    assert again.source == "cache" and again.sha256 == first.sha256 and _notices(capsys) == []
    updated = json.loads(cache.hash_path(first.key).read_text())
    assert updated["sha256"] == record["sha256"] and updated["file"] != record["file"]
    assert updated["file"]["ctime_ns"] == cache.path(first.key).stat().st_ctime_ns


def test_local_file_without_a_hash_record_is_not_trusted(pool, local_half, tmp_path, capsys):
    cache = cache_at(tmp_path, dtype="float16", encoder="local")
    key = cache.encode(pool, BACKBONE).key
    cache.hash_path(key).unlink()  # as an older raysvc left its entries
    capsys.readouterr()
    again = cache.encode(pool, BACKBONE)
    assert _notices(capsys) == [f"raysvc: feature cache file {cache.path(key)} has no hash record (written by an "
                                "older raysvc, or interrupted): treated as absent and replaced"]
    assert again.source == "local" and again.sha256 == local_half.sha256


def test_bad_local_file_is_refetched_from_a_good_store(pool, local_half, s3_env, tmp_path, capsys):
    cache_at(tmp_path / "a", dtype="float16", store=s3_env).encode(pool, BACKBONE)
    node_b = cache_at(tmp_path / "b", dtype="float16", store=s3_env)
    path = node_b.path(node_b.encode(pool, BACKBONE).key)
    np.save(path, _shifted(np.load(path)))
    capsys.readouterr()
    again = node_b.encode(pool, BACKBONE)
    assert len(_notices(capsys)) == 1 and again.source == "store" and again.encode_seconds == 0.0
    assert np.array_equal(np.asarray(again.image_features), np.asarray(local_half.image_features))


def test_store_shard_with_shifted_rows_is_named_reencoded_and_repaired(pool, local_half, s3_env, tmp_path, capsys):
    from raysvc.storage.features import open_feature_store

    remote = open_feature_store(s3_env)
    key = cache_at(tmp_path / "a", dtype="float16", store=s3_env, rows_per_shard=16).encode(pool, BACKBONE).key
    shard = f"{key}/shard-00001.npy"
    remote.put(shard, _npy(_shifted(np.load(io.BytesIO(remote.get(shard))))))
    capsys.readouterr()
    node_b = cache_at(tmp_path / "b", dtype="float16", store=s3_env, rows_per_shard=16)
    encoded = node_b.encode(pool, BACKBONE)
    assert _notices(capsys) == [f"raysvc: feature store shard {s3_env}/{shard} does not match its sha256 in the "
                                f"manifest ({len(remote.get(shard))} bytes): treated as absent and replaced"]
    assert encoded.source == "local" and encoded.sha256 == local_half.sha256  # nothing of the bad shard kept
    assert np.array_equal(np.asarray(encoded.image_features), np.asarray(local_half.image_features))
    assert np.array_equal(_entry(remote, key), np.asarray(local_half.image_features))  # the store is repaired
    node_c = cache_at(tmp_path / "c", dtype="float16", store=s3_env)
    assert node_c.encode(pool, BACKBONE).source == "store" and _notices(capsys) == []


def test_truncated_store_shard_is_repaired_once_not_reencoded_every_time(pool, local_half, s3_env, tmp_path,
                                                                        capsys):
    from raysvc.storage.features import open_feature_store

    remote = open_feature_store(s3_env)
    key = cache_at(tmp_path / "a", dtype="float16", store=s3_env, rows_per_shard=32).encode(pool, BACKBONE).key
    shard = f"{key}/shard-00000.npy"
    remote.put(shard, remote.get(shard)[:-64])
    capsys.readouterr()
    sources = [cache_at(tmp_path / name, dtype="float16", store=s3_env).encode(pool, BACKBONE).source
               for name in ("b", "c", "d")]
    assert sources == ["local", "store", "store"] and len(_notices(capsys)) == 1


def test_two_nodes_missing_one_entry_at_once_encode_it_once(pool, local_half, s3_env, tmp_path):
    import threading

    results = {}

    def node(name):
        store = cache_at(tmp_path / name, dtype="float16", store=s3_env, encoder="local")
        results[name] = store.encode(pool, BACKBONE)

    threads = [threading.Thread(target=node, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(r.source for r in results.values()) == ["local", "store"]
    assert np.array_equal(results["a"].image_features, results["b"].image_features)
    assert _max_diff(results["a"].image_features, local_half.image_features) == 0.0


def test_a_dead_nodes_lease_is_taken_over(pool, backbone, s3_env, tmp_path):
    from raysvc.storage.features import has_entry, open_feature_store

    remote = open_feature_store(s3_env)
    key = feature_key(pool, backbone, "float16")
    remote.put(f"{key}/lease.json", json.dumps({"owner": "dead-node", "beat": 3}).encode())
    store = cache_at(tmp_path, dtype="float16", store=s3_env, lease_seconds=1.0)
    encoded = store.encode(pool, BACKBONE)
    assert encoded.source == "local" and has_entry(remote, key)
    assert not remote.exists(f"{key}/lease.json")  # released once the entry is complete


# ------------------------------------------------------------------ the switch
def test_threshold_switch_without_ray_stays_in_process(tmp_path):
    import sys

    store = cache_at(tmp_path, encoder="auto", ray_data_min_images=10)
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        pytest.skip("Ray is connected in this process")
    assert store.choose_encoder(1000) == "local"  # no cluster to spread over
    assert cache_at(tmp_path, encoder="local").choose_encoder(10**7) == "local"
    assert cache_at(tmp_path, encoder="ray-data").choose_encoder(10) == "ray-data"  # as set


@pytest.mark.timeout(300)
def test_threshold_switch_on_ray_picks_the_path_it_says(ray_cluster, pool, tmp_path):
    store = cache_at(tmp_path, dtype="float16", encoder="auto", ray_data_min_images=len(pool))
    assert store.choose_encoder(len(pool)) == "ray-data"
    assert store.choose_encoder(len(pool) - 1) == "local"
    crowded = cache_at(tmp_path, encoder="auto", ray_data_min_images=0, ray_data={"threads": 64})
    assert crowded.choose_encoder(len(pool)) == "local"  # no room for a 64-CPU actor
    assert cache_at(tmp_path, encoder="local").choose_encoder(10**7) == "local"
    below = cache_at(tmp_path / "below", dtype="float16", ray_data_min_images=len(pool) + 1)
    assert below.encode(pool, BACKBONE).source == "local"


# ------------------------------------------------------------------ Ray Data path
@pytest.mark.timeout(300)
def test_ray_data_path_equals_the_single_process_path(ray_cluster, pool, backbone, local_half, tmp_path):
    store = cache_at(tmp_path, dtype="float16", batch_size=8, encoder="auto",
                         ray_data_min_images=len(pool))  # 8-image blocks: order is really at stake
    encoded = store.encode(pool, BACKBONE)
    assert encoded.source == "ray-data" and encoded.encode_seconds > 0
    assert encoded.key == local_half.key == feature_key(pool, backbone, "float16")
    assert store.path(encoded.key).exists()
    assert encoded.image_features.dtype == np.float16 and encoded.image_features.shape == local_half.image_features.shape
    assert _max_diff(encoded.image_features, local_half.image_features) <= FLOAT16_ROUNDING
    # row for row within rounding, while rows of other images are far off: in dataset order
    ours = np.asarray(encoded.image_features, np.float32)
    assert _max_diff(ours[::-1], local_half.image_features) > 100 * FLOAT16_ROUNDING
    np.testing.assert_array_equal(encoded.labels, local_half.labels)


# ------------------------------------------------------------------ grids on two nodes
def _grid(name: str, s3_gateway, store: str, cache, tune_dir):
    from raysvc.service.gridspec import load_grid

    return load_grid({
        "name": name, "out": f"{s3_gateway.dest}/{name}", "storage_path": str(tune_dir), "resources": {"cpu": 1},
        "features": {"cache_dir": str(cache), "store": store}, "fixed": FIXED,
        "grid": {"strategy": ["random"], "seed": [0]},
    })


@pytest.mark.timeout(420)
def test_grid_run_twice_against_the_feature_store_encodes_once(ray_cluster, s3_gateway, tmp_path):
    from raysvc import storage
    from raysvc.service.driver import run_grid
    from raysvc.storage.features import open_feature_store

    feature_store = f"{s3_gateway.dest}/grid-features-{uuid.uuid4().hex[:8]}"
    # two local caches stand for two nodes; the S3 feature store is what they share
    first = run_grid(_grid("fs-first", s3_gateway, feature_store, tmp_path / "node-a", tmp_path / "tune"), verbose=0)
    second = run_grid(_grid("fs-second", s3_gateway, feature_store, tmp_path / "node-b", tmp_path / "tune"), verbose=0)
    assert first.ok and second.ok, (first.errors, second.errors)
    rows_first = storage.read_table(first.out).to_pylist()
    rows_second = storage.read_table(second.out).to_pylist()
    assert [r["encode_seconds"] for r in rows_first][0] > 0
    assert [r["encode_seconds"] for r in rows_second] == [0.0]
    keys = {k.split("/")[0] for k in open_feature_store(feature_store).list("")}
    assert len(keys) == 1  # one entry: the second grid read the first one's
    (key,) = keys
    assert (tmp_path / "node-b" / f"{key}.npy").exists()  # node b's cache was filled from the store


# ------------------------------------------------------------------ command line
def test_cli_run_and_sweep_share_features_through_the_feature_store(s3_env, tmp_path, capsys):
    from jobs.sweep import main as sweep
    from raysvc import storage
    from raysvc.cli import main as raysvc
    from raysvc.storage.features import open_feature_store

    common = ["--per-class", "6", "--rounds", "1", "--epochs", "1", "--feature-store", s3_env]
    assert raysvc(["run", *common, "--cache", str(tmp_path / "a"), "--out", str(tmp_path / "one")]) == 0
    (entry,) = {k.split("/")[0] for k in open_feature_store(s3_env).list("")}
    assert sweep([*common, "--cache", str(tmp_path / "b"), "--out", str(tmp_path / "res")]) == 0
    assert (tmp_path / "b" / f"{entry}.npy").exists()  # the sweep's cache, filled from the store
    assert storage.read_table(str(tmp_path / "res")).column("encode_seconds").to_pylist() == [0.0]
    # encoded on one side, fetched on the other: the manifests show the inputs were equal
    (encoded,), (fetched,) = storage.read_runs(str(tmp_path / "one")), storage.read_runs(str(tmp_path / "res"))
    assert encoded.manifest["features"]["key"] == fetched.manifest["features"]["key"] == entry
    assert encoded.manifest["features"]["sha256"] == fetched.manifest["features"]["sha256"]
    assert len(encoded.manifest["features"]["sha256"]) == 64
    capsys.readouterr()
    assert raysvc(["run", *common, "--ray-data-actors", "0"]) == 2
    assert "ray data: option actors=0: must be >= 1" in capsys.readouterr().err
    assert raysvc(["run", "--per-class", "6", "--feature-store", "gs://x"]) == 2
    assert "feature store 'gs://x': use a local folder or s3://" in capsys.readouterr().err
