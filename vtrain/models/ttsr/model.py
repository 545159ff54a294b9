"""TTSR: Learning Texture Transformer Network for Image Super-Resolution (Yang et al., CVPR 2020).

    model = vtrain.create_model("ttsr", pretrained="TTSR.pt")  # official researchmm/TTSR weights
    model = vtrain.create_model("ttsr", vgg_weights="vgg19-dcbb9e9d.pth")  # to train: ImageNet VGG19 LTE
    out = model(lr, lr_up, ref, ref_down_up)                    # out.sr: [B, 3, 4h, 4w] in [-1, 1]

Images are in [-1, 1] as in the official code. ``lr_up`` is the LR image bicubic-upsampled 4x and
``ref_down_up`` the reference bicubic-downsampled 4x then upsampled back (see vtrain.data.cufed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call

from vtrain.checkpoint import fit_state_dict, read_state_dict
from vtrain.models.pretrained import require_weights, torchvision_imagenet
from vtrain.models.ttsr.lte import LTE
from vtrain.models.ttsr.main_net import MainNet
from vtrain.models.ttsr.search_transfer import SearchTransfer

VGG19_EXPECTED = torchvision_imagenet("vgg19")


class TTSROutput(NamedTuple):
    """sr [B, 3, 4h, 4w] in [-1, 1]; S soft attention [B, 1, h, w]; transferred textures T_lv3
    [B, 256, h, w], T_lv2 [B, 128, 2h, 2w], T_lv1 [B, 64, 4h, 4w] (for the transferal perceptual loss)."""

    sr: torch.Tensor
    S: torch.Tensor
    T_lv3: torch.Tensor
    T_lv2: torch.Tensor
    T_lv1: torch.Tensor


class TTSR(nn.Module):
    """Texture transformer super-resolution, 4x.

    Args:
        num_res_blocks: residual blocks of the shallow feature extractor and of the 1x, 2x, 4x stages.
        n_feats: feature channels of the main network.
        res_scale: residual scaling.
        vgg_weights: torchvision VGG19 ImageNet state dict file the LTE starts from (None: random; the
            presets require it).
        global_residual: add the bicubic-upsampled LR image to the output, so that the network learns a
            correction of bicubic upsampling; not in the paper (False there and for its checkpoints), used
            by ``ttsr_tiny`` to learn in minutes on a CPU.
    """

    def __init__(
        self,
        num_res_blocks: Sequence[int] = (16, 16, 8, 4),
        n_feats: int = 64,
        res_scale: float = 1.0,
        vgg_weights: str | os.PathLike | None = None,
        global_residual: bool = False,
    ) -> None:
        super().__init__()
        self.global_residual = global_residual
        self.MainNet = MainNet(num_res_blocks, n_feats, res_scale)
        self.LTE = LTE(vgg_weights, requires_grad=True)
        self.SearchTransfer = SearchTransfer()

    def forward(
        self, lr: torch.Tensor, lr_up: torch.Tensor, ref: torch.Tensor, ref_down_up: torch.Tensor
    ) -> TTSROutput:
        """Args:
        lr: [B, 3, h, w]; lr_up: [B, 3, 4h, 4w]; ref, ref_down_up: [B, 3, H_ref, W_ref] (multiples
            of 4); all in [-1, 1].
        """
        # Textures are searched and taken from the images, never trained through them.
        _, _, lr_up_lv3 = self.LTE((lr_up.detach() + 1) / 2)
        _, _, ref_down_up_lv3 = self.LTE((ref_down_up.detach() + 1) / 2)
        ref_lv1, ref_lv2, ref_lv3 = self.LTE((ref.detach() + 1) / 2)
        S, T_lv3, T_lv2, T_lv1 = self.SearchTransfer(lr_up_lv3, ref_down_up_lv3, ref_lv1, ref_lv2, ref_lv3)
        sr = self.MainNet(lr, S, T_lv3, T_lv2, T_lv1)
        if self.global_residual:
            sr = (sr + lr_up).clamp(-1, 1)
        return TTSROutput(sr, S, T_lv3, T_lv2, T_lv1)

    def texture_features(self, sr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LTE features (lv1, lv2, lv3) of an output image in [-1, 1] for the transferal perceptual loss.

        The official code copies the LTE's current weights into a frozen twin (``LTE_copy``) for this; the
        LTE run with detached weights is the same computation: gradients reach ``sr``, not the LTE.
        """
        weights = {k: v.detach() for k, v in self.LTE.state_dict(keep_vars=True).items()}
        return functional_call(self.LTE, weights, ((sr + 1) / 2,))


def _ttsr(kwargs: dict, **preset) -> TTSR:
    """Build a preset: the LTE starts from ImageNet VGG19 weights, so ``vgg_weights`` is required (a
    torchvision VGG19 file, or ``"scratch"`` for a random texture extractor)."""
    args = {**preset, **kwargs}
    args["vgg_weights"] = require_weights(args.get("vgg_weights"), "model.vgg_weights", VGG19_EXPECTED)
    return TTSR(**args)


def ttsr(**kwargs) -> TTSR:
    """The paper's TTSR: 16 + 16 + 8 + 4 residual blocks, 64 features (official defaults)."""
    return _ttsr(kwargs, num_res_blocks=(16, 16, 8, 4), n_feats=64)


def ttsr_tiny(**kwargs) -> TTSR:
    """A CPU-sized TTSR (2 + 2 + 1 + 1 residual blocks, 32 features, a global bicubic residual) for smoke
    runs and the tiny data; not from the paper. The LTE is the full VGG19 slice, as in ``ttsr``."""
    return _ttsr(kwargs, num_res_blocks=(2, 2, 1, 1), n_feats=32, global_residual=True)


PRESETS = {"ttsr": ttsr, "ttsr_tiny": ttsr_tiny}
# the presets require the VGG19 file; a full TTSR checkpoint replaces it
STARTING_WEIGHTS = ("vgg_weights",)


def load_ttsr_checkpoint(model: TTSR, path: str | os.PathLike, strict: bool = True) -> TTSR:
    """Load weights into a :class:`TTSR` in place.

    Formats: an official researchmm/TTSR ``.pt`` (``TTSR.pt``, ``TTSR-rec.pt``: a raw state dict with
    ``MainNet.*`` and ``LTE.*`` keys), the same with the frozen ``LTE_copy.*`` twin (dropped: it is a
    copy of ``LTE``), or a vtrain Lightning checkpoint.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is unreadable, carries pickled code, or does not fit ``model`` (mis-shaped
            keys always; missing or unexpected keys when ``strict``).
    """
    path = Path(path)
    state_dict = {
        k.removeprefix("module."): v for k, v in read_state_dict(path).items() if "LTE_copy." not in k
    }
    fit_state_dict(model, state_dict, path, strict)
    return model
