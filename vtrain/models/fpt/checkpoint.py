"""Loading weights into the FPT models: a vtrain checkpoint of the same model, or a torchvision
``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` state dict (same key names: ``backbone.body.*``,
``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``), whose missing FPT weights stay freshly initialised."""

from __future__ import annotations

import logging
import os

from torch import nn

from vtrain.checkpoint import fit_state_dict, read_state_dict

log = logging.getLogger(__name__)


def load_fpt_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = False) -> nn.Module:
    """Load ``path`` into ``model`` and return it.

    The FPT (``backbone.fpt.*``) may be missing from the file (an FPN-only checkpoint); any other missing or
    unexpected key raises when ``strict``. Class-dependent heads whose shape differs (another number of
    classes) are left initialised with a warning; other mis-shaped keys raise, naming the file.
    """
    state_dict = dict(read_state_dict(path))
    expected = model.state_dict()
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
    allowed = frozenset(k for k in expected if ".fpt." in k or k.endswith("num_batches_tracked"))
    allowed |= frozenset(k for k in expected if k.startswith(heads) and k not in state_dict)
    fit_state_dict(model, state_dict, path, strict, allowed)
    return model
