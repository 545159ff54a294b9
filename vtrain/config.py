"""Where the Hydra configs live, the few OmegaConf resolvers they use, and the redaction of secrets from
every config that is written or logged."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("vtrain")


def config_dir() -> Path:
    """The `conf/` directory: inside the installed wheel (`vtrain/conf`) or at the repository root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"vtrain configs not found: looked for train.yaml in {here / 'conf'} (installed wheel) and "
        f"{here.parent / 'conf'} (source checkout)"
    )


def coco_num_classes(annotation_file: str) -> int:
    """Largest category id of a COCO annotation file + 1 (the class-head size for set-prediction models)."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"num_classes is read from {path}, which does not exist")
    try:
        categories = json.loads(path.read_text())["categories"]
        return max(int(c["id"]) for c in categories) + 1
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: expected a COCO annotation file with a 'categories' list") from err


def fill_num_classes(cfg: DictConfig, datamodule: Any) -> None:
    """`data.num_classes: null` means "as many as the data has": the data module reads the number from its
    files in `setup` (the COCO-format modules: the annotation file's largest category id + 1). The model
    and the task read `${data.num_classes}` when they are built, before any setup, so the number is read
    here, once the data module exists and before they are built, and written into `cfg.data.num_classes`.
    Nothing happens when `data.num_classes` is set or absent."""
    data = cfg.get("data")
    if data is None or "num_classes" not in data or data.num_classes is not None:
        return
    target = data.get("_target_", type(datamodule).__name__)
    unreadable = (
        f"data.num_classes is null, which means 'read the number of classes from the data', but {target} "
        "could not read it from its files"
    )
    if not hasattr(datamodule, "num_classes"):
        raise ValueError(f"{unreadable}: it has no num_classes; set data.num_classes=N")
    datamodule.prepare_data()  # builds a tiny data set on first use
    try:
        datamodule.setup("validate")
    except ValueError as err:
        raise ValueError(f"{unreadable} ({err}); set data.num_classes=N") from err
    if datamodule.num_classes is None:
        raise ValueError(f"{unreadable}; set data.num_classes=N")
    data.num_classes = int(datamodule.num_classes)


def register_resolvers() -> None:
    """Resolvers used in conf/: `${vtrain.env_unset:NAME}` is true when the environment variable is unset;
    `${vtrain.coco_num_classes:FILE}` is a COCO file's largest category id + 1; `${vtrain.run_stamp:}` names
    a run directory after its SLURM job, or its start time (`vtrain.runs.run_stamp`)."""
    if not OmegaConf.has_resolver("vtrain.env_unset"):
        OmegaConf.register_new_resolver("vtrain.env_unset", lambda name: not os.environ.get(name))
    if not OmegaConf.has_resolver("vtrain.coco_num_classes"):
        OmegaConf.register_new_resolver("vtrain.coco_num_classes", coco_num_classes)
    if not OmegaConf.has_resolver("vtrain.run_stamp"):
        from vtrain.runs import run_stamp

        # evaluated once per process: Hydra resolves the run directory once, at start
        OmegaConf.register_new_resolver("vtrain.run_stamp", run_stamp, use_cache=True)


# Key names that hold credentials, and environment variables whose values must never be logged.
SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
REDACTED = "<redacted>"


def _is_interpolation(value: Any) -> bool:
    """`${oc.env:WANDB_API_KEY}` names where a secret is, it is not one (unresolved configs hold these)."""
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def _environment_secrets(environ: Mapping[str, str] | None) -> list[str]:
    environ = os.environ if environ is None else environ
    return [v for k, v in environ.items() if SECRET_KEY.search(k) and len(v) >= 8]


def redact_secrets(config: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of a plain config (dicts, lists, scalars) fit for logging and for checkpoints: the value of
    every key whose name looks like a credential (``api_key``, ``token``, ``secret``, ``password``...) and
    every string containing the value of such an environment variable (``WANDB_API_KEY``, ``HF_TOKEN``,
    reached through ``${oc.env:...}`` under any key name) become ``"<redacted>"``. Interpolations
    (``${oc.env:...}`` in an unresolved config) are kept: they say where a secret is, not what it is."""
    secrets = _environment_secrets(environ)

    def clean(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: clean(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(clean(v) for v in value)
        if (
            value is not None
            and SECRET_KEY.search(key)
            and not isinstance(value, bool)
            and not _is_interpolation(value)
        ):
            return REDACTED
        if isinstance(value, str) and any(secret in value for secret in secrets):
            return REDACTED
        return value

    return clean(config)


def _secret_override(override: str) -> tuple[str, str] | None:
    """(key, value) of a command-line override `[+|++|~]key=value` whose key looks like a credential."""
    key, sep, value = override.partition("=")
    key = key.lstrip("+~")
    if sep and value and SECRET_KEY.search(key) and not _is_interpolation(value.strip("'\"")):
        return key, value
    return None


def redact_overrides(overrides: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Command-line overrides (or any argv) with the value of every credential-like key (``+token=abc``)
    and every value holding a secret environment variable's value replaced by ``<redacted>``."""
    secrets = _environment_secrets(environ)
    redacted = []
    for override in overrides:
        if _secret_override(override) is not None or any(secret in override for secret in secrets):
            head, sep, _ = override.partition("=")
            override = f"{head}{sep}{REDACTED}" if sep else REDACTED
        redacted.append(override)
    return redacted


class RedactSecrets(Callback):
    """Hydra callback (conf/hydra/default.yaml): Hydra writes the job's ``.hydra/config.yaml``,
    ``hydra.yaml`` and ``overrides.yaml`` (and a multirun's ``multirun.yaml``) with the command line in
    clear; right after, before the job runs, they are rewritten with every credential-like value redacted
    (:func:`redact_secrets`, :func:`redact_overrides`, and each such value given on the command line
    wherever else it appears, as in ``hydra.job.override_dirname``). A warning recommends environment
    variables, since the command line itself stays in the shell history and the process list."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        overrides = [*hydra_cfg.overrides.task, *hydra_cfg.overrides.hydra]
        found = [found for found in map(_secret_override, overrides) if found is not None]
        values = {v for _, value in found for v in (value, value.strip("'\""))}
        files = []
        if hydra_cfg.output_subdir is not None:
            job_dir = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir
            files += [job_dir / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
        if hydra_cfg.mode == RunMode.MULTIRUN:
            files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
        for path in files:
            if path.is_file():
                _rewrite_redacted(path, values)
        if found:
            keys = ", ".join(sorted({key for key, _ in found}))
            log.warning(
                "credential-like keys on the command line: %s. Their values are redacted from .hydra/, "
                "checkpoints and loggers, but the command line stays in your shell history and the process "
                "list: read secrets from environment variables instead (key='${oc.env:VARIABLE}', or "
                "WANDB_API_KEY for W&B)",
                keys,
            )


def _rewrite_redacted(path: Path, values: set[str]) -> None:
    """Rewrite a YAML file Hydra wrote with its secrets redacted (see :class:`RedactSecrets`)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return (
                redact_overrides([clean(v) for v in value])
                if all(isinstance(v, str) for v in value)
                else [clean(v) for v in value]
            )
        if isinstance(value, str):
            for secret in values:
                value = value.replace(secret, REDACTED)
        return value

    document = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(clean(redact_secrets(document)))))
