"""The ``raysvc`` command: run, datasets, strategies, report, gateway."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from raysvc.errors import RaysvcError


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parse as JSON where they can (numbers, booleans)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RaysvcError(f"option {pair!r} is not of the form key=value")
        options[key] = _parse_value(value)
    return options


def format_table(rows: list[dict]) -> str:
    columns = ["round", "n_labeled", "n_queried", "n_pseudo", "pseudo_acc", "test_acc", "zeroshot_acc",
               "teacher_acc", "select_seconds", "train_seconds"]
    columns = [c for c in columns if not all(isinstance(r[c], float) and math.isnan(r[c]) for r in rows)]

    def cell(value):
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    body = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(v.rjust(w) for v, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, body)])


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="animal-mnist", help="registered name or image-folder path")
    parser.add_argument("--split-file", help="CoOp-style split JSON for an image folder")
    parser.add_argument("--strategy", default="cbsq")
    parser.add_argument("--learner", default="coop")
    parser.add_argument("--backbone", default="conse-lite0")
    parser.add_argument("--student", help="student network for ActiveKD learners")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--budget", type=int, help="oracle queries per round (default: number of classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, help="keep at most this many images per class")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of each class held out for testing")
    parser.add_argument("--initial-per-class", type=int, default=0,
                        help="random labeled images per class before round 1 (ActiveKD: 1)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--epochs", type=int, help="training epochs per round")
    parser.add_argument("--strategy-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--learner-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cache", help="feature cache directory")
    parser.add_argument("--out", help="local directory or s3://bucket/prefix for the records")


def config_from_args(args: argparse.Namespace):
    from raysvc.config import RunConfig

    learner_params = _options(args.learner_opt)
    if args.epochs is not None:
        learner_params["epochs"] = args.epochs
    if args.student is not None:
        learner_params["student"] = args.student
    config = RunConfig(
        dataset=args.dataset, strategy=args.strategy, learner=args.learner, backbone=args.backbone,
        rounds=args.rounds, budget=args.budget, seed=args.seed, image_size=args.image_size,
        per_class=args.per_class, test_fraction=args.test_fraction, initial_per_class=args.initial_per_class,
        split_file=args.split_file, strategy_params=_options(args.strategy_opt), learner_params=learner_params,
    )
    config.validate_names()
    return config


def run_command(args: argparse.Namespace) -> int:
    from raysvc import storage
    from raysvc.features import DEFAULT_ROOT, FeatureStore
    from raysvc.loop import load_experiment, run_loop, store_encoder
    from raysvc.records import to_table

    config = config_from_args(args)
    if args.out:
        storage.check_writable(args.out)  # fail before hours of work, not after
    experiment = load_experiment(config, store_encoder(FeatureStore(args.cache or DEFAULT_ROOT)))
    print(f"run {config.run_id}: {config.dataset}, {len(experiment.pool)} pool / {len(experiment.test)} test images,"
          f" {experiment.dataset.n_classes} classes, features {experiment.encoded.key}", flush=True)
    rows = run_loop(config, experiment, on_round=lambda row, _: print(
        f"round {row['round']}: test_acc {row['test_acc']:.3f} ({row['n_queried']} queried,"
        f" {row['n_pseudo']} pseudo-labeled)", flush=True))
    print(format_table(rows))
    if args.out:
        storage.write_run(args.out, config.run_id, to_table(rows), storage.build_manifest(config.to_dict()))
        print(f"wrote {len(rows)} rounds to {args.out}")
    return 0


def list_command(kind: str) -> int:
    if kind == "datasets":
        from raysvc.datasets import dataset_names

        names = dataset_names() + ["<path to an image folder, one sub-folder per class>"]
    else:
        from raysvc.strategies import strategy_class, strategy_names

        names = [f"{n:14s} needs {', '.join(sorted(strategy_class(n).requires)) or '-'}" for n in strategy_names()]
    print("\n".join(names))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raysvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(commands.add_parser("run", help="one active-learning run"))
    commands.add_parser("datasets", help="list registered datasets")
    commands.add_parser("strategies", help="list registered query strategies")
    from analysis.report import add_report_arguments, run_report

    add_report_arguments(commands.add_parser("report", help="tables and figures from stored results"))
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return run_command(args)
        if args.command == "report":
            return run_report(args)
        return list_command(args.command)
    except RaysvcError as exc:
        print(f"raysvc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
