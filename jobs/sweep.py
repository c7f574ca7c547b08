"""Run a strategy x seed sweep one cell after another in this process, without Ray.

The reference for the Ray grid (same loop, same records) and the quickest way to run
a small study on one machine:

    python -m jobs.sweep --dataset animal-mnist --strategies random cb cbsq --seeds 0 1 2 --out results/core
"""

from __future__ import annotations

import argparse
import sys

from raysvc import storage
from raysvc.cli import _options
from raysvc.config import RunConfig
from raysvc.errors import RaysvcError
from raysvc.features import DEFAULT_ROOT, FeatureStore
from raysvc.loop import load_experiment, run_loop, store_encoder
from raysvc.records import to_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="animal-mnist")
    parser.add_argument("--strategies", nargs="+", required=True)
    parser.add_argument("--learners", nargs="+", help="several learners (overrides --learner)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--learner", default="coop")
    parser.add_argument("--backbone", default="conse-lite0")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--budget", type=int)
    parser.add_argument("--per-class", type=int)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--initial-per-class", type=int, default=0)
    parser.add_argument("--learner-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cache", default=str(DEFAULT_ROOT))
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        storage.check_writable(args.out)
        store = FeatureStore(args.cache)
        configs = [
            RunConfig(dataset=args.dataset, strategy=strategy, learner=learner, backbone=args.backbone,
                      rounds=args.rounds, budget=args.budget, seed=seed, per_class=args.per_class,
                      test_fraction=args.test_fraction, initial_per_class=args.initial_per_class,
                      learner_params=_options(args.learner_opt))
            for learner in (args.learners or [args.learner])
            for strategy in args.strategies for seed in args.seeds
        ]
        for config in configs:
            config.validate_names()
        experiment = load_experiment(configs[0], store_encoder(store))  # the split is shared by all seeds
        for config in configs:
            if storage.read_run(args.out, config.run_id) is not None:
                print(f"{config.run_id}: already stored, skipped", flush=True)
                continue
            rows = run_loop(config, experiment)
            storage.write_run(args.out, config.run_id, to_table(rows), storage.build_manifest(config.to_dict()))
            print(f"{config.run_id}: " + " ".join(f"{r['test_acc']:.3f}" for r in rows), flush=True)
    except RaysvcError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
