"""The ``raysvc`` command, and what every entry point shares.

``raysvc run`` runs one active-learning run; ``raysvc runs`` lists stored runs;
``raysvc report`` writes tables and figures; ``raysvc datasets | strategies | learners |
backbones`` list the named parts with their options.

Run options are generated from :class:`~raysvc.spec.RunSpec` (one flag per field,
its default shown) plus ``--<part>-opt KEY=VALUE`` for the options of the named parts,
so ``raysvc run``, ``jobs.run`` and ``jobs.sweep`` accept the same options. Every entry
point is wrapped by :func:`entry_point`: a raysvc error is one line on stderr and exit
code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import typing
from collections.abc import Iterable
from typing import Any

from raysvc.entry import Parser, entry_point
from raysvc.errors import ConfigError
from raysvc.feature_options import DEFAULT_RAY_DATA_MIN_IMAGES, ENCODERS
from raysvc.run import RunHooks

PARTS = ("dataset", "strategy", "learner", "backbone")
PLURAL = {"dataset": "datasets", "strategy": "strategies", "learner": "learners", "backbone": "backbones",
          "seed": "seeds"}


# ------------------------------------------------------------------ run options
def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values parse as JSON where they can (numbers, booleans, null)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"option {pair!r} is not of the form KEY=VALUE")
        options[key] = _parse_value(value)
    return options


def _scalar_type(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0] if args[0] in (int, float, str) else str


def add_run_arguments(parser: argparse.ArgumentParser, axes: Iterable[str] = ()) -> None:
    """One flag per RunSpec field (fields in ``axes`` take several values, under a plural
    name: ``--strategies a b``), ``--<part>-opt KEY=VALUE`` per named part, ``--cache``,
    the feature options (``--feature-store``, ``--encoder``, ...: :func:`feature_settings`)
    and ``--out``."""
    from raysvc.spec import PARAM_FIELDS, RunSpec

    axes = set(axes)
    hints = typing.get_type_hints(RunSpec)
    group = parser.add_argument_group("run options")
    for f in dataclasses.fields(RunSpec):
        if f.name in PARAM_FIELDS:
            continue
        default = f"default: {f.default}" if f.default is not None else "default: none"
        kind = _scalar_type(hints[f.name])
        if f.name in axes:
            group.add_argument(f"--{PLURAL[f.name]}", f"--{f.name}", dest=f.name, nargs="+", type=kind,
                               default=[f.default], metavar=f.name.upper(),
                               help=f"{f.metadata['help']} ({default}; several: one run each)")
        else:
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=f.default,
                               metavar=f.name.upper(), help=f"{f.metadata['help']} ({default})")
    for part in PARTS:
        group.add_argument(f"--{part}-opt", action="append", default=[], metavar="KEY=VALUE",
                           help=f"an option of the {part} (repeatable; keys: raysvc {PLURAL[part]})")
    group.add_argument("--student", help="shortcut for --learner-opt student=NAME (ActiveKD learners)")
    group.add_argument("--epochs", type=int, help="shortcut for --learner-opt epochs=N")
    parser.add_argument("--cache", help="feature cache directory (default: $RAYSVC_CACHE or ~/.cache/raysvc/features)")
    features = parser.add_argument_group("feature encoding")
    features.add_argument("--feature-store", metavar="DEST",
                          help="shared feature store behind --cache: s3://bucket/prefix or a folder; other nodes "
                               "and later runs read features from it instead of encoding (default: none)")
    features.add_argument("--encoder", choices=ENCODERS, default="auto",
                          help="auto: Ray Data for large datasets when connected to Ray, else in this process; "
                               "local; ray-data (default: auto)")
    features.add_argument("--ray-data-min-images", type=int, default=DEFAULT_RAY_DATA_MIN_IMAGES, metavar="N",
                          help=f"auto: Ray Data from N images on (default: {DEFAULT_RAY_DATA_MIN_IMAGES})")
    features.add_argument("--ray-data-actors", type=int, default=1, metavar="N",
                          help="Ray Data encoder actors (default: 1)")
    features.add_argument("--ray-data-threads", type=int, default=1, metavar="N",
                          help="torch threads per Ray Data CPU encoder actor (default: 1)")
    parser.add_argument("--out", help="results destination: local directory or s3://bucket/prefix (default: none)")


def feature_settings(args: argparse.Namespace, check_store: bool = True) -> dict[str, Any]:
    """The feature options of ``add_run_arguments``, validated (the store is checked
    writable with ``check_store``, before anything is encoded): keyword arguments of
    :class:`~raysvc.features.FeatureStore` and of the FeatureService actor."""
    from raysvc.feature_options import RayDataOptions

    if args.ray_data_min_images < 0:
        raise ConfigError(f"--ray-data-min-images {args.ray_data_min_images}: must be >= 0")
    ray_data = RayDataOptions.parse({"actors": args.ray_data_actors, "threads": args.ray_data_threads}, "ray data")
    if args.feature_store and check_store:
        from raysvc.storage.features import open_feature_store

        open_feature_store(args.feature_store).check_writable()
    return {"store": args.feature_store, "encoder": args.encoder, "ray_data_min_images": args.ray_data_min_images,
            "ray_data": ray_data.to_dict()}


def feature_store(args: argparse.Namespace):
    """The :class:`~raysvc.features.FeatureStore` the run options describe (``--cache``, ``--feature-store``, ...)."""
    from raysvc.features import FeatureStore

    settings = feature_settings(args)
    return FeatureStore.at(args.cache, remote=settings.pop("store"), **settings)


def part_options_epilog() -> str:
    """The option keys of every named part, for ``--help`` (generated from their typed options)."""
    from raysvc.backbones import BACKBONES
    from raysvc.datasets import DATASETS
    from raysvc.learners import LEARNERS
    from raysvc.strategies import STRATEGIES

    lines = ["option keys of the named parts (--<part>-opt KEY=VALUE; details: raysvc <parts>):"]
    for part, registry in (("dataset", DATASETS), ("strategy", STRATEGIES), ("learner", LEARNERS),
                           ("backbone", BACKBONES)):
        by_keys: dict[tuple[str, ...], list[str]] = {}
        for entry in registry.entries() + registry.families():
            keys = tuple(name for name, *_ in entry.options_type.describe() if name not in entry.fixed)
            by_keys.setdefault(keys, []).append(entry.name)
        for keys, names in by_keys.items():
            lines.append(f"  {part} {', '.join(names)}: {', '.join(keys) or '(none)'}")
    return "\n".join(lines)


def specs_from_args(args: argparse.Namespace, axes: Iterable[str] = ()) -> list:
    """The validated RunSpecs the arguments describe: one, or the product of the ``axes``."""
    from raysvc.spec import PARAM_FIELDS, RunSpec

    axes = [f.name for f in dataclasses.fields(RunSpec) if f.name in set(axes)]
    base = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunSpec) if f.name not in PARAM_FIELDS}
    params = {f"{part}_params": parse_options(getattr(args, f"{part}_opt")) for part in PARTS}
    if args.epochs is not None:
        params["learner_params"]["epochs"] = args.epochs
    if args.student is not None:
        params["learner_params"]["student"] = args.student
    specs = []
    for values in itertools.product(*(base[a] for a in axes)):
        spec = RunSpec.from_dict({**base, **dict(zip(axes, values)), **params})
        spec.validate()
        specs.append(spec)
    return specs


# ------------------------------------------------------------------ printing
ROUND_COLUMNS = ("round", "n_labeled", "n_queried", "n_pseudo", "pseudo_acc", "test_acc", "zeroshot_acc",
                 "teacher_acc", "select_seconds", "train_seconds")


def format_table(rows: list[dict]) -> str:
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


class PrintHooks(RunHooks):
    """Run hooks that print the run's start and each round (``raysvc run``, ``jobs.run``)."""

    def started(self, spec, experiment) -> None:
        skipped = f", {len(experiment.dataset.skipped)} unreadable images skipped" if experiment.dataset.skipped else ""
        print(f"run {spec.run_id}: {experiment.dataset.name}, {len(experiment.pool)} pool / "
              f"{len(experiment.test)} test images, {experiment.dataset.n_classes} classes{skipped}, "
              f"features {experiment.encoded.key}", flush=True)

    def round_done(self, row: dict, state) -> None:
        print(f"round {row['round']}: test_acc {row['test_acc']:.3f} ({row['n_queried']} queried, "
              f"{row['n_pseudo']} pseudo-labeled, train {row['train_seconds']:.1f}s)", flush=True)


# ------------------------------------------------------------------ commands
def run_command(args: argparse.Namespace) -> int:
    from raysvc.loop import store_encoder
    from raysvc.run import execute

    (spec,) = specs_from_args(args)
    result = execute(spec, encode=store_encoder(feature_store(args)), out=args.out, hooks=PrintHooks())
    print(format_table(result.rows))
    if result.stored:
        print(f"wrote {len(result.rows)} rounds to {args.out}")
    return 0


def describe_part(entry_name: str, summary: str, options_type, extra: str = "") -> str:
    lines = [f"{entry_name}{extra}: {summary}" if summary else f"{entry_name}{extra}"]
    for name, kind, default, help_text in options_type.describe():
        lines.append(f"    {name} ({kind}, default {default!r}){': ' + help_text if help_text else ''}")
    return "\n".join(lines)


def list_command(kind: str) -> int:
    from raysvc.backbones import BACKBONES
    from raysvc.datasets import DATASETS
    from raysvc.learners import LEARNERS
    from raysvc.strategies import STRATEGIES

    registry = {"datasets": DATASETS, "strategies": STRATEGIES, "learners": LEARNERS, "backbones": BACKBONES}[kind]
    blocks = []
    for entry in registry.entries():
        extra = ""
        if kind == "strategies":
            extra = f" [needs {', '.join(sorted(entry.cls.requires)) or '-'}]"
        preset = ", ".join(f"{k}={v}" for k, v in entry.preset.items())
        blocks.append(describe_part(entry.name + (f" ({preset})" if preset else ""), entry.summary,
                                    entry.options_type, extra))
    blocks += [describe_part(f.name, f.summary, f.options_type) for f in registry.families()]
    print("\n".join(blocks))
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="raysvc", description="Active learning with vision-language-model priors, on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = commands.add_parser("run", help="one active-learning run", description="One active-learning run.",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=part_options_epilog())
    add_run_arguments(run)
    for kind in ("datasets", "strategies", "learners", "backbones"):
        commands.add_parser(kind, help=f"list the {kind} and their options")
    from analysis.report import add_report_arguments
    from analysis.runs import add_runs_arguments

    add_runs_arguments(commands.add_parser("runs", help="list the runs stored at a folder or s3:// prefix"))
    add_report_arguments(commands.add_parser("report", help="tables and figures from stored results"))
    return parser


@entry_point("raysvc")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run_command(args)
    if args.command == "report":
        from analysis.report import run_report

        return run_report(args)
    if args.command == "runs":
        from analysis.runs import run_runs

        return run_runs(args)
    return list_command(args.command)


if __name__ == "__main__":
    sys.exit(main())
