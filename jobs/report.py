"""Tables and figures from stored results, as a job entrypoint.

    ray job submit --working-dir . -- python -m jobs.report s3://raysvc/demo --out reports/demo
"""

from __future__ import annotations

import argparse
import sys

from analysis.report import add_report_arguments, run_report
from raysvc.errors import RaysvcError


def main(argv: list[str] | None = None) -> int:
    parser = add_report_arguments(argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__))
    args = parser.parse_args(argv)
    try:
        return run_report(args)
    except RaysvcError as exc:
        print(f"jobs.report: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
