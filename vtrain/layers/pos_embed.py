"""Position embeddings: resampling learned tables to a new patch grid (fine-tuning at a new resolution) and
fixed 2-D sine-cosine tables (MAE)."""

import math

import torch
import torch.nn.functional as F


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = True,
    align_corners: bool | None = None,
) -> torch.Tensor:
    """Interpolate the grid part of a position-embedding table to ``new_grid`` (ViT paper, section 3.2).

    The prefix rows (class token, ...) are kept as they are; the remaining rows are read as an
    ``old_grid`` image of D channels, interpolated in 2-D, and flattened back in row-major order.

    Args:
        pos_embed: [1, num_prefix_tokens + H * W, D].
        new_grid: target (h, w) in patches.
        old_grid: source (H, W); inferred as square when None.
        num_prefix_tokens: leading rows that belong to no grid position.
        mode: ``F.interpolate`` mode.
        antialias: low-pass before downsampling (no effect when upsampling); timm's default.
        align_corners: ``F.interpolate``'s (linear and cubic modes): the corner positions of both grids
            coincide. ``mode="bilinear", antialias=False, align_corners=True`` is the official ViT code's
            ``scipy.ndimage.zoom(grid, zoom, order=1)``; the defaults are timm's.

    Returns:
        [1, num_prefix_tokens + h * w, D], same dtype as ``pos_embed``.
    """
    num_grid_tokens = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_grid_tokens)
        if side * side != num_grid_tokens:
            raise ValueError(
                f"resample_abs_pos_embed: {num_grid_tokens} positions are not a square grid; pass old_grid"
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != num_grid_tokens:
        raise ValueError(
            f"resample_abs_pos_embed: old_grid {tuple(old_grid)} has {old_grid[0] * old_grid[1]} positions, "
            f"the table has {num_grid_tokens}"
        )
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed

    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    # interpolate needs float32 (bicubic is not implemented for half on CPU)
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid, size=tuple(new_grid), mode=mode, antialias=antialias, align_corners=align_corners
    )
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def sincos_2d_pos_embed(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False, temperature: float = 10000.0
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings of a patch grid, laid out as MAE's (He et al. 2021).

    Row-major positions (row ``i``, column ``j``); the first D/2 channels encode the column ``j``, the
    last D/2 the row ``i``, each as ``[sin(p * w_k) | cos(p * w_k)]`` with ``w_k = temperature ** (-k /
    (D / 4))``, k = 0 .. D/4 - 1. Computed in float64 and returned in float32, as the official code
    (facebookresearch/mae util/pos_embed.py:20-67 at efb2a80, whose meshgrid puts the column first).

    Args:
        embed_dim: D, a multiple of 4.
        grid_size: (rows, columns) of patches, or one side of a square grid.
        cls_token: prepend an all-zero row for the class token.

    Returns:
        [(1 if cls_token else 0) + rows * columns, D] float32.
    """
    if embed_dim % 4:
        raise ValueError(f"sincos_2d_pos_embed: embed_dim must be a multiple of 4, found {embed_dim}")
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    quarter = embed_dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    row, col = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )
    halves = []
    for position in (col.flatten(), row.flatten()):
        angles = position[:, None] * omega[None, :]
        halves += [angles.sin(), angles.cos()]
    table = torch.cat(halves, dim=1)
    if cls_token:
        table = torch.cat([table.new_zeros(1, embed_dim), table])
    return table.float()
