"""Shared feature encoding: one named Ray actor encodes each dataset once per backbone.

:class:`EncoderService` wraps a :class:`~raysvc.featurecache.FeatureCache`. For each key
``(dataset fingerprint, prompts, backbone)`` the first caller makes it encode (or load
from its cache) and ``ray.put`` the :class:`~raysvc.encoded.EncodedDataset` once; every
caller, including concurrent ones that waited for that first pass, gets the same
ObjectRef, so trials ``ray.get`` read-only numpy views on the node's shared object store
(zero-copy) instead of encoding or copying the features themselves.

:class:`RayEncode` is the client side, an ``Encode`` callable for experiment assembly
(:func:`raysvc.experiment.assemble`). It asks by key first and ships the dataset (its
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
from raysvc.encoded import EncodedDataset
from raysvc.feature_settings import FeatureSettings

NAMESPACE = "raysvc"
# encode requests one service actor serves at once (they wait on one pass per key)
MAX_CONCURRENCY = 8

Key = tuple[str, str, BackboneRef]


def encode_key(dataset: ImageDataset, ref: BackboneRef) -> Key:
    prompts = hashlib.sha256(json.dumps(dataset.prompts()).encode()).hexdigest()[:12]
    return (dataset.fingerprint, prompts, ref)


def key_name(key: Key) -> str:
    """A readable form of a key for ``encode_counts()``: ``fingerprint|backbone|size``."""
    ref = key[2]
    options = "".join(f",{k}={v}" for k, v in ref.params)
    size = ref.image_size if ref.image_size is not None else "default"
    return f"{key[0]}|{ref.name}{options}|{size}"


@ray.remote
class EncoderService:
    """The actor: encodes (or reads from its feature cache) each key once, hands out one ref."""

    def __init__(self, settings: FeatureSettings, threads: int):
        import torch

        from raysvc.featurecache import FeatureCache

        torch.set_num_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cache = FeatureCache(settings, progress="lines", device=device)
        self._refs: dict[Key, ray.ObjectRef] = {}
        self._passes: dict[Key, int] = {}
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def lookup(self, key: Key) -> dict[str, Any] | None:
        """The ref for ``key`` if it was encoded already (no pass, nothing charged)."""
        with self._guard:
            ref = self._refs.get(tuple(key))
        return None if ref is None else {"ref": ref, "charged": False}

    def encode(self, dataset: ImageDataset, ref: BackboneRef) -> dict[str, Any]:
        """Encode ``dataset`` unless done already; concurrent callers of one key wait for one pass."""
        key = encode_key(dataset, ref)
        with self._lock(key):
            with self._guard:
                if key in self._refs:
                    return {"ref": self._refs[key], "charged": False}
            encoded = self.cache.encode(dataset, ref)
            handle = ray.put(encoded)  # once; the actor owns it and keeps it alive
            with self._guard:
                self._refs[key] = handle
                self._passes[key] = self._passes.get(key, 0) + 1
            return {"ref": handle, "charged": True}

    def encode_counts(self) -> dict[str, int]:
        """Encoder passes (FeatureCache.encode calls) per key; 1 means encoded once for all callers."""
        with self._guard:
            return {key_name(k): n for k, n in self._passes.items()}


def start_encoder_service(settings: FeatureSettings, name: str):
    """The encoder service actor called ``name`` (created unless it exists), placed as
    ``settings.service`` says: ``num_gpus`` > 0 puts it on a GPU node, where it encodes on
    CUDA; ``threads`` defaults to ``num_cpus`` when >= 1, else up to 4 cores of the node
    (with ``num_cpus=0`` it borrows cores while trials wait). Not ``detached``, it belongs
    to the calling driver and goes with it; ``detached``, it survives the driver, shared
    across grids and jobs until killed."""
    service = settings.service
    options: dict[str, Any] = dict(
        name=name, namespace=NAMESPACE, get_if_exists=True, num_cpus=service.num_cpus, num_gpus=service.num_gpus,
        max_concurrency=MAX_CONCURRENCY, max_restarts=3, max_task_retries=3,
    )
    if service.detached:
        options["lifetime"] = "detached"
    threads = service.threads or (int(service.num_cpus) if service.num_cpus >= 1 else min(4, os.cpu_count() or 1))
    return EncoderService.options(**options).remote(settings, threads)


class RayEncode:
    """``Encode`` for experiment assembly backed by an :class:`EncoderService` actor.

    Picklable (it holds only the actor's name); the handle is looked up on first use.
    """

    def __init__(self, actor_name: str, attempts: int = 3):
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

    def __call__(self, dataset: ImageDataset, ref: BackboneRef) -> EncodedDataset:
        key = encode_key(dataset, ref)
        attempt = 1
        while True:
            try:
                answer = ray.get(self.actor.lookup.remote(key))
                if answer is None:
                    answer = ray.get(self.actor.encode.remote(dataset, ref))
                encoded: EncodedDataset = ray.get(answer["ref"])  # zero-copy numpy views
                break
            except (ray.exceptions.OwnerDiedError, ray.exceptions.ObjectLostError, ray.exceptions.RayActorError):
                if attempt == self.attempts:
                    raise
                attempt += 1
                self._actor = None  # restarted actor: ask again (it reloads from its disk cache)
                time.sleep(1.0)
        if not answer["charged"] and encoded.encode_seconds:
            encoded = dataclasses.replace(encoded, encode_seconds=0.0)  # shares the arrays
        return encoded
