"""PSNR / SSIM as the TTSR paper evaluates them, against closed forms and an independent NumPy / SciPy
implementation of the MATLAB-style SSIM (valid 11 x 11 Gaussian window, sigma 1.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from vtrain.metrics.sr import rgb_to_y, sr_metrics


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MATLAB ssim_index on one 0..255 channel: 'valid' filtering only, K = (0.01, 0.03), L = 255."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def f(image: np.ndarray) -> np.ndarray:
        return correlate2d(image, window, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def images(seed: int = 0, h: int = 40, w: int = 52) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.nn.functional.interpolate(
        torch.rand(2, 3, h // 4, w // 4, generator=g), size=(h, w), mode="bicubic"
    )
    hr = hr.clamp(0, 1) * 2 - 1
    sr = (hr + 0.1 * torch.randn(hr.shape, generator=g)).clamp(-1, 1)
    return sr, hr


def test_y_is_bt601_on_the_0_255_scale():
    white, black = torch.full((1, 3, 1, 1), 255.0), torch.zeros(1, 3, 1, 1)
    assert rgb_to_y(white).item() == pytest.approx(235.0, abs=0.01)
    assert rgb_to_y(black).item() == 16.0


def test_psnr_of_a_constant_offset_has_its_closed_form():
    hr = torch.zeros(1, 3, 16, 16) - 0.5
    sr = hr + 10 / 127.5  # +10 grey levels in every channel
    metrics = sr_metrics(sr, hr, y_border=0, rgb_border=0)
    y_step = 10 * (65.738 + 129.057 + 25.064) / 256
    assert metrics["psnr_y"].item() == pytest.approx(20 * math.log10(255 / y_step), abs=1e-3)
    assert metrics["psnr_rgb"].item() == pytest.approx(20 * math.log10(255 / 10), abs=1e-3)


def test_ssim_matches_the_matlab_style_valid_window():
    sr, hr = images()
    metrics = sr_metrics(sr, hr, y_border=0, rgb_border=4)
    for i in range(2):
        a = ((sr[i : i + 1].double() + 1) * 127.5).round()
        b = ((hr[i : i + 1].double() + 1) * 127.5).round()
        ya, yb = rgb_to_y(a)[0, 0].numpy(), rgb_to_y(b)[0, 0].numpy()
        assert metrics["ssim_y"][i].item() == pytest.approx(reference_ssim(ya, yb), abs=1e-9)
        mse = ((ya - yb) ** 2).mean()
        assert metrics["psnr_y"][i].item() == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-5)
        cropped = [reference_ssim(a[0, c, 4:-4, 4:-4].numpy(), b[0, c, 4:-4, 4:-4].numpy()) for c in range(3)]
        assert metrics["ssim_rgb"][i].item() == pytest.approx(np.mean(cropped), abs=1e-9)


def test_better_outputs_score_higher_and_sizes_are_matched():
    sr, hr = images()
    worse = (hr + 0.3 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    good, bad = sr_metrics(sr, hr), sr_metrics(worse, hr)
    for name in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        assert (good[name] > bad[name]).all(), name
    larger = torch.nn.functional.pad(sr, (0, 3, 0, 2))
    torch.testing.assert_close(sr_metrics(larger, hr)["psnr_y"], good["psnr_y"])
