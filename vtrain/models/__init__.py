"""Model families: each family module has ``PRESETS`` and ``load_pretrained(model, path)``; a family whose
presets start from an ImageNet network lists the arguments naming those files in ``STARTING_WEIGHTS``
(its presets require them: see :mod:`vtrain.models.pretrained`)."""

import difflib
import fnmatch
import os

from torch import nn

from vtrain.models import deit, detr, fpt, igpt, lambda_resnet, mae, ttsr, vit
from vtrain.models.pretrained import SCRATCH, optional_weights, require_weights

FAMILIES = (vit, deit, detr, ttsr, igpt, lambda_resnet, fpt, mae)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted preset names of all families, optionally filtered by an fnmatch pattern, e.g. ``"vit_*16"``."""
    names = sorted(name for family in FAMILIES for name in family.PRESETS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def create_model(
    name: str,
    pretrained: str | os.PathLike | None = None,
    requires_pretrained: str | None = None,
    **overrides,
) -> nn.Module:
    """Build the preset ``name`` and optionally load weights into it.

    Args:
        name: a preset name from :func:`list_models`, e.g. ``"vit_b16"``.
        pretrained: checkpoint file for the family's ``load_pretrained``; None or ``"scratch"`` keeps the
            initialisation. A checkpoint holds the whole network, so it replaces the files the preset
            starts from (``backbone_weights``, ``vgg_weights``): those are not required then.
        requires_pretrained: the checkpoint a fine-tuning recipe starts from, described ("an ImageNet-21k
            ViT-B/16 checkpoint: ..."); when set, ``pretrained`` is required (a file, or ``"scratch"``).
        **overrides: constructor arguments replacing the preset's, e.g. ``num_classes=10, img_size=384``.

    Raises:
        ValueError: ``name`` is not a preset.
        MissingWeightsError: a required weights file is not given (``vtrain.models.pretrained``).
        FileNotFoundError: a weights file given does not exist.
    """
    for family in FAMILIES:
        if name in family.PRESETS:
            if requires_pretrained is not None:
                pretrained = require_weights(pretrained, "model.pretrained", requires_pretrained)
            pretrained = optional_weights(pretrained)
            if pretrained is not None:
                for key in getattr(family, "STARTING_WEIGHTS", ()):
                    if overrides.get(key) is None:
                        overrides[key] = SCRATCH
            model = family.PRESETS[name](**overrides)
            if pretrained is not None:
                family.load_pretrained(model, pretrained)
            return model
    available = list_models()
    close = difflib.get_close_matches(name, available, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Available models: {', '.join(available)}")
