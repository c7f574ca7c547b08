"""Ray's cost and gain: a grid on local Ray against the same cells one after another.

    python -m bench.grid                    # 8 cells (4 strategies x 2 seeds), 3 rounds, 2 CPUs
    python -m bench.grid --cells-per-trial 1 --checkpoint-seconds 0   # the grid as it ran before
    python -m bench.grid --cells 200 2000   # what a grid's size costs (see scale())

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
Results go to bench/results/grid_<host>.md; ``--cells`` measures instead how Tune's state
and the driver grow with the grid's size (bench/results/grid_scale_<host>.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench import command, host, status_kb, write_results
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


def folder_bytes(path: str | os.PathLike) -> int:
    """Bytes of the regular files under ``path`` (sockets and links not counted)."""
    return sum(f.lstat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def scale_grid(cells: int, root: Path, cache: str, cpus: int) -> dict:
    """``cells`` one-round cells (animal-mnist, 5 images per class, random, CoOp 1 epoch; one
    per seed), one trial each."""
    return {
        "name": f"scale-{cells}", "out": str(root / "results"), "storage_path": str(root / "tune"),
        "cells_per_trial": 1, "resources": {"cpu": 1}, "max_failures": 0, "max_concurrent_trials": cpus,
        "features": {"cache_dir": cache},
        "fixed": {"dataset": "animal-mnist", "strategy": "random", "rounds": 1, "per_class": 5,
                  "learner_params": {"epochs": 1}},
        "grid": {"seed": list(range(cells))},
    }


def scale_row(cells: int, stop_after: int, cache: str, cpus: int) -> dict:
    """One size of :func:`scale`, measured in this (fresh) process: the grid on a new local
    Ray, interrupted as Ctrl-C would (SIGINT: Tune saves its state and returns) once
    ``stop_after`` trials have completed."""
    import ray
    from ray import tune

    from raysvc.service.driver import run_grid
    from raysvc.service.gridspec import load_grid

    class Probe(tune.Callback):
        def __init__(self):
            self.first_start, self.completed = None, 0

        def on_trial_start(self, iteration, trials, trial, **info):
            if self.first_start is None:
                self.first_start = time.perf_counter()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.completed += 1
            if self.completed == stop_after:
                os.kill(os.getpid(), signal.SIGINT)

    root = Path(tempfile.mkdtemp(prefix="rsg", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        start = time.perf_counter()
        grid = load_grid(scale_grid(cells, root, cache, cpus))
        resolved = time.perf_counter() - start
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _temp_dir=str(root / "ray"))
        try:
            session = Path(ray._private.worker._global_node.get_session_dir_path())
            probe = Probe()
            rss_before = status_kb("VmRSS")
            start = time.perf_counter()
            result = run_grid(grid, verbose=0, callbacks=[probe])
            wall = time.perf_counter() - start
            rss_after, rss_peak = status_kb("VmRSS"), status_kb("VmHWM")
            session_bytes = folder_bytes(session)
        finally:
            ray.shutdown()
        experiment = Path(result.experiment_path)
        state = sorted(experiment.glob("experiment_state-*.json"))[-1]
        created = len(json.loads(state.read_text())["trial_data"])
        trials = [folder_bytes(d) for d in experiment.glob("trial_*") if d.is_dir()]
        return {
            "cells": cells, "created": created, "completed": probe.completed, "resolve": resolved,
            "first": probe.first_start - start, "per_trial_s": wall / max(probe.completed, 1),
            "state": state.stat().st_size, "state_per_trial": state.stat().st_size / created,
            "trial_mean": sum(trials) / len(trials), "trial_max": max(trials),
            "tune_total": folder_bytes(experiment), "session": session_bytes,
            "rss_before": rss_before / 1024, "rss_after": rss_after / 1024, "rss_peak": rss_peak / 1024,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def scale(args) -> int:
    """What a grid's size costs: for each size in ``--cells``, a grid of that many tiny cells
    (one trial each), run by a driver process of its own (``--row``) and stopped once
    ``--trials`` trials have completed. Reported per size: the time to resolve the grid and
    to start its first trial, the bytes of Tune's experiment state and of each trial's
    folder, the Ray session's bytes, the driver's memory. Columns that stay constant across
    sizes mean a trial costs the same whatever the grid's size."""
    from raysvc.service.gridspec import load_grid

    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # warm the feature cache once: no size pays for encoding
        first = load_grid(scale_grid(1, Path(tmp), args.cache, args.cpus)).plans[0]
        assemble(first, FeatureCache(FeatureSettings(cache_dir=args.cache), progress="off").encode)
        for cells in args.cells:
            row = Path(tmp) / f"row-{cells}.json"
            subprocess.run([sys.executable, "-m", "bench.grid", "--cells", str(cells), "--trials", str(args.trials),
                            "--cpus", str(args.cpus), "--cache", args.cache, "--row", str(row)], check=True)
            rows.append(json.loads(row.read_text()))
            print(rows[-1], flush=True)
    lines = [
        f"# Grid size benchmark on {host()}",
        "",
        command("bench.grid", args.argv),
        "",
        f"Grids of one-round cells (animal-mnist, 5 images per class, random, CoOp 1 epoch; one cell per seed, one "
        f"trial per cell), each run by a driver process of its own on a fresh local Ray with {args.cpus} CPUs and a "
        f"warm feature cache, interrupted (SIGINT, as Ctrl-C: Tune saves its state) once {args.trials} trials had "
        f"completed. Tune creates trials as slots free up, so its experiment state holds the trials created so "
        f"far. Load average before: {load_before}.",
        "",
        "| cells | trials created | completed | resolve grid (s) | first trial start (s) | s per completed trial "
        "| experiment state (KB) | state per created trial (KB) | trial folder, mean / max (KB) | Tune storage (KB) "
        "| Ray session (MB) | driver RSS before / after the grid, peak (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cells']} | {r['created']} | {r['completed']} | {r['resolve']:.1f} | {r['first']:.1f} "
            f"| {r['per_trial_s']:.2f} | {r['state'] / 1e3:.0f} | {r['state_per_trial'] / 1e3:.1f} "
            f"| {r['trial_mean'] / 1e3:.1f} / {r['trial_max'] / 1e3:.1f} | {r['tune_total'] / 1e3:.0f} "
            f"| {r['session'] / 1e6:.1f} | {r['rss_before']:.0f} / {r['rss_after']:.0f}, {r['rss_peak']:.0f} |")
    write_results(args.out, "grid_scale", lines)
    return 0


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
    parser.add_argument("--cells", nargs="+", type=int,
                        help="measure what the grid's size costs, at these sizes (see scale())")
    parser.add_argument("--trials", type=int, default=40, help="--cells: stop each grid after this many trials")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # --cells: measure one size here, its row to this file
    args = parser.parse_args(argv)
    args.argv = argv
    if args.cells:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if args.row:
            (cells,) = args.cells
            Path(args.row).write_text(json.dumps(scale_row(cells, args.trials, args.cache, args.cpus)))
            return 0
        return scale(args)

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

        # the workers inherit RAYSVC_CACHE from this process, through the raylet
        ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="rsb", dir=tmp))
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
