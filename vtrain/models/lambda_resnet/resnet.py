"""LambdaResNets: ResNets whose bottleneck 3x3 convolutions are replaced by lambda layers.

The blocks are torchvision's ``Bottleneck`` (ResNet v1.5: the stride sits on the 3x3 convolution), with
``conv2`` swapped for a :class:`~vtrain.models.lambda_resnet.layer.LambdaLayer` where the architecture asks
for one (stride 2 then becomes the paper's 3 x 3 average pooling with stride 2 after the lambda layer). The
module names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``fc``), so the
convolutional parts of a torchvision ResNet state dict have the same keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, conv1x1

from vtrain.models.lambda_resnet.layer import LambdaLayer


class LambdaResNet(nn.Module):
    """A bottleneck ResNet with lambda layers in chosen blocks.

    Args:
        layers: bottleneck blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        lambda_blocks: per stage, the indices of the blocks whose 3x3 convolution is a lambda layer
            (``"all"`` for every block of the stage).
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        widths: bottleneck width of each stage (the block outputs are 4x wider).
        stem: ``"imagenet"`` (7x7 stride-2 convolution + 3x3 max pooling) or ``"cifar"`` (one 3x3
            convolution of stride ``stem_stride``, no pooling) for 32x32 inputs.
        stem_width: channels of the stem.
        stem_stride: stride of the CIFAR stem (1 as in CIFAR ResNets; 2 for a cheaper CPU model).
        dim_k, heads, dim_u, r: lambda layer hyper-parameters |k|, |h|, |u| and the lambda convolution size
            (``None``: global relative position embeddings, which need ``img_size``).
        img_size: input resolution; only used to size relative position embeddings (and recorded as the
            preset's training resolution).
        drop_rate: dropout before the classifier.
        zero_init_residual: start every block's last BatchNorm at zero, so each block begins as identity.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        lambda_blocks: Sequence[Sequence[int] | str] = ("all", "all", "all", "all"),
        num_classes: int = 1000,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        stem_width: int = 64,
        stem_stride: int = 1,
        dim_k: int = 16,
        heads: int = 4,
        dim_u: int = 1,
        r: int | None = 23,
        img_size: int = 224,
        drop_rate: float = 0.0,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths) or len(layers) != len(lambda_blocks):
            raise ValueError(
                f"LambdaResNet: layers {tuple(layers)}, widths {tuple(widths)} and lambda_blocks "
                f"{tuple(lambda_blocks)} must have one entry per stage"
            )
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            size = img_size // 4
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(3, stem_width, 3, stride=stem_stride, padding=1, bias=False)
            self.maxpool = nn.Identity()
            size = img_size // stem_stride
        else:
            raise ValueError(f"LambdaResNet: stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.img_size = img_size

        lambda_args = dict(dim_k=dim_k, heads=heads, dim_u=dim_u, r=r)
        in_channels = stem_width
        for stage, (depth, width, chosen) in enumerate(zip(layers, widths, lambda_blocks, strict=True)):
            chosen = range(depth) if chosen == "all" else chosen
            if any(not 0 <= i < depth for i in chosen):
                raise ValueError(
                    f"LambdaResNet: lambda_blocks {list(chosen)} out of range for stage {stage + 1}"
                )
            blocks = []
            for index in range(depth):
                stride = 2 if index == 0 and stage > 0 else 1
                block, in_channels = self._block(
                    in_channels, width, stride, index in chosen, size, lambda_args
                )
                blocks.append(block)
                size = -(-size // stride)  # strided 3x3 convolution or pooling with padding 1: ceil
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.num_features = in_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_channels, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(zero_init_residual)

    @staticmethod
    def _block(
        in_channels: int, width: int, stride: int, use_lambda: bool, size: int, lambda_args: dict
    ) -> tuple[Bottleneck, int]:
        out_channels = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )
        block = Bottleneck(in_channels, width, stride=stride, downsample=downsample)
        if use_lambda:
            # the lambda layer sees the block's input resolution; stride 2 pools its output
            block.conv2 = LambdaLayer(width, width, feat_size=size, stride=stride, **lambda_args)
        return block, out_channels

    def init_weights(self, zero_init_residual: bool = True) -> None:
        """torchvision's ResNet initialisation (Kaiming-normal convolutions, unit BatchNorm); lambda layers
        keep their own (``LambdaLayer.reset_parameters``)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, LambdaLayer):
                module.reset_parameters()
            elif isinstance(module, Bottleneck) and zero_init_residual:
                nn.init.zeros_(module.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, num_features, H / 32, W / 32] with four stages (H / (8 * stem_stride) with the
        CIFAR stem)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> logits [B, num_classes]."""
        x = self.avgpool(self.forward_features(x)).flatten(1)
        return self.fc(self.dropout(x))
