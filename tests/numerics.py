"""Float comparisons relative to the scale of the expected values: a network's outputs of magnitude 30
carry float32 rounding of ~1e-5 x 30, which a fixed absolute tolerance would call a failure."""

from __future__ import annotations

import torch


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5, msg=None) -> None:
    """`actual` equals `expected` up to `tol` times the largest magnitude of `expected` (at least 1)."""
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=tol * scale, rtol=tol, msg=msg)
