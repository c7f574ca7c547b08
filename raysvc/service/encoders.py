"""Shared feature encoding: one named Ray actor encodes each dataset once per backbone.

:class:`FeatureService` wraps a :class:`~raysvc.features.FeatureStore`. For each key
``(dataset fingerprint, prompts, backbone)`` the first caller makes it encode (or load
from its disk cache) and ``ray.put`` the :class:`EncodedDataset` once; every caller,
including concurrent ones that waited for that first pass, gets the same ObjectRef, so
trials ``ray.get`` read-only numpy views on the node's shared object store (zero-copy)
instead of encoding or copying the features themselves.

:class:`RayEncode` is the client side, an ``Encode`` callable for
:func:`raysvc.loop.load_experiment`. It asks by key first and ships the dataset (its
image loader) to the actor only on a miss. The caller that caused the pass is charged
its ``encode_seconds``; the others see 0.0, as on a cache hit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from typing import Any

import ray

from raysvc.backbones import BackboneRef
from raysvc.datasets import ImageDataset
from raysvc.features import EncodedDataset

NAMESPACE = "raysvc"
DEFAULT_ACTOR = "raysvc-features"

Key = tuple[str, str, BackboneRef]


def encode_key(dataset: ImageDataset, backbone: BackboneRef) -> Key:
    prompts = hashlib.sha256(json.dumps(dataset.prompts()).encode()).hexdigest()[:12]
    return (dataset.fingerprint, prompts, backbone)


def key_name(key: Key) -> str:
    """A readable form of a key for ``encode_counts()``: ``fingerprint|backbone|size``."""
    backbone = key[2]
    options = "".join(f",{k}={v}" for k, v in backbone.params)
    size = backbone.image_size if backbone.image_size is not None else "default"
    return f"{key[0]}|{backbone.name}{options}|{size}"


class _FeatureServiceImpl:
    """Body of the actor (also usable in-process for tests of the logic)."""

    def __init__(self, cache_dir: str | None = None, batch_size: int = 128, threads: int | None = None,
                 store: str | None = None, encoder: str = "auto", ray_data_min_images: int | None = None,
                 ray_data: dict[str, Any] | None = None):
        import torch

        from raysvc.features import DEFAULT_RAY_DATA_MIN_IMAGES, DEFAULT_ROOT, FeatureStore

        if threads:
            torch.set_num_threads(int(threads))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.store = FeatureStore(
            cache_dir or DEFAULT_ROOT, batch_size=batch_size, progress="lines", remote=store, encoder=encoder,
            ray_data_min_images=DEFAULT_RAY_DATA_MIN_IMAGES if ray_data_min_images is None else ray_data_min_images,
            ray_data=ray_data,
        )
        self._sources: dict[Key, str] = {}
        self._refs: dict[Key, ray.ObjectRef] = {}
        self._seconds: dict[Key, float] = {}
        self._passes: dict[Key, int] = {}
        self._requests: dict[Key, int] = {}
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def lookup(self, key: Key) -> dict[str, Any] | None:
        """The ref for ``key`` if it was encoded already (no pass, nothing charged)."""
        key = tuple(key)
        with self._guard:
            ref = self._refs.get(key)
            if ref is None:
                return None
            self._requests[key] = self._requests.get(key, 0) + 1
        return {"ref": ref, "charged": False}

    def encode(self, dataset: ImageDataset, backbone: BackboneRef) -> dict[str, Any]:
        """Encode ``dataset`` unless done already; concurrent callers of one key wait for one pass."""
        key = encode_key(dataset, backbone)
        with self._lock(key):
            with self._guard:
                self._requests[key] = self._requests.get(key, 0) + 1
                if key in self._refs:
                    return {"ref": self._refs[key], "charged": False}
            start = time.perf_counter()
            backend = backbone.load()
            if self.device != "cpu":
                backend.to(self.device)  # this process only: trials keep their CPU copy
            encoded = self.store.encode(dataset, backend, backbone)
            ref = ray.put(encoded)  # once; the actor owns it and keeps it alive
            with self._guard:
                self._refs[key] = ref
                self._sources[key] = encoded.source
                self._passes[key] = self._passes.get(key, 0) + 1
                self._seconds[key] = time.perf_counter() - start
            return {"ref": ref, "charged": True}

    def encode_counts(self) -> dict[str, int]:
        """Encoder passes (FeatureStore.encode calls) per key; 1 means encoded once for all callers."""
        with self._guard:
            return {key_name(k): n for k, n in self._passes.items()}

    def stats(self) -> dict[str, Any]:
        with self._guard:
            return {
                key_name(k): {
                    "passes": self._passes.get(k, 0),
                    "requests": self._requests.get(k, 0),
                    "seconds": self._seconds.get(k, 0.0),
                    "source": self._sources.get(k, ""),
                }
                for k in self._requests
            }


FeatureService = ray.remote(_FeatureServiceImpl)


def feature_service(
    name: str = DEFAULT_ACTOR,
    *,
    create: bool = True,
    cache_dir: str | None = None,
    num_cpus: float = 0,
    num_gpus: float = 0,
    detached: bool = False,
    threads: int | None = None,
    max_concurrency: int = 8,
    store: str | None = None,
    encoder: str = "auto",
    ray_data_min_images: int | None = None,
    ray_data: dict[str, Any] | None = None,
):
    """The named FeatureService actor, created if ``create`` and it does not exist.

    ``num_gpus`` > 0 places it on a GPU node and the actor moves the backbone to CUDA.
    ``threads``: torch threads for encoding (default: ``num_cpus`` when >= 1, else up to
    4 cores of the node; with ``num_cpus=0`` the actor borrows cores while trials wait). Not ``detached``: the actor belongs to the calling driver and goes
    with it (grid-scoped). ``detached``: it survives the driver, shared across grids and
    jobs until :func:`shutdown_feature_service`. ``store``: the shared feature store behind
    its cache; ``encoder``, ``ray_data_min_images``, ``ray_data``: how it encodes (see
    :meth:`raysvc.features.FeatureStore.choose_encoder`).
    """
    if not create:
        return ray.get_actor(name, namespace=NAMESPACE)
    options: dict[str, Any] = dict(
        name=name,
        namespace=NAMESPACE,
        get_if_exists=True,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_concurrency=max_concurrency,
        max_restarts=3,
        max_task_retries=3,
    )
    if detached:
        options["lifetime"] = "detached"
    if threads is None:
        threads = int(num_cpus) if num_cpus >= 1 else min(4, os.cpu_count() or 1)
    return FeatureService.options(**options).remote(
        cache_dir=cache_dir, threads=threads, store=store, encoder=encoder, ray_data_min_images=ray_data_min_images,
        ray_data=ray_data,
    )


def shutdown_feature_service(name: str = DEFAULT_ACTOR) -> bool:
    try:
        actor = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    ray.kill(actor)
    return True


class RayEncode:
    """``Encode`` for :func:`raysvc.loop.load_experiment` backed by a FeatureService actor.

    Picklable (it holds only the actor's name); the handle is looked up on first use.
    """

    def __init__(self, actor_name: str = DEFAULT_ACTOR, attempts: int = 3):
        self.actor_name = actor_name
        self.attempts = attempts
        self._actor = None

    def __getstate__(self):
        return {"actor_name": self.actor_name, "attempts": self.attempts, "_actor": None}

    @property
    def actor(self):
        if self._actor is None:
            self._actor = ray.get_actor(self.actor_name, namespace=NAMESPACE)
        return self._actor

    def __call__(self, dataset: ImageDataset, backbone: BackboneRef) -> EncodedDataset:
        key = encode_key(dataset, backbone)
        for attempt in range(self.attempts):
            try:
                answer = ray.get(self.actor.lookup.remote(key))
                if answer is None:
                    answer = ray.get(self.actor.encode.remote(dataset, backbone))
                encoded: EncodedDataset = ray.get(answer["ref"])  # zero-copy numpy views
            except (ray.exceptions.OwnerDiedError, ray.exceptions.ObjectLostError, ray.exceptions.RayActorError):
                if attempt + 1 == self.attempts:
                    raise
                self._actor = None  # restarted actor: ask again (it reloads from its disk cache)
                time.sleep(1.0)
                continue
            if not answer["charged"] and encoded.encode_seconds:
                encoded = dataclasses.replace(encoded, encode_seconds=0.0)  # shares the arrays
            return encoded
        raise AssertionError("unreachable")
