"""A local Ray for the tests that need one (a helper module, not a fixture: each test
module picks its own scope and environment)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest


@contextlib.contextmanager
def local_ray(env: dict[str, str]):
    """A 2-CPU local Ray (no dashboard) whose driver and workers see ``env``, as a cluster's
    nodes see the environment ``ray start`` ran in: the raylet inherits it, and no runtime
    environment carries it (Ray would log that). Its session lives in a temporary folder
    (:func:`session_root`), removed afterwards with the driver's environment restored."""
    ray = pytest.importorskip("ray")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    root = tempfile.mkdtemp(prefix="rst", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=root)
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def session_root() -> Path:
    """The temporary folder of the connected local Ray (its sessions, logs and spilled objects)."""
    import ray

    return Path(ray._private.worker._global_node.get_temp_dir_path())
