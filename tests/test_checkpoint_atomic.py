"""A process SIGKILLed while it writes a checkpoint never leaves a truncated file behind, also with $TMPDIR on
another file system (where Lightning's own writer copies its temporary over the target): the file on disk is
always a complete earlier or later version, and the next start removes the killed writer's temporary.
Checked with real kills of real writer processes that use the checkpoint writer of vtrain's Trainer."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from vtrain.checkpoint import load_checkpoint

SHM = Path("/dev/shm")

# Builds vtrain's Trainer from conf/trainer/cpu.yaml once (importing Lightning takes seconds, which 20 fresh
# processes could not afford), then forks one writer process per line read from stdin: "write V" starts a
# writer that first sets up vtrain's ModelCheckpoint on the directory (a run's start: it removes a killed
# writer's temporaries), then writes versions V, V + 1, ... of a 4 MB checkpoint to last.ckpt through the
# Trainer's CheckpointIO (the one every Lightning save goes through), announcing each finished one;
# "start" only sets up and exits. The parent reaps each child and announces it.
ZYGOTE = """
import os, sys, time, torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from vtrain.callbacks import ModelCheckpoint
from vtrain.config import config_dir, register_resolvers
register_resolvers()
ckpt_dir = sys.argv[1]
last = os.path.join(ckpt_dir, "last.ckpt")
with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
    cfg = compose("train", overrides=["trainer=cpu", f"paths.output_dir={os.path.dirname(ckpt_dir)}"])
trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
print("ready", flush=True)
for line in sys.stdin:
    command, *version = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            ModelCheckpoint(dirpath=ckpt_dir).setup(trainer, None, "fit")
            print(f"started {os.getpid()}", flush=True)
            version = int(version[0]) if command == "write" else None
            while version is not None:
                checkpoint = {"global_step": version, "state_dict": {
                    f"layer{i}.weight": torch.full((2048,), float(version)) for i in range(500)}}
                start = time.perf_counter()
                trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, last)
                print(f"wrote {version} {time.perf_counter() - start:.4f}", flush=True)
                version += 1
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


def _read(proc: subprocess.Popen, expected: str) -> list[str]:
    """Lines of the zygote's stdout up to and including one that starts with `expected`."""
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, f"the writer died; output so far: {lines}"
        lines.append(line.strip())
        if line.startswith(expected):
            return lines


def _leftovers(ckpt_dir: Path, tmpdir: Path) -> list[Path]:
    return [p for p in ckpt_dir.iterdir() if p.name != "last.ckpt"] + list(tmpdir.iterdir())


def test_20_sigkills_during_checkpoint_writes_with_tmpdir_on_another_file_system(tmp_path):
    if not SHM.is_dir() or SHM.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip(f"needs {SHM} on another file system than {tmp_path}")
    tmpdir = SHM / f"vtrain-test-{os.getpid()}"
    tmpdir.mkdir()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, str(ckpt_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir)},
    )
    rng = random.Random(0)
    next_version, killed_mid_write = 0, 0
    try:
        _read(proc, "ready")
        for kill in range(20):
            stale = _leftovers(ckpt_dir, tmpdir) if ckpt_dir.is_dir() else []
            proc.stdin.write(f"write {next_version}\n")
            proc.stdin.flush()
            lines = _read(proc, "wrote")
            assert not any(p.exists() for p in stale), f"start {kill} left the temporaries {stale}"
            writer = int(next(line for line in lines if line.startswith("started")).split()[1])
            duration = float(lines[-1].split()[2])
            time.sleep(rng.uniform(0.0, 2.0 * duration))  # lands in a write most of the time
            os.kill(writer, signal.SIGKILL)
            lines += _read(proc, "reaped")
            last_reported = max(int(line.split()[1]) for line in lines if line.startswith("wrote"))
            killed_mid_write += bool(_leftovers(ckpt_dir, tmpdir))

            checkpoint = load_checkpoint(ckpt_dir / "last.ckpt")  # raises on a truncated or corrupt file
            version = checkpoint["global_step"]
            # the last one announced, or one written but killed before it was announced
            assert version in (last_reported, last_reported + 1), (kill, version, last_reported)
            weights = checkpoint["state_dict"]
            assert len(weights) == 500 and all(
                torch.equal(w, torch.full((2048,), float(version))) for w in weights.values()
            )
            next_version = version + 1
        proc.stdin.write("start\n")
        proc.stdin.flush()
        _read(proc, "reaped")
        assert _leftovers(ckpt_dir, tmpdir) == [], "temporaries remain after the next start"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmpdir)
    print(f"20 SIGKILLs, {killed_mid_write} of them in the middle of a write: every last.ckpt loaded")
    # otherwise the kills missed the writes and nothing was tested
    assert killed_mid_write >= 1
