"""Where the Hydra configs live and the few OmegaConf resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def config_dir() -> Path:
    """The `conf/` directory: inside the installed wheel (`vtrain/conf`) or at the repository root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"vtrain configs not found: looked for train.yaml in {here / 'conf'} (installed wheel) and "
        f"{here.parent / 'conf'} (source checkout)"
    )


def register_resolvers() -> None:
    """Resolvers used in conf/: `${vtrain.env_unset:NAME}` is true when the environment variable is unset."""
    if not OmegaConf.has_resolver("vtrain.env_unset"):
        OmegaConf.register_new_resolver("vtrain.env_unset", lambda name: not os.environ.get(name))
