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


def parse_size(text: str) -> int:
    """A pool size as written on the command line: 5000, 10k, 1.28M."""
    text = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(round(float(text.rstrip("km")) * mult))


def status_kb(key: str) -> int | None:
    """A memory field of /proc/self/status in kB (``VmRSS``, ``VmHWM``), None where missing."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def write_results(out: str, name: str, lines: list[str]) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_{host()}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
