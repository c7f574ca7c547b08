"""The CLI: a per-round table and parquet on success; one line and exit 2 on bad input."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysvc.cli import main
from raysvc.records import COLUMNS


def _run(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _error_lines(err: str) -> list[str]:
    """stderr lines other than progress bars."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "encoding" not in line]


def test_run_prints_table_and_writes_records(capsys, tmp_path, feature_cache):
    code, out, err = _run(capsys, "run", "--per-class", "6", "--rounds", "2", "--budget", "4", "--epochs", "2",
                          "--strategy", "cb", "--cache", str(feature_cache), "--out", str(tmp_path / "res"))
    assert code == 0, err
    assert "test_acc" in out and "wrote 2 rounds" in out
    (records,) = list((tmp_path / "res" / "runs").glob("*/*/records.parquet"))
    table = pq.read_table(records)
    assert table.column_names == COLUMNS and table.num_rows == 2
    assert table.column("strategy").to_pylist() == ["cb", "cb"]


@pytest.mark.parametrize("args,message", [
    (["--dataset", "imagenet-9000"], "unknown dataset 'imagenet-9000'"),
    (["--strategy", "oracle"], "unknown strategy 'oracle'"),
    (["--backbone", "clip-9000"], "unknown backbone 'clip-9000'"),
    (["--learner", "gpt"], "unknown learner 'gpt'"),
    (["--rounds", "0"], "rounds=0: must be >= 1"),
    (["--strategy-opt", "variant=sideways", "--strategy", "cb"], "variant"),
    (["--per-class", "2", "--budget", "50"], "need 50 images; the pool has"),
])
def test_bad_input_is_one_line(capsys, tmp_path, feature_cache, args, message):
    code, _, err = _run(capsys, "run", "--cache", str(feature_cache), "--rounds", "1", *args,
                        "--out", str(tmp_path / "res"))
    assert code == 2
    assert len(_error_lines(err)) == 1 and message in err
    assert not list(tmp_path.glob("res/runs/*"))


def test_corrupt_image_and_unwritable_output(capsys, tmp_path, feature_cache):
    root = tmp_path / "shapes"
    for name in ("circle", "square"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(root / name / f"{i}.png")
    (root / "square" / "2.png").write_bytes(b"\x89PNG broken")
    code, _, err = _run(capsys, "run", "--dataset", str(root), "--rounds", "1", "--budget", "2",
                        "--cache", str(feature_cache), "--out", str(tmp_path / "res"))
    assert code == 2 and "cannot read image" in err and "square/2.png" in err and len(_error_lines(err)) == 1
    assert not list(tmp_path.glob("res/runs/*"))
    (tmp_path / "file").write_text("")
    code, _, err = _run(capsys, "run", "--out", str(tmp_path / "file" / "res"))
    assert code == 2 and "not writable" in err and len(_error_lines(err)) == 1


# ---------------------------------------------------- bad input: refused early, nothing written
def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _shapes(root, classes, n=3):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("args,message", [
    (["--student", "nosuchnet", "--learner", "kd-zeroshot"], "option student='nosuchnet': input should be"),
    (["--learner-opt", "epochs=many"], "learner 'coop': option epochs='many': input should be a valid integer"),
    (["--learner-opt", "epoch=5"], "unknown option 'epoch' (did you mean 'epochs'?)"),
    (["--strategy-opt", "features=pixels", "--strategy", "cb"], "option features='pixels'"),
    (["--backbone-opt", "top_t=0"], "option top_t=0: must be in 1..1000"),
    (["--test-fraction", "1.5"], "option test_fraction=1.5: must be in (0, 1)"),
    (["--rounds", "many"], "argument --rounds: invalid int value: 'many'"),
    (["--backbone", "open_clip:ViT-B-32"], "no weights named: append one of ViT-B-32's pretrained tags (openai"),
    (["--learner", "kd-zeroshot", "--epochs", "5"], "option epochs: variant='official' does not read it"),
])
def test_bad_options_are_refused_before_any_work_and_nothing_is_written(capsys, tmp_path, args, message):
    cache = tmp_path / "cache"
    code, _, err = _run(capsys, "run", "--cache", str(cache), *args, "--out", str(tmp_path / "res"))
    assert code == 2 and len(_error_lines(err)) == 1 and message in err, err
    assert _tree(tmp_path) == []  # no results folder, no feature cache entry


def test_a_dataset_folder_with_one_class_is_refused(capsys, tmp_path):
    root = _shapes(tmp_path / "data" / "shapes", ["circle"])
    before = _tree(tmp_path)
    code, _, err = _run(capsys, "run", "--dataset", str(root), "--cache", str(tmp_path / "cache"),
                        "--out", str(tmp_path / "res"))
    assert code == 2 and len(_error_lines(err)) == 1 and "has one class ('circle')" in err
    assert _tree(tmp_path) == before


def test_a_corrupt_image_is_found_before_encoding(capsys, tmp_path):
    root = _shapes(tmp_path / "data" / "shapes", ["circle", "square"], n=4)
    (root / "square" / "2.png").write_bytes(b"\x89PNG broken")
    before = _tree(tmp_path)
    code, _, err = _run(capsys, "run", "--dataset", str(root), "--rounds", "1", "--budget", "2",
                        "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "res"))
    assert code == 2 and "square/2.png" in err and "skip_bad_images" in err
    assert _tree(tmp_path) == before  # refused before encoding: no cache entry either


def test_skip_bad_images_leaves_them_out_and_the_manifest_names_them(capsys, tmp_path, feature_cache):
    root = _shapes(tmp_path / "shapes", ["circle", "square"], n=4)
    (root / "square" / "2.png").write_bytes(b"\x89PNG broken")
    code, out, err = _run(capsys, "run", "--dataset", str(root), "--rounds", "1", "--budget", "2", "--epochs", "1",
                          "--dataset-opt", "skip_bad_images=true", "--test-fraction", "0.25",
                          "--cache", str(feature_cache), "--out", str(tmp_path / "res"))
    assert code == 0, err
    assert "1 unreadable images skipped" in out
    (manifest,) = (tmp_path / "res" / "runs").glob("*/manifest.json")
    skipped = json.loads(manifest.read_text())["dataset"]["skipped_images"]
    assert len(skipped) == 1 and skipped[0].startswith(str(root / "square" / "2.png"))


@pytest.mark.parametrize("block,message", [
    ("resources: {cpu: lots}", "grid resources: option cpu='lots': input should be a valid number"),
    ("fixed: {learner_params: {epochs: many}}", "learner 'coop': option epochs='many'"),
    ("fixed: {test_fraction: '0.2'}", "run: option test_fraction='0.2': input should be a valid number"),
])
def test_a_bad_grid_file_is_one_line_before_ray_starts(capsys, tmp_path, block, message):
    import ray

    from jobs.grid import main as grid_main

    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nout: {tmp_path / 'res'}\ngrid: {{strategy: [random]}}\n{block}\n")
    code = grid_main([str(path)])
    err = capsys.readouterr().err
    assert code == 2 and len(_error_lines(err)) == 1 and message in err, err
    assert not ray.is_initialized() and not (tmp_path / "res").exists()


def test_help_is_clean_text_with_defaults_and_option_keys(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "gateway" not in top
    assert all(cmd in top for cmd in ("run", "runs", "report", "datasets", "strategies", "learners", "backbones"))
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "(default: cbsq)" in text and "(default: 8)" in text
    assert "learner coop: variant, n_ctx, prompt, epochs" in text and "backbone conse-lite0" in text


@pytest.mark.parametrize("kind,expected", [
    ("learners", ["coop:", "kd-zeroshot:", "student ('efficientnet-lite0' | 'resnet18'"]),
    ("backbones", ["conse-lite0 (variant=lite0):", "top_t (int, default 10)", "open_clip:<model>"]),
    ("datasets", ["emoji:", "animal-mnist:", "skip_bad_images (bool, default False)"]),
])
def test_listings_show_every_part_with_its_typed_options(capsys, kind, expected):
    assert main([kind]) == 0
    out = capsys.readouterr().out
    assert all(e in out for e in expected), out


def test_sweep_replaces_stored_runs_like_run_and_grids_unless_told_to_skip(capsys, tmp_path, feature_cache):
    from jobs.sweep import main as sweep

    common = ["--strategies", "random", "entropy", "--seeds", "0", "--rounds", "1", "--per-class", "4",
              "--test-fraction", "0.25", "--epochs", "1", "--cache", str(feature_cache), "--out", str(tmp_path)]
    assert sweep(common) == 0
    first = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/manifest.json")}
    assert len(first) == 2
    assert sweep(common) == 0  # replaced: same ids, new files
    again = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/manifest.json")}
    assert again.keys() == first.keys() and all(again[k] > first[k] for k in first)
    capsys.readouterr()
    assert sweep(common + ["--skip-existing"]) == 0
    assert capsys.readouterr().out.count("already stored, skipped") == 2
    assert {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/manifest.json")} == again
