"""Where a training function computes: the device, the Ray Train worker group, mixed precision.

A training function asks :func:`training_device` for the device its options name
(``auto | cpu | cuda``): inside a Ray Train worker ``auto`` is the device Ray Train gave the
worker (``ray.train.torch.get_device()``: its GPU when the ScalingConfig has one); in any
other process (a local run, a Tune trial whose resources hold a GPU) it is CUDA when torch
sees a device, else the CPU. ``cuda`` where torch sees none is a one-line ConfigError, not a
silent fall-back to the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Literal

import torch

from raysvc.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]
# the help of every learner's ``device`` option
DEVICE_HELP = ("auto: the Ray Train worker's device, else CUDA when torch sees one, else the CPU; cpu; "
               "cuda (refused without one)")


@dataclasses.dataclass(frozen=True)
class Workers:
    """This process's place in the worker group of a training function: ``rank`` of ``size``
    (1 outside Ray Train, or in a group of one)."""

    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _ray_train_context():
    """Ray Train's context when this process is a Ray Train worker, else None."""
    try:
        import ray.train

        return ray.train.get_context()
    # outside trainer.fit(): a RuntimeError; inside a Tune trial, Ray Train V2 raises a DeprecationWarning
    except (ImportError, RuntimeError, DeprecationWarning):
        return None


def worker_group() -> Workers:
    """Rank and size of the Ray Train worker group this process belongs to (0 of 1 outside)."""
    context = _ray_train_context()
    if context is None:
        return Workers()
    return Workers(context.get_world_rank(), context.get_world_size())


def training_device(requested: Device = "auto") -> torch.device:
    """The device a training function computes on; see the module docstring."""
    if requested == "cpu":
        return torch.device("cpu")
    given = None
    if _ray_train_context() is not None:
        import ray.train.torch

        given = ray.train.torch.get_device()
    cuda = torch.cuda.is_available() and (given is None or given.type == "cuda")
    if requested == "cuda" and not cuda:
        where = "this Ray Train worker has no GPU (set use_gpu)" if given is not None else "torch sees no CUDA device"
        raise ConfigError(f"option device='cuda': {where}; use device=auto or cpu")
    if given is not None:
        return given
    return torch.device("cuda") if cuda else torch.device("cpu")


def autocast(device: torch.device):
    """bf16 automatic mixed precision on CUDA (the student's forward pass); a no-op elsewhere,
    where bf16 matmuls are slower than float32 on most CPUs."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
