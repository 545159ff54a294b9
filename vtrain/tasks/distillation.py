"""DeiT's distillation through the distillation token (Touvron et al. 2020, section 5.2): the student's
class head learns from the labels, its distillation head from a frozen teacher fed the same (Mixup'd)
batch, as facebookresearch/deit losses.py:10-70 (``DistillationLoss``) and engine.py:37-49 at 7e160fe.

    hard: (1 - alpha) * CE(class head, targets) + alpha * CE(distillation head, argmax of the teacher)
    soft: (1 - alpha) * CE(class head, targets) + alpha * tau^2 * KL(teacher / tau || distillation / tau)

The teacher is built from a local file: a timm or torchvision architecture and its state dict. It is held
outside the task's modules, so it is neither trained, nor in the optimizer, nor saved in checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vtrain.checkpoint import fit_state_dict, read_state_dict
from vtrain.models.pretrained import require_weights

log = logging.getLogger(__name__)

DISTILLATION_TYPES = ("hard", "soft")
TEACHER_SOURCES = ("timm", "torchvision")
_KEYS = {"teacher", "type", "alpha", "tau"}
_TEACHER_KEYS = {"source", "arch", "path", "kwargs"}


def _plain(node: Any, key: str) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping):
        raise ValueError(f"{key} must be a mapping, found {type(node).__name__} {node!r}")
    return dict(node)


def _check_keys(node: dict[str, Any], key: str, allowed: set[str], required: set[str]) -> None:
    unknown, missing = sorted(node.keys() - allowed), sorted(required - node.keys())
    if unknown or missing:
        found = f"unknown keys {unknown}" if unknown else f"missing keys {missing}"
        raise ValueError(f"{key}: {found}; expected the keys {sorted(allowed)} ({sorted(required)} required)")


def _check_source(source: str) -> None:
    if source not in TEACHER_SOURCES:
        raise ValueError(
            f"task.distillation.teacher.source must be one of {list(TEACHER_SOURCES)}, found {source!r}"
        )


def build_teacher(
    source: str, arch: str, path: str | None, num_classes: int, kwargs: Mapping[str, Any] | None = None
) -> nn.Module:
    """The frozen teacher in eval mode: ``source`` (timm or torchvision) builds ``arch`` with
    ``num_classes`` outputs and ``kwargs``, without downloading weights, then loads ``path`` (a state dict,
    bare or under ``model`` as the official deit ``regnety_160-a5fe301d.pth``, or ``state_dict``) strictly.

    Raises:
        MissingWeightsError: ``path`` is None (``vtrain.models.pretrained``); ``scratch`` gives a random
            teacher, for smoke runs only.
        FileNotFoundError: ``path`` names no file.
        ValueError: an unknown source or architecture, or a file that does not fit the architecture, naming
            the config key and the file.
    """
    key = "task.distillation.teacher"
    kwargs = dict(kwargs or {})
    _check_source(source)
    weights = require_weights(
        path,
        f"{key}.path",
        f"a {source} {arch} state dict with {num_classes} classes (the teacher)",
        " (a random teacher: for smoke runs only)",
    )
    try:
        if source == "timm":
            import timm

            # deit main.py:374-379 builds its teacher the same way (pretrained=False, then the file)
            teacher = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
        else:
            import torchvision

            teacher = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{key}: cannot build {source} model {arch!r} with num_classes={num_classes} and kwargs "
            f"{kwargs}: {e}"
        ) from e
    if weights is None:
        log.warning("%s.path=scratch: distilling from a random %s teacher", key, arch)
    else:
        try:
            fit_state_dict(teacher, read_state_dict(weights), weights, strict=True)
        except ValueError as e:
            raise ValueError(f"{key}.path={weights} is not a {source} {arch} teacher: {e}") from e
    teacher.requires_grad_(False)
    return teacher.eval()


class Distillation:
    """DeiT distillation: the teacher and the loss combining the student's two heads.

    Args:
        teacher: ``{source: timm | torchvision, arch: NAME, path: FILE, kwargs: {...}}`` (kwargs optional:
            extra arguments of the architecture's builder, e.g. timm's ``global_pool``).
        type: ``hard`` (the teacher's argmax as a label) or ``soft`` (KL to the teacher's softened
            distribution), deit main.py:145 --distillation-type.
        alpha: weight of the distillation term, the class term has ``1 - alpha`` (main.py:146, 0.5).
        tau: temperature of ``soft`` (main.py:147, 1.0).
    """

    def __init__(self, teacher: Mapping[str, Any], type: str = "hard", alpha: float = 0.5, tau: float = 1.0):
        spec = _plain(teacher, "task.distillation.teacher")
        _check_keys(spec, "task.distillation.teacher", _TEACHER_KEYS, {"source", "arch", "path"})
        _check_source(spec["source"])
        if type not in DISTILLATION_TYPES:
            raise ValueError(
                f"task.distillation.type must be one of {list(DISTILLATION_TYPES)}, found {type!r}"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"task.distillation.alpha must be in [0, 1], found {alpha}")
        if tau <= 0:
            raise ValueError(f"task.distillation.tau must be > 0, found {tau}")
        self.spec, self.type, self.alpha, self.tau = spec, type, float(alpha), float(tau)
        self.teacher: nn.Module | None = None

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> Distillation:
        """From the ``task.distillation`` node, checking its keys."""
        node = _plain(node, "task.distillation")
        _check_keys(node, "task.distillation", _KEYS, {"teacher"})
        return cls(**node)

    def load_teacher(self, num_classes: int) -> nn.Module:
        """Build and load the teacher (once); see :func:`build_teacher`."""
        if self.teacher is None:
            spec = self.spec
            self.teacher = build_teacher(
                spec["source"], spec["arch"], spec["path"], num_classes, spec.get("kwargs")
            )
        return self.teacher

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits [B, num_classes] for the batch the student sees (the same normalised,
        Mixup'd images, as deit engine.py:37-49); the teacher follows the batch's device and float type."""
        if self.teacher is None:
            raise RuntimeError("Distillation.teacher_logits: call load_teacher(num_classes) first")
        param = next(self.teacher.parameters(), None)
        if param is not None and (param.device != images.device or param.dtype != images.dtype):
            self.teacher.to(device=images.device, dtype=images.dtype)
        return self.teacher(images)

    def distillation_term(self, logits_dist: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The distillation head's loss against the teacher (deit losses.py:50-67)."""
        if self.type == "hard":
            return F.cross_entropy(logits_dist, teacher_logits.argmax(dim=1))
        t = self.tau
        # losses.py:54-62: summed KL over log-probabilities, divided by the number of logits (torch's
        # legacy 'mean'), times tau^2
        kl = F.kl_div(
            F.log_softmax(logits_dist / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="sum",
            log_target=True,
        )
        return kl * (t * t) / logits_dist.numel()

    def combine(self, base_loss: torch.Tensor, distillation_loss: torch.Tensor) -> torch.Tensor:
        """``(1 - alpha) * base + alpha * distillation`` (losses.py:69)."""
        return base_loss * (1 - self.alpha) + distillation_loss * self.alpha
