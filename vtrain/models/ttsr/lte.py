"""The learnable texture extractor (LTE, section 3.1) and the fixed VGG19 of the perceptual loss.

Both are slices of torchvision's ``vgg19().features`` after an ImageNet mean / std shift of images in
[0, 1]. Module names follow the official researchmm/TTSR code (``LTE.slice1.0.weight``,
``LTE.slice3.10.bias``, ``LTE.sub_mean.weight``), so its checkpoints load without renaming keys.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision.models import vgg

from vtrain.checkpoint import read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Layer indices of torchvision's vgg19().features where each LTE slice ends (exclusive): relu1_1 (1),
# relu2_1 (6) and relu3_1 (11); and relu5_1 (29) for the perceptual loss.
LTE_SLICES = ((0, 2), (2, 7), (7, 12))
RELU5_1_END = 30


class MeanShift(nn.Conv2d):
    """Fixed 1x1 convolution computing ``(x - mean) / std`` per channel; a convolution (with frozen
    ``weight`` and ``bias``) only because the official checkpoints store it as one."""

    def __init__(
        self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
    ) -> None:
        super().__init__(3, 3, kernel_size=1)
        std_t = torch.tensor(std)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std_t.view(3, 1, 1, 1))
            self.bias.copy_(-torch.tensor(mean) / std_t)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


def vgg19_features(weights: str | os.PathLike | None, end: int) -> nn.Sequential:
    """The first ``end`` layers of torchvision's ``vgg19().features`` (same indices and initialisation),
    filled from a torchvision-format ImageNet state dict file (``features.0.weight``, ...; the rest
    ignored) or randomly initialised (None; the builders require the file: ``vtrain.models.pretrained``)."""
    config = []
    for item in vgg.cfgs["E"]:  # the VGG19 layer plan: each number is a conv + ReLU, "M" a max-pool
        if sum(2 if c != "M" else 1 for c in config) >= end:
            break
        config.append(item)
    features = vgg.make_layers(config)[:end]
    for module in features.modules():
        if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    if weights is None:
        return features
    state_dict = read_state_dict(weights)
    found = {k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")}
    missing = [k for k in features.state_dict() if k not in found]
    if missing:
        raise ValueError(f"{weights}: expected a torchvision VGG19 state dict, missing features.{missing[0]}")
    features.load_state_dict({k: found[k] for k in features.state_dict()})
    return features


class LTE(nn.Module):
    """Learnable texture extractor: VGG19 up to relu1_1, relu2_1 and relu3_1.

    Args:
        vgg_weights: torchvision VGG19 ImageNet state dict file to start from; None: random.
        requires_grad: False freezes the VGG slices (the mean shift is always frozen).
    """

    def __init__(self, vgg_weights: str | os.PathLike | None = None, requires_grad: bool = True) -> None:
        super().__init__()
        features = vgg19_features(vgg_weights, LTE_SLICES[-1][1])
        for i, (start, end) in enumerate(LTE_SLICES, 1):
            block = nn.Sequential()
            for index in range(start, end):
                block.add_module(str(index), features[index])
            setattr(self, f"slice{i}", block)
        for param in (*self.slice1.parameters(), *self.slice2.parameters(), *self.slice3.parameters()):
            param.requires_grad_(requires_grad)
        self.sub_mean = MeanShift()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B, 3, H, W] in [0, 1] -> lv1 [B, 64, H, W], lv2 [B, 128, H/2, W/2], lv3 [B, 256, H/4, W/4]."""
        x = self.sub_mean(x)
        lv1 = self.slice1(x)
        lv2 = self.slice2(lv1)
        lv3 = self.slice3(lv2)
        return lv1, lv2, lv3


class VGG19Relu51(nn.Module):
    """Frozen VGG19 up to relu5_1 (the perceptual loss' feature space); images in [0, 1].

    Args:
        vgg_weights: torchvision VGG19 ImageNet state dict file; None: random.
    """

    def __init__(self, vgg_weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.slice1 = vgg19_features(vgg_weights, RELU5_1_END)
        self.slice1.requires_grad_(False)
        self.sub_mean = MeanShift()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] in [0, 1] -> relu5_1 features [B, 512, H/16, W/16]."""
        return self.slice1(self.sub_mean(x))
