"""A whole active-learning run at ImageNet size, stage by stage, with its peak memory.

    python -m bench.scale                                  # 1.28M pool, 50k test, 1000 classes, 8 rounds
    python -m bench.scale --pool 100k --test 10k --rounds 3   # a quick look

Part 1, CB+SQ with CoOp: the pool is synthetic and seeded, no images: the 1000 ImageNet
class prompts ("a photo of a <class>.") are embedded by the real conse-lite0 text encoder
(MiniLM, 384-d), and each image embedding is its class's prompt embedding plus noise,
renormalised, stored as float16 like a large feature store entry. Zero-shot
probabilities follow from those embeddings as on real data. The loop itself is the real
one (:func:`raysvc.loop.run_loop`): every round selects with ``cbsq`` (official variant:
K = 4C + n_labeled, so up to ~12 000 clusters), trains CoOp on the cached features of the
labeled set through the real MiniLM prompt encoder (``--epochs`` epochs of batches of
``--batch-size``), and evaluates on the test set. Reported per round: selection, training
and the rest (evaluation, records) in seconds, and the process's peak resident memory
(VmHWM) against the float16 pool.

Part 2, ActiveKD, whose student trains on images: at the same pool size, the selection
(``pcoreset`` on the teacher's probabilities, kept as float16) and the zero-shot teacher
(probabilities of every pool image, computed in chunks), and the student's cost per
image per epoch measured on real images (Animal-MNIST, efficientnet-lite0 at 64 px, DHO
with the zero-shot teacher), extrapolated to the paper's 100k ImageNet subsample.

Results go to bench/results/scale_<host>.md.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from bench import command, host, parse_size, status_kb, write_results

GB = 1024**3


def rss_gb(key: str = "VmHWM") -> float:
    kb = status_kb(key)
    return float("nan") if kb is None else kb * 1024 / GB


def synthetic_features(path: Path, labels: np.ndarray, text: np.ndarray, noise: float, seed: int,
                       chunk: int = 65_536) -> np.ndarray:
    """(N, D) float16 unit embeddings near their class's text embedding, on disk (memory-mapped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        rng = np.random.default_rng(seed)
        tmp = path.with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(labels), text.shape[1]))
        for start in range(0, len(labels), chunk):
            y = labels[start : start + chunk]
            x = text[y] + noise * rng.standard_normal((len(y), text.shape[1])).astype(np.float32) / math.sqrt(
                text.shape[1])
            out[start : start + len(y)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        os.replace(tmp, path)
    return np.asarray(np.load(path, mmap_mode="r"))


def synthetic_experiment(n_pool: int, n_test: int, noise: float, seed: int, cache: Path, budget: int):
    """An Experiment over synthetic embeddings of the 1000 ImageNet classes (no images)."""
    from raysvc._compat import import_torchvision

    import_torchvision()  # before open_clip, which imports it
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from raysvc.backbones import BackboneRef
    from raysvc.datasets import ImageDataset
    from raysvc.encoded import EncodedDataset, encode_class_prompts
    from raysvc.errors import DatasetError
    from raysvc.experiment import Experiment

    ref = BackboneRef.named("conse-lite0")
    backbone = ref.load()
    prompts = [(f"a photo of a {name}.",) for name in IMAGENET_CLASSNAMES]
    text, text_raw = encode_class_prompts(backbone, prompts)
    n = n_pool + n_test
    labels = np.random.default_rng(seed).integers(len(IMAGENET_CLASSNAMES), size=n)
    features = synthetic_features(cache / f"scale-n{n}-d{text.shape[1]}-s{seed}-noise{noise:g}.npy",
                                  labels, text, noise, seed)

    def no_images(index: int):
        raise DatasetError("bench.scale's pool is synthetic: it has embeddings, no images")

    dataset = ImageDataset("imagenet-synthetic", tuple(IMAGENET_CLASSNAMES), labels, f"synthetic-{n}-{seed}",
                           no_images, test_indices=np.arange(n_pool, n))
    encoded = EncodedDataset(features, text, text_raw, labels, backbone.logit_scale, f"synthetic-{n}-{seed}", 0.0)
    return Experiment(dataset, encoded, ref, np.arange(n_pool), np.arange(n_pool, n), budget)


def cbsq_run(experiment, args) -> tuple[list[dict], list[dict]]:
    from raysvc.datasets.base import DatasetSource
    from raysvc.learners import LEARNERS
    from raysvc.loop import run_loop
    from raysvc.registry import Part
    from raysvc.spec import RunPlan, RunSpec
    from raysvc.strategies import STRATEGIES

    learner = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    spec = RunSpec(dataset="imagenet-synthetic", strategy="cbsq", learner="coop", rounds=args.rounds,
                   budget=args.budget, seed=0, learner_params=learner)
    # a synthetic pool is no registered dataset: its plan is put together from the parts by hand
    plan = RunPlan(spec=spec, run_id=spec.run_id,
                   dataset=Part("dataset", spec.dataset, DatasetSource, DatasetSource.Options()),
                   strategy=STRATEGIES.part("cbsq"), learner=LEARNERS.part("coop", learner),
                   backbone=experiment.backbone)
    marks = []
    last = {"t": time.perf_counter()}

    def on_round(row, state):
        now = time.perf_counter()
        marks.append({"wall": now - last["t"], "peak_gb": rss_gb()})
        last["t"] = now
        print(f"round {row['round']}: select {row['select_seconds']:.0f}s, train {row['train_seconds']:.0f}s, "
              f"test_acc {row['test_acc']:.3f}, {row['n_queried']} queried, {row['n_pseudo']} pseudo, "
              f"peak {marks[-1]['peak_gb']:.2f} GB", flush=True)

    rows = run_loop(plan, experiment, on_round=on_round)
    return rows, marks


def kd_steps(experiment, args) -> dict:
    """ActiveKD at pool scale: pcoreset selection on float16 teacher probabilities, and the teacher pass."""
    from raysvc.strategies import Pool, make_strategy

    pool, n = experiment.pool, len(experiment.pool)
    start = time.perf_counter()
    probs = np.empty((n, experiment.dataset.n_classes), dtype=np.float16)
    for s in range(0, n, 16_384):  # the zero-shot teacher over the whole pool, kept as float16
        probs[s : s + 16_384] = experiment.encoded.zeroshot_probs(pool[s : s + 16_384])
    teacher_s = time.perf_counter() - start
    labeled = np.zeros(n, dtype=bool)
    labeled[np.random.default_rng(0).choice(n, experiment.dataset.n_classes, replace=False)] = True  # 1-shot start
    labels = np.where(labeled, experiment.dataset.labels[pool], -1)
    start = time.perf_counter()
    make_strategy("pcoreset").select(Pool(None, probs, labeled, labels), args.budget, seed=0)
    return {"teacher_s": teacher_s, "select_s": time.perf_counter() - start, "probs_gb": probs.nbytes / GB}


def student_cost(epochs: int = 1) -> dict:
    """Seconds per image per epoch of DHO student training, on real Animal-MNIST images."""
    from raysvc.experiment import assemble
    from raysvc.featurecache import FeatureCache
    from raysvc.learners import LocalRunner, make_learner
    from raysvc.spec import RunSpec

    spec = RunSpec(dataset="animal-mnist", per_class=50, learner="kd-zeroshot", rounds=1)
    experiment = assemble(spec.resolve(), FeatureCache(progress="off").encode)
    learner = make_learner("kd-zeroshot", experiment, {"variant": "pool-epochs", "epochs": epochs})
    positions = np.arange(experiment.dataset.n_classes)
    fit = learner.fit(positions, experiment.pool_labels[positions], seed=0, runner=LocalRunner())
    n = len(experiment.pool)
    return {"images": n, "train_s": fit["train_seconds"], "per_image_epoch_s": fit["train_seconds"] / (n * epochs),
            "inference_per_image_s": fit["inference_seconds"] / (n + len(experiment.test))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="1.28M")
    parser.add_argument("--test", default="50k")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--noise", type=float, default=4.5, help="image embedding noise around the class prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-kd", action="store_true")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "raysvc" / "bench-scale"))
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    import torch

    n_pool, n_test = parse_size(args.pool), parse_size(args.test)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.perf_counter()
    experiment = synthetic_experiment(n_pool, n_test, args.noise, args.seed, Path(args.cache), args.budget)
    setup_s = time.perf_counter() - t0
    base_gb = rss_gb("VmRSS")  # libraries and models loaded, the pool mapped but not yet read
    pool_gb = n_pool * experiment.encoded.image_features.shape[1] * 2 / GB
    print(f"pool {n_pool} x {experiment.encoded.image_features.shape[1]} float16 = {pool_gb:.2f} GB; set-up {setup_s:.0f}s",
          flush=True)
    rows, marks = cbsq_run(experiment, args)
    peak = max(m["peak_gb"] for m in marks)
    from raysvc.records import to_table

    start = time.perf_counter()
    to_table(rows)
    record_s = time.perf_counter() - start
    lines = [
        f"# A whole run at ImageNet size on {host()}",
        "",
        command("bench.scale", argv),
        "",
        f"torch threads {torch.get_num_threads()}; load average at the start {load}. Synthetic pool of "
        f"{n_pool} images and {n_test} test images over the 1000 ImageNet classes, "
        f"{experiment.encoded.image_features.shape[1]}-d conse-lite0 text space, stored float16 "
        f"({pool_gb:.2f} GB); zero-shot test accuracy {rows[0]['zeroshot_acc']:.3f}. "
        f"cbsq (official: K = 4C + n_labeled, C with nothing labeled), B = {args.budget}, CoOp "
        f"{args.epochs} epochs of batches of {args.batch_size} at lr {args.lr:g} through the MiniLM prompt encoder.",
        "",
        "| round | labeled | queried | pseudo | K | select (s) | train (s) | evaluate + record (s) | test acc | "
        "peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    n_labeled = 0
    for row, mark in zip(rows, marks):
        k = experiment.dataset.n_classes if n_labeled == 0 else 4 * experiment.dataset.n_classes + n_labeled
        rest = mark["wall"] - row["select_seconds"] - row["train_seconds"]
        lines.append(f"| {row['round']} | {row['n_labeled']} | {row['n_queried']} | {row['n_pseudo']} | {k} | "
                     f"{row['select_seconds']:.0f} | {row['train_seconds']:.0f} | {rest:.0f} | "
                     f"{row['test_acc']:.3f} | {mark['peak_gb']:.2f} |")
        n_labeled = row["n_labeled"]
    total = sum(m["wall"] for m in marks)
    lines += [
        "",
        f"Whole run {total:.0f} s (selection {sum(r['select_seconds'] for r in rows):.0f} s, training "
        f"{sum(r['train_seconds'] for r in rows):.0f} s). Peak resident memory {peak:.2f} GB = "
        f"{peak / pool_gb:.2f} x the float16 pool: the process's whole footprint, the pool's pages included "
        f"(memory-mapped, {pool_gb:.2f} GB once read), and {base_gb:.2f} GB of Python, torch, faiss and the "
        f"MiniLM and EfficientNet weights before the pool is read; above that, the run needed "
        f"{peak - base_gb:.2f} GB = {(peak - base_gb) / pool_gb:.2f} x the pool.",
    ]
    if not args.skip_kd:
        kd = kd_steps(experiment, args)
        cost = student_cost()
        per_round_100k = cost["per_image_epoch_s"] * 100_000 * 5
        lines += [
            "",
            "## ActiveKD steps at this pool size",
            "",
            "| step | seconds |",
            "|---|---|",
            f"| zero-shot teacher over the pool (float16 probabilities, {kd['probs_gb']:.2f} GB) | {kd['teacher_s']:.0f} |",
            f"| pcoreset selection of {args.budget} (1-shot start) | {kd['select_s']:.0f} |",
            f"| the run's records as one table ({len(rows)} rows) | {record_s:.3f} |",
            "",
            f"Student (efficientnet-lite0, 64 px, DHO with the zero-shot teacher, one torch process) on "
            f"{cost['images']} real Animal-MNIST images: {1000 * cost['per_image_epoch_s']:.1f} ms per image per "
            f"epoch, {1000 * cost['inference_per_image_s']:.2f} ms per image of inference. Extrapolated to the "
            f"paper's 100k ImageNet subsample at 5 epochs a round: {per_round_100k / 3600:.1f} h of training per "
            f"round on this CPU; on GPUs it is the stage that Ray Train's workers parallelise.",
        ]
    write_results(args.out, "scale", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
