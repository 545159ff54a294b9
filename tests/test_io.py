"""vtrain.io: a write that fails leaves the old file and no temporary; temporaries live next to their
target, so the final rename never crosses file systems; a dead writer's temporaries are removed, a live
one's kept; an unwritable directory is named before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vtrain.io import (
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    remove_stale_temporaries,
    temporary_sibling,
)


def test_writes_replace_the_file_whole_with_the_permissions_open_gives(tmp_path):
    path = tmp_path / "new" / "metrics.json"
    atomic_write_text(path, '{"acc": 1.0}\n')
    atomic_write_text(path, '{"acc": 2.0}\n')
    assert path.read_text() == '{"acc": 2.0}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "w.pt")
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["metrics.json", "new", "w.pt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"old")
    seen = []
    with pytest.raises(RuntimeError, match="serialization failed"), atomic_write(path) as f:
        f.write(b"half of the new")
        seen.extend(p for p in tmp_path.iterdir() if p != path)
        raise RuntimeError("serialization failed")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]
    # the temporary was in the target's own directory: os.replace never crosses a file system
    assert len(seen) == 1 and seen[0].name.startswith(".last.ckpt.") and seen[0].name.endswith(".tmp")


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    mine = temporary_sibling(tmp_path / "last.ckpt")
    killed = Path(str(mine).replace(f".{os.getpid()}@", f".{dead_pid}@"))
    killed_build = Path(
        str(temporary_sibling(tmp_path / "cifar")).replace(f".{os.getpid()}@", f".{dead_pid}@")
    )
    foreign_old = tmp_path / ".epoch001.ckpt.123@elsewhere.0123abcd.tmp"
    foreign_new = tmp_path / ".epoch002.ckpt.123@elsewhere.4567cdef.tmp"
    unrelated = tmp_path / ".last.ckpt.tmp"  # not one of ours
    for path in (mine, killed, foreign_old, foreign_new, unrelated):
        path.write_bytes(b"partial")
    killed_build.mkdir()
    (killed_build / "data_batch_1").write_bytes(b"partial")
    os.utime(foreign_old, (0, 0))

    removed = remove_stale_temporaries(tmp_path)

    assert sorted(removed) == sorted([killed, killed_build, foreign_old])
    assert sorted(tmp_path.iterdir()) == sorted([mine, foreign_new, unrelated])


def test_check_writable_names_the_directory_and_the_os_error(tmp_path):
    check_writable(tmp_path / "run" / "checkpoints", "checkpoint directory")
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []  # the probe is gone

    (tmp_path / "taken").write_text("a file where a directory should be")
    with pytest.raises(FileExistsError) as error:
        check_writable(tmp_path / "taken", "run directory")
    taken = tmp_path / "taken"
    assert str(error.value) == f"[Errno 17] run directory {taken} is not writable: File exists: '{taken}'"
    with pytest.raises(NotADirectoryError, match=r"checkpoint directory .*taken/checkpoints is not writable"):
        check_writable(tmp_path / "taken" / "checkpoints", "checkpoint directory")
