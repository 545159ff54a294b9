"""Training curves of a run: `python -m vtrain.plot RUN_DIR [--out DIR]`.

Reads `RUN_DIR/csv/metrics.csv` (a resumed run's rows are already merged there by `vtrain.loggers.CSVLogger`)
and writes one PNG per metric group, one panel per metric against the optimizer step: `train.png`
(losses), `val.png`, `test.png` (validation and test metrics), `lr.png` (the learning-rate monitor's
`lr-*` columns), and one per any other `PREFIX/` group. Empty cells (a metric not logged at that row) are
skipped; a metric that was logged as NaN or infinity is left out of its panel, with a warning naming it.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from collections import defaultdict
from pathlib import Path

log = logging.getLogger("vtrain")

NOT_METRICS = ("step", "epoch")


def group_of(column: str) -> str:
    """The PNG a metric goes to: `lr` for `lr-AdamW` (and its `lr-AdamW/pg1`), else the part before `/`."""
    if column.startswith("lr-"):
        return "lr"
    return column.split("/", 1)[0] if "/" in column else "other"


def read_series(path: Path) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """`{group: {metric: (steps, values)}}` from a Lightning `metrics.csv`, finite values only.

    Raises:
        FileNotFoundError: no `metrics.csv` at `path`.
        ValueError: the file has no `step` column (not a Lightning CSV log).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.csv (a run logged with logger=csv writes it there)")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if "step" not in columns:
        raise ValueError(f"{path}: expected a Lightning CSV log with a 'step' column, found {columns}")
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = defaultdict(dict)
    for column in columns:
        if column in NOT_METRICS:
            continue
        steps, values = [], []
        bad = 0
        for row in rows:
            if not row.get(column) or not row.get("step"):
                continue
            value = float(row[column])
            if not math.isfinite(value):
                bad += 1
                continue
            steps.append(float(row["step"]))
            values.append(value)
        if bad:
            log.warning("%s: %s has %d NaN or infinite values; its panel leaves them out", path, column, bad)
        if values:
            series[group_of(column)][column] = (steps, values)
    return dict(series)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per metric group of `run_dir`'s `csv/metrics.csv` into `out_dir` (default
    `run_dir/plots`); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    series = read_series(run_dir / "csv" / "metrics.csv")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for group, metrics in sorted(series.items()):
        cols = min(3, len(metrics))
        rows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
        for ax, (name, (steps, values)) in zip(axes.flat, sorted(metrics.items()), strict=False):
            ax.plot(steps, values, marker="o" if len(values) < 20 else None, markersize=3)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if group == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        for ax in axes.flat[len(metrics) :]:
            ax.set_visible(False)
        fig.suptitle(f"{run_dir.name}: {group}", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{group}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vtrain.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (holding csv/metrics.csv)")
    parser.add_argument("--out", default=None, help="where the PNGs go (default: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    for path in plot_run(args.run_dir, args.out):
        print(path)


if __name__ == "__main__":
    main()
