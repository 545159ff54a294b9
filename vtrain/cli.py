"""`python -m vtrain`: compose the Hydra config and hand it to the function of its `mode`
(`vtrain.modes.<mode>`)."""

from __future__ import annotations

import logging
import math

import hydra
from omegaconf import DictConfig

from vtrain.config import config_dir, register_resolvers
from vtrain.modes.browse import browse
from vtrain.modes.eval import evaluate
from vtrain.modes.flops import flops
from vtrain.modes.lr_find import lr_find
from vtrain.modes.predict import predict
from vtrain.modes.train import train

log = logging.getLogger("vtrain")

MODES = {
    "train": train,
    "eval": evaluate,
    "predict": predict,
    "browse": browse,
    "flops": flops,
    "lr_find": lr_find,
}


def run(cfg: DictConfig) -> float | None:
    """Run one job of the composed config and return the value of `cfg.monitor` (for sweepers)."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    score = MODES[cfg.mode](cfg)
    if score is not None and not math.isfinite(score):
        log.warning("%s is %s", cfg.monitor, score)
    return score


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)
