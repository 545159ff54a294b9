"""Mask R-CNN task: masks decoded from the tiny COCO set's polygons are its exact rectangles, an oracle that
returns the ground truth scores box AP 1 and mask AP 1 through COCOeval, and the FPT Mask R-CNN experiment
trains and evaluates end to end (smoke)."""

from __future__ import annotations

import functools
import json

import pytest
import pytorch_lightning as L
import torch
from torch import nn

from tests.conftest import SMOKE
from vtrain.cli import run
from vtrain.data.coco_instance import CocoInstanceSegmentation, InstanceSegmentationDataModule
from vtrain.data.tiny import build_tiny
from vtrain.tasks import InstanceSegmentationTask


def test_masks_are_the_tiny_sets_exact_rectangles(data_dir):
    root = build_tiny("coco_tiny", data_dir / "coco_tiny")
    dataset = CocoInstanceSegmentation(root, "train")
    checked = 0
    for index in range(8):
        image, target = dataset[index]
        masks, boxes = target["masks"], target["boxes"]
        assert masks.shape == (len(boxes), image.height, image.width) and masks.dtype == torch.uint8
        for mask, box, area in zip(masks, boxes, target["area"], strict=True):
            x1, y1, x2, y2 = box.round().int().tolist()
            assert mask[y1:y2, x1:x2].all() and mask.sum() == (x2 - x1) * (y2 - y1) == area
            checked += 1
    assert checked > 5


class Oracle(nn.Module):
    """Returns, for the images of the current batch, the targets it is shown beforehand, score 1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.targets: list[dict] = []

    def forward(self, images, targets=None):
        return [
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "scores": torch.ones(len(t["labels"])) * self.scale,
                "masks": t["masks"][:, None].float(),
            }
            for t in self.targets
        ]


class ShowTargets(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        pl_module.model.targets = batch[1]

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        pl_module.model.targets = batch[1]


# With a hold-out, validation is scored against the training annotations and test against the val ones.
@pytest.mark.parametrize("holdout", [None, 0.25])
def test_an_oracle_scores_box_and_mask_ap_one(data_dir, tmp_path, holdout):
    dm = InstanceSegmentationDataModule(
        root=str(data_dir / "coco_tiny"),
        tiny="coco_tiny",
        num_classes=11,
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
        pin_memory=False,
        holdout=holdout,
    )
    task = InstanceSegmentationTask(Oracle(), functools.partial(torch.optim.SGD, lr=0.1))
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ShowTargets()],
        default_root_dir=tmp_path,
    )
    metrics = trainer.validate(task, datamodule=dm, verbose=False)[0]
    assert metrics["val/AP"] == pytest.approx(1.0) and metrics["val/mask_AP"] == pytest.approx(1.0)
    assert list((tmp_path / "pictures").glob("val_step*.png"))
    metrics = trainer.test(task, datamodule=dm, verbose=False)[0]
    assert metrics["test/AP"] == pytest.approx(1.0) and metrics["test/mask_AP"] == pytest.approx(1.0)


def test_fpt_maskrcnn_tiny_smoke_run_logs_box_and_mask_ap(make_cfg, tmp_path):
    out = tmp_path / "fpt_maskrcnn_tiny"
    overrides = [
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]
    run(make_cfg(["experiment=fpt_maskrcnn_tiny", *SMOKE, *overrides], output_dir=out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val/AP", "val/mask_AP", "test/mask_AP50", "train/loss_mask_epoch"} <= set(metrics)
    assert all(-1.0 <= metrics[k] <= 1.0 for k in ("val/AP", "val/mask_AP"))


@pytest.mark.parametrize(
    ("experiment", "model"), [("fpt_maskrcnn_coco", "fpt_maskrcnn_r50"), ("maskrcnn_coco", "maskrcnn_r50")]
)
def test_coco_experiments_compose(make_cfg, experiment, model):
    cfg = make_cfg([f"experiment={experiment}"])
    assert cfg.model.name == model and cfg.model.num_classes == 91 and cfg.model.test_min_size == 1000
    assert list(cfg.model.min_size) == [1200, 1200, 1000, 800, 600, 400] and cfg.model.group_norm
    assert cfg.task._target_ == "vtrain.tasks.InstanceSegmentationTask" and cfg.monitor == "val/mask_AP"
