"""After a multirun (grid, Optuna, any launcher), one table of every job's monitored metric and the best
job, written to the sweep directory as `sweep_summary.json` and logged."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("vtrain")


def selection_problem(monitor: str, holdout: Any) -> str | None:
    """Why ranking a sweep by `monitor` would select on the split that the results report, or None."""
    if not monitor.startswith("val/"):
        return f"monitor={monitor} is not a validation metric: the sweep would be ranked on the test split"
    if not holdout:
        return (
            "data.holdout is not set, so the validation split is the official evaluation split that the "
            "results report: set data.holdout=FRACTION to rank the jobs on held-out training data"
        )
    return None


def summarize_sweep(sweep_dir: Path, monitor: str, mode: str, holdout: Any = None) -> dict[str, Any]:
    """Read `metrics.json` and `.hydra/overrides.yaml` of each job directory under `sweep_dir` and rank the
    jobs by `monitor` (`mode` "max" or "min"), a validation metric; jobs that failed or lack the metric are
    listed last. `holdout` is the jobs' `data.holdout`: the summary says when the ranking split is the
    reported one."""
    if mode not in ("max", "min"):
        raise ValueError(f"monitor_mode must be 'max' or 'min', got {mode!r}")
    jobs = []
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        job_dir = metrics_file.parent
        value = json.loads(metrics_file.read_text()).get(monitor)
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        jobs.append({"dir": str(job_dir), "value": value if ok else None, "overrides": overrides})
    sign = -1.0 if mode == "max" else 1.0
    jobs.sort(key=lambda j: (j["value"] is None, sign * (j["value"] or 0.0)))
    best = jobs[0] if jobs and jobs[0]["value"] is not None else None
    summary = {"monitor": monitor, "mode": mode, "best": best, "jobs": jobs}
    problem = selection_problem(monitor, holdout)
    if problem:
        summary["warning"] = problem
    return summary


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): writes `<sweep dir>/sweep_summary.json` at the end of a
    multirun, ranking the jobs by the config's `monitor` / `monitor_mode`."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        holdout = config.get("data", {}).get("holdout")
        summary = summarize_sweep(sweep_dir, config.monitor, config.monitor_mode, holdout)
        if "warning" in summary:
            log.warning("sweep %s: %s", sweep_dir, summary["warning"])
        (sweep_dir / "sweep_summary.json").write_text(json.dumps(summary, indent=2))
        best = summary["best"]
        if best is None:
            log.warning("sweep %s: no job reported %s", sweep_dir, config.monitor)
        else:
            log.info(
                "sweep %s: best %s = %.4f (%s) in %s",
                sweep_dir,
                config.monitor,
                best["value"],
                " ".join(best["overrides"]),
                best["dir"],
            )
