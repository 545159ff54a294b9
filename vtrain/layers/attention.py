"""Multi-head scaled dot-product self-attention (Vaswani et al. 2017), as in ViT, iGPT and DETR's encoder."""

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection and an output projection ``proj``.

    ``softmax(Q K^T / sqrt(head_dim)) V`` per head, computed by ``F.scaled_dot_product_attention``. The
    attribute names (``qkv``, ``proj``) follow timm so state dicts are interchangeable.

    Args:
        dim: token width D; split into ``num_heads`` heads of ``D // num_heads`` channels.
        num_heads: number of attention heads.
        qkv_bias: add a bias to the query/key/value projection.
        attn_drop: dropout on the attention probabilities (training only).
        proj_drop: dropout on the output of ``proj``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """Attend every token to every other token.

        Args:
            x: tokens [B, N, D].
            attn_mask: optional mask broadcastable to [B, heads, N, N]; boolean True = may attend, or a float
                bias added to the logits.
            is_causal: mask out future tokens (autoregressive models such as iGPT).

        Returns:
            [B, N, D]
        """
        B, N, D = x.shape
        # [B, N, 3 * D] -> 3 x [B, heads, N, head_dim]
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.attn_drop if self.training else 0.0,
            is_causal=is_causal,
        )
        x = x.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(x))
