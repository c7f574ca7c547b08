"""The emoji dataset: a real build from npm, plus builds from tiny tarballs behind a fake npm."""

import io
import json
import shutil
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from raysvc.datasets import emoji, emoji_build, pool_test_split
from raysvc.errors import DatasetError

EMOJI_PER_CLASS = {
    "mammal": 66, "bird": 22, "sea creature": 17, "insect": 16, "reptile": 8, "flower": 12, "fruit": 20,
    "vegetable": 19, "dessert": 14, "drink": 20, "land vehicle": 50, "aircraft": 13, "boat": 9,
    "sports equipment": 27, "musical instrument": 12, "clothing": 47, "tool": 27, "building": 27,
}

needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One real build (two `npm pack` fetches) for the session."""
    root = tmp_path_factory.mktemp("emoji") / "emoji"
    start = time.perf_counter()
    emoji_build.build(root)
    print(f"emoji build took {time.perf_counter() - start:.1f} s")
    return root


def _arrays(root):
    with np.load(root / "images.npz") as npz:
        return {key: npz[key] for key in npz.files}


# --- the real build -----------------------------------------------------------------------


@needs_npm
def test_real_build_has_both_renderings_of_426_emoji_in_18_classes(built):
    d = emoji.load(built)
    assert d.classnames == tuple(EMOJI_PER_CLASS)
    assert np.bincount(d.labels).tolist() == [2 * n for n in EMOJI_PER_CLASS.values()]
    a = _arrays(built)
    assert len(a["images"]) == 852 and (a["vendor"] == "google").sum() == 426
    # each emoji once per vendor
    pairs = {(u, v) for u, v in zip(a["unified"], a["vendor"])}
    assert len(pairs) == 852 and len(set(a["unified"])) == 426
    meta = json.loads((built / "meta.json").read_text())
    assert {p["version"] for p in meta["packages"].values()} == {"16.0.0"}
    assert set(meta["licences"]) == {"google", "twitter", "emoji-datasource"}


@needs_npm
def test_real_images_are_rgb_64px_composited_on_white(built):
    d = emoji.load(built)
    a = _arrays(built)
    assert a["images"].shape == (852, 64, 64, 3) and a["images"].dtype == np.uint8
    first = d.load(0)
    assert first.mode == "RGB" and first.size == (64, 64)
    # every Noto PNG's corner is fully transparent (checked on the packages): white after compositing
    google = a["images"][a["vendor"] == "google"]
    assert (google[:, 0, 0] == 255).all() and (google[:, -1, -1] == 255).all()
    # and every image still has a glyph on it
    assert ((a["images"] < 250).any(axis=3).mean(axis=(1, 2)) > 0.05).all()


@needs_npm
def test_real_split_is_grouped_by_emoji_and_stratified(built):
    d = emoji.load(built)
    a = _arrays(built)
    pool, test = pool_test_split(d, test_fraction=0.5, seed=123)  # the fixed split wins over both
    assert np.array_equal(test, np.sort(a["test_indices"])) and len(pool) + len(test) == 852
    assert not set(a["unified"][pool]) & set(a["unified"][test])
    assert (a["vendor"][test] == "google").sum() == len(test) // 2
    for c, n_emoji in enumerate(EMOJI_PER_CLASS.values()):
        n_test_emoji = len(set(a["unified"][test][d.labels[test] == c]))
        assert n_test_emoji == max(1, int(np.floor(0.25 * n_emoji + 0.5)))
    assert 0.2 <= len(test) / 852 <= 0.26


@needs_npm
def test_real_build_is_deterministic_and_idempotent(built, tmp_path):
    again = emoji_build.build(tmp_path / "again")
    assert emoji.load(again).fingerprint == emoji.load(built).fingerprint
    assert np.array_equal(_arrays(again)["images"], _arrays(built)["images"])
    # a second build over a complete one neither runs npm nor rewrites anything
    stamp = (again / "images.npz").stat().st_mtime_ns
    assert emoji_build.build(again, npm="/nonexistent/npm") == again
    assert (again / "images.npz").stat().st_mtime_ns == stamp


# --- failures a user meets ----------------------------------------------------------------


def test_missing_npm_is_one_line_and_builds_nothing(tmp_path):
    with pytest.raises(DatasetError, match=r"^emoji: npm not found .*install Node.js/npm") as info:
        emoji_build.build(tmp_path / "e", npm="/nonexistent/npm")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "e").exists()


def test_command_line_exits_2_with_one_stderr_line_when_npm_is_missing(tmp_path):
    done = subprocess.run([sys.executable, "-m", "raysvc.datasets.emoji_build", "build", "--root", str(tmp_path / "e"),
                           "--npm", "/nonexistent/npm"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and "error: emoji: npm not found" in done.stderr
    assert done.stdout == ""


def test_load_without_a_build_names_the_command(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match=r"not built in .*python -m raysvc\.datasets\.emoji_build build --root"):
        emoji.load(tmp_path / "none")
    monkeypatch.setattr(emoji, "DEFAULT_ROOT", (tmp_path / "default").resolve())
    with pytest.raises(DatasetError, match=r"run `make data`"):
        emoji.load(tmp_path / "default")


# --- compositing and splitting, on data made here ------------------------------------------


def _png(rgba: np.ndarray, mode: str = "RGBA") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(rgba, "RGBA")
    (image.convert(mode) if mode != "RGBA" else image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_composite_blends_alpha_onto_white():
    rgba = np.zeros((64, 64, 4), np.uint8)  # transparent black
    rgba[0, 1] = (255, 0, 0, 255)
    rgba[0, 2] = (0, 0, 0, 128)
    out = emoji_build.composite_on_white(_png(rgba))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [255, 0, 0]
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])
    # grey-with-alpha PNGs (some Noto files are "LA") composite the same way
    assert emoji_build.composite_on_white(_png(rgba, "LA"))[0, 0].tolist() == [255, 255, 255]


def test_composite_refuses_other_sizes_and_non_images():
    with pytest.raises(DatasetError, match="32x32, expected 64x64"):
        emoji_build.composite_on_white(_png(np.zeros((32, 32, 4), np.uint8)), "x.png")
    with pytest.raises(DatasetError, match="cannot read x.png"):
        emoji_build.composite_on_white(b"not a png", "x.png")


def test_grouped_split_keeps_groups_whole_and_stratifies():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 3)  # 40 groups of three rows
    labels = np.repeat(np.arange(40) % 4, 3)  # 10 groups per class
    order = rng.permutation(len(groups))
    groups, labels = groups[order], labels[order]
    test = emoji_build.grouped_split(groups, labels, 0.25, seed=1)
    in_test = np.zeros(len(groups), bool)
    in_test[test] = True
    for g in range(40):
        assert len(set(in_test[groups == g])) == 1
    # round(2.5) = 3 groups of every class
    assert [len(set(groups[test][labels[test] == c])) for c in range(4)] == [3, 3, 3, 3]
    assert np.array_equal(test, emoji_build.grouped_split(groups, labels, 0.25, seed=1))
    assert not np.array_equal(test, emoji_build.grouped_split(groups, labels, 0.25, seed=2))
    with pytest.raises(DatasetError, match="another class"):
        emoji_build.grouped_split(np.array([0, 0]), np.array([0, 1]), 0.25, seed=1)


FAKE_NPM = '''#!{python}
"""npm stand-in: `npm pack --json --ignore-scripts <name>@<version>` copies a prepared tarball."""
import json, os, shutil, sys
spec = sys.argv[-1]
name, version = spec.rsplit("@", 1)
source = os.path.join(os.environ["FAKE_NPM_DIR"], f"{{name}}-{{version}}.tgz")
if not os.path.exists(source):
    # what npm 11 prints for a spec the registry lacks
    print(json.dumps({{"error": {{"code": "E404", "summary": f"Not Found - GET https://registry/{{name}}"}}}}))
    print("npm error code E404\\nnpm error A complete log of this run can be found in: /x.log", file=sys.stderr)
    sys.exit(1)
shutil.copy(source, ".")
print(json.dumps([{{"id": spec, "name": name, "version": version, "filename": os.path.basename(source),
                   "integrity": "sha512-fake", "shasum": "fake"}}]))
'''


def _entry(i, subcategory, twitter=True):
    return {"unified": f"1F{i:03X}", "image": f"1f{i:03x}.png", "short_name": f"e{i}", "category": "X",
            "subcategory": subcategory, "sort_order": i, "has_img_google": True, "has_img_twitter": twitter}


def _tiny_tarball(path, vendor, entries, json_first=True):
    """A package tarball shaped like emoji-datasource-<vendor>: emoji.json, 64-px PNGs, a sheet."""
    members = []
    for e in entries:
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[16:48, 16:48] = (e["sort_order"] * 20 % 256, 0, 200 if vendor == "google" else 50, 255)
        members.append((f"package/img/{vendor}/64/{e['image']}", _png(rgba)))
    members.append((f"package/img/{vendor}/sheets/64.png", b"never decoded"))
    meta = [("package/emoji.json", json.dumps(entries).encode()),
            ("package/package.json", json.dumps({"name": f"emoji-datasource-{vendor}", "license": "MIT"}).encode())]
    members = meta + members if json_first else members + meta
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """A fake npm and a folder for the tarballs it serves; returns (npm path, tarball folder)."""
    served = tmp_path / "served"
    served.mkdir()
    npm = tmp_path / "npm"
    npm.write_text(FAKE_NPM.format(python=sys.executable))
    npm.chmod(0o755)
    monkeypatch.setenv("FAKE_NPM_DIR", str(served))
    return str(npm), served


def test_build_from_tiny_tarballs_keeps_only_the_chosen_emoji(fake_npm, tmp_path):
    npm, served = fake_npm
    entries = [_entry(i, sub) for i, sub in enumerate(["animal-bird"] * 4 + ["tool"] * 6, start=1)]
    entries += [_entry(20, "face-smiling"), _entry(21, "tool", twitter=False)]
    _tiny_tarball(served / "emoji-datasource-google-16.0.0.tgz", "google", entries)
    # images before emoji.json: the reader must still find them
    _tiny_tarball(served / "emoji-datasource-twitter-16.0.0.tgz", "twitter", entries, json_first=False)
    root = emoji_build.build(tmp_path / "tiny", npm=npm)
    a = _arrays(root)
    assert sorted(set(a["short_name"])) == sorted(f"e{i}" for i in range(1, 11))
    assert a["vendor"].tolist() == ["google", "twitter"] * 10
    assert np.bincount(a["labels"]).tolist()[1] == 8 and a["labels"].max() == list(emoji_build.CLASSES).index("tool")
    assert a["images"][0, 0, 0].tolist() == [255, 255, 255] and a["images"][0, 32, 32, 2] == 200
    assert a["images"][1, 32, 32, 2] == 50
    test_emoji = {str(u) for u in a["unified"][a["test_indices"]]}
    assert len(test_emoji) == 1 + 2  # round(0.25 * 4) birds, round(0.25 * 6) tools
    assert len(a["test_indices"]) == 2 * len(test_emoji)
    d = emoji.load(root)
    assert d.load(3).size == (64, 64) and d.native_size == 64 and d.name == "emoji"
    assert d.templates == emoji.TEMPLATES and d.prompts()[1] == tuple(t.format("bird") for t in emoji.TEMPLATES)
    # the fingerprint follows the pixels
    before = d.fingerprint
    a["images"][0, 0, 0] = 0
    np.savez_compressed(root / "images.npz", **a)
    assert emoji.load(root).fingerprint != before


def test_npm_failure_is_reported_in_one_line(fake_npm, tmp_path):
    npm, _ = fake_npm  # serves nothing: every pack is a 404
    expected = r"npm pack emoji-datasource-google@16\.0\.0 failed: E404 Not Found - GET"
    with pytest.raises(DatasetError, match=expected) as info:
        emoji_build.build(tmp_path / "e", npm=npm)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "e").exists()
