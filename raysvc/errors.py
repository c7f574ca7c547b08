"""raysvc's one error tree.

:class:`RaysvcError` and its subclasses are mistakes a user can act on (a bad option, a
missing dataset, an unwritable destination, runs that cannot be analysed together):
every entry point prints them as one line and exits with 2, before anything is written
where it can. :class:`RaysvcBug` is the opposite: an internal invariant broke (a pool
whose arrays disagree, a strategy that selected nothing), which is raysvc's fault and
ends with a traceback, never with a user-error line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RaysvcError(Exception):
    """Base for errors caused by the user's input or environment, not by a bug."""


class RaysvcBug(RuntimeError):
    """An internal invariant does not hold: a bug in raysvc, reported with its traceback."""


class ConfigError(RaysvcError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class UnknownNameError(ConfigError, KeyError):
    """A dataset, strategy, backbone, learner or student name is not registered."""

    def __init__(self, kind: str, name: str, known):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class PoolExhaustedError(RaysvcError):
    """The budget asks for more images than the unlabeled pool still holds."""


class DatasetError(RaysvcError):
    """A dataset cannot be read: empty folder, class with no image, corrupt image."""


class StorageError(RaysvcError):
    """Results cannot be written to, or read from, their destination."""


class CorruptRunError(StorageError):
    """A stored run cannot be read back as written; ``reason`` says what is wrong in plain words."""

    def __init__(self, run_id: str, where: str, reason: str, run_path: str):
        self.run_id, self.where, self.reason = run_id, where, reason
        super().__init__(f"run {run_id!r} in {where} cannot be read: {reason}; rerun it or delete {run_path}")


class AnalysisError(RaysvcError):
    """Results cannot be analysed as asked: nothing to read, incompatible runs, bad selection."""


class EmptySourceError(AnalysisError):
    """The source holds no complete run."""


class SchemaMismatchError(AnalysisError):
    """Runs were written with another record schema (version, columns or types)."""


class BadRunError(AnalysisError, StorageError):
    """Stored runs cannot be read (corrupt or edited files); ``bad`` lists them with reasons."""

    def __init__(self, message: str, bad: Sequence[Any] = ()):
        super().__init__(message)
        self.bad = list(bad)


def one_line(text: Any, limit: int = 500) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
