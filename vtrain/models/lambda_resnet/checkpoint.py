"""Loading LambdaResNet weights: a vtrain Lightning checkpoint or a bare state dict with our keys.

The paper released no PyTorch checkpoints. The module names are torchvision's ResNet names, so a
torchvision ResNet-50 file fits the convolutional parts of a hybrid (``strict=False`` then logs the lambda
layers as missing and the replaced 3x3 convolutions as unexpected). A classifier of another shape is skipped
with a warning (fine-tuning on another class count); anything else that does not fit is an error naming the
file and the keys.
"""

import logging
import os
from pathlib import Path

from torch import nn

from vtrain.checkpoint import fit_state_dict, read_state_dict

logger = logging.getLogger(__name__)

CLASSIFIER = ("fc.weight", "fc.bias")


def load_lambda_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load weights into a :class:`~vtrain.models.lambda_resnet.LambdaResNet` in place.

    Args:
        model: the network to fill.
        path: a vtrain Lightning checkpoint (``state_dict`` with ``model.`` keys) or a torch file holding a
            state dict (bare, or under ``model`` / ``state_dict``), read with ``weights_only=True``.
        strict: raise on missing or unexpected keys (otherwise they are logged).

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is unreadable, carries pickled Python objects, or does not fit ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LambdaResNet checkpoint {path} does not exist or is not a file")
    state_dict = read_state_dict(path)
    expected = model.state_dict()
    skipped = [
        k
        for k in CLASSIFIER
        if k in state_dict and k in expected and state_dict[k].shape != expected[k].shape
    ]
    if skipped:
        logger.warning(
            "%s: classifier %s has shape %s, the model %s; it stays freshly initialised",
            path,
            skipped[0],
            tuple(state_dict[skipped[0]].shape),
            tuple(expected[skipped[0]].shape),
        )
        state_dict = {k: v for k, v in state_dict.items() if k not in skipped}
    fit_state_dict(model, state_dict, path, strict, allowed_missing=frozenset(skipped))
    return model
