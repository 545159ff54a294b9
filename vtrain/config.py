"""Where the Hydra configs live and the few OmegaConf resolvers they use."""

from __future__ import annotations

import json
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


def coco_num_classes(annotation_file: str) -> int:
    """Largest category id of a COCO annotation file + 1 (the class-head size for set-prediction models)."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"num_classes is read from {path}, which does not exist")
    try:
        categories = json.loads(path.read_text())["categories"]
        return max(int(c["id"]) for c in categories) + 1
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: expected a COCO annotation file with a 'categories' list") from err


def register_resolvers() -> None:
    """Resolvers used in conf/: `${vtrain.env_unset:NAME}` is true when the environment variable is unset;
    `${vtrain.coco_num_classes:FILE}` is a COCO file's largest category id + 1."""
    if not OmegaConf.has_resolver("vtrain.env_unset"):
        OmegaConf.register_new_resolver("vtrain.env_unset", lambda name: not os.environ.get(name))
    if not OmegaConf.has_resolver("vtrain.coco_num_classes"):
        OmegaConf.register_new_resolver("vtrain.coco_num_classes", coco_num_classes)
