"""Encoding throughput: the single-process loop against Ray Data with 1 and 2 encoder actors.

    python -m bench.encode                  # all 10,000 Animal-MNIST images at 112 px, conse-lite0
    python -m bench.encode --limit 2000     # a quicker look

Every variant encodes the same images into a fresh float16 feature cache through
:class:`raysvc.featurecache.FeatureCache` (``encoder="local"`` or ``"ray-data"``), and its
key and features are checked against the single-process ones. images/s counts the whole
pass, Ray Data's start (the actors loading the backbone) included; "after first rows"
leaves that start out. Where Ray Data's time goes comes from its per-operator stats: the
decode tasks' and the encoder actors' busy seconds. Ray gets one logical CPU more than
the machine has cores, so that two 1-CPU encoder actors leave a slot for the decode
tasks; physically they all share the cores, as the single process's threads do.
Results go to bench/results/encode_<host>.md.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time

import numpy as np
import torch

from bench import command, host, write_results
from raysvc.backbones import BackboneRef
from raysvc.datasets import load_dataset
from raysvc.feature_settings import FeatureSettings
from raysvc.featurecache import FeatureCache

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def operator_seconds(stats: str) -> dict[str, dict[str, float]]:
    """Per operator of Ray Data's stats text: tasks, summed remote wall and cpu seconds."""
    out = {}
    for block in re.split(r"\n(?=Operator \d+ )", stats):
        head = re.match(r"Operator \d+ (\S+): (\d+) tasks executed", block)
        if not head:
            continue
        row = {"tasks": float(head.group(2))}
        for what in ("wall", "cpu"):
            found = re.search(rf"Remote {what} time: .*?([\d.]+)(us|ms|s|min|h) total", block)
            row[what] = float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")
        out[head.group(1)] = row
    return out


def encode(dataset, ref: BackboneRef, **settings) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        store = FeatureCache(FeatureSettings.parse({"cache_dir": cache, "dtype": "float16", **settings}, "bench"),
                             progress="off")
        load = os.getloadavg()[0]
        start = time.perf_counter()
        encoded = store.encode(dataset, ref)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "load": load, "key": encoded.key, "source": encoded.source,
                "features": np.array(encoded.image_features), "report": dict(encoded.encode_report)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="encode only the first N images (default: all 10,000)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile (for the header)")
    args = parser.parse_args(argv)

    dataset = load_dataset("animal-mnist")
    if args.limit:
        dataset = dataset.subset(np.arange(min(args.limit, len(dataset))))
    n = len(dataset)
    ref = BackboneRef.named("conse-lite0", args.image_size)
    ref.load()  # once, before any variant is timed
    cores = os.cpu_count() or 1
    load_start = os.getloadavg()
    results: dict[str, dict] = {}
    default_threads = torch.get_num_threads()
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        name = f"single process, {threads} torch thread{'s' if threads > 1 else ''}"
        results[name] = encode(dataset, ref, encoder="local", batch_size=args.batch_size)
        print(f"{name}: {n / results[name]['seconds']:.1f} images/s", flush=True)
    torch.set_num_threads(default_threads)

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=cores + 1, include_dashboard=False, log_to_driver=False)
    try:
        for actors in (1, 2):
            name = f"Ray Data, {actors} encoder actor{'s' if actors > 1 else ''} x 1 thread"
            results[name] = encode(dataset, ref, encoder="ray-data", batch_size=args.batch_size,
                                   ray_data={"actors": actors, "threads": 1})
            print(f"{name}: {n / results[name]['seconds']:.1f} images/s", flush=True)
    finally:
        ray.shutdown()
    load_end = os.getloadavg()

    reference_name = next(iter(results))
    reference = results[reference_name]
    best_single = max((r for k, r in results.items() if k.startswith("single")), key=lambda r: n / r["seconds"])
    lines = [
        f"# Encoding benchmark on {host()}",
        "",
        command("bench.encode", argv),
        "",
        f"{n} Animal-MNIST images at {args.image_size} px through conse-lite0, float16 features, batches of "
        f"{args.batch_size}; {cores} CPU cores. Load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{x:.2f}' for x in load_start)}, at the end {', '.join(f'{x:.2f}' for x in load_end)}; "
        f"the `load` column is the 1-minute load average when each variant started (its own work adds up to "
        f"{cores}). Ray: a local instance with {cores + 1} logical CPUs, decode tasks 1 CPU each."
        + (f" Meanwhile: {args.note}." if args.note else ""),
        "",
        "| variant | seconds | images/s | images/s after first rows | load | same key | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        first = r["report"].get("first_rows_seconds")
        steady = f"{(n - args.batch_size) / (r['seconds'] - first):.1f}" if first and r["seconds"] > first else "-"
        diff = float(np.abs(r["features"].astype(np.float32) - reference["features"].astype(np.float32)).max())
        lines.append(f"| {name} | {r['seconds']:.1f} | {n / r['seconds']:.1f} | {steady} | {r['load']:.2f} | "
                     f"{'yes' if r['key'] == reference['key'] else 'NO'} | {diff:.2e} |")
    lines += ["", f"max abs diff against `{reference_name}`; float16 rounding of a unit-vector component is "
                  f"at most {2.0**-12:.1e} (neighbouring values below 1 are at most {2.0**-11:.1e} apart).", ""]

    one, two = (results[k] for k in results if k.startswith("Ray Data"))
    speedup = one["seconds"] / two["seconds"]
    versus = best_single["seconds"] / two["seconds"]
    first = two["report"]["first_rows_seconds"]
    steady = (best_single["seconds"] / n) / ((two["seconds"] - first) / (n - args.batch_size))
    lines += [
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| Ray Data: 2 actors >= 1.5x one actor | {speedup:.2f}x | {'yes' if speedup >= 1.5 else 'no'} |",
        f"| Ray Data with 2 actors >= the single-process path (its best thread count) | {versus:.2f}x | "
        f"{'yes' if versus >= 1.0 else 'no'} |",
        f"| (the same, leaving out Ray Data's start of {first:.1f} s) | {steady:.2f}x | - |",
        "",
        "## Where Ray Data's time goes",
        "",
        "Busy seconds summed over tasks (decode) or over the actors' batches (encode); cpu seconds are what "
        "those processes got of a core meanwhile. The start is the time until the first encoded rows reached the "
        "caller: worker processes and actors starting (each actor unpickles the caller's backbone) and the first "
        "batch.",
        "",
        "| variant | wall s | start s | decode tasks | decode busy s | decode cpu s | encode batches | "
        "encode busy s | encode cpu s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if not r["report"]:
            continue
        ops = operator_seconds(str(r["report"]["stats"]))
        dec = ops.get("MapBatches(decode)", {})
        enc = ops.get("MapBatches(Encoder)", {})
        lines.append(
            f"| {name} | {r['seconds']:.1f} | {r['report']['first_rows_seconds']:.1f} | {dec.get('tasks', 0):.0f} | "
            f"{dec.get('wall', float('nan')):.1f} | {dec.get('cpu', float('nan')):.1f} | {enc.get('tasks', 0):.0f} | "
            f"{enc.get('wall', float('nan')):.1f} | {enc.get('cpu', float('nan')):.1f} |")
    write_results(args.out, "encode", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
