"""Shared fixtures: configs composed through Hydra's compose API and shrunk for CPU tests, a session-wide
data root where the tiny data sets are built once, and the optional real samples in ../shared/data."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vtrain.config import config_dir, register_resolvers

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Any experiment shrunk to a few CPU batches, no workers, no progress bar (conf/debug/smoke.yaml).
SMOKE = ["debug=smoke"]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, whatever ran before it or in which order: a test that
    draws weights or inputs without seeding still sees the same numbers on every run."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root shared by the whole session; tiny sets are built into it on first use."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def cifar10_tiny_shards(data_dir: Path) -> list[str]:
    """Overrides that train an experiment on the tiny CIFAR-10 set converted to shards (in 256 KiB shards,
    so that an epoch crosses many), converted once per session."""
    from vtrain.data.shards.convert import convert
    from vtrain.data.shards.format import MANIFEST
    from vtrain.data.tiny import build_tiny

    out = data_dir / "cifar10_tiny_shards"
    if not (out / MANIFEST).exists():
        convert("cifar10", build_tiny("cifar10_tiny", data_dir / "cifar10_tiny"), out, 256 * 1024)
    return ["data.format=shards", f"data.root={out}", "data.tiny=null"]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample files in ../shared/data (present in CI and developer checkouts, not for users)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def make_cfg(data_dir: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """`make_cfg(overrides)` composes conf/train.yaml with the overrides, points data and outputs at
    temporary directories and registers the Hydra runtime config, as `python -m vtrain` would."""
    register_resolvers()

    def make(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[*overrides, f"paths.data_dir={data_dir}"],
                return_hydra_config=True,
            )
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir or tmp_path / "run")
            cfg.hydra.runtime.output_dir = cfg.paths.output_dir
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra  # as in `python -m vtrain`, the job's config carries no `hydra` node
        return cfg

    yield make
    GlobalHydra.instance().clear()


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600):
    """Run `python -m vtrain ARGS` in a subprocess and return the CompletedProcess (output captured)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "vtrain", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"vtrain {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc
