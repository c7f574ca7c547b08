"""The per-round record schema shared by the loop, storage and analysis.

One row per (run, round). ``SCHEMA_VERSION`` changes whenever a column is added,
removed or changes meaning, so analysis can refuse to mix incompatible runs.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2

# identifies the run; the same for every round of it
RUN_COLUMNS = {
    "run_id": pa.string(),
    "dataset": pa.string(),
    "strategy": pa.string(),
    "learner": pa.string(),
    "backbone": pa.string(),
    "student": pa.string(),  # "" for prompt learners
    "teacher": pa.string(),  # "" when no teacher is distilled
    "seed": pa.int64(),
    "budget": pa.int64(),
    "pool_size": pa.int64(),
    "n_classes": pa.int64(),
    "schema_version": pa.int64(),
}

# measured in each round
ROUND_COLUMNS = {
    "round": pa.int64(),
    "n_labeled": pa.int64(),  # oracle-labeled plus pseudo-labeled images
    "n_queried": pa.int64(),  # cumulative oracle queries
    "n_pseudo": pa.int64(),  # cumulative pseudo-labels
    "pseudo_acc": pa.float64(),  # accuracy of all pseudo-labels so far; NaN when none
    "test_acc": pa.float64(),
    "zeroshot_acc": pa.float64(),
    "teacher_acc": pa.float64(),  # NaN without a teacher
    "select_seconds": pa.float64(),
    "train_seconds": pa.float64(),
    "encode_seconds": pa.float64(),  # feature encoding charged to this run (0 on a cache hit)
    # base-to-novel (RunSpec.base_to_novel): test_acc on the base classes, on the held-out
    # novel ones, and their harmonic mean; NaN when the run trains on every class (version 2)
    "test_acc_base": pa.float64(),
    "test_acc_novel": pa.float64(),
    "test_acc_hm": pa.float64(),
}

SCHEMA = pa.schema(list(RUN_COLUMNS.items()) + list(ROUND_COLUMNS.items()))
COLUMNS = SCHEMA.names


def to_table(rows: list[dict]) -> pa.Table:
    """Build a table with exactly the schema's columns, in order; missing keys fail loudly."""
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if missing:
        raise KeyError(f"records lack columns: {missing}")
    return pa.Table.from_pylist([{c: r[c] for c in COLUMNS} for r in rows], schema=SCHEMA)
