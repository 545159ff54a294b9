"""The weights a paper's recipe starts from are required inputs, never silently random.

DETR, Mask R-CNN and the FPT models start from an ImageNet ResNet, TTSR's texture extractor from an ImageNet
VGG19, a fine-tuning experiment from its pretrained checkpoint. A builder asks for such a file with
:func:`require_weights`: a missing one stops the run at model construction with an error naming the config
key, the file expected and the opt-out, the value ``scratch`` (``model.backbone_weights=scratch``), for runs
that really start from a random initialisation. Nothing is downloaded: every file is a local path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchvision.models import get_model_weights

# the explicit "no file: start from a random initialisation" of a required input
SCRATCH = "scratch"
# constructor arguments that name files some model starts from; a full checkpoint replaces every one of them
WEIGHT_INPUTS = ("pretrained", "backbone_weights", "vgg_weights")


class MissingWeightsError(ValueError):
    """A required weights file (or ``scratch``) was not given."""


def require_weights(
    value: str | os.PathLike | None, key: str, expected: str, scratch_note: str = ""
) -> Path | None:
    """The file a required input names, or None for ``scratch``.

    Args:
        value: the input as given: a path, ``scratch``, or None (not given).
        key: its config key, for the error (``model.backbone_weights``).
        expected: the file expected, for the error ("a torchvision ImageNet resnet50 state dict such as
            resnet50-0676ba61.pth").
        scratch_note: appended to the error's ``scratch`` option (what else a from-scratch run should change).

    Raises:
        MissingWeightsError: ``value`` is None.
        FileNotFoundError: ``value`` names no file.
    """
    if value is None:
        raise MissingWeightsError(
            f"{key} is required: expected {expected} (a local file), found null. Give {key}=PATH, or "
            f"{key}={SCRATCH} to start from a random initialisation{scratch_note}"
        )
    if str(value) == SCRATCH:
        return None
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={value}: no such file; expected {expected}")
    return path


def optional_weights(value: str | os.PathLike | None) -> str | os.PathLike | None:
    """An input that may be left out: None and ``scratch`` both mean no file."""
    return None if value is None or str(value) == SCRATCH else value


def torchvision_imagenet(arch: str) -> str:
    """The ImageNet file torchvision publishes for ``arch``, described for errors: "a torchvision ImageNet
    resnet50 state dict such as resnet50-0676ba61.pth" (the name only; nothing is downloaded)."""
    file = get_model_weights(arch).IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return f"a torchvision ImageNet {arch} state dict such as {file}"


def replaced_by_checkpoint(model_config: dict[str, Any]) -> dict[str, Any]:
    """``model_config`` (a ``model`` node: ``_target_`` and arguments) with every weights input set to
    ``scratch``, for a model whose weights are about to be loaded from a checkpoint that holds them all
    (a vtrain run's checkpoint, in eval mode or export)."""
    return {**model_config, **{key: SCRATCH for key in WEIGHT_INPUTS if key in model_config}}
