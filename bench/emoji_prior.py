"""How strong the ConSE prior is on the emoji dataset, and what makes it stronger without new weights.

    python -m bench.emoji_prior                                  # lite0/1/2 at 64, 112, 224 px and native
    python -m bench.emoji_prior --variants lite0 --sizes 224     # one encode, quick

Knobs of the prior: the class-prompt template (one, or the mean of several templates'
normalised embeddings), ConSE top-T, the input size, the EfficientNet-Lite variant, and
the sentence template of ConSE's ImageNet side ("a photo of a {}." in the backbone), and
centring the image features (less the mean ImageNet-side sentence, or less the mean
embedding of the unlabeled pool).
Choices are made on the pool split only: zero-shot prediction needs no labels, and the
pool's labels only score it. The test split is reported for what was chosen. Baselines
that use labels and no prior: logistic regression and nearest class mean on the same
image features, k labels per class drawn from the pool, mean over 5 seeds.

ImageNet probabilities are cached per (dataset fingerprint, variant, size) under --cache,
with the seconds the first encode took (852 images, this process's torch threads).
Results go to bench/results/emoji_prior.md.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench import command, host
from raysvc._compat import import_torchvision
from raysvc.datasets import emoji, pool_test_split

TEMPLATES = {
    "photo": "a photo of a {}.",
    "emoji": "an emoji of a {}.",
    "cartoon": "a cartoon of a {}.",
    "icon": "an icon of a {}.",
    "drawing": "a drawing of a {}.",
    "a": "a {}.",
    "name": "{}",
}
# prompt ensembles: mean of the members' normalised embeddings, renormalised (CLIP's recipe)
CLASS_PROMPTS = {name: (name,) for name in TEMPLATES} | {
    "ens4": ("photo", "emoji", "cartoon", "icon"),
    "ens7": tuple(TEMPLATES),
}
# ConSE's image side: which sentences the ImageNet classes are embedded as; "same" reuses the
# class prompts' templates, so both sides are sentences of one form
IMAGENET_SIDE = ("photo", "name", "same")
CENTRING = ("none", "imagenet", "pool")
TOP_T = (1, 3, 5, 10, 20, 50, 100, 1000)
KS = (1, 2, 4, 8)
SEEDS = 5
# generic settings that need no choice among templates: a prompt ensemble, all of ConSE's
# probabilities, the unlabeled pool's mean removed
RECIPE = {"top_t": 1000, "prompt": "ens7", "imagenet": "photo", "centring": "pool"}
DEFAULT = {"variant": "lite0", "size": 224, "top_t": 10, "prompt": "photo", "imagenet": "photo", "centring": "none"}


def imagenet_probs(dataset, variant: str, size: int, cache: Path) -> tuple[np.ndarray, float]:
    """(N, 1000) ImageNet probabilities of every image and the seconds encoding took."""
    from raysvc.backbones.conse import ConSEBackbone

    key = hashlib.sha256(f"{dataset.fingerprint}|{variant}|{size}".encode()).hexdigest()[:16]
    path = cache / f"{variant}-{size}-{key}.npy"
    if path.exists():
        return np.load(path), json.loads(path.with_suffix(".json").read_text())["seconds"]
    backbone = ConSEBackbone(ConSEBackbone.Options(variant=variant, top_t=10), image_size=size)
    chunks = []
    start = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(dataset), 64):
            pixels = backbone.preprocess([dataset.load(i) for i in range(lo, min(lo + 64, len(dataset)))])
            chunks.append(backbone.imagenet_probs(pixels).float().numpy())
    seconds = time.perf_counter() - start
    probs = np.concatenate(chunks)
    # the bench re-derives ConSE embeddings from these probabilities; they must be the backbone's own
    with torch.no_grad():
        own = backbone.encode_images(backbone.preprocess([dataset.load(i) for i in range(8)])).numpy()
    mine = conse_features(probs[:8], 10, backbone.imagenet_text.numpy())
    assert np.allclose(own, mine, atol=1e-5), "bench ConSE features differ from ConSEBackbone.encode_images"
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, probs)
    path.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
    return probs, seconds


def conse_features(probs: np.ndarray, top_t: int, imagenet_text: np.ndarray) -> np.ndarray:
    """ConSEBackbone.encode_images on precomputed probabilities."""
    p = torch.from_numpy(probs)
    weights, classes = p.topk(top_t, dim=-1)
    # a dense product of the zeroed-out probabilities: a gather of N x T x D is 1.3 GB at T=1000
    kept = torch.zeros_like(p).scatter_(1, classes, weights)
    return F.normalize(kept @ torch.from_numpy(imagenet_text), dim=-1).numpy()


def centred(features: np.ndarray, how: str, imagenet_text: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Image features less a mean direction, renormalised.

    Every ConSE embedding is a mix of ImageNet-class sentences, and 40% of ImageNet is
    animals, so all images share a component that favours the classes whose prompts
    resemble the average ImageNet sentence. "imagenet" subtracts the mean of the
    ImageNet-side sentences (no images needed); "pool" subtracts the mean embedding of
    the unlabeled pool images (no labels needed).
    """
    if how == "none":
        return features
    mean = imagenet_text.mean(0) if how == "imagenet" else features[pool].mean(0)
    shifted = features - mean
    return shifted / np.linalg.norm(shifted, axis=1, keepdims=True)


def sentence_embeddings(names, cache: dict) -> dict[str, np.ndarray]:
    """Normalised MiniLM embeddings of ``template.format(name)`` for every template (rows follow names)."""
    from raysvc.backbones.conse import load_minilm

    if "model" not in cache:
        cache["model"] = load_minilm()
    tokenizer, model = cache["model"]
    out = {}
    with torch.no_grad():
        for key, template in TEMPLATES.items():
            rows = []
            for lo in range(0, len(names), 256):
                batch = tokenizer([template.format(n) for n in names[lo:lo + 256]], padding=True, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                rows.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy())
            out[key] = np.concatenate(rows)
    return out


def ensemble(single: dict[str, np.ndarray], members: tuple[str, ...]) -> np.ndarray:
    mean = np.mean([single[m] for m in members], axis=0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def accuracy(pred: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float:
    return float((pred[rows] == labels[rows]).mean())


def labels_only(features: np.ndarray, labels: np.ndarray, pool: np.ndarray, test: np.ndarray,
                n_classes: int) -> dict[tuple[str, int], tuple[float, float]]:
    """Test accuracy (mean, std over seeds) of LR and nearest class mean with k labels per class."""
    from sklearn.linear_model import LogisticRegression

    out = {}
    for k in KS:
        scores = {"logistic regression": [], "nearest class mean": []}
        for seed in range(SEEDS):
            rng = np.random.default_rng([seed, k])
            picked = np.concatenate([rng.choice(pool[labels[pool] == c], k, replace=False) for c in range(n_classes)])
            x, y = features[picked], labels[picked]
            lr = LogisticRegression(max_iter=2000).fit(x, y)
            scores["logistic regression"].append(float((lr.predict(features[test]) == labels[test]).mean()))
            means = np.stack([x[y == c].mean(0) for c in range(n_classes)])
            means /= np.linalg.norm(means, axis=1, keepdims=True)
            ncm = (features[test] @ means.T).argmax(1)
            scores["nearest class mean"].append(float((ncm == labels[test]).mean()))
        for name, values in scores.items():
            out[(name, k)] = (float(np.mean(values)), float(np.std(values)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=emoji.DEFAULT_ROOT)
    parser.add_argument("--variants", default="lite0,lite1,lite2")
    parser.add_argument("--sizes", default="64,112,224,native", help="input sides; native = the variant's own")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "raysvc" / "emoji_prior")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    import_torchvision()  # open_clip imports it; this host may lack its compiled ops
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from raysvc.backbones.conse import VARIANTS

    dataset = emoji.load(args.root)
    labels = dataset.labels
    pool, test = pool_test_split(dataset, 0.25, 0)
    with np.load(args.root / "images.npz") as npz:
        vendor = npz["vendor"]
    rows = {"pool": pool, "test": test,
            "google pool": pool[vendor[pool] == "google"], "twitter pool": pool[vendor[pool] == "twitter"],
            "google test": test[vendor[test] == "google"], "twitter test": test[vendor[test] == "twitter"]}

    models = {}
    class_single = sentence_embeddings(list(dataset.classnames), models)
    imagenet_single = sentence_embeddings(list(IMAGENET_CLASSNAMES), models)
    class_text = {p: ensemble(class_single, m) for p, m in CLASS_PROMPTS.items()}

    encodes = {}
    for variant in args.variants.split(","):
        sizes = [VARIANTS[variant] if s == "native" else int(s) for s in args.sizes.split(",")]
        for size in dict.fromkeys(sizes):
            encodes[(variant, size)] = imagenet_probs(dataset, variant, size, args.cache)

    results = []  # one dict per configuration
    features_of = {}
    for (variant, size), (probs, _) in encodes.items():
        for top_t, prompt, side in itertools.product(TOP_T, CLASS_PROMPTS, IMAGENET_SIDE):
            members = CLASS_PROMPTS[prompt] if side == "same" else (side,)
            if side == "same" and members == (prompt,) and prompt in IMAGENET_SIDE:
                continue  # identical to the named side
            key = (variant, size, top_t, "+".join(members))
            if key not in features_of:
                features_of[key] = conse_features(probs, top_t, ensemble(imagenet_single, members))
            for centring in CENTRING:
                features = centred(features_of[key], centring, ensemble(imagenet_single, members), pool)
                pred = (features @ class_text[prompt].T).argmax(1)
                results.append({"variant": variant, "size": size, "top_t": top_t, "prompt": prompt,
                                "imagenet": side, "centring": centring,
                                **{name: accuracy(pred, labels, r) for name, r in rows.items()}})

    def features_for(r: dict) -> np.ndarray:
        members = CLASS_PROMPTS[r["prompt"]] if r["imagenet"] == "same" else (r["imagenet"],)
        raw = features_of[(r["variant"], r["size"], r["top_t"], "+".join(members))]
        return centred(raw, r["centring"], ensemble(imagenet_single, members), pool)

    def find(**spec) -> dict | None:
        spec = DEFAULT | spec
        return next((r for r in results if all(r[k] == v for k, v in spec.items())), None)

    def row(label: str, r: dict) -> str:
        return (f"| {label} | {r['variant']} | {r['size']} | {r['top_t']} | {r['prompt']} | {r['imagenet']} "
                f"| {r['centring']} "
                f"| {r['pool']:.3f} | **{r['test']:.3f}** | {r['google pool']:.3f} | {r['twitter pool']:.3f} |")

    header = ("| setting | variant | size | T | class prompt | ImageNet side | centring | pool | test | google pool "
              "| twitter pool |\n|---|---|---|---|---|---|---|---|---|---|---|")
    n_test_emoji = len(test) // 2
    se = np.sqrt(0.35 * 0.65 / n_test_emoji)
    lines = [
        f"# ConSE prior on the emoji dataset ({host()})",
        "",
        command("bench.emoji_prior", argv),
        "",
        f"{len(dataset)} images, {dataset.n_classes} classes, fixed split {len(pool)} pool / {len(test)} test "
        f"({n_test_emoji} test emoji x 2 vendors); chance {1 / dataset.n_classes:.3f}. Zero-shot accuracy = argmax of "
        "cosine to the class prompts. Both renderings of an emoji err together more often than not, so a test "
        f"accuracy near 0.35 has a standard error of about {se:.3f} (binomial over {n_test_emoji} emoji): "
        "differences under ~0.05 on test are noise; the pool (317 emoji) is the steadier measure.",
        "",
        "Templates: " + "; ".join(f"{k} = `{v}`" for k, v in TEMPLATES.items())
        + "; ens4 = mean of photo, emoji, cartoon, icon; ens7 = mean of all seven. ImageNet side: the sentence "
        "each ImageNet class is embedded as in ConSE (the backbone uses photo); same = the class prompt's template(s). "
        "Centring: image features less the mean ImageNet-side sentence (imagenet; no images used) or less the mean "
        "unlabeled pool embedding (pool; no labels used), renormalised.",
        "",
        "## Encoding (852 images) and the default prompt",
        "",
        f"torch threads: {torch.get_num_threads()}; seconds as measured when first encoded (cached since).",
        "",
        "| variant | size | encode (s) | pool | test |",
        "|---|---|---|---|---|",
    ]
    for (variant, size), (_, seconds) in encodes.items():
        r = find(variant=variant, size=size)
        lines.append(f"| {variant} | {size} | {seconds:.1f} | {r['pool']:.3f} | {r['test']:.3f} |")

    lines += ["", "## One knob at a time from the default (lite0, 224, T=10, photo, photo, none)", "", header]
    lines.append(row("default", find()))
    for prompt in CLASS_PROMPTS:
        if prompt != DEFAULT["prompt"]:
            lines.append(row("class prompt", find(prompt=prompt)))
    for side in ("name", "same"):
        for prompt in ("photo", "emoji", "ens4", "ens7"):
            r = find(prompt=prompt, imagenet=side)
            if r is not None:
                lines.append(row("ImageNet side", r))
    for top_t in TOP_T:
        if top_t != DEFAULT["top_t"]:
            lines.append(row("top-T", find(top_t=top_t)))
    for centring in CENTRING[1:]:
        for prompt in ("photo", "ens7"):
            lines.append(row("centring", find(centring=centring, prompt=prompt)))
    for (variant, size) in encodes:
        if (variant, size) != (DEFAULT["variant"], DEFAULT["size"]):
            lines.append(row("backbone / size", find(variant=variant, size=size)))

    lines += ["", "## The generic recipe on every backbone and size", "",
              f"Recipe: T={RECIPE['top_t']}, class prompt {RECIPE['prompt']}, ImageNet side {RECIPE['imagenet']}, "
              f"centring {RECIPE['centring']}; beside the default prompt (T=10, photo, no centring).", "",
              "| variant | size | default pool | default test | recipe pool | recipe test | recipe google pool "
              "| recipe twitter pool |", "|---|---|---|---|---|---|---|---|"]
    for (variant, size) in encodes:
        d, r = find(variant=variant, size=size), find(variant=variant, size=size, **RECIPE)
        lines.append(f"| {variant} | {size} | {d['pool']:.3f} | {d['test']:.3f} | {r['pool']:.3f} "
                     f"| **{r['test']:.3f}** | {r['google pool']:.3f} | {r['twitter pool']:.3f} |")

    # a knob's value judged over every setting of the others is a sturdier choice than the single best cell
    usable = [r for r in results if r["size"] >= 112]
    lines += ["", "## Each knob averaged over all settings of the others (sizes 112 and up)", "",
              f"Mean pool accuracy over the {len(usable)} configurations with that value (test beside it); "
              "within a knob the values see the same mix of the other knobs, except ImageNet side = same, which "
              "exists only for prompts other than photo and name, and variant, compared at size 224 only.", "",
              "| knob | value | configurations | mean pool | mean test |", "|---|---|---|---|---|"]
    for knob in ("prompt", "top_t", "imagenet", "centring", "variant", "size"):
        # sizes differ by variant (240 and 260 are lite1's and lite2's own): compare variants at 224
        among = [r for r in usable if r["size"] == 224] if knob == "variant" else usable
        for value in dict.fromkeys(r[knob] for r in among):
            chosen = [r for r in among if r[knob] == value]
            lines.append(f"| {knob} | {value} | {len(chosen)} | {np.mean([r['pool'] for r in chosen]):.3f} "
                         f"| {np.mean([r['test'] for r in chosen]):.3f} |")

    ranked = sorted(results, key=lambda r: -r["pool"])
    best = ranked[0]
    ties = sum(r["pool"] == best["pool"] for r in results)
    lines += ["", f"## Chosen on the pool ({len(results)} configurations)", "",
              f"The top 10 by pool accuracy ({ties} configuration(s) share the top); the first row is the choice. "
              "Picking the best of thousands of cells overfits the pool: compare its test with the recipe's.",
              "", header]
    lines += [row(f"#{i + 1}", r) for i, r in enumerate(ranked[:10])]

    # a held-out vendor stands in for "other renderings": choose on one vendor's pool, read the other's
    lines += ["", "## Choosing on one vendor, reading the other", "",
              "| chosen on | configuration | chosen-on pool | other vendor pool | other vendor test | all test |",
              "|---|---|---|---|---|---|"]
    for a, b in (("google", "twitter"), ("twitter", "google")):
        r = max(results, key=lambda r: r[f"{a} pool"])
        lines.append(f"| {a} pool | {r['variant']}, {r['size']}, T={r['top_t']}, {r['prompt']}, {r['imagenet']}, "
                     f"{r['centring']} "
                     f"| {r[f'{a} pool']:.3f} | {r[f'{b} pool']:.3f} | {r[f'{b} test']:.3f} | {r['test']:.3f} |")

    lines += ["", "## Labels only vs the prior", "",
              f"Test accuracy, mean ± std over {SEEDS} seeds of k random pool images per class; logistic regression "
              "is scikit-learn's default (C=1, not tuned); nearest class mean uses cosine to the normalised means.",
              "", "| features | classifier | " + " | ".join(f"k={k}" for k in KS) + " | zero-shot (no labels) |",
              "|---|---|" + "---|" * len(KS) + "---|"]
    for label, r in (("default", find()), ("recipe", find(**RECIPE)), ("chosen", best)):
        scores = labels_only(features_for(r), labels, pool, test, dataset.n_classes)
        name = f"{label}: {r['variant']} {r['size']} T={r['top_t']} {r['prompt']} {r['imagenet']} {r['centring']}"
        for clf in ("logistic regression", "nearest class mean"):
            cells = " | ".join(f"{scores[(clf, k)][0]:.3f} ± {scores[(clf, k)][1]:.3f}" for k in KS)
            lines.append(f"| {name} | {clf} | {cells} | {r['test']:.3f} |")

    # per-class view of the default and the choice: which classes the prior cannot name
    pred = {label: (features_for(r) @ class_text[r["prompt"]].T).argmax(1) for label, r in
            (("default", find()), ("chosen", best))}
    lines += ["", "## Per class: pool recall, and the class predicted most often instead", "",
              "| class | pool images | default: recall | default: instead | default: predicted (share) "
              "| chosen: recall | chosen: instead | chosen: predicted (share) |", "|---|---|---|---|---|---|---|---|"]
    for c, name in enumerate(dataset.classnames):
        members = pool[labels[pool] == c]
        cells = []
        for p in pred.values():
            wrong = p[members][p[members] != c]
            counts = np.bincount(wrong, minlength=dataset.n_classes)
            instead = dataset.classnames[counts.argmax()] if len(wrong) else "-"
            cells.append(f"{(p[members] == c).mean():.2f} | {instead} | {(p[pool] == c).mean():.2f}")
        lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + " |")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "emoji_prior.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
