"""Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words").

An image is cut into P x P patches, each patch is linearly embedded, a learned class token is prepended,
learned 1-D position embeddings are added, and the sequence goes through a pre-norm transformer encoder.
The class token's final state (or the mean of the patch tokens) is classified by a linear head.

Parameter names follow timm's ``VisionTransformer`` so timm state dicts load with ``strict=True``.
"""

import math
from collections import OrderedDict

import torch
from torch import nn

from vtrain.layers import Attention, DropPath, Mlp, checkpoint_seq, resample_abs_pos_embed

# VisionTransformer(weight_init=...): the official JAX code's initialisation or DeiT's (timm 0.3.2's)
WEIGHT_INITS = ("jax", "deit")


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _lecun_normal_(weight: torch.Tensor) -> None:
    """Flax's default kernel init: truncated normal (2 std) with variance 1 / fan_in."""
    fan_in = weight[0].numel()
    # dividing by the std of a standard normal truncated to [-2, 2] restores variance 1 / fan_in
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std)


class PatchEmbed(nn.Module):
    """Non-overlapping P x P patches, each projected to D channels by a strided convolution.

    Args:
        img_size: input (H, W) in pixels; must be divisible by the patch size.
        patch_size: P (or (Ph, Pw)).
        in_chans: input channels C.
        embed_dim: D.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.patch_size = _pair(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.set_img_size(img_size)

    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Set the expected input size and the patch grid it gives."""
        img_size = _pair(img_size)
        if img_size[0] % self.patch_size[0] or img_size[1] % self.patch_size[1]:
            raise ValueError(
                f"PatchEmbed: img_size {img_size} is not divisible by patch_size {self.patch_size}"
            )
        self.img_size = img_size
        self.grid_size = (img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: images [B, C, H, W] -> patch tokens [B, N, D], N = (H / P) * (W / P) in row-major order."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm encoder layer: ``x + DropPath(MSA(LN(x)))`` then ``x + DropPath(MLP(LN(x)))`` (eq. 2-3).

    Args:
        dim: token width D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of D.
        qkv_bias: bias on the query/key/value projection.
        drop: dropout after the attention projection and inside the MLP.
        attn_drop: dropout on the attention probabilities.
        drop_path: stochastic-depth probability of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D] -> [B, L, D]"""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT classifier.

    Args:
        img_size: input resolution (H, W) or a square side.
        patch_size: patch side P; the sequence has N = (H / P) * (W / P) patch tokens plus the class token.
        in_chans: input channels.
        num_classes: classifier outputs; 0 leaves ``head`` an identity (feature extractor).
        embed_dim: token width D.
        depth: number of encoder blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: bias on the query/key/value projection.
        representation_size: width of the tanh "pre-logits" layer used for ImageNet-21k pre-training;
            None leaves it out (as for fine-tuning).
        drop_rate: dropout after the position embedding, the attention projection and in the MLPs.
        attn_drop_rate: dropout on the attention probabilities.
        drop_path_rate: stochastic depth of the last block; rates rise linearly from 0 at the first block.
        global_pool: ``'token'`` classifies the class token, ``'avg'`` the mean of the patch tokens.
        fc_norm: move the final LayerNorm after the pooling (timm's ``fc_norm``): ``norm`` becomes an identity
            and ``fc_norm`` normalises the pooled features, as MAE's fine-tuned models (facebookresearch/mae
            models_vit.py:27-32, :46-48 at efb2a80: mean of the patch tokens, then ``fc_norm``).
        weight_init: ``'jax'``, the official JAX code's initialisation (the ViT experiments), or
            ``'deit'``, DeiT's (timm 0.3.2's VisionTransformer, which DeiT trains): see ``init_weights``.
        grad_checkpointing: recompute each block's activations in the backward pass instead of keeping
            them (``vtrain.layers.checkpoint_seq``): less memory, about one more forward of compute, the
            same gradients. Settable later as the attribute of that name.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        representation_size: int | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
        weight_init: str = "jax",
        grad_checkpointing: bool = False,
        fc_norm: bool = False,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"VisionTransformer: global_pool must be 'token' or 'avg', got {global_pool!r}")
        if weight_init not in WEIGHT_INITS:
            raise ValueError(
                f"VisionTransformer: weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}"
            )
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.num_features = representation_size or embed_dim
        self.grad_checkpointing = grad_checkpointing

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # stochastic depth rises linearly from 0 at the first block to drop_path_rate at the last
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate)
                for rate in rates
            ]
        )
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if fc_norm else nn.Identity()
        if representation_size is None:
            self.pre_logits = nn.Identity()
        else:
            self.pre_logits = nn.Sequential(
                OrderedDict(fc=nn.Linear(embed_dim, representation_size), act=nn.Tanh())
            )
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(weight_init)

    @property
    def img_size(self) -> tuple[int, int]:
        """The (H, W) input resolution the position embeddings are laid out for."""
        return self.patch_embed.img_size

    @torch.no_grad()
    def init_weights(self, mode: str = "jax") -> None:
        """Initialise as the official JAX implementation (google-research/vision_transformer), or with
        ``mode='deit'`` as DeiT (facebookresearch/deit models.py builds timm 0.3.2's VisionTransformer,
        timm/models/vision_transformer.py:241-252 at 6504a42): position embedding, class token and every
        Linear weight (head included) from a normal of std 0.02 cut at +-2 (absolute, so effectively
        untruncated), Linear biases zero, LayerNorms weight 1 and bias 0, and the patch projection left at
        PyTorch's default Conv2d init, which timm does not touch."""
        if mode == "deit":
            self._init_deit()
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.cls_token)
        _lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for block in self.blocks:
            # Flax projects q, k and v with three D x D kernels, so each third gets its own Xavier bound
            for weight in block.attn.qkv.weight.chunk(3, dim=0):
                nn.init.xavier_uniform_(weight)
            nn.init.xavier_uniform_(block.attn.proj.weight)
            for fc in (block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)
            for bias in (block.attn.qkv.bias, block.attn.proj.bias):
                if bias is not None:
                    nn.init.zeros_(bias)
        if isinstance(self.pre_logits, nn.Sequential):
            _lecun_normal_(self.pre_logits.fc.weight)
            nn.init.zeros_(self.pre_logits.fc.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def _init_deit(self) -> None:
        self.patch_embed.proj.reset_parameters()
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-2.0, b=2.0)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.no_grad()
    def set_img_size(self, img_size: int | tuple[int, int]) -> None:
        """Change the input resolution in place, resampling ``pos_embed`` (bicubic) to the new patch grid.

        Replaces the ``pos_embed`` parameter, so build optimizers after calling this.
        """
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_img_size(img_size)
        pos_embed = resample_abs_pos_embed(
            self.pos_embed.data, self.patch_embed.grid_size, old_grid, self.num_prefix_tokens
        )
        self.pos_embed = nn.Parameter(pos_embed, requires_grad=self.pos_embed.requires_grad)

    def no_weight_decay(self) -> set[str]:
        """Parameters the recipes keep out of weight decay besides 1-D ones (as in the official code)."""
        return {"pos_embed", "cls_token"}

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` for layer-wise LR decay (``vtrain.tasks.common.layer_decay_groups``):
        0 for the embeddings (``cls_token``, ``pos_embed``, ``patch_embed.*``; a distillation token
        ``dist_token`` too, as timm's DeiT ``group_matcher``), ``i + 1`` for ``blocks.i.*``, ``depth + 1``
        for the final norm, the representation layer and the head. The rule of BEiT's
        ``get_layer_id_for_vit``, which MAE's fine-tuning uses (facebookresearch/mae util/lr_decay.py:64-76
        at efb2a80)."""
        if name in ("cls_token", "dist_token", "pos_embed") or name.startswith("patch_embed."):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def prefix_tokens(self, batch_size: int) -> list[torch.Tensor]:
        """The learned tokens put in front of the patch tokens, each [B, 1, D]: the class token."""
        return [self.cls_token.expand(batch_size, -1, -1)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            x: images [B, C, H, W] with (H, W) == ``img_size``.

        Returns:
            tokens [B, P + N, D] after the final LayerNorm (before it with ``fc_norm``, which normalises the
            pooled features instead), the P ``prefix_tokens`` first (index 0: the class token).
        """
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"{type(self).__name__} expects {self.img_size[0]}x{self.img_size[1]} input images "
                f"(img_size), found {x.shape[-2]}x{x.shape[-1]} (input shape {tuple(x.shape)}); build the "
                "model with that img_size or call model.set_img_size() to resample the position embeddings"
            )
        x = self.patch_embed(x)
        x = torch.cat([*self.prefix_tokens(x.shape[0]), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        x = checkpoint_seq(self.blocks, x, self.grad_checkpointing)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify encoder tokens.

        Args:
            x: tokens [B, 1 + N, D] from :meth:`forward_features`.
            pre_logits: return the pooled features (after the representation layer, if any) instead of logits.

        Returns:
            logits [B, num_classes], or features [B, num_features] when ``pre_logits``.
        """
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        x = self.pre_logits(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> logits [B, num_classes]"""
        return self.forward_head(self.forward_features(x))


def _vit(overrides: dict, **preset) -> VisionTransformer:
    """Build a paper-sized ViT; ``overrides`` may replace any constructor argument, the preset's included."""
    return VisionTransformer(**{**preset, **overrides})


def vit_ti16(**overrides) -> VisionTransformer:
    """ViT-Ti/16 (DeiT's tiny width): D=192, 12 blocks, 3 heads; 5.7 M parameters."""
    return _vit(overrides, patch_size=16, embed_dim=192, depth=12, num_heads=3)


def vit_s16(**overrides) -> VisionTransformer:
    """ViT-S/16: D=384, 12 blocks, 6 heads; 22.1 M parameters."""
    return _vit(overrides, patch_size=16, embed_dim=384, depth=12, num_heads=6)


def vit_b16(**overrides) -> VisionTransformer:
    """ViT-B/16 (paper table 1): D=768, 12 blocks, 12 heads; 86.6 M parameters."""
    return _vit(overrides, patch_size=16, embed_dim=768, depth=12, num_heads=12)


def vit_b32(**overrides) -> VisionTransformer:
    """ViT-B/32: ViT-B with 32 x 32 patches; 88.2 M parameters."""
    return _vit(overrides, patch_size=32, embed_dim=768, depth=12, num_heads=12)


def vit_l16(**overrides) -> VisionTransformer:
    """ViT-L/16 (paper table 1): D=1024, 24 blocks, 16 heads; 304.3 M parameters."""
    return _vit(overrides, patch_size=16, embed_dim=1024, depth=24, num_heads=16)


def vit_h14(**overrides) -> VisionTransformer:
    """ViT-H/14 (paper table 1): D=1280, 32 blocks, 16 heads, 14 x 14 patches; 632.0 M parameters."""
    return _vit(overrides, patch_size=14, embed_dim=1280, depth=32, num_heads=16)


PRESETS = {
    "vit_ti16": vit_ti16,
    "vit_s16": vit_s16,
    "vit_b16": vit_b16,
    "vit_b32": vit_b32,
    "vit_l16": vit_l16,
    "vit_h14": vit_h14,
}
