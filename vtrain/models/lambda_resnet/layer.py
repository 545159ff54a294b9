"""The lambda layer (Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021).

Notation of the paper: ``n`` query positions, ``m`` context positions (here both the ``H * W`` pixels of
the feature map), ``|k|`` query / key depth, ``|h|`` query heads, ``|u|`` intra-depth, ``|v| = d / |h|``
value depth, ``d`` output channels. For every query position ``n``

    lambda_n = content lambda + position lambda_n                                  [|k|, |v|]
    content lambda    = sum_{m,u} softmax_m(K)[m, k, u] V[m, v, u]               (shared by all n)
    position lambda_n = sum_{m,u} E[n, m, k, u] V[m, v, u]
    y_n = concat over heads h of  lambda_n^T q_n^h                                  [|h| * |v| = d]

Queries and values are batch-normalised projections of the input, keys are normalised by a softmax over
the context positions, and there is no output projection. The position embeddings ``E`` come either from
learned relative position embeddings over a global context (``(2H - 1) x (2W - 1)`` relative positions,
fixed feature-map size) or from a *lambda convolution*: a 3-D convolution of the values with a
``r x r x 1`` kernel (``|u|`` in, ``|k|`` out channels), i.e. a local context of ``r x r`` pixels that
works at any feature-map size. A stride of 2 is a 3 x 3 average pooling with stride 2 of the output: "We
apply 3x3 average-pooling with stride 2 after the lambda layers to downsample in place of the strided
convolution" (the paper's architectural details, quoted verbatim from the ICLR submission in
lucidrains/lambda-networks issue 11). Padding 1 puts the pooling windows where torchvision's strided 3x3
convolution puts its kernels, so the block's output matches its strided shortcut at odd sizes too; padded
positions are not counted in the averages.

Differences from the two independent PyTorch implementations (the interop tests map weights across):

- timm ``timm.layers.LambdaLayer``: one fused ``qkv`` 1x1 convolution (``to_q``, ``to_k``, ``to_v``
  here, the same channel order), ``|u|`` fixed at 1, a Conv3d lambda convolution ``[k, 1, r, r, 1]`` (ours the
  2-D ``[k, u, r, r]``) with a bias (the paper's position
  lambdas have none; outputs agree once that bias is zero), the relative-position variant indexes the
  embeddings the same way (``E[m - n]``); its output reshape assumes ``d_out == d_in``; stride 2 is a
  2 x 2 average pooling there (the paper's is 3 x 3).
- lucidrains ``lambda-networks`` (0.4.0): separate projections with the same layouts (``(h k)``, ``(u k)``,
  ``(u v)``), a ``[k, u, 1, r, r]`` lambda-convolution kernel (ours is the 2-D ``[k, u, r, r]``, the same
  numbers), again with a bias; relative
  embeddings ``[2n - 1, 2n - 1, k, u]`` for square maps only; no stride.
- Both compute the key softmax in the input's dtype; here it is always float32 (see ``forward``), which is
  what keeps half precision finite.
"""

from __future__ import annotations

import torch
from torch import nn


def relative_position_index(height: int, width: int) -> torch.Tensor:
    """Index into a flattened ``(2H - 1) x (2W - 1)`` table of relative positions.

    Returns:
        [H * W, H * W] long tensor; entry ``[n, m]`` is the row-major index of the offset ``m - n``
        (shifted to be non-negative), so ``table.flatten(0, 1)[index]`` gives the embedding of every
        (query, context) pair.
    """
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    d_row = rows[None, :] - rows[:, None] + height - 1
    d_col = cols[None, :] - cols[:, None] + width - 1
    return d_row * (2 * width - 1) + d_col


class LambdaLayer(nn.Module):
    """Multi-query lambda layer for feature maps [B, C, H, W].

    Args:
        dim: input channels C.
        dim_out: output channels d (default ``dim``); must be divisible by ``heads``.
        dim_k: query / key depth |k|.
        heads: number of query heads |h|; value depth |v| = ``dim_out // heads``.
        dim_u: intra-depth |u| (keys and values have ``|u|`` slices, summed over like context positions).
        r: receptive field of the lambda convolution (odd) for local position lambdas; ``None`` selects
            global relative position embeddings, which need ``feat_size``.
        feat_size: (H, W) of the input for relative position embeddings (ignored with ``r``).
        stride: 1, or 2 to average-pool the output with a 3 x 3 window and stride 2 (the paper's
            downsampling in place of a strided convolution).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        dim_k: int = 16,
        heads: int = 4,
        dim_u: int = 1,
        r: int | None = 23,
        feat_size: int | tuple[int, int] | None = None,
        stride: int = 1,
    ) -> None:
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % heads != 0:
            raise ValueError(f"LambdaLayer: dim_out {dim_out} is not divisible by heads {heads}")
        if r is not None and r % 2 != 1:
            raise ValueError(f"LambdaLayer: the lambda convolution size r must be odd, got {r}")
        if r is None and feat_size is None:
            raise ValueError("LambdaLayer: relative position embeddings (r=None) need feat_size=(H, W)")
        if stride not in (1, 2):
            raise ValueError(f"LambdaLayer: stride must be 1 or 2, got {stride}")
        self.dim_k, self.heads, self.dim_u = dim_k, heads, dim_u
        self.dim_v = dim_out // heads
        self.r = r
        self.to_q = nn.Conv2d(dim, heads * dim_k, 1, bias=False)
        self.to_k = nn.Conv2d(dim, dim_u * dim_k, 1, bias=False)
        self.to_v = nn.Conv2d(dim, dim_u * self.dim_v, 1, bias=False)
        self.norm_q = nn.BatchNorm2d(heads * dim_k)
        self.norm_v = nn.BatchNorm2d(dim_u * self.dim_v)
        if r is not None:
            # The paper's lambda convolution is 3-D over [B, u, H, W, v] with an r x r x 1 kernel (u in, k out
            # channels); a kernel of depth 1 treats every value channel alike, so it runs as a 2-D convolution
            # with the value channels folded into the batch (much faster than Conv3d on CPU).
            self.feat_size = None
            self.lambda_conv = nn.Conv2d(dim_u, dim_k, r, padding=r // 2, bias=False)
        else:
            height, width = (feat_size, feat_size) if isinstance(feat_size, int) else tuple(feat_size)
            self.feat_size = (height, width)
            self.rel_pos_emb = nn.Parameter(torch.empty(2 * height - 1, 2 * width - 1, dim_k, dim_u))
            self.register_buffer("rel_pos_index", relative_position_index(height, width), persistent=False)
        # the paper's 3x3 average pooling with stride 2; padding 1 aligns it with a strided 3x3 convolution
        self.pool = (
            nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False) if stride == 2 else nn.Identity()
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections: normal with std fan_in^-1/2. Position embeddings: normal with std
        (context size)^-1/2, so position lambdas start at about unit scale like the content lambda."""
        for proj in (self.to_q, self.to_k, self.to_v):
            nn.init.normal_(proj.weight, std=proj.in_channels**-0.5)
        if self.r is not None:
            nn.init.normal_(self.lambda_conv.weight, std=(self.r * self.r * self.dim_u) ** -0.5)
        else:
            context = self.feat_size[0] * self.feat_size[1]
            nn.init.normal_(self.rel_pos_emb, std=(context * self.dim_u) ** -0.5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the lambda layer.

        Args:
            x: [B, C, H, W].
            mask: optional [B, H, W] bool, True where a pixel is real context (False: padding). Masked
                positions get no softmax weight and contribute no values to either lambda; queries at
                masked positions are still computed (their outputs are meaningless).

        Returns:
            [B, dim_out, H, W], or [B, dim_out, ceil(H / 2), ceil(W / 2)] with stride 2.
        """
        B, _, H, W = x.shape
        n, k, u, v, h = H * W, self.dim_k, self.dim_u, self.dim_v, self.heads
        if self.feat_size is not None and self.feat_size != (H, W):
            raise ValueError(
                f"LambdaLayer: relative position embeddings were built for a {self.feat_size} feature map, "
                f"got {(H, W)}; use the lambda convolution (r=...) for other sizes"
            )
        queries = self.norm_q(self.to_q(x)).reshape(B, h, k, n)
        keys = self.to_k(x).reshape(B, u, k, n)
        values = self.norm_v(self.to_v(x)).reshape(B, u, v, n)
        # The softmax runs in float32 whatever the autocast dtype: over tens of thousands of context
        # positions a half-precision exp/sum loses the normalisation and can overflow.
        keys = keys.float()
        if mask is not None:
            context = mask.reshape(B, 1, 1, n)
            keys = keys.masked_fill(~context, torch.finfo(keys.dtype).min)
            values = values * context.to(values.dtype)
        keys = keys.softmax(dim=-1).to(values.dtype)

        content_lambda = torch.einsum("bukm,buvm->bkv", keys, values)  # [B, k, v]
        if self.r is not None:
            folded = values.reshape(B, u, v, H, W).transpose(1, 2).reshape(B * v, u, H, W)
            # [B * v, k, H, W] -> [B, n, k, v]
            position_lambdas = self.lambda_conv(folded).reshape(B, v, k, n).permute(0, 3, 2, 1)
        else:
            embeddings = self.rel_pos_emb.flatten(0, 1)[self.rel_pos_index]  # [n, m, k, u]
            position_lambdas = torch.einsum("nmku,buvm->bnkv", embeddings.to(values.dtype), values)
        lambdas = content_lambda.unsqueeze(1) + position_lambdas  # [B, n, k, v]
        # every query position applies its own lambda to its |h| queries: [B, n, h, k] @ [B, n, k, v]
        out = queries.permute(0, 3, 1, 2) @ lambdas  # [B, n, h, v]
        out = out.reshape(B, H, W, h * v).permute(0, 3, 1, 2)
        return self.pool(out)

    def extra_repr(self) -> str:
        position = f"r={self.r}" if self.r is not None else f"relative feat_size={self.feat_size}"
        return f"k={self.dim_k}, heads={self.heads}, u={self.dim_u}, v={self.dim_v}, {position}"
