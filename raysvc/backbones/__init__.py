"""VLM backbones by name: ``conse-lite0`` (the embedded default), ``conse-lite1``,
``conse-lite2``, and the family ``open_clip:<model>:<weights>`` where weights is a
pretrained tag, a checkpoint file or ``random`` (tests use it, real runs on clusters use a
tag); a name without weights is refused with the model's tags. Each backbone module
registers itself in :data:`BACKBONES`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from raysvc._compat import import_torchvision
from raysvc.backbones.base import Backbone, PromptEncoder
from raysvc.options import Options
from raysvc.registry import BACKBONES, Part


@dataclasses.dataclass(frozen=True)
class BackboneRef:
    """Which backbone, at which input size, with which options: small and picklable, so a
    worker process can load the same backbone (:meth:`load`) and caches can key on it.
    ``image_size`` None: the backbone's own."""

    part: Part[Backbone]
    image_size: int | None = None

    @classmethod
    def named(cls, name: str, image_size: int | None = None, options: Mapping[str, Any] | None = None) -> BackboneRef:
        """The ref of backbone ``name`` with ``options`` validated (a run's plan resolves its own)."""
        return cls(BACKBONES.part(name, options), image_size)

    @property
    def name(self) -> str:
        return self.part.name

    @property
    def params(self) -> tuple[tuple[str, Any], ...]:
        """The options set beyond the name, for readable keys and labels: those that differ
        from their defaults and that the name does not fix."""
        fixed = BACKBONES.resolve(self.part.name).preset
        defaults = {f.name: f.default for f in dataclasses.fields(self.part.options)}
        return tuple((k, v) for k, v in sorted(self.part.options.to_dict().items())
                     if k not in fixed and defaults.get(k) != v)

    def load(self) -> Backbone:
        """The backbone, loaded once per process and shared."""
        return _load(self.part.cls, self.part.options, self.image_size)


def load_backbone(name: str, image_size: int | None = None, options: Mapping[str, Any] | None = None) -> Backbone:
    """The backbone called ``name`` with validated ``options``, outside a run (the analyses)."""
    return BackboneRef.named(name, image_size, options).load()


@functools.lru_cache(maxsize=4)
def _load(cls: type[Backbone], options: Options, image_size: int | None) -> Backbone:
    import_torchvision()  # open_clip and transformers import it
    return cls(options, image_size)


__all__ = ["BACKBONES", "BackboneRef", "PromptEncoder", "Backbone", "load_backbone"]
