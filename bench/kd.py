"""ActiveKD benchmark: one round of student training split by stage, at growing pool sizes.

    python -m bench.kd                                  # pools of 400, 800, 1600, 3200 images
    python -m bench.kd --per-class 50,100 --learner kd-fewshot

For every pool size (Animal-MNIST subsampled to ``per_class`` images per class, 80% pool):

- teacher inference, once per dataset: the VLM encodes every image into a fresh feature
  cache (the zero-shot probabilities are a product with the class embeddings from then on);
- one round, after a 1-shot start plus one budget of random labels: the teacher's
  probabilities for the round (a lookup for the zero-shot teacher, a CLAP fit for the
  few-shot one), student forward/backward (DHO training, the ``pool-epochs`` schedule, images
  decoded as they stream), student inference over pool and test (what the next selection
  reads), and the selection itself. The committed table predates streaming: its decode
  column was the whole pool decoded up front.

Results go to bench/results/kd_<host>.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from bench import command, host, write_results
from raysvc.experiment import assemble, initial_labeled
from raysvc.feature_settings import FeatureSettings
from raysvc.featurecache import FeatureCache
from raysvc.learners import LocalRunner, make_learner
from raysvc.spec import RunSpec
from raysvc.strategies import Pool, make_strategy

STAGES = ("teacher_s", "forward_backward_s", "student_inference_s", "select_s")


def one_round(per_class: int, learner: str, strategy: str, student: str, epochs: int, seed: int) -> dict:
    config = RunSpec(dataset="animal-mnist", per_class=per_class, learner=learner, strategy=strategy)
    with tempfile.TemporaryDirectory() as cache:
        experiment = assemble(config.resolve(), FeatureCache(FeatureSettings(cache_dir=cache), progress="off").encode)
    n_classes = experiment.dataset.n_classes
    kd = make_learner(learner, experiment, {"variant": "pool-epochs", "student": student, "epochs": epochs})
    rng = np.random.default_rng(seed)
    start = initial_labeled(experiment.pool_labels, experiment.dataset.classnames, 1, seed)
    extra = rng.choice(np.setdiff1d(np.arange(len(experiment.pool)), start), n_classes, replace=False)
    labeled = np.sort(np.concatenate([start, extra]))
    fit = kd.fit(labeled, experiment.pool_labels[labeled], seed=seed, runner=LocalRunner())
    mask = np.zeros(len(experiment.pool), bool)
    mask[labeled] = True
    labels = np.where(mask, experiment.pool_labels, -1)
    pool = Pool(features=experiment.encoded.image_features[experiment.pool], probs=kd.predict_proba("pool"),
                labeled=mask, labels=labels, text_features=experiment.encoded.text_features,
                embeddings=kd.pool_embeddings(), round=2)
    t = time.perf_counter()
    make_strategy(strategy).select(pool, n_classes, seed=seed)
    row = {
        "pool": len(experiment.pool), "test": len(experiment.test), "encode_s": experiment.encoded.encode_seconds,
        "teacher_s": fit["teacher_seconds"],
        "forward_backward_s": fit["train_seconds"], "student_inference_s": fit["inference_seconds"],
        "select_s": time.perf_counter() - t,
    }
    row["round_s"] = sum(row[k] for k in STAGES)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", default="50,100,200,400", help="comma-separated images per class")
    parser.add_argument("--learner", default="kd-zeroshot", choices=["kd-zeroshot", "kd-fewshot", "no-distill"])
    parser.add_argument("--strategy", default="pcoreset")
    parser.add_argument("--student", default="efficientnet-lite0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    rows = [one_round(int(p), args.learner, args.strategy, args.student, args.epochs, args.seed)
            for p in args.per_class.split(",")]
    lines = [
        f"# ActiveKD benchmark on {host()}",
        "",
        command("bench.kd", argv),
        f"torch threads: {torch.get_num_threads()}; {args.learner}, student {args.student}, variant pool-epochs, "
        f"{args.epochs} epochs (each ceil(pool / 64) steps of 64 images), selection {args.strategy}, teacher "
        "conse-lite0.",
        "",
        "Teacher inference once per dataset = the VLM encoding pool and test into a fresh cache. Per round: teacher",
        "probabilities, student forward/backward (images decoded batch by batch as they stream), student",
        "inference over pool and test, selection. Growth = round time relative to the smallest pool.",
        "",
        "| pool | test | teacher inference once (s) | teacher per round (s) | student fwd/bwd (s) "
        "| student inference (s) | selection (s) | round (s) | pool ratio | round-time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = rows[0]
    for r in rows:
        lines.append(
            f"| {r['pool']} | {r['test']} | {r['encode_s']:.1f} | {r['teacher_s']:.2f} "
            f"| {r['forward_backward_s']:.1f} | {r['student_inference_s']:.1f} | {r['select_s']:.2f} "
            f"| {r['round_s']:.1f} | {r['pool'] / first['pool']:.1f} | {r['round_s'] / first['round_s']:.2f} |"
        )
    write_results(args.out, "kd", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
