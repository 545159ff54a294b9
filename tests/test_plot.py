"""`python -m vtrain.plot`: one decodable PNG per metric group of a run's metrics.csv."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from tests.conftest import SMOKE
from vtrain.cli import run
from vtrain.plot import main, plot_run, read_series

CSV = """epoch,lr-AdamW,step,test/acc1,train/loss,val/acc1,val/loss,data/skipped
0,0.001,0,,,,,
0,,0,,2.30,,,
0,0.002,1,,,,,
0,,1,,nan,,,
0,,1,,,0.2,1.9,
1,,2,,1.70,,,
1,,2,,,0.4,inf,
1,,2,0.35,,,,
"""


def _decoded(path):
    with Image.open(path) as image:
        image.load()
        return image.size


def test_a_hand_written_csv_gives_one_png_per_group_and_leaves_out_nan(tmp_path, caplog):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(CSV)
    series = read_series(tmp_path / "csv" / "metrics.csv")
    assert set(series) == {"lr", "train", "val", "test"}  # data/skipped: never logged
    assert series["train"]["train/loss"] == ([0.0, 2.0], [2.30, 1.70])
    assert series["val"]["val/loss"] == ([1.0], [1.9])
    assert series["lr"]["lr-AdamW"] == ([0.0, 1.0], [0.001, 0.002])
    with caplog.at_level(logging.WARNING, logger="vtrain"):
        main([str(tmp_path), "--out", str(tmp_path / "png")])
    assert any("train/loss has 1 NaN" in r.getMessage() for r in caplog.records)
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == ["lr.png", "test.png", "train.png", "val.png"]
    for name in names:
        width, height = _decoded(tmp_path / "png" / name)
        assert width > 100 and height > 100


def test_a_tiny_runs_curves(make_cfg, tmp_path):
    out = tmp_path / "run"
    run(make_cfg(["experiment=vit_cifar10_tiny", *SMOKE, "logger=csv"], output_dir=out))
    written = plot_run(out)
    assert {p.name for p in written} >= {"train.png", "val.png", "test.png", "lr.png"}
    assert all(p.parent == out / "plots" and _decoded(p) for p in written)


def test_a_run_without_a_csv_log_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"csv/metrics.csv: no metrics.csv"):
        plot_run(tmp_path)
