"""`mode=lr_find`: Lightning's learning-rate range test (`pytorch_lightning.tuner.Tuner.lr_find`) on the
experiment's model and data: `lr_find.num_training` optimizer steps with the learning rate raised from
`lr_find.min_lr` to `lr_find.max_lr`, the loss recorded at each; the suggestion is the LR of the steepest
fall of the loss. Writes `lr_find.png` (loss against LR, the suggestion marked) and `lr_find.json` to the
run directory and prints the suggestion as the `task.optimizer.lr=` override that gives it.

The search sets the LR of every parameter group itself (and replaces the experiment's schedule while it
runs), so it needs nothing from the task's optimizer factory; groups with LRs of their own (DETR's
backbone) are searched at the same LR as the rest. The weights, optimizer and loop state are restored
afterwards and nothing is trained or checkpointed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.tuner import Tuner

from vtrain.io import atomic_write_text, check_writable
from vtrain.modes.common import build_run

log = logging.getLogger("vtrain")


def lr_find(cfg: DictConfig) -> float | None:
    """Run the range test, write `lr_find.png` / `lr_find.json`; returns the suggested LR (None when the
    search stopped too early to suggest one)."""
    check_writable(cfg.paths.output_dir, "run directory")
    run = build_run(cfg)
    options = cfg.lr_find
    finder = Tuner(run.trainer).lr_find(
        run.task,
        datamodule=run.datamodule,
        min_lr=float(options.min_lr),
        max_lr=float(options.max_lr),
        num_training=int(options.num_training),
        mode=str(options.mode),
        early_stop_threshold=options.early_stop_threshold,
        update_attr=False,
    )
    if finder is None:  # Lightning skips the search under fast_dev_run
        raise ValueError("mode=lr_find: the search did not run (trainer.fast_dev_run is set); unset it")
    suggestion = finder.suggestion()

    # the configured LR holds at the paper's batch (global_batch.lr_reference); this run's LR is scaled to
    # its global batch, and the search's LRs are this run's: the override is the suggestion scaled back
    configured, scaled = cfg.task.get("optimizer", {}).get("lr"), run.cfg.task.get("optimizer", {}).get("lr")
    override = suggestion
    if suggestion is not None and configured and scaled:
        override = suggestion * float(configured) / float(scaled)
    if not run.trainer.is_global_zero:
        return suggestion

    output_dir = Path(run.output_dir)
    document = {
        "suggestion": suggestion,
        "override": f"task.optimizer.lr={override:.3g}" if override is not None else None,
        "configured_lr": configured,
        "lr_at_this_global_batch": scaled,
        "global_batch": run.plan.global_batch,
        "steps": len(finder.results["lr"]),
        "search": {key: options[key] for key in options},
        "lr": finder.results["lr"],
        "loss": finder.results["loss"],
    }
    atomic_write_text(output_dir / "lr_find.json", json.dumps(document, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = finder.plot(suggest=suggestion is not None)
    figure.savefig(output_dir / "lr_find.png", dpi=100)
    plt.close(figure)

    if suggestion is None:
        print(f"lr_find: no suggestion, the search stopped after {document['steps']} steps -> {output_dir}")
    else:
        print(
            f"lr_find: suggested LR {suggestion:.3g} at global batch {run.plan.global_batch} "
            f"(configured {scaled:.3g}): {document['override']} -> {output_dir}/lr_find.png"
        )
    return suggestion
