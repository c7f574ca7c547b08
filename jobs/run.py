"""One active-learning run on a Ray cluster (same options as ``raysvc run``).

    ray job submit --working-dir . -- python -m jobs.run --dataset animal-mnist --strategy cbsq \
        --rounds 4 --out s3://raysvc/single --train ray-train --num-workers 1

Features come from the shared encoder actor (``--encoder-gpus`` places it on a GPU),
in front of ``--feature-store s3://bucket/features`` when given, encoding large datasets
on Ray Data (``--encoder``, ``--ray-data-actors``);
``--train ray-train`` trains every round with ``ray.train.torch.TorchTrainer``
(``--num-workers``, ``--use-gpu``, ``--gpus-per-worker`` / ``--cpus-per-worker``,
fractions allowed); ``--train local`` trains in the driver.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from jobs.grid import add_ray_arguments, init_ray
from raysvc.cli import PrintHooks, add_run_arguments, feature_settings, format_table, specs_from_args
from raysvc.entry import Parser, entry_point


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m jobs.run", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--train", choices=["local", "ray-train"], default="ray-train")
    parser.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    parser.add_argument("--use-gpu", action="store_true", help="Ray Train workers get a GPU each")
    parser.add_argument("--gpus-per-worker", type=float, help="fractional GPUs per worker (implies --use-gpu)")
    parser.add_argument("--cpus-per-worker", type=float, help="CPUs per Ray Train worker (default 1)")
    parser.add_argument("--encoder-gpus", type=float, default=0, help="GPUs for the encoder actor")
    add_ray_arguments(parser)
    return parser


def ray_train_options(args: argparse.Namespace) -> dict:
    resources = {}
    if args.cpus_per_worker is not None:
        resources["CPU"] = args.cpus_per_worker
    if args.gpus_per_worker is not None:
        resources["GPU"] = args.gpus_per_worker
    options = {"num_workers": args.num_workers, "use_gpu": bool(args.use_gpu or args.gpus_per_worker)}
    if resources:
        options["resources_per_worker"] = resources
    return options


@entry_point("jobs.run")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from raysvc.provenance import driver_code_revision
    from raysvc.run import execute
    from raysvc.service.encoders import RayEncode, feature_service
    from raysvc.service.train import make_runner
    from raysvc.storage import check_writable

    (spec,) = specs_from_args(args)
    if args.out:
        check_writable(args.out)  # before Ray starts: a bad destination costs nothing
    features = feature_settings(args)
    options = ray_train_options(args) if args.train == "ray-train" else {}
    runner = make_runner(args.train, options)
    actor = None
    try:
        init_ray(args)
        name = f"raysvc-features-run-{uuid.uuid4().hex[:8]}"
        actor = feature_service(name, cache_dir=args.cache, num_gpus=args.encoder_gpus, **features)
        result = execute(spec, encode=RayEncode(name), out=args.out, runner=runner, hooks=PrintHooks(),
                         revision=driver_code_revision(), context={"train": args.train, "ray_train": options})
        print(format_table(result.rows))
        if result.stored:
            print(f"wrote {len(result.rows)} rounds of {spec.run_id} to {args.out}", flush=True)
    finally:
        close = getattr(runner, "close", None)
        if close is not None:
            close()
        if actor is not None:
            import ray

            ray.kill(actor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
