"""A run's results: `metrics.json` in the run directory and the table printed at the end, with the paper's
numbers (the experiment's `paper` node) next to the measured ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from vtrain.io import atomic_write_text


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The plain-number entries of a Lightning metrics dict (one-element tensors become floats)."""
    out = {}
    for key, value in metrics.items():
        value = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def paper_results(cfg: DictConfig) -> dict[str, Any]:
    """The experiment's published numbers: ``{"source": ..., "results": {metric: value}}``, the values in
    the units vtrain logs (AP and accuracy as fractions, PSNR in dB); empty when it states none."""
    paper = cfg.get("paper")
    if not paper:
        return {}
    return OmegaConf.to_container(paper, resolve=True)


def write_metrics(
    output_dir: Path, metrics: dict[str, float], paper: dict[str, Any], run: dict[str, Any]
) -> Path:
    """`metrics.json`: every measured number at the top level (what sweeps read), the paper's numbers under
    ``paper`` and what was evaluated (checkpoint, splits, global batch) under ``run``."""
    document: dict[str, Any] = dict(sorted(metrics.items()))
    if paper:
        document["paper"] = paper
    document["run"] = run
    path = output_dir / "metrics.json"
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return path


def print_summary(metrics: dict[str, float], paper: dict[str, Any], run: dict[str, Any], output_dir: Path):
    """One table of every number, measured and (where the paper reports it) published, printed once."""
    from rich.console import Console
    from rich.table import Table

    published = paper.get("results", {})
    table = Table(title="vtrain results")
    table.add_column("metric")
    table.add_column("measured", justify="right")
    if published:
        table.add_column("paper", justify="right")
    for key in sorted(set(metrics) | set(published)):
        row = [key, f"{metrics[key]:.4f}" if key in metrics else "-"]
        if published:
            row.append(f"{published[key]:.4f}" if key in published else "")
        table.add_row(*row)
    console = Console()
    console.print(table)
    if published:
        console.print(f"paper: {paper.get('source', '')}")
    for key, value in run.items():
        console.print(f"{key}: {value}")
    console.print(f"outputs: {output_dir}")
