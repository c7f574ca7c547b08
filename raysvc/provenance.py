"""What a run's manifest records besides its rows: the spec, every part's resolved options,
package versions, the code revision, where and how long it ran, and which features it used.

A Ray job's working directory is uploaded without ``.git``, so a driver resolves the
revision where it can (:func:`driver_code_revision`) and passes it on; a worker uses it
when its own lookup says "unknown".
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from raysvc.records import SCHEMA_VERSION

# packages whose versions go into every manifest (missing ones are skipped)
MANIFEST_PACKAGES = (
    "raysvc", "torch", "torchvision", "open_clip_torch", "transformers", "ray",
    "numpy", "pandas", "pyarrow", "scikit-learn", "faiss-cpu", "faiss-gpu", "boto3",
)  # fmt: skip


def package_versions(names=MANIFEST_PACKAGES) -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=4)
def code_revision(repo_dir: str | None = None) -> str:
    """``$RAYSVC_CODE_REVISION``, else the git commit of the code (``+dirty`` if modified), else "unknown"."""
    env = os.environ.get("RAYSVC_CODE_REVISION")
    if env:
        return env
    cwd = repo_dir or str(Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def driver_code_revision() -> str:
    """The revision as seen by a driver: env, the repository of the cwd, else the package's."""
    revision = code_revision(os.getcwd())
    return revision if revision != "unknown" else code_revision()


def manifest(config: dict[str, Any], *, revision: str | None = None, **fields: Any) -> dict[str, Any]:
    """A manifest: ``config`` and ``fields`` plus packages, code revision, schema version, host, pid.

    ``revision`` stands in when this process cannot tell its own (a Ray worker).
    """
    own = code_revision()
    return {
        "config": config,
        "packages": package_versions(),
        "code_revision": revision if own == "unknown" and revision else own,
        "schema_version": SCHEMA_VERSION,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **fields,
    }
