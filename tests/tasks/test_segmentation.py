"""SegmentationTask: IoU from a confusion matrix, sliding-window inference, an oracle scoring mIoU 1 through
the whole evaluation path with its overlays drawn, a smoke run of the fpt_tiny experiment, and (slow) the
tiny FPT and FPN models really learning."""

from __future__ import annotations

import functools
import json
import math

import pytest
import pytorch_lightning as L
import torch
from torch import nn

from tests.conftest import SMOKE
from vtrain.cli import run
from vtrain.data.cityscapes import SegmentationDataModule
from vtrain.tasks import SegmentationTask
from vtrain.tasks.segmentation import colorize, iou_from_confusion, sliding_window_logits


def test_iou_from_confusion():
    # rows: target, columns: prediction
    confusion = torch.tensor([[3, 1, 0], [1, 1, 0], [0, 0, 0]])
    iou = iou_from_confusion(confusion)
    assert iou[0].item() == pytest.approx(3 / 5) and iou[1].item() == pytest.approx(1 / 3)
    assert math.isnan(iou[2].item())  # neither in targets nor predictions: left out of the mean


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, 1)
    images = torch.randn(2, 3, 37, 61)
    whole = model(images)
    torch.testing.assert_close(sliding_window_logits(model, images, (16, 24), (10, 15)), whole)
    # a window larger than the image: padded for the model, cut off again
    torch.testing.assert_close(sliding_window_logits(model, images, (40, 64), (20, 20)), whole)


def test_colorize_uses_the_palette_and_draws_ignored_pixels_black():
    palette = torch.tensor([[255, 0, 0], [0, 255, 0]], dtype=torch.uint8)
    picture = colorize(torch.tensor([[0, 1, 255]]), palette)
    assert picture[:, 0, 0].tolist() == [1, 0, 0] and picture[:, 0, 1].tolist() == [0, 1, 0]
    assert picture[:, 0, 2].tolist() == [0, 0, 0]


class Oracle(nn.Module):
    """Predicts, for the images of the current batch, the labels it is shown beforehand."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.ones(()))
        self.labels: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        labels = self.labels.clamp(max=self.num_classes - 1)
        return nn.functional.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float() * 10 * self.scale


class ShowLabels(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        pl_module.model.labels = batch[1]


def test_an_oracle_scores_miou_one_and_its_overlays_are_drawn(data_dir, tmp_path):
    dm = SegmentationDataModule(
        str(data_dir / "cityscapes_tiny"),
        tiny="cityscapes_tiny",
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
    )
    task = SegmentationTask(Oracle(19), functools.partial(torch.optim.SGD, lr=0.1))
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ShowLabels()],
        default_root_dir=tmp_path,
    )
    metrics = trainer.validate(task, datamodule=dm, verbose=False)[0]
    assert metrics["val/mIoU"] == pytest.approx(1.0) and metrics["val/acc"] == pytest.approx(1.0)
    # the tiny set's classes are present, the others are left out of the mean
    assert {"val/IoU/road", "val/IoU/sky", "val/IoU/person"} <= set(metrics)
    assert "val/IoU/truck" not in metrics
    assert list((tmp_path / "pictures").glob("val_step*.png"))


def test_fpt_tiny_smoke_run_logs_miou_and_draws(make_cfg, tmp_path):
    out = tmp_path / "fpt_tiny"
    run(make_cfg(["experiment=fpt_tiny", *SMOKE, "trainer.limit_train_batches=2"], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val/mIoU", "val/acc", "test/mIoU", "train/loss_epoch"} <= set(metrics)
    assert 0.0 <= metrics["val/mIoU"] <= 1.0
    assert list((out / "pictures").glob("val_step*.png"))


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "floor"), [("fpt_tiny", 0.4), ("fpn_tiny", 0.4)])
def test_tiny_segmentation_really_learns(make_cfg, tmp_path, experiment, floor):
    """The experiment as it ships: mIoU (best checkpoint) from about 0.01 (untrained) to well above
    ``floor``. One thread: on a shared 2-core machine it is about 10 times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path / experiment
    run(
        make_cfg(
            [f"experiment={experiment}", "trainer.enable_progress_bar=false", "~callbacks.progress_bar"],
            output_dir=out,
        )
    )
    torch.set_num_threads(threads)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/mIoU"] > floor, metrics


@pytest.mark.parametrize("experiment", ["fpt_cityscapes", "fpn_cityscapes"])
def test_cityscapes_experiments_compose_and_build(make_cfg, experiment):
    from hydra.utils import instantiate

    cfg = make_cfg([f"experiment={experiment}", "model.backbone_weights=scratch"])
    assert cfg.data.crop_size == [512, 1024] and cfg.task.optimizer._target_ == "torch.optim.SGD"
    model = instantiate(cfg.model)
    assert (model.backbone.fpt is not None) == (experiment == "fpt_cityscapes")
    assert model.head.classifier.out_channels == 19
