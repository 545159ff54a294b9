"""What every mode builds from the composed config: the trainer (with callbacks and loggers), the global
batch and the learning rates that follow it, the data module, the model and the task; and the checks of
a vtrain checkpoint against the run it is given to."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vtrain.checkpoint import fit_state_dict, load_checkpoint
from vtrain.config import fill_num_classes, redact_secrets
from vtrain.data.counts import report_counts
from vtrain.data.palette import Palette
from vtrain.models.pretrained import replaced_by_checkpoint
from vtrain.runs import keep_wandb_run_id, resolve_ckpt_path
from vtrain.scaling import BatchPlan, apply_batch_plan

log = logging.getLogger("vtrain")


def data_class_names(datamodule: Any) -> list[str] | None:
    """The data's class names by label, when its data module knows them after `setup`: `class_names`
    (Cityscapes), `category_names` (COCO: by category id, "N/A" for unused ids) or its evaluation set's
    `classes` (CIFAR's batches.meta names, ImageNet's wnids); None otherwise."""
    test_set = getattr(datamodule, "test_set", None)
    if test_set is None:
        return None
    names = (
        getattr(datamodule, "class_names", None)
        or getattr(datamodule, "category_names", None)
        or getattr(test_set, "classes", None)
    )
    return [str(name) for name in names] if names else None


class SaveConfig(L.Callback):
    """Stores the resolved run config (plain containers only) in every checkpoint under `vtrain_config`,
    the data's class names under `vtrain_class_names` when it has them (so that `mode=predict` names its
    outputs without the data set) and iGPT's palette under `vtrain_palette`."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = config or {}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["vtrain_config"] = self.config
        datamodule = getattr(trainer, "datamodule", None)
        names = data_class_names(datamodule)
        if names:
            checkpoint["vtrain_class_names"] = names
        palette = getattr(datamodule, "palette", None)
        if isinstance(palette, Palette):  # iGPT: what its tokens mean, for mode=predict without the data
            checkpoint["vtrain_palette"] = palette.centers.tolist()


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a config group such as `callbacks` or `logger`."""
    if not group:
        return []
    return [
        instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]


@dataclass
class Run:
    """A job's objects, built from `cfg` (the config as this run uses it: derived batch and scaled LRs)."""

    cfg: DictConfig
    trainer: L.Trainer
    datamodule: L.LightningDataModule
    task: L.LightningModule
    plan: BatchPlan
    output_dir: Path

    def data_counts(self) -> dict[str, float]:
        """What the data sets left out (corrupt images skipped, boxes dropped, files of other types), as
        metrics, each non-zero count also logged as a warning."""
        counts = getattr(self.datamodule, "data_counts", None)
        return report_counts(counts()) if counts else {}

    def info(self) -> dict[str, Any]:
        """What `metrics.json` records about the run besides its numbers."""
        optimizer = self.cfg.task.get("optimizer") or {}
        splits = self.datamodule.split_summary() if hasattr(self.datamodule, "split_summary") else {}
        selection = {
            "holdout": "a hold-out of the training split",
            "test": "the official evaluation split (the one tested: no data.holdout)",
            "train": "the training split",
        }
        return {
            "global_batch": self.plan.global_batch,
            "paper_global_batch": self.plan.paper,
            "lr": optimizer.get("lr"),
            "lr_rule": self.plan.lr_rule,
            "selection_split": selection.get(splits.get("val_source"), "unknown"),
            "split_sizes": {k: splits.get(k) for k in ("train", "val", "test")},
        }


def build_run(cfg: DictConfig, weights_from_checkpoint: bool = False) -> Run:
    """Seed, then build trainer, data module, model and task. The trainer comes first: its world size fixes
    the global batch, and with it the per-device batch (when derived) and the learning rates. The model is
    built before any data is read (unless `data.num_classes=null` asks for the data's count first), so that a
    missing pretrained input stops the run before any work.

    `weights_from_checkpoint`: the run loads every weight from a vtrain checkpoint (eval of a run, a
    resume), so the starting weights the model is built from (ImageNet backbone, VGG) are not needed."""
    cfg = copy.deepcopy(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    save_config = SaveConfig()
    callbacks = [*instantiate_group(cfg.get("callbacks")), save_config]
    keep_wandb_run_id(cfg, output_dir)
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # `logger=none`: Lightning's LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, L.callbacks.LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    plan = apply_batch_plan(cfg, trainer.world_size)
    # step counts may have followed the global batch; the trainer was built before it was known
    trainer.fit_loop.epoch_loop.max_steps = int(cfg.trainer.get("max_steps") or -1)

    datamodule = instantiate(cfg.data)  # reads nothing yet
    fill_num_classes(cfg, datamodule)  # data.num_classes=null: read from the data before the model
    model_cfg = cfg.model
    if weights_from_checkpoint:
        model_cfg = OmegaConf.create(replaced_by_checkpoint(OmegaConf.to_container(cfg.model, resolve=True)))
    model = instantiate(model_cfg)
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        model.compile()
    task = instantiate(cfg.task, model=model)

    # logged and stored in every checkpoint: credentials never land there
    save_config.config = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
    for logger in trainer.loggers:
        logger.log_hyperparams(save_config.config)
    return Run(cfg, trainer, datamodule, task, plan, output_dir)


def weights_to_run(cfg: DictConfig, what: str) -> tuple[str | None, str | None]:
    """The weights a mode that does not train runs (`what`: "evaluate", "run"): `(ckpt_path, None)` for a
    vtrain checkpoint, `(None, model.pretrained)` for official weights.

    Raises:
        ValueError: neither is given.
    """
    ckpt_path = resolve_ckpt_path(cfg)
    pretrained = cfg.model.get("pretrained")
    if ckpt_path is None and not pretrained:
        raise ValueError(
            f"mode={cfg.mode} needs the weights to {what}: ckpt_path=RUN.ckpt (a vtrain checkpoint) or "
            "model.pretrained=FILE (official weights in the experiment's model)"
        )
    return ckpt_path, None if ckpt_path is not None else str(pretrained)


def describe_file(path: str | Path, content: Any) -> str:
    """What a loaded torch file looks like, for errors about passing the wrong kind of file."""
    if not isinstance(content, dict):
        return f"a {type(content).__name__}"
    tensors = [k for k, v in content.items() if isinstance(v, torch.Tensor)]
    if tensors and len(tensors) == len(content):
        return f"a bare state dict of {len(tensors)} tensors ({', '.join(map(repr, tensors[:3]))}, ...)"
    keys = ", ".join(repr(k) for k in list(content)[:6])
    if isinstance(content.get("model"), dict) and "args" in content:
        return f"an official facebookresearch/detr training checkpoint (top-level keys {keys})"
    return f"a dict with top-level keys {keys}"


def read_vtrain_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint that vtrain wrote (a Lightning checkpoint with `state_dict` and `vtrain_config`).

    Raises:
        ValueError: the file is another kind of checkpoint (an official or third-party weight file), with
            what it looks like and the `model.pretrained` option that takes such files.
    """
    content = load_checkpoint(path)
    if not (isinstance(content, dict) and isinstance(content.get("state_dict"), dict)):
        raise ValueError(
            f"ckpt_path={path} is not a vtrain checkpoint (a Lightning checkpoint with 'state_dict' and "
            f"'vtrain_config'): it is {describe_file(path, content)}. Official or third-party weights are "
            f"loaded into the experiment's model with model.pretrained={path}"
        )
    return content


def _model_name(model_cfg: dict[str, Any] | DictConfig) -> str:
    return str(model_cfg.get("name") or model_cfg.get("_target_") or "?")


def check_checkpoint_matches(path: str | Path, checkpoint: dict[str, Any], cfg: DictConfig) -> None:
    """A checkpoint from another experiment's model is named as such, before any key is compared.

    Raises:
        ValueError: the checkpoint's stored config built another model preset than this run's.
    """
    stored = checkpoint.get("vtrain_config") or {}
    stored_model = stored.get("model") or {}
    if not stored_model:
        return  # an older checkpoint without its config: the state dict check below still names keys
    theirs, ours = _model_name(stored_model), _model_name(cfg.model)
    if theirs != ours:
        raise ValueError(
            f"{path} holds a {theirs} model (experiment {stored.get('name', '?')}), but this run builds "
            f"{ours} (experiment {cfg.name}): pass a checkpoint of this experiment, or the experiment "
            f"that wrote it (experiment={stored.get('name', '?')})"
        )


def load_task_weights(task: L.LightningModule, path: str | Path, cfg: DictConfig) -> dict[str, Any]:
    """Load a vtrain checkpoint's weights into `task`, every problem named with the file."""
    checkpoint = read_vtrain_checkpoint(path)
    check_checkpoint_matches(path, checkpoint, cfg)
    fit_state_dict(task, checkpoint["state_dict"], path)
    return checkpoint
