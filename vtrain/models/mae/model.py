"""Masked autoencoder (He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377).

A ViT encoder sees only a random subset of the image's patches (25 % by default); a small transformer
decoder receives the encoded visible patches and a shared, learned mask token at every removed position,
each with its fixed 2-D sine-cosine position embedding, and predicts every patch's pixels. The loss is the
mean squared error on the removed patches only, optionally against per-patch normalised pixels
(``norm_pix_loss``, the paper's default for representation learning, section 3 "Reconstruction target").

The encoder reuses vtrain's ViT blocks (``vtrain.models.vit.model.PatchEmbed`` / ``Block``), so its
parameter names are timm's and the official code's (facebookresearch/mae models_mae.py at efb2a80):
official checkpoints load without renaming, and the encoder's weights load into
``vtrain.models.vit.VisionTransformer`` for fine-tuning.
"""

from __future__ import annotations

import torch
from torch import nn

from vtrain.layers import checkpoint_seq, sincos_2d_pos_embed
from vtrain.models.vit.model import Block, PatchEmbed


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT encoder and a lightweight transformer decoder.

    Args:
        img_size: input (H, W) or a square side; the patch grid must be the same at every call.
        patch_size: patch side P; each patch is a target of P * P * C pixel values.
        in_chans: input channels C.
        embed_dim, depth, num_heads: the ViT encoder (ViT-B/16: 768, 12, 12).
        decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder (the paper's: 512, 8, 16;
            section 3 "MAE decoder", Table 1a-b).
        mlp_ratio: MLP width / token width, encoder and decoder.
        mask_ratio: fraction of the patches removed (75 %, Table 1 / Figure 5).
        norm_pix_loss: targets are each patch's pixels normalised by that patch's mean and (unbiased)
            variance, ``(x - mean) / sqrt(var + 1e-6)`` (models_mae.py:204-208).
        grad_checkpointing: recompute each block's activations in the backward pass instead of keeping
            them (less memory, about one more forward of compute; the same gradients).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"MaskedAutoencoder: mask_ratio must be in [0, 1), found {mask_ratio}")
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.grad_checkpointing = grad_checkpointing
        self.in_chans, self.embed_dim = in_chans, embed_dim

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # fixed, not learned: buffers, but in the state dict under the official names
        self.register_buffer("pos_embed", sincos_2d_pos_embed(embed_dim, grid, cls_token=True)[None])
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_2d_pos_embed(decoder_embed_dim, grid, cls_token=True)[None]
        )
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_embed.patch_size[0] ** 2 * in_chans)
        self.init_weights()

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation (models_mae.py:65-93): Xavier-uniform Linear weights (the patch
        projection too, as a [D, C * P * P] matrix) with zero biases, LayerNorm 1 / 0, class and mask
        tokens from a normal of std 0.02."""
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> patches [B, N, P * P * C], row-major, each (row, column, channel)."""
        B, C, H, W = images.shape
        p = self.patch_embed.patch_size[0]
        if H % p or W % p:
            raise ValueError(f"MaskedAutoencoder.patchify: image {H}x{W} is not divisible by patch size {p}")
        x = images.reshape(B, C, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """patches [B, N, P * P * C] on the model's patch grid -> images [B, C, H, W]."""
        rows, cols = self.patch_embed.grid_size
        p, C = self.patch_embed.patch_size[0], self.in_chans
        x = patches.reshape(patches.shape[0], rows, cols, p, p, C)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], C, rows * p, cols * p)

    def random_masking(
        self, x: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the ``N * (1 - mask_ratio)`` patches of lowest ``noise`` in each sample (section 3
        "Masking": per-sample random shuffling by sorting uniform noise).

        Args:
            x: patch tokens [B, N, D].
            noise: [B, N]; ascending order = the order of keeping.

        Returns:
            (kept tokens [B, N_keep, D] in noise order, mask [B, N] with 1 = removed and 0 = kept,
            ids_restore [B, N]: the permutation that puts noise-ordered tokens back in patch order)
        """
        B, N, D = x.shape
        keep = int(N * (1 - self.mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, D))
        mask = torch.ones(B, N, device=x.device)  # float32 under autocast too: the loss sums it
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(
        self, images: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B, C, H, W], noise [B, N] -> (latent [B, 1 + N_keep, D] after the final LayerNorm,
        class token first; mask [B, N]; ids_restore [B, N])."""
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = checkpoint_seq(self.blocks, torch.cat([cls, x], dim=1), self.grad_checkpointing)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [B, 1 + N_keep, D], ids_restore [B, N] -> predicted patches [B, N, P * P * C]."""
        x = self.decoder_embed(latent)
        B, N, D = x.shape[0], ids_restore.shape[1], x.shape[2]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(B, N + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[:, :, None].expand(-1, -1, D))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        x = checkpoint_seq(self.decoder_blocks, x, self.grad_checkpointing)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """What the decoder predicts: the patches [B, N, P * P * C], per-patch normalised if
        ``norm_pix_loss``."""
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over the removed patches of each patch's mean squared error (models_mae.py:198-214)."""
        per_patch = ((pred - self.targets(images)) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask, encode, decode and score one batch.

        Args:
            images: [B, C, H, W] on the model's ``img_size``.
            noise: [B, N] masking noise; None draws it uniform in [0, 1) (from ``generator`` if given).

        Returns:
            (loss: scalar, pred: [B, N, P * P * C] in target space, mask: [B, N], 1 = removed)
        """
        if tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(
                f"MaskedAutoencoder expects {self.img_size[0]}x{self.img_size[1]} images (img_size), found "
                f"{images.shape[-2]}x{images.shape[-1]}"
            )
        if noise is None:
            noise = torch.rand(images.shape[0], self.num_patches, device=images.device, generator=generator)
        latent, mask, ids_restore = self.forward_encoder(images, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(images, pred, mask), pred, mask


def _mae(overrides: dict, **preset) -> MaskedAutoencoder:
    return MaskedAutoencoder(**{**preset, **overrides})


# the paper's decoder (section 3 "MAE decoder"; models_mae.py:223-250): 8 blocks, width 512, 16 heads
_DECODER = dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)


def mae_vit_b16(**overrides) -> MaskedAutoencoder:
    """MAE ViT-B/16 (models_mae.py:223): encoder D=768, 12 blocks, 12 heads + the paper's decoder;
    111,655,680 trainable parameters (encoder 85,647,360, decoder 26,008,320), plus the fixed position
    tables (252,160 values, which the official code counts as frozen parameters: 111,907,840)."""
    return _mae(overrides, patch_size=16, embed_dim=768, depth=12, num_heads=12, **_DECODER)


def mae_vit_l16(**overrides) -> MaskedAutoencoder:
    """MAE ViT-L/16 (models_mae.py:231): encoder D=1024, 24 blocks, 16 heads + decoder; 329,239,296
    trainable parameters (encoder 303,099,904, decoder 26,139,392)."""
    return _mae(overrides, patch_size=16, embed_dim=1024, depth=24, num_heads=16, **_DECODER)


def mae_vit_h14(**overrides) -> MaskedAutoencoder:
    """MAE ViT-H/14 (models_mae.py:239): encoder D=1280, 32 blocks, 16 heads, 14 x 14 patches + decoder;
    656,613,964 trainable parameters (encoder 630,435,840, decoder 26,178,124)."""
    return _mae(overrides, patch_size=14, embed_dim=1280, depth=32, num_heads=16, **_DECODER)


def mae_tiny(**overrides) -> MaskedAutoencoder:
    """CPU-sized MAE, not from the paper: 64 x 64 images in 8 x 8 patches, encoder D=96, 4 blocks, 3 heads,
    decoder D=64, 2 blocks, 4 heads, MLP ratio 2; 403,776 parameters."""
    preset = dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3)
    decoder = dict(decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, mlp_ratio=2.0)
    return _mae(overrides, **preset, **decoder)


PRESETS = {
    "mae_vit_b16": mae_vit_b16,
    "mae_vit_l16": mae_vit_l16,
    "mae_vit_h14": mae_vit_h14,
    "mae_tiny": mae_tiny,
}
