"""Does CoOp keep the prior? Test accuracy of CoOp settings on k labels per class against zero-shot.

    python -m bench.coop_prior                         # emoji, the embedded prior, k = 1, 2, 4, 8, 3 seeds
    python -m bench.coop_prior --dataset animal-mnist --backbone-opt top_t=10

With one label per class a randomly initialised context replaces what the prompt knew;
this measures each setting on the same random labeled sets (k per class, drawn per seed
from the pool) and reports mean test accuracy (%) +- std over seeds, beside the zero-shot
accuracy of the same features. The settings are the official one (the
authors' CoOp: random class-specific context, SGD lr 0.002, 200 epochs), random unified
contexts, CoOp's ``ctx_init`` at several learning rates, and ``ctx_init`` with KgCoOp's
pull towards the zero-shot embeddings and/or the zero-shot cosines mixed into the
logits, the last row being the learner's default (variant keep-prior).
Results go to bench/results/coop_prior_<host>.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench import command, host, write_results
from raysvc.entry import parse_options
from raysvc.experiment import assemble
from raysvc.featurecache import FeatureCache
from raysvc.learners import LocalRunner, make_learner
from raysvc.spec import RunSpec

# every knob explicit: the learner's own defaults (variant keep-prior) are one of the rows
_PLAIN = {"prompt": "unified", "ctx_init": "random", "kg_weight": 0.0, "prior_weight": 0.0, "warmup_epochs": 0}
_INIT = dict(_PLAIN, ctx_init="a photo of a")
SETTINGS = {
    "official (APL): random class-specific ctx, lr 0.002, 200 ep, warm-up": {"variant": "official"},
    "random ctx, lr 0.002, 200 ep": dict(_PLAIN, epochs=200, lr=0.002),
    "random ctx, lr 0.1, 50 ep": dict(_PLAIN, epochs=50, lr=0.1),
    "ctx_init, lr 0.002, 200 ep": dict(_INIT, epochs=200, lr=0.002),
    "ctx_init, lr 0.01, 50 ep": dict(_INIT, epochs=50, lr=0.01),
    "ctx_init, lr 0.1, 50 ep": dict(_INIT, epochs=50, lr=0.1),
    "ctx_init + KgCoOp 8, lr 0.01, 50 ep": dict(_INIT, epochs=50, lr=0.01, kg_weight=8.0),
    "ctx_init + KgCoOp 32, lr 0.01, 50 ep": dict(_INIT, epochs=50, lr=0.01, kg_weight=32.0),
    "ctx_init + prior 0.5, lr 0.01, 50 ep": dict(_INIT, epochs=50, lr=0.01, prior_weight=0.5),
    "ctx_init + prior 0.7, lr 0.01, 50 ep": dict(_INIT, epochs=50, lr=0.01, prior_weight=0.7),
    "random ctx + prior 0.5, lr 0.1, 50 ep": dict(_PLAIN, epochs=50, lr=0.1, prior_weight=0.5),
    "ctx_init + KgCoOp 8 + prior 0.5, lr 0.1, 50 ep": dict(_INIT, epochs=50, lr=0.1, kg_weight=8.0, prior_weight=0.5),
    "keep-prior (the default): ctx_init + KgCoOp 8 + prior 0.5, lr 0.01, 50 ep": {"variant": "keep-prior"},
}


def labeled_sets(pool_labels: np.ndarray, n_classes: int, k: int, seed: int) -> np.ndarray:
    """Pool positions of k random images of every class (nested in k for one seed)."""
    rng = np.random.default_rng(seed)
    order = [rng.permutation(np.flatnonzero(pool_labels == c)) for c in range(n_classes)]
    return np.sort(np.concatenate([o[:k] for o in order]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="emoji")
    parser.add_argument("--backbone", default="conse-lite0")
    parser.add_argument("--backbone-opt", action="append", default=["top_t=1000"], metavar="KEY=VALUE")
    parser.add_argument("--feature-centering", default="pool")
    parser.add_argument("--ks", default="1,2,4,8")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", help="comma-separated indices into the settings list (default: all)")
    parser.add_argument("--batch-size", type=int, default=128, help="for the rows that do not name a variant")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = RunSpec(dataset=args.dataset, backbone=args.backbone, backbone_params=parse_options(args.backbone_opt),
                   feature_centering=args.feature_centering)
    experiment = assemble(spec.resolve(), FeatureCache(progress="off").encode)
    n_classes = experiment.dataset.n_classes
    zeroshot = float((experiment.encoded.zeroshot_probs(experiment.test).argmax(1) == experiment.test_labels).mean())
    ks = [int(k) for k in args.ks.split(",")]
    names = list(SETTINGS)
    if args.settings:
        names = [names[int(i)] for i in args.settings.split(",")]
    rows = []
    for name in names:
        accs = np.zeros((args.seeds, len(ks)))
        start = time.perf_counter()
        for seed in range(args.seeds):
            for j, k in enumerate(ks):
                positions = labeled_sets(experiment.pool_labels, n_classes, k, seed)
                params = {"batch_size": args.batch_size, **SETTINGS[name]}
                if "variant" in params:  # a variant's own batch size
                    params.pop("batch_size")
                learner = make_learner("coop", experiment, params)
                learner.fit(positions, experiment.pool_labels[positions], seed=seed, runner=LocalRunner())
                accs[seed, j] = (learner.predict_proba("test").argmax(1) == experiment.test_labels).mean()
        rows.append((name, accs, time.perf_counter() - start))
        print(name, " ".join(f"{100 * a:.1f}" for a in accs.mean(0)), f"({rows[-1][2]:.0f}s)", flush=True)
    lines = [
        f"# CoOp and the prior on {host()}",
        "",
        command("bench.coop_prior", argv),
        "",
        f"{args.dataset}, {args.backbone} {parse_options(args.backbone_opt)}, feature centring "
        f"{args.feature_centering}; {len(experiment.pool)} pool / {len(experiment.test)} test images; "
        f"k random labels per class from the pool, the same sets for every setting; batch {args.batch_size}; "
        f"mean test accuracy (%) +- std over {args.seeds} seeds. Zero-shot: {100 * zeroshot:.1f}.",
        "",
        "| setting | " + " | ".join(f"k={k}" for k in ks) + " | seconds |",
        "|---|" + "---|" * (len(ks) + 1),
    ]
    for name, accs, seconds in rows:
        cells = [f"{100 * m:.1f} +- {100 * s:.1f}" for m, s in zip(accs.mean(0), accs.std(0, ddof=1))]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    write_results(args.out, "coop_prior", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
