"""What verifying feature entries costs next to what reading and writing them cost anyway.

    python -m bench.feature_verify                      # 262,144 x 384 float16 rows (192 MiB)
    python -m bench.feature_verify --rows 1.28M --dim 1024   # ImageNet at D=1024: 2.6 GB

One synthetic entry, all steps side by side in one run, each the median of ``--repeat``:

- write: ``np.save`` then rename (how the cache wrote before entries were hashed) against
  the cache's write (rows hashed as they go by, fsync, rename, the hash record);
- open a local hit: ``np.load`` memory-mapped (no check) against the cache's open of a file
  whose status is as recorded (header and status only), and of one ``touch``-ed since (its
  status changed, so it is hashed once, in blocks);
- a pass over every row (float32 row blocks summed), which a run makes in its first round anyway.

The file sits in the page cache throughout (it was just written): the hash pass is CPU, the
cost a cold file adds to it is that of the pass a run makes anyway. Results go to
bench/results/feature_verify_<host>.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from bench import command, parse_size, write_results
from raysvc.chunks import COPY_ROWS
from raysvc.feature_settings import FeatureSettings
from raysvc.featurecache import FeatureCache


def _seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _blocks(features: np.ndarray):
    return (features[start : start + COPY_ROWS] for start in range(0, len(features), COPY_ROWS))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="262144", help="entry rows (10k, 1.28M)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    rows = parse_size(args.rows)
    features = np.random.default_rng(0).standard_normal((rows, args.dim), dtype=np.float32).astype(np.float16)
    with tempfile.TemporaryDirectory() as root:
        cache = FeatureCache(FeatureSettings(cache_dir=root, dtype="float16"), progress="off")
        key = "bench"
        plain = os.path.join(root, "plain.npy")

        def save_plain():
            with open(plain + ".tmp", "wb") as fh:
                np.save(fh, features)
            os.replace(plain + ".tmp", plain)

        # the cache's own write and open (private: the public path needs a dataset and a backbone)
        timings = {
            "write: np.save + rename (unverified)": _seconds(save_plain, args.repeat),
            "write: cache (hash + fsync + rename + record)": _seconds(
                lambda: cache._write(key, features.shape, features.dtype, _blocks(features)), args.repeat),
            "open: np.load mmap (unverified)": _seconds(lambda: np.load(plain, mmap_mode="r"), args.repeat),
            "open: cache, status as recorded": _seconds(lambda: cache._open_local(key), args.repeat),
        }

        def open_touched():
            os.utime(cache.path(key))
            return cache._open_local(key)

        timings["open: cache, touched (hashed once)"] = _seconds(open_touched, args.repeat)
        entry = cache._open_local(key)
        assert entry is not None and np.array_equal(entry.features, features)

        def one_pass():
            total = 0.0
            for block in _blocks(entry.features):
                total += float(np.asarray(block, dtype=np.float32).sum())
            return total

        timings["a pass over every row (float32 blocks)"] = _seconds(one_pass, args.repeat)
    size = features.nbytes
    reference = timings["a pass over every row (float32 blocks)"]
    lines = [
        f"# Verifying feature entries: {rows:,} x {args.dim} float16 ({size / 2**20:,.0f} MiB)",
        "",
        f"{command('bench.feature_verify', argv)}; median of {args.repeat}; file in the page cache.",
        "",
        "| step | seconds | GB/s | x a pass over every row |",
        "| --- | ---: | ---: | ---: |",
    ]
    for step, seconds in timings.items():
        rate = f"{size / seconds / 1e9:.2f}" if seconds > 1e-3 else "-"
        lines.append(f"| {step} | {seconds:.4f} | {rate} | {seconds / reference:.2f} |")
    write_results(args.out, "feature_verify", lines)


if __name__ == "__main__":
    main()
