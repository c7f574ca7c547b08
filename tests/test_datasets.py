"""Datasets: packaged ones, image folders, CoOp split files, bad input, splits."""

import json

import numpy as np
import pytest
from PIL import Image

from raysvc.datasets import load_dataset, per_class_subset, pool_test_split
from raysvc.datasets.folder import image_folder
from raysvc.errors import DatasetError, UnknownNameError


def _folder(root, counts):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_animal_mnist_is_ten_balanced_classes_in_paper_order():
    d = load_dataset("animal-mnist")
    assert d.classnames == ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
    assert len(d) == 10000 and np.bincount(d.labels).tolist() == [1000] * 10
    image = d.load(0)
    assert image.mode == "RGB" and image.size == (28, 28)
    # inverted: mostly light background
    assert np.asarray(image).mean() > 128


@pytest.mark.parametrize("name,n,classes", [("mnist-5k", 5000, 10), ("textile", 2000, 3)])
def test_other_packaged_datasets(name, n, classes):
    d = load_dataset(name)
    assert len(d) == n and d.n_classes == classes and d.load(n - 1).mode == "RGB"


def test_image_folder_reads_classes_from_subfolders(tmp_path):
    d = image_folder(_folder(tmp_path / "pets", {"great_dane": 3, "beagle": 2}))
    assert d.classnames == ("beagle", "great dane")
    assert d.labels.tolist() == [0, 0, 1, 1, 1]
    assert d.load(4).size == (8, 8)


def test_fingerprint_changes_when_an_image_changes(tmp_path):
    root = _folder(tmp_path / "d", {"a": 2, "b": 2})
    before = image_folder(root).fingerprint
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "a" / "0.png")
    assert image_folder(root).fingerprint != before


def test_empty_folder_and_empty_class_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        image_folder(tmp_path / "empty")
    root = _folder(tmp_path / "d", {"cat": 2})
    (root / "dog").mkdir()
    with pytest.raises(DatasetError, match="class 'dog'.*no images"):
        image_folder(root)


def test_corrupt_image_is_named_on_load(tmp_path):
    root = _folder(tmp_path / "d", {"cat": 1, "dog": 1})
    (root / "dog" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*dog/0.png"):
        image_folder(root).load(1)


def test_every_unreadable_image_is_found_and_the_first_few_named_in_one_line(tmp_path):
    root = _folder(tmp_path / "d", {"cat": 4, "dog": 4})
    for name in ("cat/1.png", "cat/3.png", "dog/0.png", "dog/2.png", "dog/3.png"):
        (root / name).write_bytes(b"not a png")
    with pytest.raises(DatasetError) as error:
        image_folder(root)
    message = str(error.value)
    assert message.startswith(f"cannot read 5 images in {root.resolve()}: cat/1.png: ")
    assert "; cat/3.png: " in message and "; dog/0.png: " in message and "; and 2 more (or pass skip_bad_images)" in message
    assert "dog/2.png" not in message and "\n" not in message
    skipped = image_folder(root, skip_bad_images=True).skipped
    assert [line.split(":")[0] for line in skipped] == [str(root.resolve() / n) for n in
                                                        ("cat/1.png", "cat/3.png", "dog/0.png", "dog/2.png", "dog/3.png")]


def test_one_unreadable_image_is_named_with_its_path(tmp_path):
    root = _folder(tmp_path / "d", {"cat": 2, "dog": 2})
    (root / "dog" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"^cannot read image .*/dog/1.png: not a valid image file \(or pass"):
        image_folder(root)


def test_coop_split_file(tmp_path):
    root = _folder(tmp_path / "d", {"cat": 3, "dog": 3})
    split = {
        "train": [["cat/0.png", 0, "cat"], ["dog/0.png", 1, "dog"]],
        "val": [["cat/1.png", 0, "cat"]],
        "test": [["cat/2.png", 0, "cat"], ["dog/2.png", 1, "dog"]],
    }
    (tmp_path / "split.json").write_text(json.dumps(split))
    d = load_dataset(str(root), {"split_file": str(tmp_path / "split.json")})
    pool, test = pool_test_split(d, 0.5, seed=0)
    assert pool.tolist() == [0, 1, 2] and test.tolist() == [3, 4]
    split["test"].append(["dog/9.png", 1, "dog"])
    (tmp_path / "split.json").write_text(json.dumps(split))
    with pytest.raises(DatasetError, match="dog/9.png"):
        load_dataset(str(root), {"split_file": str(tmp_path / "split.json")})


def test_unknown_name_lists_known_ones():
    with pytest.raises(UnknownNameError, match="animal-mnist"):
        load_dataset("imagenet-9000")


def test_split_is_seeded_stratified_and_disjoint():
    d = per_class_subset(load_dataset("animal-mnist"), 20, seed=0)
    pool, test = pool_test_split(d, 0.25, seed=3)
    again, _ = pool_test_split(d, 0.25, seed=3)
    other, _ = pool_test_split(d, 0.25, seed=4)
    assert np.array_equal(pool, again) and not np.array_equal(pool, other)
    assert not set(pool) & set(test) and len(pool) + len(test) == len(d)
    assert np.bincount(d.labels[test]).tolist() == [5] * 10
