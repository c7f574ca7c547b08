"""The ``raysvc`` command.

``raysvc run`` runs one active-learning run; ``raysvc datasets | strategies | learners |
backbones`` list the named parts with their options; ``raysvc runs`` and ``raysvc
report`` hand their arguments to :mod:`analysis.runs` and :mod:`analysis.report`. The
run options are those of every entry point (:mod:`raysvc.entry`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from raysvc.entry import Parser, PrintHooks, add_run_arguments, entry_point, feature_settings, plans_from_args
from raysvc.listing import KINDS, list_parts, option_keys_epilog

# subcommands whose arguments belong to another module: (module with a main(argv), help)
DELEGATED = {
    "runs": ("analysis.runs", "list the runs stored at a folder or s3:// prefix"),
    "report": ("analysis.report", "tables and figures from stored results"),
}


def run_command(args: argparse.Namespace) -> int:
    from raysvc.featurecache import FeatureCache
    from raysvc.progress import format_rounds
    from raysvc.run import execute

    (plan,) = plans_from_args(args)
    cache = FeatureCache(feature_settings(args))
    result = execute(plan, encode=cache.encode, hooks=PrintHooks())
    print(format_rounds(result.rows))
    if result.stored:
        print(f"wrote {len(result.rows)} rounds to {args.out}")
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="raysvc", description="Active learning with vision-language-model priors, on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = commands.add_parser("run", help="one active-learning run", description="One active-learning run.",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=option_keys_epilog())
    add_run_arguments(run)
    for kind in KINDS:
        commands.add_parser(kind, help=f"list the {kind} and their options")
    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False).add_argument("arguments", nargs=argparse.REMAINDER)
    return parser


@entry_point("raysvc")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run_command(args)
    print(list_parts(args.command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
