"""What every command-line entry point shares: one-line usage errors and one-line raysvc errors.

Every ``main`` (``raysvc``, ``jobs.*``, ``analysis.*``) is wrapped by :func:`entry_point` and
parses with :class:`Parser`: bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
import typing
from collections.abc import Callable

from raysvc.errors import RaysvcError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2, and which
    takes no abbreviations (``--dataset`` must not silently mean ``--dataset-opt``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def entry_point(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator for a ``main(argv) -> int``: a RaysvcError becomes one line and exit code 2."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except RaysvcError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
                return 2

        return run

    return wrap
