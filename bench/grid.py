"""Ray's cost and gain: a grid on local Ray against the same cells one after another.

    python -m bench.grid                    # 8 cells (4 strategies x 2 seeds), 3 rounds, 2 CPUs
    python -m bench.grid --cells-per-trial 1 --checkpoint-seconds 0   # the grid as it ran before

Both sides use the same warm feature cache, so neither pays for encoding, and one torch
thread per process (the sequential loop is what one core does; the grid runs one trial
per CPU). Reported:
- wall time of the grid (cells packed ``--cells-per-trial`` to a trial, default N / CPUs)
  and of the sequential loop in this process, their ratio, and that ratio over P (the
  grid's throughput as a share of P x the sequential throughput);
- Ray's overhead per trial: slots x grid wall minus the trials' own run time, per trial;
- Ray's overhead per round: a run's wall time outside selecting and training, per round,
  in a trial minus the same in the sequential loop: reporting and checkpointing each round,
  plus the trial process's one-time load of the backbone, spread over its rounds.
Results go to bench/results/grid_<host>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench import command, host, write_results
from raysvc import storage
from raysvc.experiment import assemble
from raysvc.feature_settings import FeatureSettings, default_cache_dir
from raysvc.featurecache import FeatureCache
from raysvc.run import execute


def sequential(plans, cache: str) -> tuple[float, list[float]]:
    """Wall time of all runs (stored nowhere), and each run's seconds outside selecting and
    training per round."""
    start = time.perf_counter()
    outside = []
    encode = FeatureCache(FeatureSettings(cache_dir=cache), progress="off").encode
    for plan in plans:
        result = execute(dataclasses.replace(plan, dest=None), encode=encode)
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
    parser.add_argument("--cells-per-trial", type=int, help="default: cells / cpus")
    parser.add_argument("--checkpoint-seconds", type=float, default=30.0)
    parser.add_argument("--cache", default=str(default_cache_dir()))
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    import ray
    import torch

    from raysvc.service.driver import run_grid
    from raysvc.service.gridspec import load_grid

    torch.set_num_threads(1)
    os.environ["RAYSVC_CACHE"] = args.cache
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    n_cells = len(args.strategies) * len(args.seeds)
    per_trial = args.cells_per_trial or -(-n_cells // args.cpus)
    grid = {
        "name": f"bench-{int(time.time())}", "cells_per_trial": per_trial, "resources": {"cpu": 1},
        "checkpoint_seconds": args.checkpoint_seconds,
        "features": {"cache_dir": args.cache},
        "fixed": {"dataset": "animal-mnist", "rounds": args.rounds, "per_class": args.per_class,
                  "learner_params": {"epochs": args.epochs, "lr": 0.1}},
        "grid": {"strategy": args.strategies, "seed": args.seeds},
    }
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_grid(dict(grid, out=str(Path(tmp) / "results"), storage_path=str(Path(tmp) / "tune")))
        # warm the cache once so neither side pays for encoding
        assemble(spec.plans[0], FeatureCache(FeatureSettings(cache_dir=args.cache)).encode)
        seq_wall, seq_outside = sequential(spec.plans, args.cache)

        ray.init(num_cpus=args.cpus, include_dashboard=False, runtime_env={"env_vars": {"RAYSVC_CACHE": args.cache}})
        try:
            result = run_grid(spec, verbose=0)
        finally:
            ray.shutdown()
        if not result.ok:
            print(f"grid failed: missing {result.missing}, errors {result.errors}", file=sys.stderr)
            return 1
        runs = storage.read_runs(spec.settings.out)
        records = pd.concat([r.table.to_pandas() for r in runs])
    run_seconds = sum(r.manifest["wall_seconds"] for r in runs)
    in_loop = records.groupby("run_id")[["select_seconds", "train_seconds"]].sum().sum(axis=1)
    walls = {r.run_id: r.manifest["wall_seconds"] for r in runs}
    grid_outside = [(walls[run_id] - in_loop[run_id]) / args.rounds for run_id in in_loop.index]
    slots = min(args.cpus, result.n_trials)
    trial_overhead = (slots * result.wall_seconds - run_seconds) / result.n_trials
    per_round = sum(grid_outside) / len(grid_outside) - sum(seq_outside) / len(seq_outside)
    speed_up = seq_wall / result.wall_seconds
    lines = [
        f"# Grid benchmark on {host()}",
        "",
        command("bench.grid", argv),
        "",
        f"{len(spec.plans)} cells (animal-mnist, {args.per_class} images per class, {args.rounds} rounds, CoOp "
        f"{args.epochs} epochs; strategies {', '.join(args.strategies)}; seeds {args.seeds}), warm feature cache, "
        f"{args.cpus} CPUs, one torch thread per process, {per_trial} cells per trial ({result.n_trials} trials), "
        f"checkpoints at most every {args.checkpoint_seconds:g} s. Load average before: {load_before}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| sequential, one process (s) | {seq_wall:.1f} |",
        f"| Ray Tune grid, {slots} trials at a time (s) | {result.wall_seconds:.1f} |",
        f"| speed-up of the grid | {speed_up:.2f}x |",
        f"| grid throughput / ({args.cpus} x sequential throughput) | {speed_up / args.cpus:.2f} |",
        f"| Ray overhead per trial: slots x grid wall - runs' own wall, per trial (s) | {trial_overhead:.1f} |",
        f"| Ray overhead per round: a run's time outside select and train per round, grid minus sequential (s)"
        f" | {per_round:.2f} |",
    ]
    write_results(args.out, "grid", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
