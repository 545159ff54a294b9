"""Spatial position encodings of the backbone feature map (DETR section 3.2 and appendix A.4).

Both encodings give every feature-map cell a vector of ``2 * num_pos_feats`` channels: half describes the
row, half the column. The sine encoding counts positions over the *unpadded* part of each image only, so an
image's encoding does not depend on how much padding its batch added.
"""

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """The sinusoidal encoding of "Attention Is All You Need", applied to y and x separately.

    Each cell's y (and x) coordinate is its 1-based row (column) index among the image's unpadded cells;
    when ``normalize`` it is divided by the image's unpadded height (width) and scaled to ``(0, scale]``.
    Channel ``2i`` is ``sin(pos / temperature^(2i / F))`` and channel ``2i + 1`` is
    ``cos(pos / temperature^(2i / F))``, with F = ``num_pos_feats``; the y channels come first.

    Args:
        num_pos_feats: F, channels per axis; the encoding has 2F channels (DETR: d_model / 2 = 128).
        temperature: base of the wavelength progression.
        normalize: divide positions by the image's extent (DETR's default).
        scale: the range positions are normalized to; 2 pi by default. Only with ``normalize``.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: [B, H, W] bool, True on padding -> encoding [B, 2F, H, W] float32."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6  # keeps an all-padding column or row finite
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        # channels 2i and 2i + 1 share the wavelength temperature^(2i / F)
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        # interleave: sin on even channels, cos on odd ones
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute encoding: a column embedding and a row embedding, concatenated (x channels first).

    Unlike the sine encoding it ignores the padding mask: cell (i, j) always gets ``[col[j], row[i]]``.

    Args:
        num_pos_feats: F, channels per axis; the encoding has 2F channels.
        max_size: the largest feature-map height and width it has embeddings for (50 in DETR).
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: [B, H, W] (only its shape is used) -> encoding [B, 2F, H, W]."""
        batch, h, w = mask.shape
        max_size = self.row_embed.num_embeddings
        if h > max_size or w > max_size:
            raise ValueError(
                f"PositionEmbeddingLearned has embeddings for feature maps up to {max_size}x{max_size}, "
                f"found {h}x{w}"
            )
        x_emb = self.col_embed(torch.arange(w, device=mask.device))  # [W, F]
        y_emb = self.row_embed(torch.arange(h, device=mask.device))  # [H, F]
        pos = torch.cat([x_emb[None].expand(h, w, -1), y_emb[:, None].expand(h, w, -1)], dim=-1)
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)
