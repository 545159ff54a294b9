"""Lightning's CSV and TensorBoard loggers, made to continue a run's history when the run resumes, and
its W&B logger, made to keep the command line's secrets out of the run's metadata.

A run resumed into its own directory (`ckpt_path=last`, a requeued SLURM job) logs again from the step of
its checkpoint. Lightning's CSVLogger deletes the existing ``metrics.csv`` then; these loggers keep it:

- rows logged before the first step that the new process logs are kept, and every row from that step on
  is dropped, because the resumed run logs those steps again (they came after the checkpoint, before the
  job died). The resumed file holds every step once, from 0 to the end, with the union of the columns.
- TensorBoard gets the same: the resumed run writes a new event file into the same directory, starting
  with a "session start" marker at its first step. TensorBoard's Python loader (``--load_fast=false``)
  then hides every older point at or after that step; the default (Rust) loader replaces, in each series,
  the older points from the first step that series logs again.

The first step logged is the checkpoint's step in practice: the learning-rate monitor logs it at the
first batch. (When a checkpoint written at the last batch of an epoch makes Lightning redo the epoch's
validation, the first step logged is one earlier and that step's training row is not logged again.)
"""

from __future__ import annotations

import contextlib
import csv
import sys
from argparse import Namespace
from collections.abc import Iterator, Mapping
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

from vtrain.config import redact_overrides


def _step(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


class ContinuingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted: its
    header and rows are read at start, and the first save keeps the rows logged before the first new step
    (see the module docstring). Every rewrite of the file is atomic (a temporary file, then a rename), so a
    job killed while writing loses no history."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._previous_rows: list[dict[str, str]] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                self._previous_rows = list(reader)
                self.metrics_keys = list(reader.fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes the old metrics.csv here; it is continued instead."""

    def save(self) -> None:
        if not self.metrics:
            return
        if self._previous_rows is None:
            super().save()
            return
        first_new_step = self.metrics[0]["step"]
        kept = [row for row in self._previous_rows if _step(row) < first_new_step]
        self._previous_rows = None
        self._record_new_keys()
        self._write(self.metrics_keys, [*kept, *self.metrics])
        self.metrics = []

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        self._write(fieldnames, rows)

    def _write(self, fieldnames: list[str], rows: list[Mapping[str, Any]]) -> None:
        partial = f"{self.metrics_file_path}.partial"
        with self._fs.open(partial, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        self._fs.mv(partial, self.metrics_file_path)


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger continuing an existing ``metrics.csv`` on resume (see the module docstring).
    Give it a fixed ``version`` (conf/logger/csv.yaml: ``""``, the ``csv/`` folder itself) so that a
    resumed run finds its own file rather than starting a new ``version_N``. Pending rows are also written
    whenever a checkpoint is saved, so that the file holds every step up to the checkpoint."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger whose first logged step starts a new TensorBoard session: points that
    older event files of the same directory hold from that step on are stale (see the module docstring).
    Give it a fixed ``version`` (conf/logger/tensorboard.yaml: ``""``) so that a resumed run writes into
    its own directory rather than into a new ``version_N``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session_started = False

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, metrics: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        # its `hp_metric` placeholder, logged at step 0, is not the run's first step
        started, self._session_started = self._session_started, True
        try:
            super().log_hyperparams(params, metrics, **kwargs)
        finally:
            self._session_started = started

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self._session_started and step is not None:
            # what torch's SummaryWriter(purge_step=step) writes, at a step known only now
            start = Event(step=step, session_log=SessionLog(status=SessionLog.START))
            self.experiment._get_file_writer().add_event(start)
            self._session_started = True
        super().log_metrics(metrics, step)


@contextlib.contextmanager
def _redacted_argv() -> Iterator[None]:
    argv = sys.argv
    sys.argv = [argv[0], *redact_overrides(argv[1:])] if argv else argv
    try:
        yield
    finally:
        sys.argv = argv


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, except that the run's metadata records the command line with every
    credential-like value redacted (``+secret_token=<redacted>``): W&B copies ``sys.argv`` into it when the
    run starts. The logged config is redacted by vtrain already (``vtrain.config.redact_secrets``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        with _redacted_argv():
            return super().experiment
