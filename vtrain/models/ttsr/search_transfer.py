"""Relevance embedding, hard attention and soft attention of the texture transformer (section 3.1).

Patches of the LTE features of the up-sampled LR image (Q) and of the down- and up-sampled reference (K)
are compared by normalised inner products; each LR position takes the most relevant reference patch
(hard attention, the argmax) from the reference's own features (V) at three scales, and its relevance
(the max) is the soft attention map.

The search never unfolds the 3x3 patches. The inner product of two zero-padded 3x3 patches is the sum of
the 9 inner products of their pixels at the same offsets, so one [K positions x Q positions] Gram matrix
of the 256-channel pixels (9x fewer multiply-adds than the unfolded 2304-channel patches the official
code multiplies) summed along 9 shifted diagonals gives every patch pair's inner product; the patch norms
come from a 3x3 box sum of squared pixels. The Gram matrix is built a band of query rows at a time,
so memory stays at a few hundred MiB whatever the image size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# elements of one band's Gram matrix (fp32: 256 MiB): bounds the search's working memory
BAND_ELEMENTS = 2**26
# F.normalize's floor on a norm
EPS = 1e-12


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
    rows = (index // grid_w)[:, None, None, :] * stride + offsets[:, None, None]  # [B, k, 1, N]
    cols = (index % grid_w)[:, None, None, :] * stride + offsets[:, None]  # [B, 1, k, N]
    # indices laid out as the result (offset-major, then position), so the gather writes it in place
    flat = (rows * padded.shape[-1] + cols).view(b, 1, -1).expand(-1, c, -1)  # [B, C, k*k*N]
    return torch.gather(padded.flatten(2), 2, flat).view(b, c * kernel * kernel, index.shape[1])


def patch_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norms of the zero-padded 3x3 patches of x [B, C, H, W] (those of ``F.unfold(x, 3, padding=1)``),
    floored like ``F.normalize``: [B, H, W]."""
    squares = x.square().sum(1, keepdim=True)
    return (F.avg_pool2d(squares, 3, stride=1, padding=1, divisor_override=1)[:, 0]).sqrt().clamp_min(EPS)


@torch.no_grad()
def most_relevant(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Hard attention: for every 3x3 patch of query [B, C, h, w], the position (row-major in [hr, wr]) of
    the 3x3 patch of key [B, C, hr, wr] with the highest cosine similarity (both zero-padded by 1, as
    ``F.unfold(x, 3, padding=1)``): [B, h*w]. No gradient (an argmax has none). Always in float32, also
    under bf16 autocast: at bf16's 3 significant digits most picks would be ties."""
    with torch.autocast(query.device.type, enabled=False):
        return _most_relevant(query.float(), key.float())


def _most_relevant(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    b, _, h, w = query.shape
    hr, wr = key.shape[-2:]
    q = F.pad(query, (1, 1, 1, 1))  # [B, C, h+2, w+2]
    k = F.pad(key, (1, 1, 1, 1)).flatten(2)  # [B, C, (hr+2)(wr+2)]
    inverse_norm = patch_norms(key).reciprocal()  # [B, hr, wr]; the query's norm does not change the argmax
    band = max(1, BAND_ELEMENTS // max(1, b * (w + 2) * k.shape[-1]) - 2)
    hard = []
    for top in range(0, h, band):
        rows = min(band, h - top)
        # inner products of every padded query pixel of rows top-1 .. top+rows with every padded key pixel
        gram = torch.bmm(q[:, :, top : top + rows + 2].flatten(2).transpose(1, 2), k)
        gram = gram.view(b, rows + 2, w + 2, hr + 2, wr + 2)
        # query (i, j) against key (y, x) collects gram[i + a, j + d, y + a, x + d] for a, d in 0..2 (padded
        # coordinates): sum the 3 column offsets, then the 3 row offsets
        columns = gram[:, :, 0:w, :, 0:wr] + gram[:, :, 1 : w + 1, :, 1 : wr + 1]
        columns += gram[:, :, 2 : w + 2, :, 2 : wr + 2]  # [B, rows+2, w, hr+2, wr]
        scores = columns[:, 0:rows, :, 0:hr] + columns[:, 1 : rows + 1, :, 1 : hr + 1]
        scores += columns[:, 2 : rows + 2, :, 2 : hr + 2]  # [B, rows, w, hr, wr]
        scores *= inverse_norm[:, None, None]
        # the maximum over the contiguous last dimension: several times faster than over the first
        hard.append(scores.view(b, rows * w, hr * wr).argmax(dim=-1))
    return torch.cat(hard, dim=1)


def picked_inner_products(query: torch.Tensor, key: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Inner product of each zero-padded 3x3 patch of query [B, C, h, w] with the key patch it picked
    (hard [B, h*w], positions in [hr, wr]): the sum over the 9 offsets of the pixels' inner products, one
    [B, C, h*w] slice at a time, so neither side is unfolded: [B, h*w]. Differentiable in both."""
    h, w = query.shape[-2:]
    q = F.pad(query, (1, 1, 1, 1))
    k = F.pad(key, (1, 1, 1, 1)).flatten(2)  # [B, C, (hr+2)(wr+2)]
    wr = key.shape[-1]
    rows, cols = hard // wr, hard % wr  # the picked patch's top-left pixel in padded coordinates
    total = query.new_zeros(hard.shape)
    for a in range(3):
        for d in range(3):
            index = ((rows + a) * (wr + 2) + cols + d)[:, None].expand(-1, k.shape[1], -1)
            total = total + (q[:, :, a : a + h, d : d + w].flatten(2) * k.gather(2, index)).sum(1)
    return total


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
        b, _, h, w = lr_up_lv3.shape
        hard = most_relevant(lr_up_lv3, ref_down_up_lv3)  # [B, h*w]
        # The soft attention is the relevance of the chosen pair, computed from the two patches (so that
        # gradients reach Q and K through it as they do through the official max over all pairs).
        norms = patch_norms(lr_up_lv3).flatten(1) * patch_norms(ref_down_up_lv3).flatten(1).gather(1, hard)
        soft = picked_inner_products(lr_up_lv3, ref_down_up_lv3, hard) / norms  # [B, h*w]

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
        soft_attention = soft.view(b, 1, h, w)
        return soft_attention, textures[0], textures[1], textures[2]
