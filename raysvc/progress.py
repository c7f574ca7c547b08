"""What a run prints as it goes, in one place: encoding progress, the run's start, each
round, the table of rounds at the end, and one-line notices of what it repaired or retried."""

from __future__ import annotations

import math
import sys
import time

# seconds between two progress lines of a long encoding pass
PROGRESS_SECONDS = 15.0

ROUND_COLUMNS = ("round", "n_labeled", "n_queried", "n_pseudo", "pseudo_acc", "test_acc", "zeroshot_acc",
                 "teacher_acc", "select_seconds", "train_seconds")


def notice(text: str) -> None:
    """One line on stderr: something the run noticed and dealt with (a bad feature entry
    replaced, a store call retried, a lost write race), so the run goes on."""
    print(f"raysvc: {text}", file=sys.stderr, flush=True)


class ProgressLines:
    """Progress as whole lines (start, every :data:`PROGRESS_SECONDS`, end), which survive
    log forwarding where a carriage-return bar does not."""

    def __init__(self, what: str, total: int):
        self.what, self.total = what, total
        self.start = self.last = time.monotonic()
        print(f"{what}: {total} images", flush=True)

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate else float("inf")
        print(f"{self.what}: {done}/{self.total} images ({100 * done / self.total:.0f}%), "
              f"{rate:.0f} images/s, {eta:.0f}s left", flush=True)


def format_rounds(rows: list[dict]) -> str:
    """The rounds of a run as a plain-text table (columns that are NaN throughout left out)."""
    columns = [c for c in ROUND_COLUMNS if not all(isinstance(r[c], float) and math.isnan(r[c]) for r in rows)]

    def cell(value):
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    body = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]

    def line(cells):
        return "  ".join(v.rjust(w) for v, w in zip(cells, widths))

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, body)])


def run_started_line(run_id: str, experiment) -> str:
    dataset = experiment.dataset
    skipped = f", {len(dataset.skipped)} unreadable images skipped" if dataset.skipped else ""
    return (f"run {run_id}: {dataset.name}, {len(experiment.pool)} pool / {len(experiment.test)} test images, "
            f"{dataset.n_classes} classes{skipped}, features {experiment.encoded.key}")


def round_line(row: dict) -> str:
    return (f"round {row['round']}: test_acc {row['test_acc']:.3f} ({row['n_queried']} queried, "
            f"{row['n_pseudo']} pseudo-labeled, train {row['train_seconds']:.1f}s)")
