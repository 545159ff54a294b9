"""Relevance embedding, hard attention and soft attention of the texture transformer (section 3.1).

Patches of the LTE features of the up-sampled LR image (Q) and of the down- and up-sampled reference (K)
are compared by normalised inner products; each LR position takes the most relevant reference patch
(hard attention, the argmax) from the reference's own features (V) at three scales, and its relevance
(the max) is the soft attention map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patches_at(
    value: torch.Tensor, index: torch.Tensor, kernel: int, padding: int, stride: int
) -> torch.Tensor:
    """``F.unfold(value, kernel, padding=padding, stride=stride)[:, :, index]`` per batch element, without
    unfolding the positions nobody picked (the same values, a fraction of the memory and time).

    Args:
        value: [B, C, H, W]; index: [B, N] positions in the unfold grid (row-major).

    Returns:
        [B, C * kernel * kernel, N], channel-major like ``F.unfold``.
    """
    b, c, _, w = value.shape
    grid_w = (w + 2 * padding - kernel) // stride + 1
    padded = F.pad(value, (padding, padding, padding, padding))
    offsets = torch.arange(kernel, device=value.device)
    rows = (index // grid_w)[..., None] * stride + offsets  # [B, N, k]
    cols = (index % grid_w)[..., None] * stride + offsets
    flat = rows[..., :, None] * padded.shape[-1] + cols[..., None, :]  # [B, N, k, k]
    n = index.shape[1]
    picked = torch.gather(padded.flatten(2), 2, flat.reshape(b, 1, -1).expand(-1, c, -1))  # [B, C, N*k*k]
    return picked.view(b, c, n, kernel, kernel).permute(0, 1, 3, 4, 2).reshape(b, c * kernel * kernel, n)


class SearchTransfer(nn.Module):
    """Search (relevance embedding + hard / soft attention) and texture transfer; no parameters."""

    def forward(
        self,
        lr_up_lv3: torch.Tensor,
        ref_down_up_lv3: torch.Tensor,
        ref_lv1: torch.Tensor,
        ref_lv2: torch.Tensor,
        ref_lv3: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            lr_up_lv3: Q, LTE relu3_1 features of the bicubic-upsampled LR image [B, 256, h, w]
                (h, w = the LR size).
            ref_down_up_lv3: K, the same for the down- and up-sampled reference [B, 256, hr, wr].
            ref_lv1, ref_lv2, ref_lv3: V, LTE features of the reference at full, half and quarter
                resolution [B, 64, 4hr, 4wr], [B, 128, 2hr, 2wr], [B, 256, hr, wr].

        Returns:
            S: soft attention [B, 1, h, w], the best relevance of each position (cosine, in [-1, 1]).
            T_lv3 [B, 256, h, w], T_lv2 [B, 128, 2h, 2w], T_lv1 [B, 64, 4h, 4w]: transferred textures.
        """
        h, w = lr_up_lv3.shape[-2:]
        query = F.normalize(F.unfold(lr_up_lv3, kernel_size=3, padding=1), dim=1)  # [B, C*9, h*w]
        key = F.normalize(F.unfold(ref_down_up_lv3, kernel_size=3, padding=1), dim=1)  # [B, C*9, hr*wr]
        relevance = torch.bmm(key.transpose(1, 2), query)  # [B, hr*wr, h*w]
        soft, hard = relevance.max(dim=1)  # [B, h*w]

        # The same reference positions at three scales: 3x3 patches of relu3_1, 6x6 (stride 2) of relu2_1,
        # 12x12 (stride 4) of relu1_1; folding sums the overlapping patches, 9 per pixel in each case.
        textures = []
        for value, kernel, padding, stride, scale in (
            (ref_lv3, 3, 1, 1, 1),
            (ref_lv2, 6, 2, 2, 2),
            (ref_lv1, 12, 4, 4, 4),
        ):
            picked = patches_at(value, hard, kernel, padding, stride)
            folded = F.fold(
                picked, output_size=(h * scale, w * scale), kernel_size=kernel, padding=padding, stride=stride
            )
            textures.append(folded / 9.0)
        soft_attention = soft.view(soft.size(0), 1, h, w)
        return soft_attention, textures[0], textures[1], textures[2]
