"""Ray's cost and gain: a grid on local Ray against the same cells one after another.

    python -m bench.grid                    # 8 cells (4 strategies x 2 seeds), 3 rounds, 2 CPUs

Both sides use the same warm feature cache, so neither pays for encoding. Reported:
- wall time of the grid (one cell per trial, two trials at a time) and of the
  sequential loop in this process, and their ratio;
- Ray's overhead per trial: slots x grid wall minus the trials' own run time, per trial;
- Ray's overhead per round: a run's wall time outside selecting and training, per round,
  in a trial minus the same in the sequential loop: reporting and checkpointing each round,
  plus the trial process's one-time load of the backbone, spread over its rounds.
Results go to bench/results/grid_<host>.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench import command, host, write_results
from raysvc import storage
from raysvc.config import RunSpec
from raysvc.features import DEFAULT_ROOT, FeatureStore
from raysvc.loop import load_experiment, store_encoder
from raysvc.run import execute


def sequential(cells: list[dict], cache: str) -> tuple[float, list[float]]:
    """Wall time of all cells, and each run's seconds outside selecting and training per round."""
    start = time.perf_counter()
    outside = []
    encode = store_encoder(FeatureStore(cache, progress="off"))
    for cell in cells:
        result = execute(RunSpec.from_dict(cell), encode=encode)
        rows = result.rows
        wall = result.manifest["wall_seconds"]
        outside.append((wall - sum(r["select_seconds"] + r["train_seconds"] for r in rows)) / len(rows))
    return time.perf_counter() - start, outside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["random", "entropy", "cb", "cbsq"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--cache", default=str(DEFAULT_ROOT))
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    import ray

    from raysvc.service.driver import run_grid
    from raysvc.service.gridspec import load_grid

    os.environ["RAYSVC_CACHE"] = args.cache
    grid = {
        "name": f"bench-{int(time.time())}", "cells_per_trial": 1, "resources": {"cpu": 1},
        "features": {"cache_dir": args.cache},
        "fixed": {"dataset": "animal-mnist", "rounds": args.rounds, "per_class": args.per_class,
                  "learner_params": {"epochs": args.epochs, "lr": 0.1}},
        "grid": {"strategy": args.strategies, "seed": args.seeds},
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_grid(dict(grid, out=str(Path(tmp) / "results"), storage_path=str(Path(tmp) / "tune")))
        # warm the cache once so neither side pays for encoding
        load_experiment(RunSpec.from_dict(spec.cells[0]), store_encoder(FeatureStore(args.cache)))
        seq_wall, seq_outside = sequential(spec.cells, args.cache)

        ray.init(num_cpus=args.cpus, include_dashboard=False, runtime_env={"env_vars": {"RAYSVC_CACHE": args.cache}})
        try:
            result = run_grid(spec, verbose=0)
        finally:
            ray.shutdown()
        if not result.ok:
            print(f"grid failed: missing {result.missing}, errors {result.errors}", file=sys.stderr)
            return 1
        runs = storage.read_runs(spec.out)
        records = pd.concat([r.table.to_pandas() for r in runs])
    trial_seconds = sum(r.manifest["wall_seconds"] for r in runs)
    in_loop = records.groupby("run_id")[["select_seconds", "train_seconds"]].sum().sum(axis=1)
    walls = {r.run_id: r.manifest["wall_seconds"] for r in runs}
    grid_outside = [(walls[run_id] - in_loop[run_id]) / args.rounds for run_id in in_loop.index]
    slots = min(args.cpus, len(spec.cells))
    per_trial = (slots * result.wall_seconds - trial_seconds) / len(spec.cells)
    per_round = sum(grid_outside) / len(grid_outside) - sum(seq_outside) / len(seq_outside)
    lines = [
        f"# Grid benchmark on {host()}",
        "",
        command("bench.grid", argv),
        "",
        f"{len(spec.cells)} cells (animal-mnist, {args.per_class} images per class, {args.rounds} rounds, CoOp "
        f"{args.epochs} epochs; strategies {', '.join(args.strategies)}; seeds {args.seeds}), warm feature cache, "
        f"{args.cpus} CPUs, one cell per trial.",
        "",
        "| measure | seconds |",
        "|---|---|",
        f"| sequential, one process | {seq_wall:.1f} |",
        f"| Ray Tune grid ({slots} trials at a time) | {result.wall_seconds:.1f} |",
        f"| speed-up of the grid | {seq_wall / result.wall_seconds:.2f}x |",
        f"| Ray overhead per trial | {per_trial:.1f} |",
        f"| Ray overhead per round (report, checkpoint, backbone load spread over rounds) | {per_round:.2f} |",
    ]
    write_results(args.out, "grid", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
