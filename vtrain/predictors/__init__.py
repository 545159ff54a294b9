"""One predictor per task for `mode=predict` (see `vtrain.modes.predict`): how an input file becomes the
task's input, what is recorded of the model's answer and which pictures and files are written.

    classification    ClassificationTask           top-k classes (predictions.csv too)
    detection         DetectionTask                boxes, scores, names (predictions_coco.json too)
    instance          InstanceSegmentationTask     boxes and masks as COCO RLE (predictions_coco.json too)
    panoptic          PanopticTask                 COCO panoptic PNG + segments_info, overlay
    segmentation      SegmentationTask             train-id and label-id PNGs, overlay
    super-resolution  SuperResolutionTask          the 4x output; PSNR / SSIM with predict.hr=true
    generative        GenerativePretrainingTask    bits / dim, completions, samples
"""

from __future__ import annotations

from vtrain.predictors.base import Predictor, Size

# the tasks' classes (the last part of `task._target_`) and the predictor kind of each
KINDS = {
    "ClassificationTask": "classification",
    "DetectionTask": "detection",
    "InstanceSegmentationTask": "instance",
    "PanopticTask": "panoptic",
    "SegmentationTask": "segmentation",
    "SuperResolutionTask": "super-resolution",
    "GenerativePretrainingTask": "generative",
}

__all__ = ["KINDS", "Predictor", "Size"]
