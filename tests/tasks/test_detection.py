"""DetectionTask: an oracle that predicts the ground truth scores AP 1 through the whole evaluation path
(eval transforms, normalised boxes, post-processing to original pixels, COCOeval); backbone LR groups."""

from __future__ import annotations

import functools

import pytest
import pytorch_lightning as L
import torch
from torch import nn

from tests.conftest import SMOKE
from vtrain.cli import run
from vtrain.data.detection import DetectionDataModule
from vtrain.models.detr import PostProcess, SetCriterion, detr_tiny
from vtrain.tasks import DetectionTask


class Oracle(nn.Module):
    """Predicts, for the images of the current batch, exactly the targets it is shown beforehand."""

    def __init__(self, num_classes: int, num_queries: int = 10) -> None:
        super().__init__()
        self.num_classes, self.num_queries = num_classes, num_queries
        self.scale = nn.Parameter(torch.ones(()))  # something for the optimizer
        self.targets: list[dict] = []

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict:
        logits = torch.full((len(images), self.num_queries, self.num_classes + 1), -10.0)
        logits[..., -1] = 10.0
        boxes = torch.full((len(images), self.num_queries, 4), 0.5)
        for i, target in enumerate(self.targets):
            n = len(target["labels"])
            logits[i, torch.arange(n), target["labels"]] = 10.0
            logits[i, :n, -1] = -10.0
            boxes[i, :n] = target["boxes"]
        return {"pred_logits": logits * self.scale, "pred_boxes": boxes}


class ShowTargets(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        pl_module.model.targets = batch[2]

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        pl_module.model.targets = batch[2]


def _datamodule(data_dir, holdout: float | None = None) -> DetectionDataModule:
    return DetectionDataModule(
        root=str(data_dir / "coco_tiny"),
        tiny="coco_tiny",
        num_classes=11,
        eval_size=128,
        max_size=200,
        scales=[96, 128],
        pre_crop_scales=[96],
        crop_min=64,
        crop_max=96,
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
        pin_memory=False,
        holdout=holdout,
    )


def _task(model: nn.Module, **kwargs) -> DetectionTask:
    return DetectionTask(
        model,
        SetCriterion(num_classes=11, dec_layers=1),
        PostProcess(),
        functools.partial(torch.optim.AdamW, lr=1e-4),
        **kwargs,
    )


# With a hold-out, validation is scored against the training annotations and test against the val ones.
@pytest.mark.parametrize("holdout", [None, 0.25])
def test_an_oracle_scores_ap_one_and_its_boxes_are_drawn(data_dir, tmp_path, holdout):
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ShowTargets()],
        default_root_dir=tmp_path,
    )
    task, datamodule = _task(Oracle(11), num_pictures=2), _datamodule(data_dir, holdout)
    metrics = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
    assert metrics["val/AP"] == pytest.approx(1.0)
    assert metrics["val/AP50"] == pytest.approx(1.0)
    assert metrics["val/loss_bbox"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["val/class_error"] == pytest.approx(0.0)
    assert len(list((tmp_path / "pictures").glob("val_step*.png"))) == 1
    assert trainer.test(task, datamodule=datamodule, verbose=False)[0]["test/AP"] == pytest.approx(1.0)
    assert task.evaluator.annotation_file.name == "instances_val2017.json"


def test_backbone_gets_its_own_learning_rate_and_frozen_layers_are_left_out():
    task = _task(detr_tiny(backbone_weights="scratch", num_classes=11), backbone_lr=1e-5)
    rest, backbone = task.param_groups()
    assert backbone["lr"] == 1e-5 and "lr" not in rest
    assert rest["weight_decay"] == backbone["weight_decay"] == 1e-4
    names = {id(p): n for n, p in task.model.named_parameters()}
    assert all(names[id(p)].startswith("backbone.") for p in backbone["params"])
    assert not any(names[id(p)].startswith("backbone.") for p in rest["params"])
    trainable = [p for p in task.model.parameters() if p.requires_grad]
    assert (
        len(rest["params"]) + len(backbone["params"]) == len(trainable) < len(list(task.model.parameters()))
    )


def _detections(task: DetectionTask, datamodule: DetectionDataModule, tmp_path) -> dict[int, list[dict]]:
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.validate(task, datamodule=datamodule, verbose=False)
    return task.evaluator._results


def _scores(results: dict[int, list[dict]]) -> torch.Tensor:
    return torch.tensor([[r["score"], *r["bbox"]] for image_id in sorted(results) for r in results[image_id]])


def test_unpadded_evaluation_equals_one_image_per_batch_and_padding_changes_predictions(data_dir, tmp_path):
    torch.manual_seed(0)
    task = DetectionTask(
        detr_tiny(backbone_weights="scratch", num_classes=11),
        SetCriterion(num_classes=11, dec_layers=2),
        PostProcess(),
        functools.partial(torch.optim.AdamW, lr=1e-4),
        num_pictures=0,
    ).eval()
    datamodule = _datamodule(data_dir)
    datamodule.eval_batch_size = 1
    single = _scores(_detections(task, datamodule, tmp_path))
    datamodule.eval_batch_size = 8
    padded = _scores(_detections(task, datamodule, tmp_path))
    task.eval_unpadded = True
    unpadded = _scores(_detections(task, datamodule, tmp_path))
    torch.testing.assert_close(unpadded, single, atol=1e-4, rtol=1e-4)
    assert (padded - single).abs().max() > 1e-3  # the tiny set has three image sizes, so batches are padded


def test_a_class_head_that_disagrees_with_the_data_fails_at_setup_naming_both(make_cfg):
    expected = r"model\.num_classes=20, task\.criterion\.num_classes=11, data\.num_classes=11"
    with pytest.raises(ValueError, match=expected):
        run(make_cfg(["experiment=detr_coco_tiny", *SMOKE, "model.num_classes=20"]))


def test_validation_pictures_name_boxes_by_the_data_s_categories():
    from types import SimpleNamespace

    from vtrain.tasks.common import label_names

    datamodule = SimpleNamespace(category_names=["N/A", "cat"])
    task = SimpleNamespace(_trainer=SimpleNamespace(datamodule=datamodule))
    assert label_names(task, [1, 0, 7]) == ["cat", "N/A", "7"]
    assert label_names(SimpleNamespace(_trainer=None), [1]) == ["1"]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_fused_optimizer_s_gradients_are_clipped_without_a_gradient_scaler(precision):
    """conf/task/detection.yaml's fused AdamW with the recipe's clipping: Lightning's mixed-precision plugin
    refuses to clip any fused optimizer; under bf16 (no scaler) the task clips the true gradients itself."""
    task = _task(nn.Linear(4, 3))
    task.trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False)
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-4, fused=True)
    for p in task.parameters():
        p.grad = torch.full_like(p, 10.0)
    task.configure_gradient_clipping(optimizer, gradient_clip_val=0.1, gradient_clip_algorithm="norm")
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in task.parameters()]))
    assert norm.item() == pytest.approx(0.1, rel=1e-4)
