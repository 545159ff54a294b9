"""`python -m vtrain`: compose the Hydra config, build data / model / task / trainer from their
`_target_`s, then train (fit, test) or evaluate a checkpoint."""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vtrain.checkpoint import load_checkpoint
from vtrain.config import config_dir, redact_secrets, register_resolvers

log = logging.getLogger("vtrain")


class SaveConfig(L.Callback):
    """Stores the resolved run config (plain containers only) in every checkpoint under `vtrain_config`."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["vtrain_config"] = self.config


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group such as `callbacks` or `logger`."""
    if not group:
        return []
    return [
        instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]


def _requeued() -> bool:
    """True in a SLURM job that was requeued (preempted or timed out, then restarted by SLURM / submitit)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def _resolve_ckpt_path(cfg: DictConfig) -> str | None:
    path = cfg.get("ckpt_path")
    if path is None and cfg.mode == "train" and _requeued():
        log.info(
            "requeued SLURM job (SLURM_RESTART_COUNT=%s): resuming from last.ckpt",
            os.environ["SLURM_RESTART_COUNT"],
        )
        path = "last"
    if path is None:
        return None
    if str(path) == "last":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        if cfg.mode == "train":
            log.info("ckpt_path=last: no %s yet, starting from scratch", last)
            return None
        raise FileNotFoundError(f"ckpt_path=last: {last} does not exist")
    if not Path(path).is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file")
    return str(path)


def _keep_wandb_run_id(cfg: DictConfig, output_dir: Path) -> None:
    """A W&B logger without an explicit `id` gets the one stored in the run directory (created on the first
    start), with `resume: allow`: a resumed or requeued job continues the same W&B run."""
    for node in (cfg.get("logger") or {}).values():
        if not isinstance(node, DictConfig) or not str(node.get("_target_", "")).endswith("WandbLogger"):
            continue
        if node.get("id"):
            continue
        id_file = output_dir / "wandb_run_id"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            # ranks started together by srun must not race: only the global rank 0 logs, and records it
            if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:
                output_dir.mkdir(parents=True, exist_ok=True)
                id_file.write_text(run_id + "\n")
        with open_dict(node):
            node.id = run_id
            node.resume = "allow"


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        value = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        if isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def _print_summary(metrics: dict[str, float], output_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vtrain results")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        table.add_row(key, f"{metrics[key]:.4f}")
    console = Console()
    console.print(table)
    console.print(f"outputs: {output_dir}")


def run(cfg: DictConfig) -> float | None:
    """Run one job of the composed config and return the value of `cfg.monitor` (for sweepers)."""
    if cfg.mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {cfg.mode!r}")
    if cfg.mode == "eval" and cfg.get("ckpt_path") is None:
        raise ValueError("mode=eval needs ckpt_path=PATH (a vtrain checkpoint)")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = _resolve_ckpt_path(cfg)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        model.compile()
    task = instantiate(cfg.task, model=model)

    # logged and stored in every checkpoint: credentials never land there
    config = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
    callbacks = [*_instantiate_group(cfg.get("callbacks")), SaveConfig(config)]
    _keep_wandb_run_id(cfg, output_dir)
    loggers = _instantiate_group(cfg.get("logger"))
    if not loggers:  # `logger=none`: Lightning's LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, L.callbacks.LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(config)

    metrics: dict[str, float] = {}
    if cfg.mode == "train":
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(_scalars(trainer.callback_metrics))
        if cfg.get("test"):
            best = getattr(trainer.checkpoint_callback, "best_model_path", "")
            if best:
                task.load_state_dict(load_checkpoint(best)["state_dict"])
                log.info("testing the best checkpoint %s", best)
            results = trainer.test(task, datamodule=datamodule)
            metrics.update(_scalars(results[0] if results else {}))
    else:
        task.load_state_dict(load_checkpoint(ckpt_path)["state_dict"])
        results = trainer.validate(task, datamodule=datamodule)
        metrics.update(_scalars(results[0] if results else {}))
        if cfg.get("test"):
            results = trainer.test(task, datamodule=datamodule)
            metrics.update(_scalars(results[0] if results else {}))

    skipped = datamodule.corrupt_count() if hasattr(datamodule, "corrupt_count") else 0
    if skipped:
        metrics["data/corrupt_images_skipped"] = float(skipped)
        log.warning("%d corrupt images were skipped (data.skip_corrupt=true); the log names them", skipped)

    score = metrics.get(cfg.monitor)
    best_score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    if cfg.mode == "train" and best_score is not None:
        score = float(best_score)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        _print_summary(metrics, output_dir)
    if score is not None and not math.isfinite(score):
        log.warning("%s is %s", cfg.monitor, score)
    return score


register_resolvers()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)
