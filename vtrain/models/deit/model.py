"""DeiT's distilled ViT (Touvron et al. 2020, "Training data-efficient image transformers & distillation
through attention", section 4): a second learned token, the distillation token, joins the class token in
front of the patch tokens; the class token's head learns from the labels and the distillation token's head
(``head_dist``) from a teacher. Training returns both heads' logits, inference their late fusion (section 4,
"joint classifiers": the paper adds the two softmax outputs, the official code averages the logits, as here).

As facebookresearch/deit models.py:20-59 (``DistilledVisionTransformer``, at 7e160fe) and timm's
``VisionTransformerDistilled``: the same parameter names (``dist_token``, ``head_dist``, ``pos_embed`` over
the 2 prefix tokens), so the official ``deit_*_distilled_patch16_224-*.pth`` files and timm state dicts load
with ``strict=True``.
"""

import torch
from torch import nn

from vtrain.models.vit.model import VisionTransformer


class DistilledVisionTransformer(VisionTransformer):
    """ViT with DeiT's distillation token.

    Takes :class:`~vtrain.models.vit.model.VisionTransformer`'s arguments, except that ``global_pool`` is
    ``'token'`` (the two heads read the two prefix tokens) and there is no ``representation_size`` layer;
    ``weight_init`` defaults to ``'deit'``. In training mode ``forward`` returns
    ``(class-head logits, distillation-head logits)``, each [B, num_classes]; in eval mode their mean.
    """

    def __init__(self, weight_init: str = "deit", **kwargs) -> None:
        if kwargs.get("global_pool", "token") != "token":
            raise ValueError(
                "DistilledVisionTransformer: global_pool must be 'token' (the heads read the class and "
                f"distillation tokens), got {kwargs['global_pool']!r}"
            )
        if kwargs.get("representation_size") is not None:
            raise ValueError("DistilledVisionTransformer: representation_size must be None (DeiT has none)")
        super().__init__(weight_init=weight_init, **kwargs)
        self.num_prefix_tokens = 2
        self.dist_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + self.patch_embed.num_patches, self.embed_dim))
        num_classes = self.num_classes
        self.head_dist = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights(weight_init)

    @torch.no_grad()
    def init_weights(self, mode: str = "deit") -> None:
        """As :meth:`VisionTransformer.init_weights`, plus the distillation token from a normal of std 0.02
        (deit models.py:28) and ``head_dist`` initialised as ``head`` (models.py:30: timm's Linear init
        under ``'deit'``; zeros under ``'jax'``)."""
        super().init_weights(mode)
        if "dist_token" not in self._parameters:  # VisionTransformer.__init__: the token does not exist yet
            return
        nn.init.trunc_normal_(self.dist_token, std=0.02, a=-2.0, b=2.0)
        if mode == "jax" and isinstance(self.head_dist, nn.Linear):
            nn.init.zeros_(self.head_dist.weight)
            nn.init.zeros_(self.head_dist.bias)

    # deit models.py keeps timm 0.3.2's no_weight_decay() = {pos_embed, cls_token}: the distillation token
    # is decayed in the official training, so VisionTransformer's set is kept as it is

    def prefix_tokens(self, batch_size: int) -> list[torch.Tensor]:
        """The class token then the distillation token, each [B, 1, D]: ``forward_features`` returns them at
        indices 0 and 1."""
        return [self.cls_token.expand(batch_size, -1, -1), self.dist_token.expand(batch_size, -1, -1)]

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Classify the two prefix tokens.

        Args:
            x: tokens [B, 2 + N, D] from :meth:`forward_features`.
            pre_logits: return the mean of the two tokens' features [B, D] (as timm) instead of logits.

        Returns:
            training: ``(logits, logits_dist)``, each [B, num_classes]; eval: their mean [B, num_classes].
        """
        x, x_dist = x[:, 0], x[:, 1]
        if pre_logits:
            return (x + x_dist) / 2
        x, x_dist = self.head(x), self.head_dist(x_dist)
        if self.training:
            return x, x_dist
        return (x + x_dist) / 2


def _deit_distilled(overrides: dict, **preset) -> DistilledVisionTransformer:
    return DistilledVisionTransformer(**{**preset, **overrides})


def deit_ti16_distilled(**overrides) -> DistilledVisionTransformer:
    """DeiT-Ti distilled (deit models.py:108-111): D=192, 12 blocks, 3 heads; 5,910,800 parameters."""
    return _deit_distilled(overrides, patch_size=16, embed_dim=192, depth=12, num_heads=3)


def deit_s16_distilled(**overrides) -> DistilledVisionTransformer:
    """DeiT-S distilled (deit models.py:123-126): D=384, 12 blocks, 6 heads; 22,436,432 parameters."""
    return _deit_distilled(overrides, patch_size=16, embed_dim=384, depth=12, num_heads=6)


def deit_b16_distilled(**overrides) -> DistilledVisionTransformer:
    """DeiT-B distilled (deit models.py:138-141; ``img_size=384`` for models.py:168-171): D=768, 12 blocks,
    12 heads; 87,338,192 parameters at 224."""
    return _deit_distilled(overrides, patch_size=16, embed_dim=768, depth=12, num_heads=12)


PRESETS = {
    "deit_ti16_distilled": deit_ti16_distilled,
    "deit_s16_distilled": deit_s16_distilled,
    "deit_b16_distilled": deit_b16_distilled,
}
