"""The schemas of what a run stores, shared by the loop, storage and analysis.

``records.parquet``: one row per (run, round) (:data:`SCHEMA`). ``selections.parquet``: one
row per image selected in a round (:data:`SELECTION_SCHEMA`). ``SCHEMA_VERSION`` changes
whenever a column is added, removed or changes meaning, so analysis can refuse to mix
incompatible runs; :data:`READABLE_VERSIONS` are the versions analysis still reads.

Version history: 1, the records; 2, the selections file beside them and the base-to-novel
columns (:data:`ADDED_IN_2`), which a version-1 run reads as NaN (it trained on every
class), without selections.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

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
# columns a version-1 run lacks; all float, NaN there
ADDED_IN_2 = ("test_acc_base", "test_acc_novel", "test_acc_hm")
COLUMNS = SCHEMA.names


def to_table(rows: list[dict]) -> pa.Table:
    """Build a table with exactly the schema's columns, in order; missing keys fail loudly."""
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if missing:
        raise KeyError(f"records lack columns: {missing}")
    return pa.Table.from_pylist([{c: r[c] for c in COLUMNS} for r in rows], schema=SCHEMA)


SELECTIONS = "selections.parquet"
# one row per image a round selected: the oracle's queries and the strategy's pseudo-labels
SELECTION_SCHEMA = pa.schema([
    ("round", pa.int64()),
    ("position", pa.int64()),  # index into the run's pool
    ("item", pa.string()),  # the dataset's stable id of the image (relative file path or packaged index)
    ("kind", pa.string()),  # "query" or "pseudo"
    ("label", pa.int64()),  # the oracle's label (query) or the pseudo-label
    ("true_label", pa.int64()),
    ("score", pa.float64()),  # the strategy's score behind the pick; NaN where it has none
])
SELECTION_COLUMNS = SELECTION_SCHEMA.names


def selections_table(rows: list[dict]) -> pa.Table:
    """The selections file's table, from dicts of equal-length column arrays (one per round)."""
    if not rows:
        return SELECTION_SCHEMA.empty_table()
    columns = {name: [value for row in rows for value in row[name]] for name in SELECTION_COLUMNS}
    return pa.Table.from_pydict(columns, schema=SELECTION_SCHEMA)
