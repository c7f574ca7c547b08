"""Encoding a dataset on Ray Data: decode tasks over the cluster, the backbone in an actor pool.

The pipeline for N images::

    range(N)                          indices, ``batch_size`` per block
      -> decode (CPU tasks, SPREAD)   dataset.load(i) and the backbone's preprocessing
      -> encode (actor pool)          ``actors`` copies of the backbone, on a GPU each on
                                      GPU clusters, else ``threads`` torch threads each
      -> the caller                   rows scattered into an (N, D) array by index

The dataset (its loader closes over arrays or file paths) goes into the object store
once; each decode worker process reads it once and keeps it. Rows come back in whatever
order the blocks finish and are put in dataset order by the index they carry, so the
result equals the in-process loop's row for row (within the stored dtype's rounding).
Ray Data prints its own progress bars (``progress="bar"``); ``"lines"`` prints whole
lines from the consuming loop instead, which survive log forwarding.

Kept apart from :mod:`raysvc.featurecache` so that module imports without Ray.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from raysvc.backbones import Backbone, BackboneRef
from raysvc.datasets import ImageDataset
from raysvc.errors import ConfigError, RaysvcBug
from raysvc.feature_settings import FeatureSettings, RayDataOptions
from raysvc.progress import ProgressLines

# a decode worker's resident memory with torch imported (~360 MiB measured), before its block
DECODE_WORKER_BYTES = 450 * 2**20

# per decode worker process: the datasets it has read from the object store, by ref
_DATASETS: dict[str, ImageDataset] = {}
_DATASETS_LOCK = threading.Lock()


def ensure_ray() -> None:
    """Connect to ``$RAY_ADDRESS`` or start a private local Ray (loopback, token auth off:
    nothing to store in the home directory) when this process is not connected yet."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(include_dashboard=False)


def actor_gpus(options: RayDataOptions) -> float:
    """GPUs per encoder actor: as set, else 1 when the cluster has any GPU, else 0."""
    import ray

    if options.num_gpus is not None:
        return options.num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def actor_cpus(options: RayDataOptions, gpus: float) -> float:
    # a GPU actor's one CPU only feeds the GPU; a CPU actor computes with its threads
    return 1.0 if gpus else float(options.threads)


def has_room(options: RayDataOptions) -> bool:
    """Whether the cluster has the resources free now for one encoder actor and one decode task."""
    import ray

    free = ray.available_resources()
    gpus = actor_gpus(options)
    return free.get("CPU", 0) >= actor_cpus(options, gpus) + options.decode_cpus and free.get("GPU", 0) >= gpus


def _dataset(ref) -> ImageDataset:
    import ray

    key = ref.hex()
    with _DATASETS_LOCK:
        dataset = _DATASETS.get(key)
        if dataset is None:
            _DATASETS.clear()  # one pass at a time per worker: keep only the current dataset
            dataset = _DATASETS[key] = ray.get(ref)
        return dataset


def decode(batch: dict[str, np.ndarray], dataset_ref, preprocess: Callable[[Sequence], Any]) -> dict[str, np.ndarray]:
    """Indices -> preprocessed pixels (a decode task's body)."""
    dataset = _dataset(dataset_ref[0])
    index = np.asarray(batch["id"], dtype=np.int64)
    pixels = preprocess([dataset.load(i) for i in index])
    return {"index": index, "pixels": pixels.numpy()}


class Encoder:
    """An encoder actor: gets the backbone once (on its GPU when it has one) and embeds batches.

    ``shipped``: ``[object ref]`` of the caller's loaded backbone in the object store,
    unpickled in a fraction of a second; without it the actor loads ``ref`` itself
    (conse-lite0: ~16 s, mostly embedding its 1000 ImageNet prompts).
    """

    def __init__(self, ref: BackboneRef, model_id: str, dtype: str, threads: int, use_gpu: bool,
                 shipped: list | None = None):
        import ray
        import torch

        from raysvc._compat import import_torchvision

        torch.set_num_threads(threads)
        import_torchvision()  # unpickling the backbone imports transformers, which imports torchvision
        self.backbone = ray.get(shipped[0]) if shipped else ref.load()
        if self.backbone.model_id != model_id:
            raise ConfigError(f"backbone {ref.name!r} loads as {self.backbone.model_id} on this node, "
                              f"not {model_id}: the nodes' packages differ")
        if use_gpu:
            # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU, which torch then sees as cuda:0;
            # a GPU-less node (a misconfigured cluster) should fail loudly, not encode on CPU
            if not torch.cuda.is_available():
                raise ConfigError("an encoder actor was given a GPU but torch sees no CUDA device")
            self.backbone = self.backbone.to("cuda")  # this actor's copy only
        self.dtype = np.dtype(dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            # Ray Data hands out read-only views, which torch warns about; a copy only then
            pixels = torch.from_numpy(np.require(batch["pixels"], requirements=["C", "W"]))
            features = self.backbone.encode_images(pixels).float().cpu().numpy()
        return {"index": batch["index"], "features": features.astype(self.dtype)}


def encode_images(dataset: ImageDataset, ref: BackboneRef, backbone: Backbone, settings: FeatureSettings,
                  progress: str = "bar") -> tuple[np.ndarray, dict[str, Any]]:
    """(N, D) embeddings of every image of ``dataset`` in dataset order, in the settings'
    dtype, and what the pass measured.

    ``backbone``: the caller's loaded ``ref``. Its ``model_id`` is what the actors check
    theirs against (the cache key is computed from the caller's); its picklable
    preprocessor (:meth:`~raysvc.backbones.Backbone.preprocessor`, ``image_size`` square
    float32 images) runs in the decode tasks; on the CPU it goes to the actors through the
    object store (one put) instead of each actor loading ``ref`` anew. The report holds
    ``seconds``, ``first_rows_seconds`` (until the first encoded rows arrived: worker
    processes and actors starting, and the first batch), ``arrivals`` (seconds and rows
    done at each batch that came back) and ``stats`` (Ray Data's per-operator summary).
    """
    import ray
    import ray.data

    options, batch_size, dtype = settings.ray_data, settings.batch_size, settings.dtype
    model_id, image_size, preprocess = backbone.model_id, backbone.image_size, backbone.preprocessor()
    ensure_ray()
    n = len(dataset)
    gpus = actor_gpus(options)
    what = f"encoding {dataset.name} with {model_id} on Ray Data ({options.actors} actor(s), "
    what += f"{gpus:g} GPU each)" if gpus else f"{options.threads} thread(s) each)"
    # fn_kwargs are top-level task arguments, whose refs Ray would resolve (unpickle) for
    # every task: inside a list the ref stays a ref, read once per worker process
    dataset_ref = [ray.put(dataset)]
    indices = ray.data.range(n, override_num_blocks=max(1, math.ceil(n / batch_size)))
    indices.context.enable_progress_bars = progress == "bar"
    # a backbone on a GPU would unpickle onto a GPU the actor may not have: the actors load it then
    shipped = [ray.put(backbone)] if str(getattr(backbone, "device", "cpu")) == "cpu" else None
    block_bytes = batch_size * 3 * image_size * image_size * 4
    decoded = indices.map_batches(
        decode, batch_size=None, batch_format="numpy", num_cpus=options.decode_cpus,
        fn_kwargs={"dataset_ref": dataset_ref, "preprocess": preprocess},
        # a decode worker holds torch (DECODE_WORKER_BYTES) and its block of pixels twice (PIL
        # images, then the batch): the reservation keeps a node from taking more tasks than
        # it can hold, and, as these remote arguments differ from the actors', Ray Data
        # keeps decoding in tasks spread over the cluster (its default for tasks) instead
        # of fusing it into the encoder actors
        memory=DECODE_WORKER_BYTES + 2 * block_bytes,
    )
    encoded = decoded.map_batches(
        Encoder, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=actor_cpus(options, gpus), num_gpus=gpus or None,
        fn_constructor_kwargs={"ref": ref, "model_id": model_id, "dtype": dtype,
                               "threads": options.threads, "use_gpu": bool(gpus), "shipped": shipped},
    )
    out: np.ndarray | None = None
    seen = np.zeros(n, dtype=bool)
    log = ProgressLines(what, n) if progress == "lines" else None
    if progress == "bar":
        print(what, flush=True)
    done = 0
    start = time.perf_counter()
    first_rows = None
    arrivals = []
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        index, features = batch["index"], batch["features"]
        if out is None:
            first_rows = time.perf_counter() - start
            out = np.empty((n, features.shape[1]), dtype=features.dtype)
        out[index] = features
        seen[index] = True
        done += len(index)
        arrivals.append((time.perf_counter() - start, done))
        if log is not None:
            log.update(done)
    if out is None or not seen.all():
        raise RaysvcBug(f"Ray Data returned {int(seen.sum())} of {n} rows")
    report = {"seconds": time.perf_counter() - start, "first_rows_seconds": first_rows, "arrivals": arrivals,
              "stats": encoded.stats()}
    return out, report
