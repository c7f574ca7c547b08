"""Benchmarks; each writes a markdown table to bench/results/<name>_<host>.md."""

from __future__ import annotations

import platform
import sys
from pathlib import Path


def host() -> str:
    return platform.node() or "host"


def command(module: str, argv: list[str] | None) -> str:
    """The command line that produced a result, for the report's header."""
    return "`" + " ".join([f"python -m {module}", *(sys.argv[1:] if argv is None else argv)]) + "`"


def write_results(out: str, name: str, lines: list[str]) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_{host()}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
