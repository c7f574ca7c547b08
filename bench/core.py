"""Core-engine benchmark: one CB+SQ run split by stage, and what the feature cache saves.

    python -m bench.core                       # Animal-MNIST, 8 rounds, budget 10
    python -m bench.core --per-class 200 --epochs 20

1. One 8-round CB+SQ run with CoOp on conse-lite0, encoding into a fresh feature cache,
   reported as seconds of encoding, selecting and training.
2. CoOp training on cached embeddings against the same training when the labeled images
   are re-encoded by the backbone every epoch (what a pipeline without the cache does),
   side by side on the same labeled set, as a ratio.
Results go to bench/results/core_<host>.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from bench import command, host, write_results
from raysvc.experiment import assemble
from raysvc.feature_settings import FeatureSettings
from raysvc.featurecache import FeatureCache
from raysvc.learners.coop import CoOpOptions, prompt_logits, train_coop
from raysvc.run import execute
from raysvc.spec import RunSpec


def staged_run(config: RunSpec) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        result = execute(config.resolve(), encode=FeatureCache(FeatureSettings(cache_dir=cache)).encode)
    rows, encode_s = result.rows, result.experiment.encoded.encode_seconds
    return {
        "encode_s": encode_s,
        "select_s": sum(r["select_seconds"] for r in rows),
        "train_s": sum(r["train_seconds"] for r in rows),
        "loop_s": result.manifest["wall_seconds"] - encode_s,
        "final_acc": rows[-1]["test_acc"],
        "n_images": len(result.experiment.dataset),
    }


def reencoding_epochs(config: RunSpec, n_labeled: int, epochs: int) -> tuple[float, float]:
    """Seconds for ``epochs`` CoOp epochs on cached embeddings vs re-encoding the images each epoch."""
    experiment = assemble(config.resolve(), FeatureCache().encode)
    backbone = experiment.backbone.load()
    rows = np.random.default_rng(0).choice(len(experiment.pool), n_labeled, replace=False)
    labels = experiment.pool_labels[rows]
    coop = CoOpOptions(epochs=epochs, lr=0.1, batch_size=n_labeled)
    payload = {"backbone": experiment.backbone,
               "classnames": list(experiment.dataset.classnames), "labels": labels, "seed": 0,
               "text_features": experiment.encoded.text_features,
               "features": np.asarray(experiment.encoded.image_features[experiment.pool[rows]], dtype=np.float32),
               "options": coop}
    start = time.perf_counter()
    train_coop(payload)
    cached = time.perf_counter() - start

    images = [experiment.dataset.load(i) for i in experiment.pool[rows]]
    encoder = backbone.prompt_encoder(experiment.dataset.classnames, coop.n_ctx)
    ctx = torch.nn.Parameter(torch.randn(coop.n_ctx, encoder.token_dim) * coop.init_std)
    optimizer = torch.optim.SGD([ctx], lr=coop.lr, momentum=coop.momentum)
    target = torch.as_tensor(labels)
    start = time.perf_counter()
    for _ in range(epochs):
        with torch.no_grad():
            features = backbone.encode_images(backbone.preprocess(images))
        loss = torch.nn.functional.cross_entropy(prompt_logits(features, [encoder(ctx)], backbone.logit_scale), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return cached, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="animal-mnist")
    parser.add_argument("--per-class", type=int, help="subsample (default: the whole dataset)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--labeled", type=int, default=80, help="labeled images in the cache comparison")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    config = RunSpec(dataset=args.dataset, strategy="cbsq", rounds=args.rounds, budget=args.budget,
                       per_class=args.per_class,
                       learner_params={"epochs": args.epochs, "lr": 0.1, "batch_size": 128})
    stages = staged_run(config)
    cached, reencoded = reencoding_epochs(config, args.labeled, args.epochs)
    lines = [
        f"# Core benchmark on {host()}",
        "",
        command("bench.core", argv),
        f"torch threads: {torch.get_num_threads()}",
        "",
        f"## One {args.rounds}-round CB+SQ run ({args.dataset}, {stages['n_images']} images, budget {args.budget},"
        f" CoOp {args.epochs} epochs, conse-lite0)",
        "",
        "| stage | seconds |",
        "|---|---|",
        f"| encoding (fresh cache, all images) | {stages['encode_s']:.1f} |",
        f"| selecting (all rounds) | {stages['select_s']:.1f} |",
        f"| training (all rounds) | {stages['train_s']:.1f} |",
        f"| loop total (selecting + training + evaluating) | {stages['loop_s']:.1f} |",
        "",
        f"final test accuracy: {stages['final_acc']:.3f}",
        "",
        f"## CoOp on cached embeddings vs re-encoding {args.labeled} images every epoch ({args.epochs} epochs)",
        "",
        "| variant | seconds |",
        "|---|---|",
        f"| cached embeddings | {cached:.1f} |",
        f"| re-encoding every epoch | {reencoded:.1f} |",
        f"| speed-up | {reencoded / cached:.1f}x |",
    ]
    write_results(args.out, "core", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
