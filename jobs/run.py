"""One active-learning run on a Ray cluster (same options as ``raysvc run``).

    ray job submit --working-dir . -- python -m jobs.run --dataset animal-mnist --strategy cbsq \
        --rounds 4 --out s3://raysvc/single --train ray-train --num-workers 1

Features come from an encoder service actor of its own (``--encoder-gpus`` places it on
a GPU), in front of ``--feature-store s3://bucket/features`` when given, encoding large
datasets on Ray Data (``--encoder``, ``--ray-data-actors``); ``--train ray-train`` trains
every round with ``ray.train.torch.TorchTrainer`` (``--num-workers``, ``--use-gpu``,
``--gpus-per-worker`` / ``--cpus-per-worker``, fractions allowed); ``--train local``
trains in the driver.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from raysvc.entry import (
    Parser,
    PrintHooks,
    add_ray_arguments,
    add_run_arguments,
    entry_point,
    feature_settings,
    init_ray,
    plans_from_args,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m jobs.run", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--train", choices=["local", "ray-train"], default="ray-train")
    parser.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    parser.add_argument("--use-gpu", action="store_true", help="Ray Train workers get a GPU each")
    parser.add_argument("--gpus-per-worker", type=float, help="fractional GPUs per worker (implies --use-gpu)")
    parser.add_argument("--cpus-per-worker", type=float, help="CPUs per Ray Train worker (default 1)")
    parser.add_argument("--encoder-gpus", type=float, default=0, help="GPUs for the encoder service actor")
    add_ray_arguments(parser)
    return parser


def ray_train_options(args: argparse.Namespace):
    """The Ray Train scaling the flags describe, parsed once."""
    from raysvc.service.scaling import RayTrainOptions

    resources = {}
    if args.cpus_per_worker is not None:
        resources["CPU"] = args.cpus_per_worker
    if args.gpus_per_worker is not None:
        resources["GPU"] = args.gpus_per_worker
    return RayTrainOptions.parse({"num_workers": args.num_workers, "use_gpu": bool(args.use_gpu),
                                  "resources_per_worker": resources or None}, "ray train")


@entry_point("jobs.run")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from raysvc.progress import format_rounds
    from raysvc.provenance import driver_code_revision
    from raysvc.run import execute
    from raysvc.service.encoders import RayEncode, start_encoder_service
    from raysvc.service.train import make_runner

    (plan,) = plans_from_args(args)
    features = feature_settings(args, service={"num_gpus": args.encoder_gpus})
    options = ray_train_options(args)
    runner = make_runner(args.train, options)
    service = None
    try:
        init_ray(args)
        name = f"raysvc-features-run-{uuid.uuid4().hex[:8]}"
        service = start_encoder_service(features, name)
        context = {"train": args.train, "ray_train": options.to_dict() if args.train == "ray-train" else {}}
        result = execute(plan, encode=RayEncode(name), runner=runner, hooks=PrintHooks(),
                         revision=driver_code_revision(), context=context)
        print(format_rounds(result.rows))
        if result.stored:
            print(f"wrote {len(result.rows)} rounds of {plan.run_id} to {args.out}", flush=True)
    finally:
        runner.close()
        if service is not None:
            import ray

            ray.kill(service)
    return 0


if __name__ == "__main__":
    sys.exit(main())
