"""VLM backbones by name: ``conse-lite0`` (the embedded default), ``conse-lite1``,
``conse-lite2``, and the family ``open_clip:<model>[:<weights>]`` where weights is a
pretrained tag, a checkpoint file or ``random`` (the default; tests use it, real runs on
clusters use a tag). Each backbone module registers itself in :data:`BACKBONES`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from raysvc._compat import import_torchvision
from raysvc.backbones.base import PromptEncoder, Backbone
from raysvc.options import Options
from raysvc.registry import Registry

BACKBONES: Registry[Backbone] = Registry("backbone", "raysvc.backbones")


@dataclasses.dataclass(frozen=True)
class BackboneRef:
    """Which backbone, at which input size, with which options: small and picklable, so a
    worker process can load the same backbone (:meth:`load`) and caches can key on it."""

    name: str
    image_size: int | None = None
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, name: str, image_size: int | None = None, params: Mapping[str, Any] | None = None) -> BackboneRef:
        return cls(name, image_size, tuple(sorted((params or {}).items())))

    def load(self) -> Backbone:
        return load_backbone(self.name, self.image_size, dict(self.params))


def load_backbone(name: str, image_size: int | None = None, params: Mapping[str, Any] | None = None) -> Backbone:
    """The backbone called ``name`` with validated ``params``; loaded once per process and shared."""
    part = BACKBONES.part(name, params)
    return _load(part.cls, part.options, image_size)


@functools.lru_cache(maxsize=4)
def _load(cls: type[Backbone], options: Options, image_size: int | None) -> Backbone:
    import_torchvision()  # open_clip and transformers import it
    return cls(options, image_size)


__all__ = ["BACKBONES", "BackboneRef", "PromptEncoder", "Backbone", "load_backbone"]
