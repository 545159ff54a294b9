"""Loading DETR weights: official facebookresearch/detr checkpoints and vtrain Lightning checkpoints.

Our module names are the official ones, so an official state dict loads as it is. The class head is the
only part allowed to differ in shape (fine-tuning on another class count): it is skipped with a warning.
Anything else that does not fit is an error naming the file and the keys.
"""

import logging
import os
from pathlib import Path

from torch import nn

from vtrain.checkpoint import fit_state_dict, read_state_dict

logger = logging.getLogger(__name__)

CLASS_HEAD = ("class_embed.weight", "class_embed.bias")


def load_detr_checkpoint(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, frozen: bool = False
) -> nn.Module:
    """Load weights into a :class:`~vtrain.models.detr.DETR` in place.

    Formats: an official DETR checkpoint (``{"model": state_dict}``, e.g. ``detr-r50-e632da11.pth``), a bare
    state dict with the same keys, or a vtrain Lightning checkpoint (``state_dict`` with ``model.`` keys).
    A :class:`~vtrain.models.detr.DETRPanoptic` takes an official panoptic checkpoint (``detr.*``,
    ``bbox_attention.*``, ``mask_head.*``; e.g. ``detr-r50-panoptic-00ce5173.pth``) or, for training the mask
    head on top of it, a detection one, loaded into its ``detr`` part.

    Args:
        model: the DETR to fill.
        path: checkpoint file.
        strict: raise on missing or unexpected keys (otherwise they are logged). Mis-shaped keys always
            raise, except the class head, which is skipped with a warning when its shape differs (an
            official 91-class COCO checkpoint fine-tuned on another class count).
        frozen: the DETR will not train (a panoptic model's ``freeze_detr``): a class head of another
            shape is an error rather than a fresh head.

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is unreadable, carries pickled Python objects, or does not fit ``model``.
    """
    path = Path(path)
    state_dict = dict(read_state_dict(path))
    panoptic = isinstance(getattr(model, "detr", None), nn.Module)  # DETRPanoptic: its DETR under `detr.`
    frozen = frozen or (panoptic and getattr(model, "freeze_detr", False))
    if panoptic and not any(key.startswith("detr.") for key in state_dict):
        logger.warning(
            "%s: a detection checkpoint; loading the DETR part, the mask head stays as it is", path
        )
        load_detr_checkpoint(model.detr, path, strict, frozen=frozen)
        return model
    class_head = tuple(("detr." if panoptic else "") + key for key in CLASS_HEAD)
    expected = model.state_dict()
    allowed_missing: frozenset[str] = frozenset()
    found, wanted = state_dict.get(class_head[0]), expected.get(class_head[0])
    if found is not None and wanted is not None and found.shape != wanted.shape:
        if frozen:
            raise ValueError(
                f"{path}: class head class_embed.weight is {tuple(found.shape)} in the checkpoint but "
                f"{tuple(wanted.shape)} in the model, whose DETR is frozen (model.freeze_detr=true) and "
                "would keep a random class head: give a DETR trained on this class count (COCO panoptic: "
                "250 classes, the first stage's checkpoint)"
            )
        for key in class_head:
            state_dict.pop(key, None)
        allowed_missing = frozenset(class_head)
        logger.warning(
            "%s: class head class_embed.weight is %s in the checkpoint but %s in the model; keeping the "
            "model's initial class head",
            path,
            tuple(found.shape),
            tuple(wanted.shape),
        )
    fit_state_dict(model, state_dict, path, strict, allowed_missing)
    return model
