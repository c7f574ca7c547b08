"""Training where the compute is: CoOp steps/s and student images/s on 1 and 2 Ray Train
workers (or in-process on CPU and CUDA), the accuracy of data-parallel students, and a KD
round's peak memory at two pool sizes.

    python -m bench.train                                   # every part, CPU, Ray Train 1 and 2 workers
    python -m bench.train --parts student --student-steps 4
    python -m bench.train --parts coop,student --devices cuda,cpu --workers local   # bench/gpu.sh

Parts (each writes bench/results/train_<part>_<host>.md):

- ``encode``: open_clip ViT-B-32 (random weights) image encoding, batches of 256 random 224-px
  images through ``Backbone.encode_images`` on each device: images/s (preprocessing apart).
- ``coop``: :func:`raysvc.learners.coop.train_coop` with open_clip ViT-B-32 (random weights),
  100 classes, 16 random class-specific context vectors (``variant=official``: batch 32),
  ``--coop-steps`` steps on synthetic unit-norm image features. steps/s from the function's
  own clock (Ray Train's start-up left out). CoOp trains on one worker whatever is asked, so
  its 2-worker column is one worker's (the runner says so in a run's manifest).
- ``student``: :func:`raysvc.learners.kd.train_student`, ResNet-18 (random weights) at 224 px,
  the DHO loss, the official schedule (64 labeled + 64 unlabeled images a step), images read
  from PNG files (Animal-MNIST images written to a folder, ``--student-pool`` of them the pool)
  by the streaming loader in the training process (``decode_workers=0``: decoding shares the
  worker's one thread); images/s = images trained / the function's training seconds.
- ``accuracy``: kd-zeroshot students (efficientnet-lite0, 64 px, official schedule with
  ``repeat=--accuracy-repeat``, 2 labels per class) on emoji, ``--seeds`` seeds on 1 and on 2
  workers: the test accuracy (heads mixed as the learner predicts) of each, so the 2-worker
  runs can be read against the 1-worker seeds' spread.
- ``table`` (after the others, for bench/gpu.sh): one table of every strategy's
  ``bench.selection`` time at 1.28M on CUDA (read from bench/results/selection_<host>.csv) and
  the encoding, CoOp and student rates of this invocation, CUDA against CPU.
- ``memory``: ``raysvc run`` of one KD round (kd-zeroshot, official schedule with ``repeat =
  --memory-repeat``, 160-px student, random strategy) on Animal-MNIST at ``--per-class`` 250
  and 1000, each a subprocess whose process tree is sampled every 0.2 s: the peak of the
  summed resident set (VmRSS) and of the summed proportional set (Pss: a page shared by forked
  processes counted once). The feature cache is filled by an earlier run, so the measured run
  encodes nothing.

Ray Train workers get one CPU and one torch thread each (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import command, host, write_results

ROOT = Path(__file__).resolve().parents[1]


def _train(workers: str, fn, payload: dict, data_parallel: bool) -> dict:
    """``fn(payload)`` on a runner made for this call and closed after it: ``local``, in this
    process; else a Ray Train runner with that many 1-CPU workers."""
    from raysvc.learners import LocalRunner
    from raysvc.service.scaling import RayTrainOptions
    from raysvc.service.train import RayTrainRunner

    if workers == "local":
        runner = LocalRunner()
    else:
        runner = RayTrainRunner(RayTrainOptions(num_workers=int(workers), resources_per_worker={"CPU": 1}))
    try:
        return runner.run(fn, payload, data_parallel=data_parallel)
    finally:
        runner.close()


def _init_ray(workers: list[str]) -> None:
    import ray

    if any(w != "local" for w in workers) and not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        n = max(int(w) for w in workers if w != "local")
        env = {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}
        ray.init(num_cpus=n, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)


def _load():
    """``uptime``'s 1-minute load average: what else ran on the machine meanwhile."""
    return os.getloadavg()[0]


def _record(args, part: str, device: str, rate: float) -> None:
    """A rate measured in this invocation, for the ``table`` part."""
    args.measured.setdefault(part, {})[device] = rate


# ------------------------------------------------------------------ encode
def encode_part(args) -> list[str]:
    import torch

    from raysvc.backbones import BackboneRef

    backbone = BackboneRef.named("open_clip:ViT-B-32:random").load()
    pixels = torch.randn(256, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    lines = ["| device | batches of 256 | seconds | images/s | load |", "|---|---|---|---|---|"]
    for device in args.devices:
        torch.set_num_threads(args.threads)
        backbone.to(device)
        batch = pixels.to(device)
        with torch.no_grad():
            backbone.encode_images(batch)  # warm-up: kernels, allocator
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.encode_batches):
                out = backbone.encode_images(batch)
            out.cpu()
        seconds = time.perf_counter() - start
        rate = args.encode_batches * 256 / seconds
        _record(args, "encode", device, rate)
        lines.append(f"| {device} | {args.encode_batches} | {seconds:.1f} | {rate:.1f} | {_load():.1f} |")
        print(lines[-1], flush=True)
    backbone.to("cpu")
    return ["open_clip ViT-B-32 (random weights), float32, random 224-px batches of 256 (preprocessing apart).",
            "", *lines]


# ------------------------------------------------------------------ coop
def coop_part(args) -> list[str]:
    import torch

    from raysvc.backbones import BackboneRef
    from raysvc.learners.coop import CoOpOptions, train_coop

    backbone = BackboneRef.named("open_clip:ViT-B-32:random")
    rng = np.random.default_rng(0)
    n = 32 * args.coop_steps  # one epoch of batches of 32
    features = rng.standard_normal((n, 512)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    text = rng.standard_normal((100, 512)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    lines = ["| device | workers | steps | seconds | steps/s | load |", "|---|---|---|---|---|---|"]
    for device in args.devices:
        for workers in args.workers:
            payload = {"backbone": backbone, "classnames": [f"class {i}" for i in range(100)], "features": features,
                       "labels": np.arange(n) % 100, "text_features": text, "seed": 0,
                       "options": CoOpOptions(variant="official", epochs=1, warmup_epochs=0, device=device)}
            torch.set_num_threads(args.threads)
            out = _train(workers, train_coop, payload, data_parallel=False)
            _record(args, "coop", device, out["steps"] / out["train_seconds"])
            lines.append(f"| {out['device']} | {workers} | {out['steps']} | {out['train_seconds']:.1f} "
                         f"| {out['steps'] / out['train_seconds']:.3f} | {_load():.1f} |")
            print(lines[-1], flush=True)
    return [
        "open_clip ViT-B-32 (random weights), 100 classes, 16 class-specific random context vectors, batches of 32,",
        f"{args.coop_steps} optimiser steps (train_coop's own clock). CoOp trains on one worker whatever is asked.",
        "", *lines]


# ------------------------------------------------------------------ student
def png_folder(root: Path, n: int) -> Path:
    """``n`` seeded Animal-MNIST images written as PNG files, one sub-folder per class (what a
    real image folder is)."""
    from raysvc.datasets import load_dataset
    from raysvc.registry import DATASETS

    dataset = load_dataset(DATASETS.part("animal-mnist"))
    folder = root / "animal-mnist-png"
    for i in np.random.default_rng(0).choice(len(dataset), n, replace=False):
        label = int(dataset.labels[i])
        out = folder / dataset.classnames[label] / f"{i:05d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        dataset.load(i).save(out)
    return folder


def student_part(args) -> list[str]:
    import torch

    from raysvc.datasets.folder import image_folder
    from raysvc.learners.kd import KDOptions, StudentSource, train_student

    with tempfile.TemporaryDirectory(prefix="raysvc-bench-") as tmp:
        dataset = image_folder(png_folder(Path(tmp), args.student_pool + 16))
        order = np.random.default_rng(0).permutation(len(dataset))
        pool, test = order[: args.student_pool], order[args.student_pool :]
        labeled = np.arange(0, len(pool), max(1, len(pool) // 36))[:36]  # 36 labels: one batch of 64 padded
        teacher = np.random.default_rng(1).standard_normal((len(pool), dataset.n_classes)).astype(np.float32)
        lines = ["| device | workers | steps | images | train s | images/s | inference s | load |",
                 "|---|---|---|---|---|---|---|---|"]
        for device in args.devices:
            for workers in args.workers:
                options = KDOptions(student="resnet18", student_weights="random", image_size=224,
                                    repeat=args.student_steps, device=device, decode_workers=args.decode_workers)
                payload = {"options": options, "n_classes": dataset.n_classes,
                           "images": StudentSource(dataset, pool, test), "labeled": labeled,
                           "labels": dataset.labels[pool[labeled]], "teacher_logits": teacher, "seed": 0, "epochs": 0}
                torch.set_num_threads(args.threads)
                out = _train(workers, train_student, payload, data_parallel=True)
                images = sum(out["images"])
                _record(args, "student", device, images / out["train_seconds"])
                lines.append(f"| {out['device']} | {workers} | {out['steps']} | {images} "
                             f"| {out['train_seconds']:.1f} | {images / out['train_seconds']:.2f} "
                             f"| {out['inference_seconds']:.1f} | {_load():.1f} |")
                print(lines[-1], flush=True)
    return [
        "ResNet-18 (random weights) at 224 px, DHO loss, official schedule (64 labeled + 64 unlabeled images a step,",
        f"{args.student_steps} steps), Animal-MNIST PNG files decoded as they stream; pool {args.student_pool}, "
        "test 16. "
        "images/s = images trained / training seconds (inference over pool and test apart).",
        "", *lines]


# ------------------------------------------------------------------ accuracy
def accuracy_part(args) -> list[str]:
    import torch

    from raysvc.experiment import assemble
    from raysvc.feature_settings import FeatureSettings
    from raysvc.featurecache import FeatureCache
    from raysvc.learners.kd import KDOptions, StudentSource, combine_heads, train_student
    from raysvc.spec import RunSpec

    exp = assemble(RunSpec(dataset="emoji").resolve(),
                   FeatureCache(FeatureSettings(cache_dir=args.cache), progress="off").encode)
    n_classes = exp.dataset.n_classes
    labeled = np.concatenate([np.flatnonzero(exp.pool_labels == c)[:2] for c in range(n_classes)])
    options = KDOptions(repeat=args.accuracy_repeat, image_size=64, device="cpu")
    payload = {"options": options, "n_classes": n_classes, "images": StudentSource(exp.dataset, exp.pool, exp.test),
               "labeled": labeled, "labels": exp.pool_labels[labeled],
               "teacher_logits": exp.encoded.zeroshot_logits(exp.pool), "epochs": 0}
    zeroshot = float((exp.encoded.zeroshot_probs(exp.test).argmax(1) == exp.test_labels).mean())
    lines = ["| workers | seed | steps | test accuracy | train s | load |", "|---|---|---|---|---|---|"]
    accs: dict[str, list[float]] = {}
    for workers in [w for w in args.workers if w != "local"]:
        for seed in args.seeds:
            out = _train(workers, train_student, {**payload, "seed": seed}, data_parallel=True)
            probs = combine_heads(torch.as_tensor(out["test"]["z_ce"]), torch.as_tensor(out["test"]["z_kd"]),
                                  options.mixing_alpha("zeroshot"), options.beta)
            acc = float((probs.argmax(1).numpy() == exp.test_labels).mean())
            accs.setdefault(workers, []).append(acc)
            lines.append(f"| {workers} | {seed} | {out['steps']} | {acc:.3f} | {out['train_seconds']:.1f} "
                         f"| {_load():.1f} |")
            print(lines[-1], flush=True)
    summary = [f"| {w} workers | {np.mean(a):.3f} | {np.std(a, ddof=1) if len(a) > 1 else float('nan'):.3f} "
               f"| {min(a):.3f}-{max(a):.3f} |" for w, a in accs.items()]
    return [
        f"kd-zeroshot on emoji ({len(exp.pool)} pool, {len(exp.test)} test, zero-shot teacher {zeroshot:.3f}), "
        f"efficientnet-lite0 at 64 px, official schedule with repeat={args.accuracy_repeat} "
        f"({len(labeled)} labels: 2 per class), seeds {', '.join(map(str, args.seeds))}.",
        "", *lines, "", "| | mean | sd over seeds | range |", "|---|---|---|---|", *summary]


# ------------------------------------------------------------------ memory
def _tree(root: int) -> list[int]:
    """``root`` and every process descending from it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_memory(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; its process tree's peak summed VmRSS and Pss (MB), sampled every 0.2 s, and
    the seconds it took."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0}
    start = time.perf_counter()

    def sample():
        while proc.poll() is None:
            pids = _tree(proc.pid)
            rss = sum(_kb(f"/proc/{p}/status", "VmRSS") for p in pids) / 1024
            pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in pids) / 1024
            peak.update(rss_mb=max(peak["rss_mb"], rss), pss_mb=max(peak["pss_mb"], pss),
                        processes=max(peak["processes"], len(pids)))
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    output = proc.communicate()[0]
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    return {**peak, "seconds": time.perf_counter() - start, "output": output}


def memory_part(args) -> list[str]:
    raysvc = str(Path(sys.executable).with_name("raysvc"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "RAY_AUTH_MODE": "disabled"}
    cache = args.cache or tempfile.mkdtemp(prefix="raysvc-bench-cache-")
    common = ["--dataset", "animal-mnist", "--strategy", "random", "--rounds", "1", "--cache", cache]
    lines = ["| --per-class | pool | peak RSS, tree (MB) | peak PSS, tree (MB) | processes | seconds | load |",
             "|---|---|---|---|---|---|---|"]
    measured = {}
    for per_class in args.per_class:
        # fill the feature cache first: the measured run then encodes nothing
        subprocess.run([raysvc, "run", *common, "--per-class", str(per_class), "--learner", "coop", "--epochs", "1"],
                       env=env, check=True, capture_output=True)
        cmd = [raysvc, "run", *common, "--per-class", str(per_class), "--learner", "kd-zeroshot",
               "--learner-opt", "image_size=160", "--learner-opt", f"decode_workers={args.decode_workers}",
               "--learner-opt", f"repeat={args.memory_repeat}"]
        peak = peak_memory(cmd, env)
        pool = int(0.8 * 10 * per_class)
        measured[per_class] = (pool, peak)
        lines.append(f"| {per_class} | {pool} | {peak['rss_mb']:.0f} | {peak['pss_mb']:.0f} | {peak['processes']} "
                     f"| {peak['seconds']:.0f} | {_load():.1f} |")
        print(lines[-1], flush=True)
    small, large = min(measured), max(measured)
    extra_pixels = (measured[large][0] - measured[small][0]) * 3 * 160 * 160 / 2**20
    notes = []
    for key, name in (("rss_mb", "RSS"), ("pss_mb", "PSS")):
        grown = measured[large][1][key] - measured[small][1][key]
        notes.append(f"- {name}: the larger pool's round peaks {grown:.0f} MB above the smaller's; half the "
                     f"extra {measured[large][0] - measured[small][0]} pool images' decoded 160-px pixels is "
                     f"{extra_pixels / 2:.0f} MB (all of them: {extra_pixels:.0f} MB).")
    return [
        "`raysvc run --dataset animal-mnist --strategy random --rounds 1 --learner kd-zeroshot --learner-opt "
        f"image_size=160 --learner-opt repeat={args.memory_repeat}` (official schedule: 10 labels, "
        f"{args.memory_repeat} steps of 64 + 64 images; 200 by default), features cached; the process tree sampled "
        f"every 0.2 s; decode_workers={args.decode_workers}, {args.threads} torch thread(s).",
        "", *lines, "", *notes]


# ------------------------------------------------------------------ table
def table_part(args) -> list[str]:
    import csv

    from bench.selection import RESULTS, host_name

    lines = ["| measurement | CUDA | CPU | CUDA / CPU |", "|---|---|---|---|"]
    path = RESULTS / f"selection_{host_name()}.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    for row in rows:
        if row["device"] == "cuda" and row["n"] == "1280000":
            time_s = f"{float(row['time_s']):.1f} s" if row["time_s"] else row["status"]
            lines.append(f"| bench.selection {row['strategy']} at 1.28M x {row['dim']} ({row['dtype']}) | {time_s} "
                         f"| | |")
    if not rows:
        lines.append(f"| bench.selection at 1.28M | no result ({path} missing) | | |")
    units = {"encode": "open_clip ViT-B-32 encoding, images/s", "coop": "CoOp optimiser steps/s",
             "student": "student (ResNet-18, 224 px) images/s"}
    for part, name in units.items():
        got = args.measured.get(part, {})
        cuda, cpu = got.get("cuda"), got.get("cpu")
        ratio = f"{cuda / cpu:.1f}x" if cuda and cpu else ""
        lines.append(f"| {name} | {'' if cuda is None else f'{cuda:.2f}'} | {'' if cpu is None else f'{cpu:.2f}'} "
                     f"| {ratio} |")
    return [f"CPU rows use {args.threads} torch threads.", "", *lines]


PARTS = {"encode": encode_part, "coop": coop_part, "student": student_part, "accuracy": accuracy_part,
         "memory": memory_part, "table": table_part}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="coop,student,accuracy,memory")
    parser.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda")
    parser.add_argument("--workers", default="1,2", help="comma-separated Ray Train worker counts, or local")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of an in-process (local) run")
    parser.add_argument("--encode-batches", type=int, default=4)
    parser.add_argument("--coop-steps", type=int, default=10)
    parser.add_argument("--student-steps", type=int, default=4)
    parser.add_argument("--student-pool", type=int, default=128)
    parser.add_argument("--decode-workers", type=int, default=0)
    parser.add_argument("--accuracy-repeat", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-class", default="250,1000")
    parser.add_argument("--memory-repeat", type=int, default=200, help="the official schedule's repeat in the "
                        "memory runs (its steps; the peak does not grow with them)")
    parser.add_argument("--cache", help="feature cache (default: a fresh temporary one)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    args.devices = args.devices.split(",")
    args.workers = args.workers.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.per_class = [int(p) for p in args.per_class.split(",")]
    args.measured = {}
    if args.cache is None and "accuracy" in args.parts:
        args.cache = tempfile.mkdtemp(prefix="raysvc-bench-cache-")
    parts = args.parts.split(",")
    if {"coop", "student", "accuracy"} & set(parts):
        _init_ray(args.workers)
    for part in parts:
        body = PARTS[part](args)
        write_results(args.out, f"train_{part}", [
            f"# Training benchmark, {part}, on {host()}", "", command("bench.train", argv),
            f"{os.cpu_count()} CPUs; load = the 1-minute load average when the row finished (other work on the "
            "machine).", "", *body])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
