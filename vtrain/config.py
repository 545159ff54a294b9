"""Where the Hydra configs live and the few OmegaConf resolvers they use."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


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


def fill_num_classes(cfg: DictConfig, datamodule: Any) -> None:
    """`data.num_classes: null` means "as many as the data has": the data module reads the number from its
    files in `setup` (the COCO-format modules: the annotation file's largest category id + 1). The model
    and the task read `${data.num_classes}` when they are built, before any setup, so the number is read
    here, once the data module exists and before they are built, and written into `cfg.data.num_classes`.
    Nothing happens when `data.num_classes` is set or absent."""
    data = cfg.get("data")
    if data is None or "num_classes" not in data or data.num_classes is not None:
        return
    target = data.get("_target_", type(datamodule).__name__)
    unreadable = (
        f"data.num_classes is null, which means 'read the number of classes from the data', but {target} "
        "could not read it from its files"
    )
    if not hasattr(datamodule, "num_classes"):
        raise ValueError(f"{unreadable}: it has no num_classes; set data.num_classes=N")
    datamodule.prepare_data()  # builds a tiny data set on first use
    try:
        datamodule.setup("validate")
    except ValueError as err:
        raise ValueError(f"{unreadable} ({err}); set data.num_classes=N") from err
    if datamodule.num_classes is None:
        raise ValueError(f"{unreadable}; set data.num_classes=N")
    data.num_classes = int(datamodule.num_classes)


def register_resolvers() -> None:
    """Resolvers used in conf/: `${vtrain.env_unset:NAME}` is true when the environment variable is unset;
    `${vtrain.coco_num_classes:FILE}` is a COCO file's largest category id + 1."""
    if not OmegaConf.has_resolver("vtrain.env_unset"):
        OmegaConf.register_new_resolver("vtrain.env_unset", lambda name: not os.environ.get(name))
    if not OmegaConf.has_resolver("vtrain.coco_num_classes"):
        OmegaConf.register_new_resolver("vtrain.coco_num_classes", coco_num_classes)


# Key names that hold credentials, and environment variables whose values must never be logged.
SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
REDACTED = "<redacted>"


def redact_secrets(config: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of a plain config (dicts, lists, scalars) fit for logging and for checkpoints: the value of
    every key whose name looks like a credential (``api_key``, ``token``, ``secret``, ``password``...) and
    every string containing the value of such an environment variable (``WANDB_API_KEY``, ``HF_TOKEN``,
    reached through ``${oc.env:...}`` under any key name) become ``"<redacted>"``."""
    environ = os.environ if environ is None else environ
    secrets = [v for k, v in environ.items() if SECRET_KEY.search(k) and len(v) >= 8]

    def clean(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: clean(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(clean(v) for v in value)
        if value is not None and SECRET_KEY.search(key) and not isinstance(value, bool):
            return REDACTED
        if isinstance(value, str) and any(secret in value for secret in secrets):
            return REDACTED
        return value

    return clean(config)
