"""Data-test fixtures: the tiny sets built once per session, and the real samples by sub-folder."""

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from vtrain.data.tiny import build_tiny


@pytest.fixture(scope="session")
def tiny(data_dir: Path) -> Callable[[str], Path]:
    """``tiny(name)`` is the data set root of tiny set ``name`` (``data_dir/name``), built on first use."""

    def root(name: str) -> Path:
        build_tiny(name, data_dir / name)
        return data_dir / name

    return root


@pytest.fixture
def shared(shared_data: Path) -> Callable[[str], Path]:
    """``shared("cifar10")`` is ``../shared/data/cifar10``; the test skips, with the reason, when absent."""

    def folder(relative: str) -> Path:
        path = shared_data / relative
        if not path.exists():
            pytest.skip(f"real sample {path} not present")
        return path

    return folder


@pytest.fixture
def imagenet_tiny_copy(tiny: Callable[[str], Path], tmp_path: Path) -> Path:
    """A private copy of imagenet_tiny that a test may damage."""
    return Path(shutil.copytree(tiny("imagenet_tiny"), tmp_path / "imagenet_tiny"))
