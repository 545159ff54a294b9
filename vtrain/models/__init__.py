"""Model families: each family module has ``PRESETS`` and ``load_pretrained(model, path)``."""

import difflib
import fnmatch
import os

from torch import nn

from vtrain.models import detr, fpt, igpt, lambda_resnet, ttsr, vit

FAMILIES = (vit, detr, ttsr, igpt, lambda_resnet, fpt)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted preset names of all families, optionally filtered by an fnmatch pattern, e.g. ``"vit_*16"``."""
    names = sorted(name for family in FAMILIES for name in family.PRESETS)
    return names if pattern is None else fnmatch.filter(names, pattern)


def create_model(name: str, pretrained: str | os.PathLike | None = None, **overrides) -> nn.Module:
    """Build the preset ``name`` and optionally load weights into it.

    Args:
        name: a preset name from :func:`list_models`, e.g. ``"vit_b16"``.
        pretrained: checkpoint file for the family's ``load_pretrained`` (None keeps the initialisation).
        **overrides: constructor arguments replacing the preset's, e.g. ``num_classes=10, img_size=384``.

    Raises:
        ValueError: ``name`` is not a preset.
    """
    for family in FAMILIES:
        if name in family.PRESETS:
            model = family.PRESETS[name](**overrides)
            if pretrained is not None:
                family.load_pretrained(model, pretrained)
            return model
    available = list_models()
    close = difflib.get_close_matches(name, available, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Available models: {', '.join(available)}")
