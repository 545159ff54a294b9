"""Mask R-CNN / Faster R-CNN (torchvision's) with the FPT inserted after the FPN (the paper's instance-level
experiments, section 4.1: FPN -> FPT -> RPN and RoI heads).

The detectors are ``torchvision.models.detection.MaskRCNN`` / ``FasterRCNN`` with ``BackboneWithFPT`` as
backbone: ``model(images, targets)`` in training returns torchvision's loss dict; in eval it returns per
image ``{"boxes" [N, 4] xyxy pixels of the input image, "labels" [N], "scores" [N], "masks" [N, 1, H, W]}``.
Images are [3, H, W] floats in [0, 1]; the model resizes (``min_size`` / ``max_size``) and normalises them
itself. Labels are category ids (0 is background), so COCO has ``num_classes = 91``.
"""

from __future__ import annotations

import os

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN

from vtrain.models.fpt.backbone import BackboneWithFPT, require_backbone_weights

# a random ResNet under the detection recipe's frozen BatchNorm and frozen conv1 + layer1 never trains them
_SCRATCH_NOTE = " (with model.frozen_bn=false model.trainable_layers=5, so that every stage trains)"


def build_rcnn(
    backbone: str = "resnet50",
    fpt: bool = True,
    masks: bool = True,
    num_classes: int = 91,
    out_channels: int = 256,
    gt_window: int | None = None,
    backbone_weights: str | os.PathLike | None = None,
    frozen_bn: bool = True,
    trainable_layers: int = 3,
    min_size: int = 800,
    max_size: int = 1333,
    **detector_kwargs,
) -> nn.Module:
    """A torchvision Mask R-CNN (``masks``) or Faster R-CNN on ResNet + FPN (+ FPT when ``fpt``).

    Args:
        backbone: torchvision ResNet name; ``backbone_weights`` an ImageNet state dict file for it.
        fpt: insert the FPT after the FPN (False: the FPN baseline).
        num_classes: category ids + 1 (background is 0).
        out_channels: FPN / FPT width.
        gt_window: None for the global GT, an odd side for the locality-constrained GT.
        frozen_bn, trainable_layers: see ``BackboneWithFPT`` (torchvision's defaults: frozen, 3).
        min_size, max_size: the detector's resize of the short / long side.
        **detector_kwargs: any other ``MaskRCNN`` / ``FasterRCNN`` argument (``box_detections_per_img``...).
    """
    body = BackboneWithFPT(
        backbone,
        out_channels,
        fpt=fpt,
        gt_window=gt_window,
        weights=backbone_weights,
        frozen_bn=frozen_bn,
        trainable_layers=trainable_layers,
    )
    detector = MaskRCNN if masks else FasterRCNN
    return detector(body, num_classes=num_classes, min_size=min_size, max_size=max_size, **detector_kwargs)


def _preset(backbone: str, fpt: bool, masks: bool, **defaults):
    def make(**overrides) -> nn.Module:
        args = {**defaults, **overrides}
        note = _SCRATCH_NOTE if args.get("frozen_bn", True) else ""  # build_rcnn's default: frozen
        args = require_backbone_weights(args, backbone, note)
        return build_rcnn(backbone, fpt, masks, **args)

    make.__doc__ = (
        f"{'Mask' if masks else 'Faster'} R-CNN, {backbone} + FPN{' + FPT' if fpt else ''}; "
        f"arguments of build_rcnn override {defaults or 'nothing'}; ``backbone_weights`` is required "
        "(an ImageNet ResNet file, or ``scratch``)."
    )
    return make


# The CPU-sized presets: ResNet-18 from scratch (trainable BatchNorm), 64-channel pyramid, small images,
# fewer proposals and sampled RoIs (a few objects per image).
_TINY = dict(
    out_channels=64,
    frozen_bn=False,
    trainable_layers=5,
    min_size=128,
    max_size=200,
    rpn_pre_nms_top_n_train=500,
    rpn_post_nms_top_n_train=250,
    rpn_pre_nms_top_n_test=250,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=128,
    box_detections_per_img=50,
)

RCNN_PRESETS = {
    "maskrcnn_r50": _preset("resnet50", False, True),
    "fpt_maskrcnn_r50": _preset("resnet50", True, True),
    "maskrcnn_r101": _preset("resnet101", False, True),
    "fpt_maskrcnn_r101": _preset("resnet101", True, True),
    "fasterrcnn_r50": _preset("resnet50", False, False),
    "fpt_fasterrcnn_r50": _preset("resnet50", True, False),
    "maskrcnn_tiny": _preset("resnet18", False, True, **_TINY),
    "fpt_maskrcnn_tiny": _preset("resnet18", True, True, **_TINY),
}
