"""VLM backends by name.

``conse-lite0`` (the embedded default), ``conse-lite1``, ``conse-lite2``, and
``open_clip:<model>[:<weights>]`` where weights is a pretrained tag, a checkpoint
file or ``random`` (the default; tests use it, real runs on clusters use a tag).
"""

from __future__ import annotations

import functools

from raysvc._compat import import_torchvision
from raysvc.backends.base import PromptEncoder, VLMBackend
from raysvc.errors import UnknownNameError

CONSE_NAMES = ("conse-lite0", "conse-lite1", "conse-lite2")
DEFAULT_BACKBONE = "conse-lite0"


def backbone_names() -> list[str]:
    return [*CONSE_NAMES, "open_clip:<model>[:<pretrained tag|checkpoint path|random>]"]


def validate_backbone(name: str) -> None:
    """Reject malformed names cheaply, before any weights load."""
    if name in CONSE_NAMES:
        return
    if name.startswith("open_clip:") and len(name.split(":", 2)[1]) > 0:
        return
    raise UnknownNameError("backbone", name, backbone_names())


@functools.lru_cache(maxsize=4)
def load_backend(name: str, image_size: int | None = None) -> VLMBackend:
    """The backend called ``name``; loaded once per process and shared."""
    validate_backbone(name)
    import_torchvision()  # open_clip and transformers import it
    if name in CONSE_NAMES:
        from raysvc.backends.conse import ConSEBackend

        return ConSEBackend(variant=name.removeprefix("conse-"), image_size=image_size)
    from raysvc.backends.openclip import OpenCLIPBackend

    _, model, *weights = name.split(":", 2)
    return OpenCLIPBackend(model, weights[0] if weights else "random")


__all__ = ["PromptEncoder", "VLMBackend", "backbone_names", "load_backend", "validate_backbone", "DEFAULT_BACKBONE"]
