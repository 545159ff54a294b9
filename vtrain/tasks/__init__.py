"""Lightning modules, one per task. Each receives a plain `nn.Module` network, its loss and its
optimizer / scheduler factories from the config; the networks never import Lightning."""

from vtrain.tasks.classification import ClassificationTask
from vtrain.tasks.detection import DetectionTask
from vtrain.tasks.generative import GenerativePretrainingTask
from vtrain.tasks.instance import InstanceSegmentationTask
from vtrain.tasks.masked_autoencoder import MaskedAutoencoderTask
from vtrain.tasks.panoptic import PanopticTask
from vtrain.tasks.segmentation import SegmentationTask
from vtrain.tasks.super_resolution import SuperResolutionTask

__all__ = [
    "ClassificationTask",
    "DetectionTask",
    "GenerativePretrainingTask",
    "InstanceSegmentationTask",
    "MaskedAutoencoderTask",
    "PanopticTask",
    "SegmentationTask",
    "SuperResolutionTask",
]
