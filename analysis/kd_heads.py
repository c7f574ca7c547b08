"""Where a DHO student's accuracy comes from: each head, each way of mixing them, no-distill.

    python -m analysis.kd_heads --per-class 200 --test-fraction 0.5 --labeled 10,50,90

On one seeded labeled set per size (a 1-shot start, then random images), trains a
no-distill student and a kd-zeroshot student and prints their test accuracy: the
no-distill CE head; the DHO student's CE head, KD head, the heads mixed as
probabilities (what the learner predicts) and as logits; and the CE head mixed with the
teacher's own probabilities. A teacher weaker than the few-shot student shows up as a
KD-trained CE head below the no-distill one.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from raysvc.experiment import assemble, initial_labeled
from raysvc.feature_settings import FeatureSettings
from raysvc.featurecache import FeatureCache
from raysvc.learners.kd import KDOptions, StudentSource, combine_heads, train_student
from raysvc.spec import RunSpec


def _softmax(z: np.ndarray) -> np.ndarray:
    return torch.as_tensor(z).softmax(-1).numpy()


def head_accuracies(experiment, labeled: np.ndarray, options: KDOptions, seed: int) -> dict[str, float]:
    teacher_pool = experiment.encoded.zeroshot_logits(experiment.pool)  # what kd-zeroshot distils
    teacher_test = experiment.encoded.zeroshot_probs(experiment.test)
    y = experiment.test_labels
    accuracy = lambda p: float((p.argmax(1) == y).mean())  # noqa: E731
    out = {"teacher": accuracy(teacher_test)}
    for teacher in (None, teacher_pool):  # no-distill, then kd-zeroshot
        result = train_student({"options": options, "n_classes": experiment.dataset.n_classes,
                                "images": StudentSource(experiment.dataset, experiment.pool, experiment.test),
                                "labeled": labeled, "labels": experiment.pool_labels[labeled],
                                "teacher_logits": teacher, "seed": seed, "epochs": options.epochs_of_fit(0)})
        z_ce, z_kd = result["test"]["z_ce"], result["test"]["z_kd"]
        p_ce, p_kd = _softmax(z_ce), _softmax(z_kd / options.beta)
        if teacher is None:
            out["no-distill CE head"] = accuracy(p_ce)
            continue
        a = options.mixing_alpha("zeroshot")
        out.update({
            "KD: CE head": accuracy(p_ce), "KD: KD head": accuracy(p_kd),
            "KD: heads mixed as probabilities": accuracy(
                combine_heads(torch.as_tensor(z_ce), torch.as_tensor(z_kd), a, options.beta).numpy()),
            "KD: heads mixed as logits": accuracy(a * z_ce + (1 - a) * z_kd / options.beta),
            "KD: CE head mixed with the teacher": accuracy(a * p_ce + (1 - a) * teacher_test),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="animal-mnist")
    parser.add_argument("--backbone", default="conse-lite0")
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--test-fraction", type=float, default=0.5)
    parser.add_argument("--labeled", default="10,50,90", help="comma-separated labeled-set sizes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help="feature cache (default: $RAYSVC_CACHE or ~/.cache/raysvc/features)")
    args = parser.parse_args(argv)
    run = RunSpec(dataset=args.dataset, backbone=args.backbone, per_class=args.per_class,
                    test_fraction=args.test_fraction)
    cache = FeatureCache(FeatureSettings(cache_dir=args.cache), progress="off")
    experiment = assemble(run.resolve(), cache.encode)
    start = initial_labeled(experiment.pool_labels, experiment.dataset.classnames, 1, args.seed)
    rest = np.random.default_rng(args.seed).permutation(np.setdiff1d(np.arange(len(experiment.pool)), start))
    sizes = [int(n) for n in args.labeled.split(",")]
    columns = {}
    for n in sizes:
        labeled = np.sort(np.concatenate([start, rest[: max(0, n - len(start))]]))
        columns[n] = head_accuracies(experiment, labeled, KDOptions(), seed=args.seed * 1000 + n)
    names = list(next(iter(columns.values())))
    print(f"{args.dataset}: {len(experiment.pool)} pool / {len(experiment.test)} test, teacher {args.backbone}, "
          f"seed {args.seed}; test accuracy by labeled-set size")
    print("| | " + " | ".join(str(n) for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{columns[n][name]:.3f}" for n in sizes) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
