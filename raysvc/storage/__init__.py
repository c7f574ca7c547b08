"""Where results live: an object-store interface (local folder or S3) and the run protocol on it.

- :mod:`raysvc.storage.stores`: :class:`ObjectStore`;
- :mod:`raysvc.storage.destinations`: :func:`open_store` (destination parsing);
- :mod:`raysvc.storage.local`, :mod:`raysvc.storage.s3`: the two implementations;
- :mod:`raysvc.storage.runs`: one folder per run, each writer's files under an attempt of its
  own, published by the manifest that names them, verified on read.

Provenance (what goes into a manifest) is :mod:`raysvc.provenance`.
"""

from raysvc.storage.destinations import open_store
from raysvc.storage.runs import (
    MANIFEST,
    RECORDS,
    RUNS,
    Run,
    StoredRuns,
    check_run_id,
    check_writable,
    delete_run,
    list_runs,
    read_run,
    read_run_file,
    read_runs,
    read_table,
    run_key,
    run_location,
    runs_location,
    stored_runs,
    write_run,
)
from raysvc.storage.stores import ObjectStore

__all__ = [
    "MANIFEST", "RECORDS", "RUNS", "ObjectStore", "Run", "StoredRuns", "check_run_id", "check_writable", "delete_run",
    "list_runs", "open_store", "read_run", "read_run_file", "read_runs", "read_table", "run_key", "run_location",
    "runs_location", "stored_runs", "write_run",
]  # fmt: skip
