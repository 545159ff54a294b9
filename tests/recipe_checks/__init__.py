"""Named checks that recipe-card rows point at (`check:NAME` in the vtrain column of docs/recipes.md) for
recipe items that are behaviour rather than one config value: the transform a data module builds, the
initialisation a model draws, the sampler a loader uses. Each family keeps its checks in a module of its
own here; `CHECKS` maps every name to its function, which receives the experiment's composed config and
raises AssertionError when the recipe item does not hold."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from omegaconf import DictConfig

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
