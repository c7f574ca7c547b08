"""One active-learning run on a Ray cluster (same options as ``raysvc run``).

    ray job submit --working-dir . -- python -m jobs.run --dataset animal-mnist --strategy cbsq \
        --rounds 4 --out s3://raysvc/single --train ray-train --num-workers 1

Features come from the shared encoder actor (``--encoder-gpus`` places it on a GPU);
``--train ray-train`` trains every round with ``ray.train.torch.TorchTrainer``
(``--num-workers``, ``--use-gpu``, ``--gpus-per-worker`` / ``--cpus-per-worker``,
fractions allowed); ``--train local`` trains in the driver.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from jobs.grid import add_ray_arguments, init_ray


def build_parser() -> argparse.ArgumentParser:
    from raysvc.cli import add_run_arguments

    parser = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__.split("\n\n")[0])
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from raysvc import storage
    from raysvc.cli import config_from_args, format_table
    from raysvc.errors import RaysvcError
    from raysvc.loop import load_experiment, run_loop
    from raysvc.records import to_table
    from raysvc.service.encoders import RayEncode, feature_service
    from raysvc.service.manifest import driver_code_revision, run_manifest
    from raysvc.service.train import make_runner

    actor = runner = None
    try:
        config = config_from_args(args)
        if args.out:
            storage.check_writable(args.out)  # fail before the work, not after
        options = ray_train_options(args) if args.train == "ray-train" else {}
        runner = make_runner(args.train, options)
        init_ray(args)
        start = time.perf_counter()
        name = f"raysvc-features-run-{uuid.uuid4().hex[:8]}"
        actor = feature_service(name, cache_dir=args.cache, num_gpus=args.encoder_gpus)
        experiment = load_experiment(config, RayEncode(name))
        print(f"run {config.run_id}: {config.dataset}, {len(experiment.pool)} pool / {len(experiment.test)} test "
              f"images, train={args.train}", flush=True)
        rows = run_loop(config, experiment, runner, on_round=lambda row, _: print(
            f"round {row['round']}: test_acc {row['test_acc']:.3f} ({row['n_queried']} queried, "
            f"train {row['train_seconds']:.1f}s)", flush=True))
        print(format_table(rows))
        if args.out:
            manifest = run_manifest(config.to_dict(), code_revision=driver_code_revision(), train=args.train,
                                    ray_train=options, wall_seconds=time.perf_counter() - start)
            storage.write_run(args.out, config.run_id, to_table(rows), manifest)
            print(f"wrote {len(rows)} rounds of {config.run_id} to {args.out}", flush=True)
    except RaysvcError as exc:
        print(f"jobs.run: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if runner is not None and hasattr(runner, "close"):
            runner.close()
        if actor is not None:
            import ray

            ray.kill(actor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
