"""A dataset folder is one experiment however its path is spelled (issue 19): the plan
normalises the path lexically before the run id is derived, and the manifest's config
records the same spelling. Plans only: nothing is encoded."""

import json

import numpy as np
import pytest
from PIL import Image

from raysvc.cli import main
from raysvc.errors import ConfigError
from raysvc.spec import RunSpec, dataset_path


def _folder(root):
    for name in ("circle", "square"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working folder holding the dataset folder ``colors`` and a folder ``x``."""
    _folder(tmp_path / "colors")
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _plan(dataset):
    return RunSpec(dataset=dataset, strategy="random").resolve()


def test_three_spellings_of_one_folder_are_one_run_id_and_one_config(here):
    spellings = ["colors", "colors/", "x/../colors", "./colors", "colors/circle/..", "./x/../colors/."]
    plans = [_plan(name) for name in spellings]
    assert {p.run_id for p in plans} == {plans[0].run_id}
    assert {p.spec.dataset for p in plans} == {"colors"}  # the manifest's config: plan.spec.to_dict()
    assert {p.dataset.options.path for p in plans} == {"colors"}
    assert plans[0].run_id.startswith("colors-random-coop-s0-")
    assert plans[0].run_id == RunSpec(dataset="colors", strategy="random").run_id  # as before this change


def test_the_normalised_path_stays_relative_and_keeps_home_as_written(here, monkeypatch):
    monkeypatch.setenv("HOME", str(here))
    assert dataset_path("~/colors/") == dataset_path("~/x/../colors") == "~/colors"
    assert dataset_path("~/colors/circle/../") == "~/colors"
    assert dataset_path(f"{here}/x/../colors/") == f"{here}/colors"  # an absolute path stays absolute
    assert dataset_path("x/..") == "."  # a path ending in /.. is its parent, the working folder
    assert _plan("x/..").run_id == _plan(".").run_id


def test_registered_names_and_missing_folders_are_left_as_written(here):
    assert dataset_path("animal-mnist") == "animal-mnist"
    assert dataset_path("nowhere/") == "nowhere/"  # refused later, as the user typed it
    _folder(here / "emoji")  # a folder named like a registered dataset stays a folder
    assert dataset_path("emoji/") == dataset_path("x/../emoji") == "./emoji"
    assert _plan("emoji/").dataset.options.path == "./emoji"
    assert "path" not in _plan("emoji").dataset.options.to_dict()  # the registered one


def test_dotdot_after_a_symbolic_link_is_refused_in_one_line(here):
    _folder(here / "deep" / "colors")
    (here / "link").symlink_to(here / "deep" / "inner", target_is_directory=True)
    (here / "deep" / "inner").mkdir()
    # the file system reads link/../colors as deep/colors; lexically it is ./colors
    with pytest.raises(ConfigError, match=r"^dataset 'link/../colors': '..' after a symbolic link names another "
                                          r"folder than 'colors'; give the folder's path without '..'$"):
        _plan("link/../colors")


def test_ids_of_registered_datasets_do_not_change():
    assert RunSpec().resolve().run_id == "animal-mnist-cbsq-coop-s0-f90dfccc3b"


def test_a_folder_named_dotdot_gets_a_valid_run_id(here, monkeypatch):
    monkeypatch.chdir(here / "colors" / "circle")
    plan = _plan("..")
    assert plan.run_id.startswith("-random-coop-s0-") and plan.spec.dataset == ".."


def test_cli_runs_of_two_spellings_store_one_run(here, capsys):
    common = ["run", "--strategy", "random", "--epochs", "1", "--rounds", "1", "--budget", "2",
              "--test-fraction", "0.5", "--cache", str(here / "cache"), "--out", str(here / "res")]
    assert main([*common, "--dataset", "colors/"]) == 0
    assert main([*common, "--dataset", "x/../colors"]) == 0
    (run,) = (here / "res" / "runs").iterdir()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["dataset"] == "colors" and run.name.startswith("colors-random-coop-s0-")
    capsys.readouterr()
