"""Panoptic segmentation with DETR: the set criterion with mask losses for training; PQ / SQ / RQ against
the COCO panoptic annotation file, and the box and mask AP of the same outputs against the instances file
when the data has one, for evaluation; pictures of the predicted segments next to the ground truth."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn
from torchvision.utils import draw_segmentation_masks, save_image

from vtrain.metrics.coco import CocoEvaluator
from vtrain.metrics.panoptic import PanopticEvaluator
from vtrain.models.detr.panoptic_postprocess import PostProcessSegm
from vtrain.models.detr.postprocess import PostProcess
from vtrain.tasks.common import OptimizerFactory, SchedulerFactory
from vtrain.tasks.detection import Batch, DetectionTask

log = logging.getLogger(__name__)

LOGGED_LOSSES = (
    "loss_ce",
    "loss_bbox",
    "loss_giou",
    "loss_mask",
    "loss_dice",
    "class_error",
    "cardinality_error",
)


class MaskEvaluator(CocoEvaluator):
    """COCO mask AP (COCOeval ``segm``) of instance masks, accumulated like :class:`CocoEvaluator`."""

    def __init__(self, annotation_file: str | Path, backend: str = "pycocotools") -> None:
        super().__init__(annotation_file, backend, iou_type="segm")

    def update_masks(
        self, image_id: int, masks: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor
    ) -> None:
        """One image's masks [N, H, W] bool at the original size, scores [N], labels [N] category ids."""
        encoded = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8)))
        self._results[int(image_id)] = [
            {
                "image_id": int(image_id),
                "category_id": int(label),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "score": float(score),
            }
            for rle, score, label in zip(encoded, scores.tolist(), labels.tolist(), strict=True)
        ]


class PanopticTask(DetectionTask):
    """Trains a panoptic DETR (:class:`~vtrain.models.detr.DETRPanoptic`).

    Args:
        model: `(images, mask) -> {"pred_logits", "pred_boxes", "pred_masks", "aux_outputs"}`.
        criterion: the set criterion with mask losses (:class:`~vtrain.models.detr.PanopticSetCriterion`).
        postprocess: :class:`~vtrain.models.detr.PostProcessPanoptic`; its ``is_thing`` is taken from the
            data's categories when it has none.
        optimizer, scheduler, backbone_lr, weight_decay, eval_backend, mean, std: as
            :class:`~vtrain.tasks.DetectionTask`.
        num_pictures: validation images drawn, ground truth beside prediction, each validation (0: none).
        box_mask_ap: also compute box AP and mask AP (COCOeval bbox and segm, every query scored, masks
            binarised at ``mask_threshold``) when the data module's ``val_annotation_file`` (validation) /
            ``test_annotation_file`` (test) exists.
        mask_threshold: sigmoid threshold of the masks for mask AP.
        mask_head_lr: learning rate of ``bbox_attention`` and ``mask_head`` (None: the optimizer's). Its
            per-query masks start identical and take a few hundred steps to separate (see
            docs/detr_panoptic.md); a higher rate shortens that on small runs.

    The data module must expose ``val_panoptic_file`` and ``test_panoptic_file`` (the
    ``panoptic_<split>2017.json`` of the validation / test images, next to its PNG folder) and
    ``val_dataset`` (categories, ``isthing``, ``colors``), as
    :class:`~vtrain.data.coco_panoptic.PanopticDataModule` does.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        postprocess: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        backbone_lr: float | None = 1e-5,
        weight_decay: float = 1e-4,
        eval_backend: str = "pycocotools",
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        num_pictures: int = 4,
        box_mask_ap: bool = True,
        mask_threshold: float = 0.5,
        mask_head_lr: float | None = None,
    ) -> None:
        super().__init__(
            model,
            criterion,
            postprocess,
            optimizer,
            scheduler,
            backbone_lr,
            weight_decay,
            eval_backend,
            mean,
            std,
            eval_unpadded=False,
            num_pictures=num_pictures,
        )
        self.box_mask_ap, self.mask_head_lr = box_mask_ap, mask_head_lr
        self.box_postprocess, self.segm_postprocess = PostProcess(), PostProcessSegm(mask_threshold)
        self.panoptic_evaluator: PanopticEvaluator | None = None
        self.mask_evaluator: MaskEvaluator | None = None

    def _losses(self, batch: Batch, stage: str) -> tuple[torch.Tensor, dict]:
        images, mask, targets = batch
        outputs = self.model(images, mask)
        losses = self.criterion(outputs, targets)
        loss = sum(losses[k] * w for k, w in self.criterion.weight_dict.items() if k in losses)
        on_step = stage == "train"
        logged = {"loss": loss, **{key: losses[key] for key in LOGGED_LOSSES if key in losses}}
        for key, value in logged.items():
            self.log(
                f"{stage}/{key}",
                value,
                on_step=on_step,
                on_epoch=True,
                prog_bar=key == "loss",
                sync_dist=not on_step,
                batch_size=len(targets),
            )
        return loss, outputs

    def _start_evaluation(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        panoptic_file = getattr(datamodule, f"{stage}_panoptic_file", None)
        if panoptic_file is None:
            raise ValueError(
                "PanopticTask evaluates against a COCO panoptic annotation file: the data module must expose "
                f"`{stage}_panoptic_file` (see vtrain.data.coco_panoptic.PanopticDataModule)"
            )
        if self.panoptic_evaluator is None or self.panoptic_evaluator.annotation_file != Path(panoptic_file):
            self.panoptic_evaluator = PanopticEvaluator(panoptic_file)
        self.panoptic_evaluator.reset()
        if getattr(self.postprocess, "is_thing", False) is None:
            self.postprocess.is_thing = dict(self.panoptic_evaluator.isthing)
        instances = Path(getattr(datamodule, f"{stage}_annotation_file", "") or "")
        if self.box_mask_ap and instances.is_file():
            if self.evaluator is None or self.evaluator.annotation_file != instances:
                self.evaluator = CocoEvaluator(instances, backend=self.eval_backend)
                self.mask_evaluator = MaskEvaluator(instances, backend=self.eval_backend)
            self.evaluator.reset()
            self.mask_evaluator.reset()
        else:
            self.evaluator = self.mask_evaluator = None

    def _evaluate(self, batch: Batch, batch_idx: int, stage: str) -> None:
        _, outputs = self._losses(batch, stage)
        images, mask, targets = batch
        sizes = torch.stack([torch.as_tensor(t["size"], device=self.device) for t in targets])
        orig_sizes = torch.stack([torch.as_tensor(t["orig_size"], device=self.device) for t in targets])
        padded = tuple(images.shape[-2:])
        for target, result in zip(targets, self.postprocess(outputs, sizes, orig_sizes, padded), strict=True):
            self.panoptic_evaluator.update(
                target["image_id"], result["segmentation"], result["segments_info"]
            )
        if self.evaluator is not None:
            detections = self.box_postprocess(outputs, orig_sizes)
            masks = self.segm_postprocess(outputs, sizes, orig_sizes, padded)
            self.evaluator.update(
                {"image_id": int(t["image_id"]), **d} for t, d in zip(targets, detections, strict=True)
            )
            for target, detection, image_masks in zip(targets, detections, masks, strict=True):
                self.mask_evaluator.update_masks(
                    target["image_id"], image_masks, detection["scores"], detection["labels"]
                )
        if stage == "val" and batch_idx == 0 and self.num_pictures and self.trainer.is_global_zero:
            self._draw_panoptic(images, targets, outputs, sizes, padded)

    def _finish_evaluation(self, stage: str) -> None:
        for name, value in self.panoptic_evaluator.compute().items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "PQ", rank_zero_only=False)
        if self.evaluator is not None:
            for kind, evaluator in (("box", self.evaluator), ("mask", self.mask_evaluator)):
                for name, value in evaluator.compute().items():
                    self.log(f"{stage}/{kind}_{name}", value, rank_zero_only=False)

    def param_groups(self) -> list[dict]:
        """:meth:`DetectionTask.param_groups`, with the mask head in a group of its own at `mask_head_lr`."""
        groups = super().param_groups()
        if self.mask_head_lr is None:
            return groups
        head = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("detr.")]
        ids = {id(p) for p in head}
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        groups = [group for group in groups if group["params"]]
        return [*groups, {"params": head, "weight_decay": self.weight_decay, "lr": self.mask_head_lr}]

    @torch.no_grad()
    def _draw_panoptic(
        self, images: torch.Tensor, targets: list[dict], outputs: dict, sizes: torch.Tensor, padded: tuple
    ) -> None:
        """Ground truth and predicted segments in their categories' colours over the first validation
        images, as one PNG (pairs side by side) under `<run dir>/pictures/` and in image-taking loggers."""
        count = min(self.num_pictures, len(targets))
        results = self.postprocess(
            {k: outputs[k][:count] for k in ("pred_logits", "pred_masks")}, sizes[:count], padded_size=padded
        )
        colors = getattr(self.trainer.datamodule.val_dataset, "colors", {})
        pictures = []
        for i, result in enumerate(results):
            h, w = sizes[i].tolist()
            image = ((images[i, :, :h, :w] * self.std + self.mean).clamp(0, 1) * 255).to(torch.uint8).cpu()
            gt = targets[i]["masks"].bool().cpu()
            gt_colors = [_color(colors, int(c), k) for k, c in enumerate(targets[i]["labels"].tolist())]
            segmentation = result["segmentation"].cpu()
            segments = result["segments_info"]
            pred = (
                segmentation[None]
                == torch.tensor([s["id"] for s in segments], dtype=torch.int64)[:, None, None]
            )
            pred_colors = [_color(colors, s["category_id"], k) for k, s in enumerate(segments)]
            for masks, palette in ((gt, gt_colors), (pred, pred_colors)):
                drawn = (
                    draw_segmentation_masks(image, masks, alpha=0.6, colors=palette) if len(masks) else image
                )
                pictures.append(drawn.float() / 255)
        height, width = max(p.shape[1] for p in pictures), max(p.shape[2] for p in pictures)
        grid = torch.stack(
            [nn.functional.pad(p, (0, width - p.shape[2], 0, height - p.shape[1])) for p in pictures]
        )
        out = (
            Path(self.trainer.default_root_dir) / "pictures" / f"val_panoptic_step{self.global_step:07d}.png"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, out, nrow=2)
        for logger in self.trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(logger, "log_image"):
                logger.log_image("val/panoptic", [str(out)], step=self.global_step)
            elif hasattr(experiment, "add_images"):
                experiment.add_images("val/panoptic", grid, self.global_step)


def _color(colors: dict[int, tuple], category: int, index: int) -> tuple[int, int, int]:
    """The category's colour, shifted a little per segment so that neighbouring instances differ."""
    base = np.array(colors.get(category, (128, 128, 128)), dtype=np.int64)
    shift = (index * 37) % 61 - 30
    return tuple(int(v) for v in np.clip(base + shift, 0, 255))
