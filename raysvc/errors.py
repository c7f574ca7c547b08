"""Errors a user can act on. Every entry point prints them as one line and exits with 2."""

from typing import Any


class RaysvcError(Exception):
    """Base for errors caused by the user's input or environment, not by a bug."""


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

    def __init__(self, run_id: str, where: str, reason: str):
        self.run_id, self.where, self.reason = run_id, where, reason
        super().__init__(f"run {run_id!r} in {where} cannot be read: {reason}; "
                         f"rerun it or delete {where.rstrip('/')}/runs/{run_id}")


def one_line(text: Any, limit: int = 500) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
