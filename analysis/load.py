"""Load every run under a results destination into one checked DataFrame.

A destination is what ``raysvc run --dest`` wrote to: a local directory, ``file://DIR``
or ``s3://BUCKET[/PREFIX]``, laid out as ``DEST/runs/<run_id>/records.parquet`` plus
``manifest.json`` (see :mod:`raysvc.storage`; only runs whose manifest exists count).

Every run is checked against :data:`raysvc.records.SCHEMA` before anything is mixed:

* its ``schema_version`` (the column, else the manifest's) must equal
  :data:`raysvc.records.SCHEMA_VERSION`; runs written under another version are named
  in one :class:`SchemaMismatchError` (they are never silently mixed in);
* it must have exactly the schema's columns, with the schema's types and no nulls
  (float metrics may be NaN: ``pseudo_acc`` without pseudo-labels, ``teacher_acc``
  without a teacher);
* ``round`` is unique within the run and the run-level columns are constant.

An empty source (nothing written there yet, a typo in the path) is an
:class:`EmptySourceError`. All errors are one line and subclass
:class:`raysvc.errors.RaysvcError`, so the CLI prints them and exits non-zero.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pandas as pd
import pyarrow as pa

from raysvc.errors import RaysvcError
from raysvc.records import COLUMNS, RUN_COLUMNS, SCHEMA, SCHEMA_VERSION

# how many offending runs an error message names before it says "and N more"
_NAMED = 8


class AnalysisError(RaysvcError):
    """Results cannot be analysed as asked: nothing to read, incompatible runs, bad selection."""


class EmptySourceError(AnalysisError):
    """The source holds no complete run."""


class SchemaMismatchError(AnalysisError):
    """Runs were written with another record schema (version, columns or types)."""


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_NAMED])
    return shown + (f" and {len(items) - _NAMED} more" if len(items) > _NAMED else "")


def _run_version(table: pa.Table, manifest: dict) -> object:
    """The run's schema version: the column's single value, else the manifest's; None if unknown."""
    if "schema_version" in table.column_names and table.num_rows:
        values = set(table.column("schema_version").drop_null().unique().to_pylist())
        if len(values) == 1:
            return values.pop()
        if len(values) > 1:
            return "mixed " + "/".join(map(str, sorted(values)))
    return manifest.get("schema_version") if isinstance(manifest, dict) else None


def check_runs(runs: Iterable, source: str = "the source") -> pa.Table:
    """Check ``(run_id, table, manifest)`` triples against the schema; one table of all rows.

    Raises :class:`EmptySourceError` when there is no run and :class:`SchemaMismatchError`
    naming every offending run otherwise.
    """
    runs = list(runs)
    if not runs:
        raise EmptySourceError(
            f"no runs found in {source} (expected {source.rstrip('/')}/runs/<run_id>/manifest.json)"
        )
    wrong_version = []
    for run_id, table, manifest in runs:
        version = _run_version(table, manifest)
        if version != SCHEMA_VERSION:
            wrong_version.append(f"{run_id!r} (version {'unknown' if version is None else version})")
    if wrong_version:
        raise SchemaMismatchError(
            f"{len(wrong_version)} of {len(runs)} runs in {source} were written with another record schema "
            f"than this raysvc reads (version {SCHEMA_VERSION}): {_names(wrong_version)}; "
            f"analyse them with the raysvc version that wrote them, or re-run them"
        )
    problems = []
    for run_id, table, _ in runs:
        have = table.schema
        missing = [c for c in COLUMNS if c not in have.names]
        extra = [c for c in have.names if c not in SCHEMA.names]
        wrong = [
            f"{c} is {have.field(c).type}, expected {SCHEMA.field(c).type}"
            for c in COLUMNS
            if c in have.names and have.field(c).type != SCHEMA.field(c).type
        ]
        nulls = [
            c for c in COLUMNS
            if c in have.names and table.column(c).null_count and not pa.types.is_floating(SCHEMA.field(c).type)
        ]
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unknown {', '.join(extra)}")
        parts += wrong
        if nulls:
            parts.append(f"nulls in {', '.join(nulls)}")
        if table.num_rows == 0:
            parts.append("no rows")
        if parts:
            problems.append(f"{run_id!r} ({'; '.join(parts)})")
    if problems:
        raise SchemaMismatchError(
            f"{len(problems)} of {len(runs)} runs in {source} do not match the record schema "
            f"version {SCHEMA_VERSION}: {_names(problems)}"
        )
    tables = [table.select(COLUMNS).cast(SCHEMA) for _, table, _ in runs]
    return pa.concat_tables(tables)


def check_frame(df: pd.DataFrame, source: str = "the results") -> pd.DataFrame:
    """Check the rows of already-loaded runs (columns, one version, unique rounds); a sorted copy."""
    if not isinstance(df, pd.DataFrame):
        raise AnalysisError(f"expected a DataFrame of run records, got {type(df).__name__}")
    if df.empty:
        raise EmptySourceError(f"no run records in {source}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SchemaMismatchError(f"run records in {source} lack columns: {', '.join(missing)}")
    versions = sorted(set(df["schema_version"].tolist()))
    if versions != [SCHEMA_VERSION]:
        bad = sorted(set(df.loc[df["schema_version"] != SCHEMA_VERSION, "run_id"].astype(str)))
        raise SchemaMismatchError(
            f"runs in {source} were written with another record schema than this raysvc reads "
            f"(version {SCHEMA_VERSION}): {_names([repr(b) for b in bad])}"
        )
    dup = df.duplicated(["run_id", "round"], keep=False)
    if dup.any():
        bad = sorted(set(df.loc[dup, "run_id"].astype(str)))
        raise AnalysisError(f"runs with the same round recorded twice in {source}: {_names([repr(b) for b in bad])}")
    varying = df.groupby("run_id", sort=True)[[c for c in RUN_COLUMNS if c != "run_id"]].nunique(dropna=False)
    varying = varying[(varying > 1).any(axis=1)]
    if len(varying):
        bad = [f"{rid!r} ({', '.join(varying.columns[varying.loc[rid] > 1])})" for rid in varying.index]
        raise AnalysisError(f"runs whose run-level columns change between rounds in {source}: {_names(bad)}")
    return df[COLUMNS].sort_values(["run_id", "round"], kind="stable").reset_index(drop=True)


def _read(source: str | os.PathLike, retry_seconds: float | None):
    from raysvc import storage

    return storage.read_runs(source, retry_seconds=retry_seconds)


def load_runs(source, *, retry_seconds: float | None = None) -> pd.DataFrame:
    """Every complete run under ``source`` as one DataFrame, one row per (run, round).

    ``source`` is a local directory, ``file://DIR``, ``s3://BUCKET[/PREFIX]``, or an
    already-loaded DataFrame (checked and returned sorted). Columns are exactly
    :data:`raysvc.records.COLUMNS`; rows are sorted by run_id then round.
    """
    if isinstance(source, pd.DataFrame):
        return check_frame(source)
    name = os.fspath(source)
    runs = _read(source, retry_seconds)
    table = check_runs([(r[0], r[1], r[2]) for r in runs], name)
    return check_frame(table.to_pandas(), name)


__all__ = [
    "AnalysisError", "EmptySourceError", "SchemaMismatchError", "check_frame", "check_runs", "load_runs",
]  # fmt: skip
