"""Where a run lives and what it resumes from: the run directory's name (after the SLURM job, so that a
requeued job finds its own checkpoints), `ckpt_path=last`, earlier runs of an experiment and the W&B run
id kept in the run directory."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, open_dict

from vtrain.checkpoint import resolve_resume
from vtrain.io import atomic_write_text

log = logging.getLogger("vtrain")


def run_stamp() -> str:
    """The last part of a run directory's name: ``slurm-<job id>`` (``slurm-<array job id>_<task id>`` for
    an array task) inside a SLURM job, so that a requeued job, which gets the same id, comes back to the
    same directory; the start time ``YYYY-MM-DD_HH-MM-SS`` elsewhere."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"slurm-{array_job}_{array_task}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def requeued() -> bool:
    """True in a SLURM job that was requeued (preempted or timed out, then restarted by SLURM / submitit)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def earlier_runs(cfg: DictConfig) -> list[Path]:
    """Run directories of the experiment `cfg.name` under `paths.log_dir` that hold a `last.ckpt`, newest
    first (single runs and multirun jobs), except this run's own."""
    root = Path(cfg.paths.log_dir) / str(cfg.name)
    own = Path(cfg.paths.output_dir).resolve()
    found = [*root.glob("*/checkpoints/last.ckpt"), *root.glob("*/*/checkpoints/last.ckpt")]
    runs = [p.parent.parent for p in found if p.parent.parent.resolve() != own]
    return sorted(runs, key=lambda d: (d / "checkpoints" / "last.ckpt").stat().st_mtime, reverse=True)


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint a run starts from: `ckpt_path` as given, `last` (this run directory's newest
    readable checkpoint), or `last` implicitly in a requeued SLURM job.

    Raises:
        FileNotFoundError: a given file does not exist, or `ckpt_path=last` in `mode=eval` finds none.
    """
    path = cfg.get("ckpt_path")
    if path is None and cfg.mode == "train" and requeued():
        log.info(
            "requeued SLURM job (SLURM_RESTART_COUNT=%s): resuming from last.ckpt",
            os.environ["SLURM_RESTART_COUNT"],
        )
        path = "last"
    if path is None:
        return None
    if str(path) == "last":
        checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
        found = resolve_resume("last", checkpoints)
        if found is not None:
            return found
        if cfg.mode != "train":
            raise FileNotFoundError(f"ckpt_path=last: no checkpoint in {checkpoints}")
        others = earlier_runs(cfg)
        hint = ""
        if others:
            listed = ", ".join(str(d) for d in others[:3])
            hint = (
                f"; earlier runs of {cfg.name} with a last.ckpt (newest first): {listed}. To continue one, "
                f"start in its directory: hydra.run.dir={others[0]} ckpt_path=last"
            )
        (log.warning if others else log.info)(
            "ckpt_path=last: no checkpoint in %s yet, starting from scratch%s", checkpoints, hint
        )
        return None
    if Path(path).suffix == ".npz":
        raise ValueError(
            f"ckpt_path={path} is a NumPy .npz archive (official JAX ViT weights?), not a vtrain checkpoint: "
            f"pass it as model.pretrained={path}"
        )
    try:
        return resolve_resume(path, Path(cfg.paths.output_dir) / "checkpoints")
    except ValueError as err:
        if not str(err).startswith("cannot read"):
            raise  # a refusal (pickled code) stands as it is
        raise ValueError(
            f"ckpt_path={path} takes a vtrain checkpoint, and {err}; official or third-party weights "
            f"(a .safetensors file, say) are loaded into the experiment's model with model.pretrained={path}"
        ) from None


def refuse_to_overwrite(cfg: DictConfig, ckpt_path: str | None) -> None:
    """A fresh training run must not write over another run's checkpoints in the same directory (two runs
    in one SLURM allocation, a reused `hydra.run.dir`).

    Raises:
        FileExistsError: the run directory already holds a `last.ckpt` and the run does not resume.
    """
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if ckpt_path is None and last.is_file():
        raise FileExistsError(
            f"{last.parent} already holds the checkpoints of a run (last.ckpt of "
            f"{datetime.fromtimestamp(last.stat().st_mtime):%Y-%m-%d %H:%M}); this run would write over "
            "them. Resume it with ckpt_path=last, or start elsewhere with hydra.run.dir=DIR"
        )


def keep_wandb_run_id(cfg: DictConfig, output_dir: Path) -> None:
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
                atomic_write_text(id_file, run_id + "\n")
        with open_dict(node):
            node.id = run_id
            node.resume = "allow"
