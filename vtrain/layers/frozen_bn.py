"""Frozen BatchNorm folded into the convolution before it: one convolution instead of a convolution and two
element-wise passes over its output (and their backward).

A frozen BatchNorm is the affine map ``y * s + t`` per channel, with ``s = weight / sqrt(running_var + eps)``
and ``t = bias - running_mean * s``. After a bias-free convolution, ``conv(x, W) * s + t`` equals
``conv(x, W * s) + t`` (up to float rounding): the scaled weight costs one pass over W per step, the
BatchNorm cost a pass over every activation, forward and backward. The BatchNorm stays where it was, with its
statistics and its state-dict keys (``bn1.running_var``, ...), so checkpoints load unchanged; only its
forward becomes the identity.
"""

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A FrozenBatchNorm2d whose convolution applies it (:class:`ConvFrozenBatchNorm2d`): the identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel ``s`` and ``t`` of ``y * s + t``, each [C]."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale


class ConvFrozenBatchNorm2d(nn.Conv2d):
    """A bias-free Conv2d followed by its frozen BatchNorm, computed as one convolution.

    It holds the original convolution's weight Parameter (trained or not, as before); the BatchNorm is the
    :class:`FoldedFrozenBatchNorm2d` registered in the convolution's parent, referenced here but not
    registered twice (its keys stay the parent's).
    """

    def __init__(self, conv: nn.Conv2d, bn: FoldedFrozenBatchNorm2d) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=False,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        self.weight = conv.weight
        object.__setattr__(self, "frozen_bn", bn)  # not a submodule: the parent owns its keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.frozen_bn.scale_and_shift()
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), shift)


def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every FrozenBatchNorm2d that directly follows a bias-free Conv2d among its parent's children
    (registration order) into that convolution, in place; returns ``module``.

    Registration order is the order of computation in torchvision's ResNets (the stem's ``conv1``, ``bn1``;
    each block's ``convN``, ``bnN``; ``downsample`` = conv, BatchNorm), the modules this is for; do not
    apply it to a module that registers a convolution and a BatchNorm next to each other but does not run
    one on the other's output.
    """
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if (
                type(conv) is nn.Conv2d
                and conv.bias is None
                and type(bn) is FrozenBatchNorm2d
                and bn.weight.numel() == conv.out_channels
            ):
                folded = FoldedFrozenBatchNorm2d(bn.weight.numel(), bn.eps).to(bn.weight.device)
                folded.load_state_dict(bn.state_dict())
                setattr(parent, bn_name, folded)
                setattr(parent, conv_name, ConvFrozenBatchNorm2d(conv, folded))
    return module
