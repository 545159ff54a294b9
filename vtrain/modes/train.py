"""`mode=train`: fit, then test on the official evaluation split.

Which weights are tested (`test_ckpt`): `best` is the checkpoint chosen by `monitor` on the validation
split, which is only a fair choice when validation is a hold-out of the training split (`data.holdout`);
`last` is the final model, what the papers report on COCO val2017, ImageNet val or CUFED5 when they have no
separate validation split. `auto` (the default) picks `best` with a hold-out and `last` without.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from vtrain.io import check_writable
from vtrain.modes.common import (
    build_run,
    check_checkpoint_matches,
    load_task_weights,
    read_vtrain_checkpoint,
)
from vtrain.results import paper_results, print_summary, scalars, write_metrics
from vtrain.runs import refuse_to_overwrite, resolve_ckpt_path

log = logging.getLogger("vtrain")

TEST_CKPTS = ("auto", "best", "last")


def tested_checkpoint(cfg: DictConfig) -> str:
    """`best` or `last`, from `test_ckpt` and whether validation is a hold-out of the training split."""
    choice = str(cfg.get("test_ckpt", "auto"))
    if choice not in TEST_CKPTS:
        raise ValueError(f"test_ckpt must be one of {TEST_CKPTS}, got {choice!r}")
    holdout = bool(cfg.data.get("holdout"))
    if choice == "auto":
        return "best" if holdout else "last"
    if choice == "best" and not holdout:
        log.warning(
            "test_ckpt=best without data.holdout: the checkpoint is chosen on the split it is tested on, "
            "so the test numbers are optimistic; set data.holdout=FRACTION to select on held-out training "
            "data"
        )
    return choice


def train(cfg: DictConfig) -> float | None:
    """Fit, test (when `test`), write `metrics.json`; returns the best `monitor` value (for sweepers)."""
    check_writable(cfg.paths.output_dir, "run directory")
    ckpt_path = resolve_ckpt_path(cfg)
    refuse_to_overwrite(cfg, ckpt_path)
    if ckpt_path is not None:  # before any work: a checkpoint of another model fails here, named
        check_checkpoint_matches(ckpt_path, read_vtrain_checkpoint(ckpt_path), cfg)
    run = build_run(cfg, weights_from_checkpoint=ckpt_path is not None)
    trainer, task = run.trainer, run.task
    trainer.fit(task, datamodule=run.datamodule, ckpt_path=ckpt_path)
    metrics = scalars(trainer.callback_metrics)
    tested: dict[str, str] = {}

    if cfg.get("test"):
        which = tested_checkpoint(cfg)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if which == "best" and best:
            load_task_weights(task, best, run.cfg)
            tested["tested_checkpoint"] = f"best by {cfg.monitor}: {best}"
        else:
            tested["tested_checkpoint"] = (
                f"last: the weights at the end of training (step {trainer.global_step})"
            )
        log.info("testing %s", tested["tested_checkpoint"])
        results = trainer.test(task, datamodule=run.datamodule, verbose=False)
        metrics.update(scalars(results[0] if results else {}))

    metrics.update(run.data_counts())

    best_score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    score = float(best_score) if best_score is not None else metrics.get(cfg.monitor)
    if trainer.is_global_zero:
        paper = paper_results(run.cfg)
        info = {**run.info(), **tested}
        write_metrics(run.output_dir, metrics, paper, info)
        print_summary(metrics, paper, info, run.output_dir)
    return score
