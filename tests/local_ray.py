"""A local Ray for the tests that need one (a helper module, not a fixture: each test
module picks its own scope and environment)."""

from __future__ import annotations

import contextlib
import os

import pytest


@contextlib.contextmanager
def local_ray(env: dict[str, str]):
    """A 2-CPU local Ray whose driver and workers see ``env`` (no dashboard); the driver's
    environment is restored afterwards."""
    ray = pytest.importorskip("ray")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
