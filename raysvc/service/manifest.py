"""What goes into a run's manifest next to its rows.

:func:`raysvc.storage.build_manifest` supplies the full config, package versions
(``importlib.metadata``), the code revision (``git rev-parse HEAD``, ``+dirty`` when
modified, or ``$RAYSVC_CODE_REVISION``) and ``schema_version``. A Ray job's working
directory is uploaded without ``.git``, so the grid driver resolves the revision where it
can and passes it on; a trial uses it when its own lookup says "unknown".
"""

from __future__ import annotations

import os
import socket
from typing import Any


def driver_code_revision() -> str:
    """The revision as seen by the driver: env, the repo of the cwd, else the package's repo."""
    from raysvc.storage import code_revision

    revision = code_revision(os.getcwd())  # honours $RAYSVC_CODE_REVISION first
    return revision if revision != "unknown" else code_revision()


def run_manifest(config: dict[str, Any], *, code_revision: str | None = None, **extra: Any) -> dict[str, Any]:
    from raysvc.storage import build_manifest

    manifest = build_manifest(config, host=socket.gethostname(), pid=os.getpid(), **extra)
    if manifest.get("code_revision", "unknown") == "unknown" and code_revision:
        manifest["code_revision"] = code_revision
    return manifest
