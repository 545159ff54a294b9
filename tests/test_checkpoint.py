"""vtrain.checkpoint: a file carrying pickled code is refused with one message that names the file and the
code and never advises switching the check off, and its payload never runs; a resumed run picks a readable
checkpoint, or names the file that is not."""

from __future__ import annotations

import logging
import os
import random
import re
import shlex
from pathlib import Path

import pytest
import torch

from vtrain.checkpoint import load_checkpoint, read_state_dict, resolve_resume


class CreatesFileWhenUnpickled:
    """Stands for a class whose unpickling runs code: `__setstate__` creates the file it names."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).touch()
        self.__dict__.update(state)


class RunsShellCommand:
    """Pickles as a call of `os.system` that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def crafted_checkpoint(tmp_path: Path, payload_class: type, name: str) -> tuple[Path, Path]:
    """A vtrain-like checkpoint whose pickle also holds `payload_class`'s payload, and the file the payload
    would create."""
    marker = tmp_path / f"{name}.payload-ran"
    path = tmp_path / f"{name}.ckpt"
    state = {"model.weight": torch.ones(2, 2)}
    torch.save({"global_step": 3, "state_dict": state, "extra": payload_class(marker)}, path)
    return path, marker


def assert_refused(error: pytest.ExceptionInfo, path: Path, code: str) -> None:
    """The one refusal message: the file, the pickled code, that it was not loaded, no advice to switch the
    check off (neither in the message nor in a chained error)."""
    message = str(error.value)
    assert re.match(
        rf"refusing to load {re.escape(str(path))}: it carries pickled Python objects \(", message
    )
    assert re.search(code, message), message
    assert "the file was not loaded" in message
    assert "weights_only" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


@pytest.mark.parametrize(
    "payload, code",
    [(RunsShellCommand, r"\((posix|nt)\.system\)"), (CreatesFileWhenUnpickled, r"CreatesFileWhenUnpickled")],
)
@pytest.mark.parametrize("reader", [load_checkpoint, read_state_dict])
def test_pickled_code_is_refused_and_never_runs(tmp_path, payload, code, reader):
    path, marker = crafted_checkpoint(tmp_path, payload, "foreign")
    with pytest.raises(ValueError) as error:
        reader(path)
    assert_refused(error, path, code)
    assert not marker.exists(), "the payload ran"


def test_the_crafted_payload_is_real(tmp_path):
    """Unpickled without the check, the payloads of the files above do run (so the tests above mean
    something)."""
    for payload in (RunsShellCommand, CreatesFileWhenUnpickled):
        path, marker = crafted_checkpoint(tmp_path, payload, payload.__name__)
        torch.load(path, weights_only=False)
        assert marker.exists()


def _save(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"model.weight": torch.full((4,), float(step))}}, path)
    os.utime(path, (mtime, mtime))
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(random.Random(0).randbytes(4096))
    return path


@pytest.mark.parametrize("damage", [_truncate, _random_bytes])
def test_unreadable_last_falls_back_to_the_newest_readable_checkpoint(tmp_path, caplog, damage):
    ckpt_dir = tmp_path / "checkpoints"
    _save(ckpt_dir / "epoch000.ckpt", step=4, mtime=1_000)
    newest = _save(ckpt_dir / "epoch001.ckpt", step=8, mtime=2_000)
    _save(ckpt_dir / "epoch002.ckpt", step=12, mtime=3_000).write_bytes(b"")  # killed while written
    last = damage(_save(ckpt_dir / "last.ckpt", step=10, mtime=4_000))

    with caplog.at_level(logging.WARNING, logger="vtrain.checkpoint"):
        assert resolve_resume("last", ckpt_dir) == str(newest)

    assert len(caplog.records) == 1
    warning = caplog.records[0].getMessage()
    assert warning.startswith(
        f"ckpt_path=last: {last} is unusable (cannot read {last}: not a torch checkpoint"
    )
    assert (
        f"resuming from {newest} instead, the newest readable checkpoint of the run (global step 8)"
        in warning
    )


def test_last_with_pickled_code_falls_back_and_the_warning_says_why(tmp_path, caplog):
    ckpt_dir = tmp_path / "checkpoints"
    older = _save(ckpt_dir / "epoch000.ckpt", step=4, mtime=1_000)
    last, marker = crafted_checkpoint(ckpt_dir, CreatesFileWhenUnpickled, "last")
    with caplog.at_level(logging.WARNING, logger="vtrain.checkpoint"):
        assert resolve_resume("last", ckpt_dir) == str(older)
    assert f"refusing to load {last}: it carries pickled Python objects" in caplog.text
    assert not marker.exists()


def test_readable_last_is_used_and_an_empty_run_starts_from_scratch(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    assert resolve_resume("last", ckpt_dir) is None  # no directory yet
    ckpt_dir.mkdir()
    assert resolve_resume("last", ckpt_dir) is None  # no checkpoint yet
    _save(ckpt_dir / "epoch003.ckpt", step=12, mtime=5_000)
    last = _save(ckpt_dir / "last.ckpt", step=10, mtime=4_000)
    assert resolve_resume("last", ckpt_dir) == str(last)


def test_no_readable_checkpoint_names_every_file(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    last = _truncate(_save(ckpt_dir / "last.ckpt", step=10, mtime=4_000))
    other = _random_bytes(ckpt_dir / "epoch000.ckpt")
    with pytest.raises(ValueError) as error:
        resolve_resume("last", ckpt_dir)
    message = str(error.value)
    assert message.startswith(f"ckpt_path=last: no readable checkpoint in {ckpt_dir}: cannot read ")
    assert f"cannot read {last}: not a torch checkpoint" in message
    assert f"cannot read {other}: not a torch checkpoint" in message


def test_an_explicit_unreadable_checkpoint_is_named(tmp_path):
    good = _save(tmp_path / "good.ckpt", step=3, mtime=1_000)
    assert resolve_resume(good, tmp_path / "unused") == str(good)
    truncated = _truncate(_save(tmp_path / "truncated.ckpt", step=3, mtime=1_000))
    with pytest.raises(ValueError) as error:
        resolve_resume(truncated, tmp_path)
    assert str(error.value) == (
        f"cannot read {truncated}: not a torch checkpoint: expected the zip archive torch.save writes, found "
        f"{truncated.stat().st_size} bytes without a zip directory (a truncated file, or another format)"
    )
    noise = _random_bytes(tmp_path / "noise.ckpt")
    with pytest.raises(ValueError, match=rf"^cannot read {re.escape(str(noise))}: not a torch checkpoint"):
        resolve_resume(noise, tmp_path)
    foreign, marker = crafted_checkpoint(tmp_path, RunsShellCommand, "foreign")
    with pytest.raises(ValueError) as error:
        resolve_resume(foreign, tmp_path)
    assert_refused(error, foreign, r"system")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*missing\.ckpt: no such checkpoint file"):
        resolve_resume(tmp_path / "missing.ckpt", tmp_path)
