"""Run a YAML grid of active-learning runs as a Ray Tune experiment.

    ray job submit --working-dir . -- python -m jobs.grid jobs/configs/demo.yaml --out s3://raysvc/demo
    python -m jobs.grid jobs/configs/test_small.yaml --out /tmp/results --num-cpus 2
    python -m jobs.grid jobs/configs/demo.yaml --resume      # after the driver died

``--resume`` restores the Tune experiment (``Tuner.restore``) from its storage path:
finished trials stay finished, interrupted ones resume from their last completed round.
``--skip-existing`` instead starts afresh but leaves out cells whose run_id already has
results at the destination. The same grid (by name) is run by one driver at a time on a
cluster: a second is refused while the first runs. Exit status: 0 when every run's results
are stored; 1 when some are missing, could not be confirmed (``unconfirmed``: the
destination could not be listed at the end) or a trial failed for good, always after the
JSON summary; 2 for a configuration or storage error found before the grid starts, or a
grid already running.
"""

from __future__ import annotations

import json
import sys

from raysvc.entry import Parser, add_ray_arguments, entry_point, init_ray


@entry_point("jobs.grid")
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m jobs.grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="grid YAML (see raysvc.service.gridspec)")
    parser.add_argument("--out", help="results destination: local directory or s3://bucket/prefix")
    parser.add_argument("--resume", action="store_true", help="restore the experiment after a driver failure")
    parser.add_argument("--skip-existing", action="store_true", help="leave out cells already stored at --out")
    parser.add_argument("--storage-path", help="Tune experiment storage (default $RAYSVC_STATE_DIR/tune or "
                                               "./.raysvc/tune; s3:// on multi-node clusters)")
    parser.add_argument("--name", help="experiment name (default: the file's name:)")
    parser.add_argument("--size", help="one of the file's sizes: (a study's smoke size); default: the file as written")
    parser.add_argument("--data-root", help="override the file's data_root: (the folder of the image datasets)")
    parser.add_argument("--train", choices=["local", "ray-train"], help="override the file's train:")
    parser.add_argument("--cells-per-trial", type=int, help="override the file's cells_per_trial:")
    parser.add_argument("--max-failures", type=int, help="override the file's max_failures:")
    parser.add_argument("--cache", help="feature cache directory of the encoder service (features: cache_dir:)")
    parser.add_argument("--feature-store", metavar="DEST",
                        help="shared feature store behind the cache: s3://bucket/prefix (overrides features: store:)")
    parser.add_argument("--quiet", action="store_true", help="less Tune output")
    add_ray_arguments(parser)
    args = parser.parse_args(argv)

    from raysvc.service.driver import run_grid
    from raysvc.service.gridspec import load_grid

    features = {k: v for k, v in (("cache_dir", args.cache), ("store", args.feature_store)) if v is not None}
    grid = load_grid(args.config, size=args.size, data_root=args.data_root, out=args.out,
                     storage_path=args.storage_path, name=args.name, train=args.train,
                     cells_per_trial=args.cells_per_trial, max_failures=args.max_failures,
                     features_overrides=features)
    grid.check_writable()  # before Ray starts: a bad destination costs nothing
    init_ray(args)
    result = run_grid(grid, resume=args.resume, skip_existing=args.skip_existing, verbose=0 if args.quiet else 1)
    print(json.dumps(result.summary(), indent=2), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
