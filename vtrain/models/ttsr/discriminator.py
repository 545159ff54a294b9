"""The WGAN-GP critic of TTSR's adversarial loss (official ``loss/discriminator.py`` layout): ten conv3x3
with LeakyReLU 0.2, every second one strided (so /32), then two fully connected layers to one score."""

from __future__ import annotations

import torch
from torch import nn

# (in, out, stride) of conv1 .. conv10
_CONVS = (
    (3, 32, 1),
    (32, 32, 2),
    (32, 64, 1),
    (64, 64, 2),
    (64, 128, 1),
    (128, 128, 2),
    (128, 256, 1),
    (256, 256, 2),
    (256, 512, 1),
    (512, 512, 2),
)


class Discriminator(nn.Module):
    """Args:
    in_size: side of the square images it scores (official: 160, the training HR size); a multiple of 32.
    """

    def __init__(self, in_size: int = 160) -> None:
        super().__init__()
        if in_size % 32:
            raise ValueError(f"Discriminator: in_size must be a multiple of 32, found {in_size}")
        self.in_size = in_size
        for i, (c_in, c_out, stride) in enumerate(_CONVS, 1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1))
            setattr(self, f"LReLU{i}", nn.LeakyReLU(0.2))
        self.fc1 = nn.Linear((in_size // 32) ** 2 * 512, 1024)
        self.LReLU11 = nn.LeakyReLU(0.2)
        self.fc2 = nn.Linear(1024, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, in_size, in_size] in [-1, 1] -> scores [B, 1]."""
        if x.shape[-2:] != (self.in_size, self.in_size):
            raise ValueError(
                f"Discriminator: expected {self.in_size}x{self.in_size} images, found {tuple(x.shape)}"
            )
        for i in range(1, len(_CONVS) + 1):
            x = getattr(self, f"LReLU{i}")(getattr(self, f"conv{i}")(x))
        return self.fc2(self.LReLU11(self.fc1(x.flatten(1))))
