"""The CNN backbone of DETR (section 3.2): an ImageNet ResNet with frozen BatchNorm, cut after its last stage.

Module names follow the official code (``backbone.0.body.layer1.0.conv1.weight``,
``backbone.1.row_embed.weight``), so its checkpoints load without renaming keys.
"""

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from vtrain.layers.frozen_bn import fold_frozen_batchnorm
from vtrain.models.detr.checkpoint import fit_state_dict, read_state_dict

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


class Backbone(nn.Module):
    """torchvision ResNet with FrozenBatchNorm2d, returning the last stage's features.

    The stem (``conv1``, ``bn1``) and ``layer1`` never train, as in the official code; BatchNorm statistics
    and affine terms are buffers and never train either. That recipe assumes ImageNet weights: without
    them (training from scratch, the tiny CPU runs) a frozen random stem and identity BatchNorms leave the
    features unnormalised, so ``frozen_bn=False`` switches to ordinary BatchNorm and trains every stage.

    Args:
        name: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``.
        dilation: DC5: replace the stride of the last stage by dilation, so features are at stride 16
            instead of 32 (bottleneck ResNets only).
        train_backbone: False freezes every backbone parameter (official ``--lr_backbone 0``).
        weights: a torchvision-format ImageNet state dict file (``conv1.weight``, ..., ``fc.bias``; the
            classifier is ignored) to start from; None keeps torchvision's random initialisation.
        frozen_bn: FrozenBatchNorm2d with the stem and layer1 frozen (the paper); False: trainable
            BatchNorm2d and every stage trained (not in the paper; for training without ImageNet weights).
    """

    def __init__(
        self,
        name: str = "resnet50",
        dilation: bool = False,
        train_backbone: bool = True,
        weights: str | os.PathLike | None = None,
        frozen_bn: bool = True,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"Backbone: unknown ResNet {name!r}; expected one of {', '.join(RESNETS)}")
        if dilation and name in ("resnet18", "resnet34"):
            raise ValueError(f"Backbone: dilation (DC5) needs a bottleneck ResNet, {name} has basic blocks")
        resnet = getattr(torchvision.models, name)(
            weights=None,
            replace_stride_with_dilation=[False, False, dilation],
            norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
        )
        stages = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        self.body = nn.Sequential(OrderedDict((stage, getattr(resnet, stage)) for stage in stages))
        self.num_channels = 512 if name in ("resnet18", "resnet34") else 2048
        if weights is not None:
            state_dict = read_state_dict(weights)
            state_dict = {
                k: v
                for k, v in state_dict.items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
            }
            counters = frozenset(k for k in self.body.state_dict() if k.endswith("num_batches_tracked"))
            fit_state_dict(self.body, state_dict, weights, strict=True, allowed_missing=counters)
        for param_name, param in self.body.named_parameters():
            trained = not frozen_bn or param_name.startswith(("layer2.", "layer3.", "layer4."))
            param.requires_grad_(train_backbone and trained)
        if frozen_bn:  # the same function, one convolution per conv + BatchNorm pair (about 10 % of a step)
            fold_frozen_batchnorm(self.body)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            images: [B, 3, H, W], ImageNet-normalized.
            mask: [B, H, W] bool, True on padding.

        Returns:
            features [B, C, H / 32, W / 32] (H / 16 with DC5) and the mask resized to them (nearest).
        """
        features = self.body(images)
        mask = F.interpolate(mask[None].float(), size=features.shape[-2:]).to(torch.bool)[0]
        return features, mask


class BackboneWithPositionEncoding(nn.Sequential):
    """The backbone (index 0) and the position encoding of its feature map (index 1).

    A Sequential only so that parameter names are ``backbone.0.*`` and ``backbone.1.*`` as in the official
    checkpoints (its ``Joiner``).
    """

    def __init__(self, backbone: Backbone, position_encoding: nn.Module) -> None:
        super().__init__(backbone, position_encoding)
        self.num_channels = backbone.num_channels

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W], mask [B, H, W] -> features [B, C, h, w], mask [B, h, w], pos [B, D, h, w]."""
        features, mask = self[0](images, mask)
        pos = self[1](mask).to(features.dtype)
        return features, mask, pos
