"""vtrain.loggers: a resumed run continues its metrics.csv and its TensorBoard folder, each step once."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import SMOKE
from vtrain.checkpoint import load_checkpoint
from vtrain.cli import run
from vtrain.loggers import CSVLogger, TensorBoardLogger


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def _steps_with(rows: list[dict[str, str]], column: str) -> list[int]:
    return [int(row["step"]) for row in rows if row.get(column)]


def test_csv_keeps_the_rows_before_the_first_new_step_and_merges_the_columns(tmp_path):
    first = CSVLogger(tmp_path, name="csv", version="")
    for step in range(6):
        first.log_metrics({"loss": 10.0 - step}, step=step)
    first.save()  # then the job dies: steps 4 and 5 came after its checkpoint at step 4

    resumed = CSVLogger(tmp_path, name="csv", version="")
    for step in (4, 5, 6):
        resumed.log_metrics({"loss": 100.0 + step, "acc": 0.5}, step=step)
    resumed.save()
    resumed.log_metrics({"val": 1.0}, step=6)
    resumed.save()

    header, rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert header == ["acc", "loss", "step", "val"]
    assert [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]] == [
        (0, 10.0),
        (1, 9.0),
        (2, 8.0),
        (3, 7.0),
        (4, 104.0),
        (5, 105.0),
        (6, 106.0),
    ]
    assert _steps_with(rows, "val") == [6]
    assert not list((tmp_path / "csv").glob("*.partial"))


def test_tensorboard_hides_the_points_logged_after_the_checkpoint(tmp_path):
    first = TensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=False)
    first.log_hyperparams({"lr": 0.1})
    for step in range(6):
        first.log_metrics({"loss": 10.0 - step}, step=step)
    first.finalize("success")

    resumed = TensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=True)
    resumed.log_hyperparams({"lr": 0.1})  # its hp_metric placeholder at step 0 starts no session
    for step in (4, 5, 6):
        resumed.log_metrics({"loss": 100.0 + step}, step=step)
    resumed.finalize("success")

    run_dir = tmp_path / "tb"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # one folder, one file per start
    events = EventAccumulator(str(run_dir))
    events.Reload()
    points = [(e.step, e.value) for e in events.Scalars("loss")]
    assert points == [(0, 10.0), (1, 9.0), (2, 8.0), (3, 7.0), (4, 104.0), (5, 105.0), (6, 106.0)]


def test_resumed_run_logs_every_step_once_in_the_same_folders(make_cfg, tmp_path):
    out = tmp_path / "run"
    common = [
        "experiment=vit_cifar10_tiny",
        *SMOKE,
        "logger=[csv,tensorboard]",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1",
        "test=false",
        "model.depth=1",
    ]
    run(make_cfg([*common, "trainer.max_epochs=1"], output_dir=out))
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 4
    run(make_cfg([*common, "trainer.max_epochs=2", "ckpt_path=last"], output_dir=out))
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 8

    _, rows = _rows(out / "csv" / "metrics.csv")
    lr = next(column for column in rows[0] if column.startswith("lr-"))
    assert _steps_with(rows, "train/loss_step") == list(range(8))
    assert _steps_with(rows, lr) == list(range(8))
    assert max(Counter(_steps_with(rows, "val/acc1")).values()) == 1
    assert sorted(p.name for p in (out / "csv").iterdir()) == ["hparams.yaml", "metrics.csv"]

    tensorboard = out / "tensorboard"
    assert not list(tensorboard.glob("version_*"))
    events = EventAccumulator(str(tensorboard))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_step")] == list(range(8))
