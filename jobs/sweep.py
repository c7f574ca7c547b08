"""Run a study (every combination of the given strategies, learners, seeds, ...) one run
after another in this process, without Ray: the reference for the Ray grid (same run
function, same records) and the quickest way to run a small study on one machine.

    python -m jobs.sweep --dataset animal-mnist --strategies random cb cbsq --seeds 0 1 2 --out results/core

Every run option of ``raysvc run`` is accepted; ``--datasets``, ``--strategies``,
``--learners``, ``--backbones`` and ``--seeds`` take several values. A stored run is
replaced, as by ``raysvc run`` and grids; ``--skip-existing`` leaves stored runs out.
"""

from __future__ import annotations

import sys

from raysvc.entry import Parser, add_run_arguments, entry_point, feature_settings, plans_from_args

AXES = ("dataset", "strategy", "learner", "backbone", "seed")


@entry_point("jobs.sweep")
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m jobs.sweep", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, axes=AXES)
    parser.add_argument("--skip-existing", action="store_true", help="leave out runs already stored at --out")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("--out is required")

    from raysvc import storage
    from raysvc.featurecache import FeatureCache
    from raysvc.run import execute

    plans = plans_from_args(args, axes=AXES)
    if args.skip_existing:
        stored = storage.stored_runs(args.out)
        for plan in (p for p in plans if p.run_id in stored.complete):
            print(f"{plan.run_id}: already stored, skipped", flush=True)
        for plan in (p for p in plans if p.run_id in stored.incomplete):
            print(f"{plan.run_id}: stored incompletely ({stored.incomplete[plan.run_id]}), run again", flush=True)
        plans = [p for p in plans if p.run_id not in stored.complete]
    cache = FeatureCache(feature_settings(args))
    for plan in plans:
        result = execute(plan, encode=cache.encode)
        print(f"{plan.run_id}: " + " ".join(f"{r['test_acc']:.3f}" for r in result.rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
