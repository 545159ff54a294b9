"""A process SIGKILLed while it writes a checkpoint never leaves a truncated file behind: the file on disk
is always a complete earlier or later version. Checked with real kills of a real writer process that uses
the checkpoint writer of vtrain's Trainer."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from vtrain.checkpoint import load_checkpoint

# Writes version 0, 1, 2, ... of a ~64 MB checkpoint to the same path through the Trainer's CheckpointIO
# (the one ModelCheckpoint uses for last.ckpt), announcing each finished version on stdout.
WRITER = """
import sys, torch, pytorch_lightning as L
path = sys.argv[1]
io = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False).strategy.checkpoint_io
version = 0
while True:
    io.save_checkpoint({"version": version, "weights": torch.full((16, 1024, 1024), float(version))}, path)
    print(version, flush=True)
    version += 1
"""


def _kill_while_writing(script: str, path: Path, seed: int) -> int:
    """Start the writer, let it finish at least one version, SIGKILL it at a random moment; returns the
    last version it reported as written."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.strip() == "0", f"writer did not start: {first!r}"
    time.sleep(random.Random(seed).uniform(0.0, 0.6))  # saves take ~0.1-0.3 s: most kills land mid-write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reported = [int(line) for line in [first, *proc.stdout.read().splitlines()] if line.strip()]
    return reported[-1]


@pytest.mark.parametrize("seed", range(4))
def test_sigkill_during_checkpoint_writes_leaves_a_complete_file(tmp_path, seed):
    path = tmp_path / "checkpoints" / "last.ckpt"
    last_reported = _kill_while_writing(WRITER, path, seed)
    ckpt = load_checkpoint(path)  # raises on a truncated or corrupt file
    version = ckpt["version"]
    assert version in (
        last_reported,
        last_reported + 1,
    )  # the finished one, or one written but not yet printed
    assert ckpt["weights"].shape == (16, 1024, 1024)
    assert (ckpt["weights"] == version).all()
