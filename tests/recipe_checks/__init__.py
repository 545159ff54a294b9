"""Named checks that recipe-card rows point at (`check:NAME` in the vtrain column of docs/recipes.md) for
recipe items that are behaviour rather than one config value: the transform a data module builds, the
initialisation a model draws, the sampler a loader uses. Each family keeps its checks in a module of its
own here; `CHECKS` maps every name to its function, which receives the experiment's composed config and
raises AssertionError when the recipe item does not hold."""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import Callable

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

Check = Callable[[DictConfig], None]
CHECKS: dict[str, Check] = {}


def recipe_check(name: str) -> Callable[[Check], Check]:
    """Register `fn` as the check `check:name`."""

    def register(fn: Check) -> Check:
        if name in CHECKS:
            where = f"{CHECKS[name].__module__} and {fn.__module__}"
            raise ValueError(f"recipe check {name!r} is defined twice: {where}")
        CHECKS[name] = fn
        return fn

    return register


def load_all() -> dict[str, Check]:
    """Import every module of this package so that its checks register, and return the registry."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return CHECKS


def photos(count: int) -> list[Image.Image]:
    """`count` seeded random RGB images of 200-400 pixels a side, for the transform checks."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(200, 400, size=(count, 2))
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def seeded(transform: Callable, image: Image.Image, seed: int) -> torch.Tensor:
    """`transform(image)` with Python's, NumPy's and torch's generators seeded with `seed` (timm's
    transforms draw from the first two, torchvision's from torch)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return transform(image)


def assert_same_training_transform(ours: Callable, official: Callable, atol: float = 0.0) -> None:
    """The same seed gives the same tensor from `ours` and `official` (to `atol`), on four photos."""
    for seed, image in enumerate(photos(4)):
        expected = seeded(official, image, seed)
        torch.testing.assert_close(seeded(ours, image, seed), expected, atol=atol, rtol=0)
