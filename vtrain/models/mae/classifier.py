"""MAE's classifiers: the pretrained encoder fine-tuned end to end or linearly probed (He et al. 2021,
section 4 and appendix A.1-A.2; facebookresearch/mae at efb2a80: models_vit.py, main_finetune.py,
main_linprobe.py).

Both are vtrain's ``VisionTransformer`` with the official models_vit.py head (timm 0.3.2's ViT, LayerNorm eps
1e-6, qkv bias):

- fine-tuning (``global_pool='avg'``, main_finetune.py:114-115's default): the mean of the patch tokens, then
  ``fc_norm`` (the final ``norm`` removed, models_vit.py:27-32, :46-48), then the linear head;
- linear probing (``global_pool='token'``, main_linprobe.py:72-75 with ``--cls_token``, FINETUNE.md:143): the
  class token after the final ``norm``, then ``BatchNorm1d(affine=False, eps=1e-6)`` and the linear head,
  with everything but the head frozen (main_linprobe.py:220-227).

:func:`load_mae_encoder` fills one from an MAE checkpoint as the official scripts do
(main_finetune.py:233-257, main_linprobe.py:194-218): decoder keys dropped, position table interpolated
(bicubic) to the model's grid, ``fc_norm`` and the head left at their initialisation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from vtrain.checkpoint import fit_state_dict
from vtrain.layers import resample_abs_pos_embed
from vtrain.models.mae.checkpoint import read_mae_state_dict
from vtrain.models.vit.model import VisionTransformer

logger = logging.getLogger(__name__)


def mae_classifier(
    encoder: dict,
    global_pool: str = "avg",
    linear_probe: bool = False,
    head_init_std: float = 2.0e-5,
    **overrides,
) -> VisionTransformer:
    """A ViT classifier shaped as the official models_vit.py ones.

    Args:
        encoder: the ViT's size (patch_size, embed_dim, depth, num_heads, ...), as an MAE preset's encoder.
        global_pool: ``'avg'`` (fine-tuning: mean of the patch tokens, then ``fc_norm``) or ``'token'`` (the
            class token after the final norm, as the linear probe).
        linear_probe: prepend ``BatchNorm1d(D, affine=False, eps=1e-6)`` to the head and freeze every other
            parameter (main_linprobe.py:220-227).
        head_init_std: the head's weight is drawn from a normal of this std (cut at +-2, i.e. untruncated),
            its bias zero: 2e-5 for fine-tuning (main_finetune.py:257), 0.01 for the probe
            (main_linprobe.py:218, after MoCo v3).
        **overrides: other ``VisionTransformer`` arguments (num_classes, img_size, drop_path_rate, ...).
    """
    arguments = {"weight_init": "deit", **encoder, **overrides}
    model = VisionTransformer(**arguments, global_pool=global_pool, fc_norm=global_pool == "avg")
    if isinstance(model.head, nn.Linear):
        nn.init.trunc_normal_(model.head.weight, std=head_init_std, a=-2.0, b=2.0)
        nn.init.zeros_(model.head.bias)
    if linear_probe:
        if not isinstance(model.head, nn.Linear):
            raise ValueError("mae_classifier: linear_probe=true needs a classifier head (num_classes > 0)")
        model.head = nn.Sequential(nn.BatchNorm1d(model.num_features, affine=False, eps=1e-6), model.head)
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("head.")
    return model


def _is_decoder_key(key: str) -> bool:
    return key.startswith("decoder") or key == "mask_token"


def load_mae_encoder(
    model: VisionTransformer, path: str | os.PathLike, strict: bool = True
) -> VisionTransformer:
    """Load an MAE encoder (or an MAE classifier) into ``model`` in place, as main_finetune.py:233-257.

    Reads the official ``mae_pretrain_vit_*.pth`` (encoder only), ``mae_visualize_vit_*.pth`` and vtrain MAE
    runs (whole autoencoders: the decoder and mask token are dropped, with a count), transformers'
    ``ViTMAEForPreTraining`` state dicts, and fine-tuned classifiers (``mae_finetuned_vit_*.pth``, vtrain
    fine-tuning or probing runs), which load whole. ``pos_embed`` is interpolated bicubically to the model's
    patch grid when it differs (util/pos_embed.py:75-96), the class-token row kept. From an encoder, the
    model's head (and ``fc_norm``, whose place the encoder's final ``norm`` does not take: the official
    fine-tuning drops ``norm`` as an unexpected key) keep their initialisation; a head of another shape in
    the file is skipped.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is unreadable or does not fit ``model``.
    """
    path = Path(path)
    state_dict = read_mae_state_dict(path)
    decoder = [k for k in state_dict if _is_decoder_key(k)]
    if decoder:
        logger.info("%s: dropped the %d decoder keys (decoder*, mask_token)", path, len(decoder))
        state_dict = {k: v for k, v in state_dict.items() if not _is_decoder_key(k)}
    expected = model.state_dict()
    if "fc_norm.weight" in expected and "fc_norm.weight" not in state_dict:
        dropped = [k for k in state_dict if k.startswith("norm.")]
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("norm.")}
        if dropped:
            logger.info("%s: fc_norm replaces the encoder's norm; dropped %s", path, ", ".join(dropped))
    head = [k for k in state_dict if k.startswith("head.")]
    if any(k not in expected or state_dict[k].shape != expected[k].shape for k in head):
        logger.warning("%s: the checkpoint's head does not fit the model; keeping the model's %s", path, head)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is not None and pos_embed.ndim == 3 and pos_embed.shape != expected["pos_embed"].shape:
        if pos_embed.shape[-1] != expected["pos_embed"].shape[-1]:
            raise ValueError(
                f"{path}: pos_embed has width {pos_embed.shape[-1]}, "
                f"the model {expected['pos_embed'].shape[-1]}"
            )
        state_dict["pos_embed"] = resample_abs_pos_embed(
            pos_embed,
            model.patch_embed.grid_size,
            num_prefix_tokens=model.num_prefix_tokens,
            mode="bicubic",
            antialias=False,
            align_corners=False,
        )
        logger.info(
            "%s: interpolated pos_embed %s to %s (bicubic, as util/pos_embed.py)",
            path,
            tuple(pos_embed.shape),
            tuple(expected["pos_embed"].shape),
        )
    allowed = frozenset(k for k in expected if k.startswith(("head.", "fc_norm.")) and k not in state_dict)
    fit_state_dict(model, state_dict, path, strict, allowed)
    return model


# the encoders' sizes: ViT-B/16, L/16, H/14 (as vtrain.models.vit's vit_b16, vit_l16, vit_h14) and mae_tiny's
_B16 = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
_L16 = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16)
_H14 = dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16)
_TINY = dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0)


def mae_vit_b16_classifier(**overrides) -> VisionTransformer:
    """models_vit.py:56-60 vit_base_patch16: ViT-B/16 (as ``vit_b16``) with MAE's head; 86,567,656
    parameters at 1000 classes and 224 px."""
    return mae_classifier(_B16, **overrides)


def mae_vit_l16_classifier(**overrides) -> VisionTransformer:
    """models_vit.py:63-67 vit_large_patch16: ViT-L/16 with MAE's head."""
    return mae_classifier(_L16, **overrides)


def mae_vit_h14_classifier(**overrides) -> VisionTransformer:
    """models_vit.py:70-74 vit_huge_patch14: ViT-H/14 with MAE's head."""
    return mae_classifier(_H14, **overrides)


def mae_tiny_classifier(**overrides) -> VisionTransformer:
    """The ``mae_tiny`` encoder (64 px in 8 x 8 patches, D=96, 4 blocks, 3 heads, MLP ratio 2) with MAE's
    head; not from the paper."""
    return mae_classifier(_TINY, **overrides)
