"""Loading weights into the FPT models: a vtrain checkpoint of the same model, or a torchvision
``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` state dict (same key names: ``backbone.body.*``,
``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``), whose missing FPT weights (and the FPT's 1 x 1 laterals,
with ``fpt_placement=backbone``) stay freshly initialised."""

from __future__ import annotations

import logging
import os

from torch import nn

from vtrain.checkpoint import fit_state_dict, format_keys, read_state_dict

log = logging.getLogger(__name__)


def load_fpt_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = False) -> nn.Module:
    """Load ``path`` into ``model`` and return it.

    The FPT (``backbone.fpt.*``) and its laterals (``backbone.lateral.*``) may be missing from the file (an
    FPN-only checkpoint: they stay freshly initialised, with a warning); the file's FPN
    (``backbone.fpn.*``) is left out, with a warning, when the model has none (``fpt_placement=backbone``).
    Any other missing or unexpected key raises when ``strict``.
    Class-dependent heads whose shape differs (another number of classes) are left initialised with a
    warning; other mis-shaped keys raise, naming the file.
    """
    state_dict = dict(read_state_dict(path))
    expected = model.state_dict()
    if not any(key in expected for key in state_dict):  # non-strict loading would keep the model as it is
        raise ValueError(
            f"{path}: none of its keys is a key of {type(model).__name__} (found "
            f"{format_keys(list(state_dict), 3)}); expected a torchvision Mask R-CNN / Faster R-CNN state "
            "dict or a vtrain checkpoint (an ImageNet ResNet file goes to model.backbone_weights)"
        )
    heads = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits", "head.classifier.")
    for key in [k for k in state_dict if k.startswith(heads)]:
        if key in expected and state_dict[key].shape != expected[key].shape:
            log.warning(
                "%s: %s has shape %s, the model %s: left initialised",
                path,
                key,
                tuple(state_dict[key].shape),
                tuple(expected[key].shape),
            )
            del state_dict[key]
    fresh = (".fpt.", ".lateral.")
    fpt_missing = [k for k in expected if any(part in k for part in fresh) and k not in state_dict]
    if fpt_missing:
        log.warning(
            "%s has no weights for %d FPT tensors (%s, ...; an FPN checkpoint): the FPT stays freshly "
            "initialised",
            path,
            len(fpt_missing),
            fpt_missing[0],
        )
    unused_fpn = [k for k in state_dict if ".fpn." in k and k not in expected]
    if unused_fpn and not any(".fpn." in k for k in expected):
        log.warning(
            "%s: the model has no FPN (fpt_placement=backbone: the FPT takes C2..C5 through its own "
            "laterals), so the file's %d FPN tensors are not used",
            path,
            len(unused_fpn),
        )
        state_dict = {k: v for k, v in state_dict.items() if k not in unused_fpn}
    allowed = frozenset(
        k for k in expected if any(part in k for part in fresh) or k.endswith("num_batches_tracked")
    )
    allowed |= frozenset(k for k in expected if k.startswith(heads) and k not in state_dict)
    fit_state_dict(model, state_dict, path, strict, allowed)
    return model
