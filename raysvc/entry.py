"""What every command-line entry point shares (stage one of five: entry).

Every ``main`` (``raysvc``, ``jobs.*``, ``analysis.*``) is wrapped by :func:`entry_point`
and parses with :class:`Parser`: bad input is one line on stderr and exit code 2, a
bug a traceback. The run options are generated from :class:`~raysvc.spec.RunSpec` (one
flag per field, its default shown) plus ``--<part>-opt KEY=VALUE`` for the options of
the named parts and the feature flags, so ``raysvc run``, ``jobs.run`` and
``jobs.sweep`` accept the same options; :func:`plans_from_args` turns them into
:class:`~raysvc.spec.RunPlan` s once, the destination checked once. The Ray
connection of the cluster jobs (:func:`init_ray`) and the printing hooks of a run in
a terminal (:class:`PrintHooks`) are here too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import sys
import typing
from collections.abc import Callable, Iterable
from typing import Any

from raysvc.errors import ConfigError, RaysvcError

PARTS = ("dataset", "strategy", "learner", "backbone")
PLURAL = {"dataset": "datasets", "strategy": "strategies", "learner": "learners", "backbone": "backbones",
          "seed": "seeds"}


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
    name: ``--strategies a b``), ``--<part>-opt KEY=VALUE`` per named part, the feature
    flags (:func:`add_feature_arguments`) and ``--out``."""
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
    add_feature_arguments(parser)
    parser.add_argument("--out", help="results destination: local directory or s3://bucket/prefix (default: none)")
    parser.add_argument("--store-probs", action="store_true",
                        help="also store each round's pool probabilities (float16) with the run")


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`~raysvc.feature_settings.FeatureSettings` (:func:`feature_settings`)."""
    from raysvc.feature_settings import DEFAULT_RAY_DATA_MIN_IMAGES

    group = parser.add_argument_group("feature encoding")
    group.add_argument("--cache", help="feature cache directory (default: $RAYSVC_CACHE or ~/.cache/raysvc/features)")
    group.add_argument("--feature-store", metavar="DEST",
                       help="shared feature store behind --cache: s3://bucket/prefix or a folder; other nodes "
                            "and later runs read features from it instead of encoding (default: none)")
    group.add_argument("--encoder", choices=("auto", "local", "ray-data"), default="auto",
                       help="auto: Ray Data for large datasets when connected to Ray, else in this process; "
                            "local; ray-data (default: auto)")
    group.add_argument("--ray-data-min-images", type=int, default=DEFAULT_RAY_DATA_MIN_IMAGES, metavar="N",
                       help=f"auto: Ray Data from N images on (default: {DEFAULT_RAY_DATA_MIN_IMAGES})")
    group.add_argument("--ray-data-actors", type=int, default=1, metavar="N",
                       help="Ray Data encoder actors (default: 1)")
    group.add_argument("--ray-data-threads", type=int, default=1, metavar="N",
                       help="torch threads per Ray Data CPU encoder actor (default: 1)")


def feature_settings(args: argparse.Namespace, service: dict[str, Any] | None = None):
    """The :class:`~raysvc.feature_settings.FeatureSettings` the feature flags describe, parsed
    once; a shared feature store is checked writable here, before anything is encoded."""
    from raysvc.feature_settings import FeatureSettings

    settings = FeatureSettings.parse({
        "cache_dir": args.cache, "store": args.feature_store, "encoder": args.encoder,
        "ray_data_min_images": args.ray_data_min_images,
        "ray_data": {"actors": args.ray_data_actors, "threads": args.ray_data_threads},
        **({"service": service} if service else {}),
    }, "run features")
    if settings.store:
        from raysvc.storage.features import open_feature_store

        open_feature_store(settings.store).check_writable()
    return settings


def specs_from_args(args: argparse.Namespace, axes: Iterable[str] = ()) -> list:
    """The RunSpecs the arguments describe: one, or the product of the ``axes``."""
    from raysvc.spec import PARAM_FIELDS, RunSpec

    axes = [f.name for f in dataclasses.fields(RunSpec) if f.name in set(axes)]
    base = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunSpec) if f.name not in PARAM_FIELDS}
    params = {f"{part}_params": parse_options(getattr(args, f"{part}_opt")) for part in PARTS}
    if args.epochs is not None:
        params["learner_params"]["epochs"] = args.epochs
    if args.student is not None:
        params["learner_params"]["student"] = args.student
    return [RunSpec.from_dict({**base, **dict(zip(axes, values)), **params})
            for values in itertools.product(*(base[a] for a in axes))]


def plans_from_args(args: argparse.Namespace, axes: Iterable[str] = ()) -> list:
    """The :class:`~raysvc.spec.RunPlan` s of the arguments: each spec resolved once, then the
    destination (``--out``) checked writable once for all of them (a typo fails before the
    destination is contacted)."""
    from raysvc import storage

    dest = storage.open_store(args.out) if args.out is not None else None
    plans = [spec.resolve(dest, store_probs=args.store_probs) for spec in specs_from_args(args, axes)]
    if dest is not None:
        dest.check_writable()
    return plans


# ------------------------------------------------------------------ Ray connection
def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster address (default: the job's cluster, $RAY_ADDRESS, "
                                          "or a new local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray instance (ignored when connecting)")


def init_ray(args: argparse.Namespace) -> None:
    """Connect to the job's cluster, ``--address`` or ``$RAY_ADDRESS``; else start a local Ray
    on loopback with token auth off, so nothing is written to the home directory."""
    import ray

    if ray.is_initialized():
        return
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private loopback instance: no token to store
    ray.init(num_cpus=args.num_cpus, include_dashboard=False)


# ------------------------------------------------------------------ printing
class PrintHooks:
    """Run hooks (:class:`raysvc.run.RunHooks`) that print the run's start and each round
    (``raysvc run``, ``jobs.run``)."""

    def started(self, plan, experiment) -> None:
        from raysvc.progress import run_started_line

        print(run_started_line(plan.run_id, experiment), flush=True)

    def round_done(self, row: dict, state) -> None:
        from raysvc.progress import round_line

        print(round_line(row), flush=True)
