"""Load every run under a results destination into one checked DataFrame.

A destination is what ``raysvc run --dest`` wrote to: a local directory, ``file://DIR``
or ``s3://BUCKET[/PREFIX]``, laid out as ``DEST/runs/<run_id>/records.parquet`` plus
``manifest.json`` (see :mod:`raysvc.storage`; only runs whose manifest exists count).

Every run is checked against :data:`raysvc.records.SCHEMA` before anything is mixed:

* its ``schema_version`` (the column, else the manifest's) must be one of
  :data:`raysvc.records.READABLE_VERSIONS`; runs written under another version are named
  in one :class:`SchemaMismatchError` (they are never silently mixed in);
* it must have exactly the schema's columns, with the schema's types and no nulls
  (float metrics may be NaN: ``pseudo_acc`` without pseudo-labels, ``teacher_acc``
  without a teacher);
* ``round`` is unique within the run and the run-level columns are constant.

A run that cannot be read (a truncated or edited ``records.parquet``, a manifest that
is not valid JSON, records missing beside their manifest) is a :class:`BadRunError`
that names the run and says in plain words what is wrong with it. With
``skip_bad=True`` (``raysvc report --skip-bad``), :func:`load_results` leaves such runs
out, and runs that fail the schema checks above, and returns each as a
:class:`SkippedRun` (run id and reason) beside the records of the others.

An empty source (nothing written there yet, a typo in the path) is an
:class:`EmptySourceError`. All errors are one line and subclass
:class:`raysvc.errors.RaysvcError`, so the CLI prints them and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

import pandas as pd
import pyarrow as pa

from raysvc import storage
from raysvc.errors import AnalysisError, BadRunError, CorruptRunError, EmptySourceError, SchemaMismatchError
from raysvc.records import ADDED_IN_2, COLUMNS, READABLE_VERSIONS, RUN_COLUMNS, SCHEMA, SELECTION_COLUMNS, SELECTIONS

# how many offending runs an error message names before it says "and N more"
_NAMED = 8


@dataclasses.dataclass(frozen=True)
class SkippedRun:
    """A run left out of an analysis, and why (plain words, one line)."""

    run_id: str
    reason: str

    def __str__(self) -> str:
        return f"run {self.run_id!r}: {self.reason}"


@dataclasses.dataclass
class Loaded:
    """What :func:`load_results` read: the checked records, the runs it left out, the kept runs' manifests."""

    records: pd.DataFrame
    skipped: list[SkippedRun]
    source: str
    manifests: dict[str, dict] = dataclasses.field(default_factory=dict)  # run_id -> manifest


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


def upgraded(table: pa.Table, manifest: dict) -> pa.Table:
    """A version-1 run's records with the columns version 2 added (NaN: it trained on every
    class, so it has no base/novel accuracies); other runs as they are."""
    if _run_version(table, manifest) != 1:
        return table
    for column in ADDED_IN_2:
        if column not in table.column_names:
            table = table.append_column(pa.field(column, pa.float64()),
                                        pa.array([float("nan")] * table.num_rows, pa.float64()))
    return table


def _schema_parts(table: pa.Table) -> list[str]:
    """What keeps a run's table from matching :data:`SCHEMA` (empty when it matches)."""
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
    return parts


def _row_parts(run_id: str, table: pa.Table) -> list[str]:
    """Row-level problems of a run that matches the schema: repeated rounds, changing run columns."""
    df = table.select(["run_id", "round", *[c for c in RUN_COLUMNS if c != "run_id"]]).to_pandas()
    parts = []
    ids = sorted(set(df["run_id"].astype(str)))
    if ids != [run_id]:
        parts.append(f"its rows carry run_id {', '.join(map(repr, ids))}")
    twice = sorted(set(df.loc[df.duplicated("round", keep=False), "round"].tolist()))
    if twice:
        parts.append(f"round {', '.join(map(str, twice))} recorded twice")
    varying = [c for c in RUN_COLUMNS if c != "run_id" and df[c].nunique(dropna=False) > 1]
    if varying:
        parts.append(f"run-level columns change between rounds ({', '.join(varying)})")
    return parts


READS = f"versions {', '.join(map(str, READABLE_VERSIONS))}"


def run_problem(run_id: str, table: pa.Table, manifest: dict) -> str | None:
    """Why one readable run cannot be analysed with the others, in plain words; None when it can."""
    version = _run_version(table, manifest)
    if version not in READABLE_VERSIONS:
        return (
            f"written with record schema version {'unknown' if version is None else version} "
            f"(this raysvc reads {READS})"
        )
    parts = _schema_parts(table)
    if parts:
        return f"does not match the record schema ({'; '.join(parts)})"
    parts = _row_parts(run_id, table)
    return "; ".join(parts) if parts else None


def check_runs(runs: Iterable, source: str = "the source") -> pa.Table:
    """Check ``(run_id, table, manifest)`` triples against the schema; one table of all rows.

    Raises :class:`EmptySourceError` when there is no run and :class:`SchemaMismatchError`
    naming every offending run otherwise.
    """
    runs = list(runs)
    if not runs:
        raise EmptySourceError(
            f"no runs found in {source} (expected {storage.runs_location(source)}/<run_id>/manifest.json)"
        )
    wrong_version = []
    for run_id, table, manifest in runs:
        version = _run_version(table, manifest)
        if version not in READABLE_VERSIONS:
            wrong_version.append(f"{run_id!r} (version {'unknown' if version is None else version})")
    if wrong_version:
        raise SchemaMismatchError(
            f"{len(wrong_version)} of {len(runs)} runs in {source} were written with another record schema "
            f"than this raysvc reads ({READS}): {_names(wrong_version)}; "
            f"analyse them with the raysvc version that wrote them, or re-run them "
            f"(--skip-bad leaves them out)"
        )
    problems = []
    for run_id, table, _ in runs:
        parts = _schema_parts(table)
        if parts:
            problems.append(f"{run_id!r} ({'; '.join(parts)})")
    if problems:
        raise SchemaMismatchError(
            f"{len(problems)} of {len(runs)} runs in {source} do not match the record schema "
            f"{READS}: {_names(problems)} (--skip-bad leaves them out)"
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
    unreadable = ~df["schema_version"].isin(READABLE_VERSIONS)
    if unreadable.any():
        bad = sorted(set(df.loc[unreadable, "run_id"].astype(str)))
        raise SchemaMismatchError(
            f"runs in {source} were written with another record schema than this raysvc reads "
            f"({READS}): {_names([repr(b) for b in bad])}"
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


# ------------------------------------------------------------------ reading
def _read_one(source: str, run_id: str, retry_seconds: float | None):
    """``(Run or None, reason or None)`` for one listed run; failures of the store itself propagate."""
    try:
        return storage.read_run(source, run_id, retry_seconds=retry_seconds), None
    except CorruptRunError as exc:
        return None, exc.reason


def _bad_runs_error(source: str, bad: list[SkippedRun], n_runs: int) -> BadRunError:
    if len(bad) == 1:
        b = bad[0]
        return BadRunError(
            f"run {b.run_id!r} in {source} cannot be read: {b.reason}; rerun it, delete "
            f"{storage.run_location(source, b.run_id)}, or pass --skip-bad to go on without it",
            bad,
        )
    return BadRunError(
        f"{len(bad)} of {n_runs} runs in {source} cannot be read: "
        + "; ".join(f"{b.run_id!r}: {b.reason}" for b in bad[:_NAMED])
        + (f"; and {len(bad) - _NAMED} more" if len(bad) > _NAMED else "")
        + f"; rerun them, delete their folders under {storage.runs_location(source)}/, "
        "or pass --skip-bad to go on without them",
        bad,
    )


def read_results(source, *, skip_bad: bool = False, retry_seconds: float | None = None):
    """``(runs, skipped)``: every run under ``source`` that can be read, and the ones that cannot.

    Without ``skip_bad`` any unreadable run raises one :class:`BadRunError` naming every
    such run with its reason. Failures of the store itself (unreachable, access denied)
    always raise.
    """
    name = os.fspath(source)
    ids = storage.list_runs(source, retry_seconds=retry_seconds)
    runs, bad = [], []
    for run_id in ids:
        run, reason = _read_one(name, run_id, retry_seconds)
        if reason is not None:
            bad.append(SkippedRun(run_id, reason))
        elif run is not None:  # None: deleted while listing
            runs.append(run)
    if bad and not skip_bad:
        raise _bad_runs_error(name, bad, len(ids))
    return runs, bad


def load_results(source, *, skip_bad: bool = False, retry_seconds: float | None = None) -> Loaded:
    """Like :func:`load_runs`, and with ``skip_bad`` leaves out runs that cannot be analysed.

    Skipped are runs that cannot be read and runs that fail the schema checks; each
    comes back as a :class:`SkippedRun` in ``skipped``. Without ``skip_bad`` they raise
    (:class:`BadRunError`, :class:`SchemaMismatchError`). When every run is skipped the
    source counts as empty (:class:`EmptySourceError` naming them).
    """
    if isinstance(source, pd.DataFrame):
        return Loaded(check_frame(source), [], "a DataFrame")
    name = os.fspath(source)
    runs, skipped = read_results(source, skip_bad=skip_bad, retry_seconds=retry_seconds)
    triples = [(run_id, upgraded(table, manifest), manifest) for run_id, table, manifest in runs]
    if skip_bad:
        kept = []
        for run_id, table, manifest in triples:
            problem = run_problem(run_id, table, manifest)
            if problem is None:
                kept.append((run_id, table, manifest))
            else:
                skipped.append(SkippedRun(run_id, problem))
        skipped.sort(key=lambda s: s.run_id)
        if skipped and not kept:
            raise EmptySourceError(
                f"no readable runs in {name}: all {len(skipped)} were skipped: "
                + "; ".join(f"{s.run_id!r}: {s.reason}" for s in skipped[:_NAMED])
                + (f"; and {len(skipped) - _NAMED} more" if len(skipped) > _NAMED else "")
            )
        triples = kept
    table = check_runs(triples, name)
    manifests = {run_id: manifest for run_id, _, manifest in triples}
    return Loaded(check_frame(table.to_pandas(), name), skipped, name, manifests)


def load_runs(source, *, retry_seconds: float | None = None) -> pd.DataFrame:
    """Every complete run under ``source`` as one DataFrame, one row per (run, round).

    ``source`` is a local directory, ``file://DIR``, ``s3://BUCKET[/PREFIX]``, or an
    already-loaded DataFrame (checked and returned sorted). Columns are exactly
    :data:`raysvc.records.COLUMNS`; rows are sorted by run_id then round. A run that
    cannot be read is a :class:`BadRunError` naming it (see :func:`load_results` to
    leave such runs out).
    """
    return load_results(source, retry_seconds=retry_seconds).records


def load_selections(source, run_ids: Sequence[str] | None = None, *, runs: Sequence[storage.Run] | None = None,
                    retry_seconds: float | None = None) -> pd.DataFrame:
    """What each round of the runs under ``source`` (or just ``run_ids``, or the ``runs`` a caller
    has read already) selected: one row per selected image, ``run_id`` and the columns of
    :data:`raysvc.records.SELECTION_SCHEMA`, sorted by run, round, kind (queries first) and
    position. Runs stored before selections were (record schema 1) add no row. A selections
    file that does not match its manifest's checksum is a :class:`BadRunError` naming the run."""
    import pyarrow.parquet as pq

    name = os.fspath(source)
    frames, bad = [], []
    if runs is None:
        runs = storage.read_runs(source, None if run_ids is None else list(run_ids), retry_seconds=retry_seconds)
    for run in runs:
        try:
            raw = storage.read_run_file(source, run, SELECTIONS, retry_seconds=retry_seconds)
        except CorruptRunError as exc:
            bad.append(SkippedRun(run.run_id, exc.reason))
            continue
        if raw is None:
            continue
        frame = pq.read_table(pa.BufferReader(raw)).to_pandas()
        frame.insert(0, "run_id", run.run_id)
        frames.append(frame)
    if bad:
        raise _bad_runs_error(name, bad, len(bad))
    if not frames:
        return pd.DataFrame(columns=["run_id", *SELECTION_COLUMNS])
    out = pd.concat(frames, ignore_index=True)
    order = out["kind"].map({"query": 0, "pseudo": 1})
    return out.assign(_order=order).sort_values(["run_id", "round", "_order", "position"], kind="stable").drop(
        columns="_order").reset_index(drop=True)


__all__ = [
    "Loaded", "SkippedRun", "check_frame", "load_selections", "check_runs", "load_results", "load_runs", "read_results", "run_problem",
]  # fmt: skip
