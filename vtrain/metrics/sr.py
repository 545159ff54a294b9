"""Super-resolution metrics as the TTSR paper evaluates them (researchmm/TTSR ``utils.calc_psnr_and_ssim``).

The images are first quantised to 8 bits (``round((x + 1) * 127.5)``), then:

- Y channel (ITU-R BT.601, ``Y = 16 + (65.738 R + 129.057 G + 25.064 B) / 256`` on 0..255 values, not
  rounded): PSNR with a peak of 255 and SSIM with an 11 x 11 Gaussian window (sigma 1.5), K1 0.01,
  K2 0.03, averaged over the "valid" positions only (5 pixels from every side left out, as MATLAB's and
  the official code's ``filter2D(...)[5:-5, 5:-5]``). The paper crops no border: ``y_border=0``.
- RGB: the same PSNR and SSIM over the three channels after cropping ``rgb_border`` pixels on each side
  (the common SR practice of cropping the scale factor).

torchmetrics computes each number; its SSIM averages the full, reflect-padded map, so the valid part of
its full SSIM map is averaged here instead.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

BT601 = (65.738, 129.057, 25.064)
SSIM_KERNEL, SSIM_SIGMA = 11, 1.5


def to_uint8_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> float64 0..255 integers, as the official evaluation rounds them."""
    return ((x.double() + 1) * 127.5).round().clamp(0, 255)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB on 0..255 -> [B, 1, H, W] BT.601 luma on 16..235 (not rounded)."""
    weights = torch.tensor(BT601, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True) / 256 + 16


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border : x.shape[-2] - border, border : x.shape[-1] - border] if border else x


def psnr(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of [B, C, H, W] images on 0..255 -> [B]."""
    return peak_signal_noise_ratio(preds, target, data_range=255.0, reduction="none", dim=(1, 2, 3))


def ssim(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of [B, C, H, W] images on 0..255, averaged over the valid window positions
    (and channels) -> [B]."""
    _, full = structural_similarity_index_measure(
        preds,
        target,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL,
        data_range=255.0,
        reduction="none",
        return_full_image=True,
    )
    half = SSIM_KERNEL // 2
    return _crop(full, half).flatten(1).mean(1)


def sr_metrics(
    sr: torch.Tensor, hr: torch.Tensor, y_border: int = 0, rgb_border: int = 4
) -> dict[str, torch.Tensor]:
    """PSNR and SSIM on Y and on RGB of each image.

    Args:
        sr, hr: [B, 3, H, W] in [-1, 1]. When the sizes differ, both are cut to the common top-left part
            (as the official evaluation does).
        y_border, rgb_border: pixels left out on each side for the Y and the RGB numbers.

    Returns:
        {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}: float64 [B] each.
    """
    if sr.ndim != 4 or sr.shape[:2] != hr.shape[:2] or sr.shape[1] != 3:
        raise ValueError(
            f"sr_metrics: expected two [B, 3, H, W] batches, found {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    h, w = min(sr.shape[-2], hr.shape[-2]), min(sr.shape[-1], hr.shape[-1])
    sr, hr = to_uint8_range(sr[..., :h, :w]), to_uint8_range(hr[..., :h, :w])
    sr_y, hr_y = _crop(rgb_to_y(sr), y_border), _crop(rgb_to_y(hr), y_border)
    sr_rgb, hr_rgb = _crop(sr, rgb_border), _crop(hr, rgb_border)
    return {
        "psnr_y": psnr(sr_y, hr_y),
        "ssim_y": ssim(sr_y, hr_y),
        "psnr_rgb": psnr(sr_rgb, hr_rgb),
        "ssim_rgb": ssim(sr_rgb, hr_rgb),
    }
