"""The CLI: a per-round table and parquet on success; one line and exit 2 on bad input."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysvc.cli import main
from raysvc.records import COLUMNS


def _run(capsys, *args):
    code = main(list(args))
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
    (records,) = list((tmp_path / "res" / "runs").glob("*/records.parquet"))
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
