"""The main network of TTSR (section 3.2 and figure 3): shallow feature extraction, texture transformers
stacked at 1x, 2x and 4x of the LR size, cross-scale feature integration (CSFI) and the merge tail.

Attribute names follow the official researchmm/TTSR ``MainNet`` (``SFE.RBs.0.conv1``, ``conv11_head``,
``ex12``, ``ex123``, ``merge_tail``), so its checkpoints load without renaming keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# channels of the LTE features the texture transformers fuse at 1x (relu3_1), 2x (relu2_1), 4x (relu1_1)
TEXTURE_CHANNELS = (256, 128, 64)


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bicubic")


class ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3, scaled by ``res_scale`` and added to the input (EDSR block, no BN)."""

    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = conv3x3(n_feats, n_feats)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x))) * self.res_scale + x


class SFE(nn.Module):
    """Shallow feature extractor: conv3x3 + ReLU, residual blocks, conv3x3, long skip."""

    def __init__(self, num_res_blocks: int, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.conv_head = conv3x3(3, n_feats)
        self.RBs = nn.ModuleList(ResBlock(n_feats, res_scale) for _ in range(num_res_blocks))
        self.conv_tail = conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] -> [B, n_feats, h, w]."""
        x = F.relu(self.conv_head(x))
        y = x
        for block in self.RBs:
            y = block(y)
        return self.conv_tail(y) + x


class CSFI2(nn.Module):
    """Cross-scale feature integration of two levels: each takes the other resampled to its size
    (bicubic x2 + conv1x1 up, strided conv3x3 down) and merges the concatenation with a conv3x3."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv12 = conv1x1(n_feats, n_feats)
        self.conv21 = conv3x3(n_feats, n_feats, 2)
        self.conv_merge1 = conv3x3(n_feats * 2, n_feats)
        self.conv_merge2 = conv3x3(n_feats * 2, n_feats)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x1 [B, C, h, w], x2 [B, C, 2h, 2w] -> the same shapes."""
        x12 = F.relu(self.conv12(upsample(x1, 2)))
        x21 = F.relu(self.conv21(x2))
        x1 = F.relu(self.conv_merge1(torch.cat((x1, x21), dim=1)))
        x2 = F.relu(self.conv_merge2(torch.cat((x2, x12), dim=1)))
        return x1, x2


class CSFI3(nn.Module):
    """Cross-scale feature integration of three levels (x1, x2, x4), as :class:`CSFI2`."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv12 = conv1x1(n_feats, n_feats)
        self.conv13 = conv1x1(n_feats, n_feats)
        self.conv21 = conv3x3(n_feats, n_feats, 2)
        self.conv23 = conv1x1(n_feats, n_feats)
        self.conv31_1 = conv3x3(n_feats, n_feats, 2)
        self.conv31_2 = conv3x3(n_feats, n_feats, 2)
        self.conv32 = conv3x3(n_feats, n_feats, 2)
        self.conv_merge1 = conv3x3(n_feats * 3, n_feats)
        self.conv_merge2 = conv3x3(n_feats * 3, n_feats)
        self.conv_merge3 = conv3x3(n_feats * 3, n_feats)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x1 [B, C, h, w], x2 [B, C, 2h, 2w], x3 [B, C, 4h, 4w] -> the same shapes."""
        x12 = F.relu(self.conv12(upsample(x1, 2)))
        x13 = F.relu(self.conv13(upsample(x1, 4)))
        x21 = F.relu(self.conv21(x2))
        x23 = F.relu(self.conv23(upsample(x2, 2)))
        x31 = F.relu(self.conv31_2(F.relu(self.conv31_1(x3))))
        x32 = F.relu(self.conv32(x3))
        x1 = F.relu(self.conv_merge1(torch.cat((x1, x21, x31), dim=1)))
        x2 = F.relu(self.conv_merge2(torch.cat((x2, x12, x32), dim=1)))
        x3 = F.relu(self.conv_merge3(torch.cat((x3, x13, x23), dim=1)))
        return x1, x2, x3


class MergeTail(nn.Module):
    """Brings the 1x and 2x levels to 4x, merges the three and maps them to RGB in [-1, 1]."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv13 = conv1x1(n_feats, n_feats)
        self.conv23 = conv1x1(n_feats, n_feats)
        self.conv_merge = conv3x3(n_feats * 3, n_feats)
        self.conv_tail1 = conv3x3(n_feats, n_feats // 2)
        self.conv_tail2 = conv1x1(n_feats // 2, 3)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        """x1 [B, C, h, w], x2 [B, C, 2h, 2w], x3 [B, C, 4h, 4w] -> [B, 3, 4h, 4w] in [-1, 1]."""
        x13 = F.relu(self.conv13(upsample(x1, 4)))
        x23 = F.relu(self.conv23(upsample(x2, 2)))
        x = F.relu(self.conv_merge(torch.cat((x3, x13, x23), dim=1)))
        return self.conv_tail2(self.conv_tail1(x)).clamp(-1, 1)


def _blocks(num: int, n_feats: int, res_scale: float) -> nn.ModuleList:
    return nn.ModuleList(ResBlock(n_feats, res_scale) for _ in range(num))


def _run(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


class MainNet(nn.Module):
    """Args:
    num_res_blocks: residual blocks of the SFE and of the 1x, 2x and 4x stages (paper: 16, 16, 8, 4).
    n_feats: feature channels (paper: 64).
    res_scale: residual scaling of every block (paper: 1).
    """

    def __init__(
        self, num_res_blocks: Sequence[int] = (16, 16, 8, 4), n_feats: int = 64, res_scale: float = 1.0
    ):
        super().__init__()
        if len(num_res_blocks) != 4:
            raise ValueError(
                f"MainNet: num_res_blocks needs 4 counts (SFE, 1x, 2x, 4x), found {num_res_blocks}"
            )
        n_sfe, n1, n2, n4 = num_res_blocks
        self.num_res_blocks = tuple(num_res_blocks)
        t3, t2, t1 = TEXTURE_CHANNELS
        self.SFE = SFE(n_sfe, n_feats, res_scale)
        # 1x stage
        self.conv11_head = conv3x3(t3 + n_feats, n_feats)
        self.RB11 = _blocks(n1, n_feats, res_scale)
        self.conv11_tail = conv3x3(n_feats, n_feats)
        # sub-pixel 1x -> 2x
        self.conv12 = conv3x3(n_feats, n_feats * 4)
        self.ps12 = nn.PixelShuffle(2)
        # 2x stage
        self.conv22_head = conv3x3(t2 + n_feats, n_feats)
        self.ex12 = CSFI2(n_feats)
        self.RB21 = _blocks(n2, n_feats, res_scale)
        self.RB22 = _blocks(n2, n_feats, res_scale)
        self.conv21_tail = conv3x3(n_feats, n_feats)
        self.conv22_tail = conv3x3(n_feats, n_feats)
        # sub-pixel 2x -> 4x
        self.conv23 = conv3x3(n_feats, n_feats * 4)
        self.ps23 = nn.PixelShuffle(2)
        # 4x stage
        self.conv33_head = conv3x3(t1 + n_feats, n_feats)
        self.ex123 = CSFI3(n_feats)
        self.RB31 = _blocks(n4, n_feats, res_scale)
        self.RB32 = _blocks(n4, n_feats, res_scale)
        self.RB33 = _blocks(n4, n_feats, res_scale)
        self.conv31_tail = conv3x3(n_feats, n_feats)
        self.conv32_tail = conv3x3(n_feats, n_feats)
        self.conv33_tail = conv3x3(n_feats, n_feats)
        self.merge_tail = MergeTail(n_feats)

    @staticmethod
    def _fuse(x: torch.Tensor, texture: torch.Tensor, soft: torch.Tensor, head: nn.Conv2d) -> torch.Tensor:
        """Soft-attention fusion (eq. 7): F + conv(concat(F, T)) * S."""
        return x + head(torch.cat((x, texture), dim=1)) * soft

    def forward(
        self,
        lr: torch.Tensor,
        S: torch.Tensor,
        T_lv3: torch.Tensor,
        T_lv2: torch.Tensor,
        T_lv1: torch.Tensor,
    ) -> torch.Tensor:
        """Args:
            lr: [B, 3, h, w] in [-1, 1].
            S: soft attention [B, 1, h, w]; T_lv3 [B, 256, h, w], T_lv2 [B, 128, 2h, 2w],
                T_lv1 [B, 64, 4h, 4w]: transferred textures (see SearchTransfer).

        Returns:
            [B, 3, 4h, 4w] in [-1, 1].
        """
        x11 = self._fuse(self.SFE(lr), T_lv3, S, self.conv11_head)
        x11 = x11 + self.conv11_tail(_run(self.RB11, x11))

        x21 = x11
        x22 = F.relu(self.ps12(self.conv12(x11)))
        x22 = self._fuse(x22, T_lv2, upsample(S, 2), self.conv22_head)
        x21_res, x22_res = self.ex12(x21, x22)
        x21 = x21 + self.conv21_tail(_run(self.RB21, x21_res))
        x22 = x22 + self.conv22_tail(_run(self.RB22, x22_res))

        x31, x32 = x21, x22
        x33 = F.relu(self.ps23(self.conv23(x22)))
        x33 = self._fuse(x33, T_lv1, upsample(S, 4), self.conv33_head)
        x31_res, x32_res, x33_res = self.ex123(x31, x32, x33)
        x31 = x31 + self.conv31_tail(_run(self.RB31, x31_res))
        x32 = x32 + self.conv32_tail(_run(self.RB32, x32_res))
        x33 = x33 + self.conv33_tail(_run(self.RB33, x33_res))
        return self.merge_tail(x31, x32, x33)
