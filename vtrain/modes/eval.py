"""`mode=eval`: evaluate weights without training: a vtrain checkpoint (`ckpt_path=RUN.ckpt`) or official
weights loaded into the experiment's model (`model.pretrained=FILE`: DETR `.pth`, ViT `.npz` / timm,
TTSR `.pt`, iGPT Hugging Face, torchvision Mask R-CNN, LambdaResNet state dicts).

The test split (the official evaluation split) is evaluated once; the validation split too, when it is a
separate hold-out of the training split (`data.holdout`). Each number is printed once.
"""

from __future__ import annotations

from omegaconf import DictConfig

from vtrain.modes.common import build_run, load_task_weights, weights_to_run
from vtrain.results import paper_results, print_summary, scalars, write_metrics


def evaluate(cfg: DictConfig) -> float | None:
    """Evaluate, write `metrics.json`, print the table; returns the value of `monitor` when measured."""
    ckpt_path, pretrained = weights_to_run(cfg, "evaluate")
    run = build_run(cfg, weights_from_checkpoint=ckpt_path is not None)
    if ckpt_path is not None:
        load_task_weights(run.task, ckpt_path, run.cfg)

    metrics: dict[str, float] = {}
    if cfg.data.get("holdout"):
        results = run.trainer.validate(run.task, datamodule=run.datamodule, verbose=False)
        metrics.update(scalars(results[0] if results else {}))
    results = run.trainer.test(run.task, datamodule=run.datamodule, verbose=False)
    metrics.update(scalars(results[0] if results else {}))
    metrics.update(run.data_counts())

    info = run.info()  # after the data were set up: split sizes
    info["tested_checkpoint"] = ckpt_path if ckpt_path is not None else f"model.pretrained={pretrained}"
    if run.trainer.is_global_zero:
        paper = paper_results(run.cfg)
        write_metrics(run.output_dir, metrics, paper, info)
        print_summary(metrics, paper, info, run.output_dir)
    return metrics.get(cfg.monitor)
