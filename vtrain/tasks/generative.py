"""Generative pretraining from pixels (iGPT): the autoregressive or BERT objective over palette-index
sequences, fine-tuning with ``L_clf + L_gen``, linear probes and sample grids.

Units: the generative loss is in nats per token; one token is one pixel, i.e. three colour dimensions,
so bits per dimension = nats per token / (3 ln 2). The palette quantisation itself is not counted, so
these figures compare with each other and with the palette's own statistics, not with bits/dim of 8-bit
images. ``val/unigram_bpd`` is that baseline: the entropy of the evaluated images' colour histogram in
bits / dim, the cost of coding every pixel without context.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision.utils import make_grid

from vtrain.tasks.common import (
    OptimizerFactory,
    SchedulerFactory,
    check_num_classes,
    configure_optimizers,
    layer_decay_groups,
    weight_decay_groups,
)

log = logging.getLogger(__name__)

OBJECTIVES = ("autoregressive", "bert")


def bits_per_dim(nats_per_token: float | torch.Tensor) -> float | torch.Tensor:
    """Nats per palette token -> bits per colour dimension (a token is one RGB pixel)."""
    return nats_per_token / (3 * math.log(2))


def fit_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-3, steps: int = 100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised features, full batch, L-BFGS (deterministic).

    Args:
        features: [N, D]; labels: [N] int64 in [0, num_classes).
        l2: penalty on the weights (mean loss + l2 * |W|^2).
        steps: L-BFGS iterations.

    Returns:
        (mean [D], std [D], weight [num_classes, D], bias [num_classes]), for
        ``logits = ((x - mean) / std) @ weight.T + bias``.
    """
    # Lightning evaluates under inference mode; the fit needs autograd and ordinary tensors
    with torch.inference_mode(False), torch.enable_grad():
        features, labels = features.double().clone(), labels.clone()
        mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
        x = (features - mean) / std
        weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight.T + bias, labels) + l2 * (weight * weight).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    return mean, std, weight.detach(), bias.detach()


def probe_predict(probe: tuple[torch.Tensor, ...], features: torch.Tensor) -> torch.Tensor:
    """Class predictions [N] of a probe from :func:`fit_linear_probe` on features [N, D]."""
    mean, std, weight, bias = probe
    return (((features.double() - mean) / std) @ weight.T + bias).argmax(1)


def probe_accuracy(probe: tuple[torch.Tensor, ...], features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of a probe from :func:`fit_linear_probe` on features [N, D] / labels [N]."""
    return float((probe_predict(probe, features) == labels).double().mean())


def modal_vote(predictions: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The most frequent class of each column of predictions [V, N] (V votes), ties broken at random
    (seeded), as iGPT's vote over BERT masks (section 4.6)."""
    if len(predictions) == 1:
        return predictions[0]
    classes = int(predictions.max()) + 1
    counts = F.one_hot(predictions, classes).sum(0).double()  # [N, classes]
    noise = torch.rand(counts.shape, generator=torch.Generator().manual_seed(seed), dtype=counts.dtype)
    return (counts + 0.5 * noise).argmax(1)  # the noise < 1 only orders classes of equal counts


def check_inputs_fit_model(model: nn.Module, datamodule: Any) -> None:
    """Raise ValueError unless the data's palette has the model's vocabulary and its images the model's
    sequence length (a shorter sequence would run, silently, on the wrong position embeddings)."""
    palette = getattr(datamodule, "palette", None)
    vocab = getattr(model, "vocab_size", None)
    if palette is not None and vocab is not None and len(palette) != vocab:
        raise ValueError(
            f"the palette {getattr(datamodule, 'palette_path', '')} has {len(palette)} colours but the "
            f"model's vocabulary (model.vocab_size) is {vocab}; expected the palette the weights know"
        )
    size, model_size = getattr(datamodule, "image_size", None), getattr(model, "img_size", None)
    if size is not None and model_size is not None and size != model_size:
        raise ValueError(
            f"data.image_size is {size} but the model is built for {model_size} x {model_size} inputs "
            f"(model.img_size): set data.image_size={model_size} or model.img_size={size}"
        )


class GenerativePretrainingTask(L.LightningModule):
    """Trains an iGPT (``vtrain.models.igpt.ImageGPT``) on batches ``(tokens [B, L], labels [B])``.

    Args:
        model: the network; ``model.causal`` must agree with ``objective``.
        optimizer: ``functools.partial`` of a torch optimizer, called with parameter groups.
        scheduler: optional factory ``(optimizer, total_steps, steps_per_epoch) -> LRScheduler``, per step.
        objective: "autoregressive" (next-pixel NLL) or "bert" (NLL of the masked tokens only).
        bert_mask_prob: BERT: probability that a token is masked (15 %).
        weight_decay: on weight matrices only (see ``weight_decay_groups``).
        num_classes: label space, for fine-tuning and probes.
        clf_weight: 0 for pretraining; > 0 fine-tunes with ``L_gen + clf_weight * L_clf``, the classifier
            reading the mean of the final features (the paper's fine-tuning uses 1).
        probe: linear probe after validation / test epochs, e.g. ``{layer: 12, every_n_epochs: 1, l2: 1e-3,
            steps: 100, max_images: null, votes: 1}``: features of ``layer`` (None: the last) mean-pooled
            after the norm, a logistic regression fitted on the datamodule's ``probe_train_dataloader()`` and
            scored on the val / test loader (each cut to ``max_images``, if set); at test, also on a held-out
            validation split (``val/probe_acc``), the one to choose the layer on. The BERT model reads masked
            inputs here too, as in training (iGPT section 4.6); ``votes`` > 1 scores the modal prediction
            over that many independent masks per image, ties broken at random.
        samples: sample grids after validation epochs, e.g. ``{num: 8, temperature: 1.0, top_k: null,
            every_n_epochs: 1, seed: 0}``: ``num`` unconditional samples and ``num`` completions of the
            first val images given their top half (next to the originals), saved as PNG under
            ``<default_root_dir>/samples`` and sent to loggers that take images.
        layer_decay: layer-wise LR decay, e.g. for fine-tuning (not in the iGPT paper, which fine-tunes at
            one LR): of D layers, layer i (from 0) trains at ``layer_decay ** (D - i)`` times the LR, the
            embeddings at ``layer_decay ** (D + 1)``, the final norm and heads at the LR (see
            ``ImageGPT.layer_id``, ``layer_decay_groups``); None: one LR for all.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        objective: str = "autoregressive",
        bert_mask_prob: float = 0.15,
        weight_decay: float = 0.0,
        num_classes: int = 10,
        clf_weight: float = 0.0,
        probe: dict[str, Any] | None = None,
        samples: dict[str, Any] | None = None,
        layer_decay: float | None = None,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(
                f"GenerativePretrainingTask: objective must be one of {OBJECTIVES}, found {objective!r}"
            )
        if getattr(model, "causal", objective == "autoregressive") != (objective == "autoregressive"):
            raise ValueError(
                f"GenerativePretrainingTask: objective {objective!r} needs a model built with "
                f"causal={objective == 'autoregressive'} (found causal={model.causal})"
            )
        if clf_weight > 0 and getattr(model, "clf_head", None) is None:
            raise ValueError(
                "GenerativePretrainingTask: fine-tuning (clf_weight > 0) needs a model with num_classes > 0"
            )
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(
                f"GenerativePretrainingTask: task.layer_decay must be in (0, 1] or null, found {layer_decay}"
            )
        self.model = model
        self.layer_decay = layer_decay
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.objective, self.bert_mask_prob = objective, bert_mask_prob
        self.weight_decay, self.num_classes, self.clf_weight = weight_decay, num_classes, clf_weight
        self.probe = dict(probe) if probe else None
        self.samples = dict(samples) if samples else None
        if clf_weight > 0:
            self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
            self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
            self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")

    def setup(self, stage: str) -> None:
        # the class labels feed the fine-tuning head and the linear probe; a pretraining model has no head (0)
        model_classes = getattr(self.model, "num_classes", 0) or None
        check_num_classes(self, {"model.num_classes": model_classes, "task.num_classes": self.num_classes})
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            check_inputs_fit_model(self.model, datamodule)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def _losses(
        self, tokens: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(generative loss in nats per token, final features [B, L, D]) of one batch."""
        mask = None
        if self.objective == "bert":
            mask = torch.rand(tokens.shape, generator=generator, device=tokens.device) < self.bert_mask_prob
        features = self.model.forward_features(tokens, mask)
        nll = F.cross_entropy(self.model.head(features).transpose(1, 2), tokens, reduction="none")  # [B, L]
        if mask is None:
            return nll.mean(), features
        # as the official code: mean over each image's masked tokens, then over images
        per_image = (nll * mask).sum(1) / mask.sum(1).clamp_min(1)
        return per_image.mean(), features

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tokens, labels = batch
        gen_loss, features = self._losses(tokens)
        loss, n = gen_loss, len(tokens)
        if self.clf_weight > 0:
            logits = self.model.classify(features)
            clf_loss = F.cross_entropy(logits, labels)
            loss = gen_loss + self.clf_weight * clf_loss
            self.train_acc1(logits.detach(), labels)
            self.log("train/clf_loss", clf_loss, on_step=True, on_epoch=True, batch_size=n)
            self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True, batch_size=n)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/gen_loss", gen_loss, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str) -> None:
        tokens, labels = batch
        generator = None
        if self.objective == "bert":  # the same masks at every evaluation
            generator = torch.Generator(tokens.device).manual_seed(batch_idx)
        gen_loss, features = self._losses(tokens, generator)
        n = len(tokens)
        self.log(f"{stage}/loss", gen_loss, on_epoch=True, sync_dist=True, batch_size=n)
        if self.objective == "autoregressive":
            self._histogram += torch.bincount(tokens.flatten(), minlength=len(self._histogram))
            prog_bar = self.clf_weight == 0
            self.log(f"{stage}/nll", gen_loss, on_epoch=True, sync_dist=True, batch_size=n, prog_bar=prog_bar)
            self.log(f"{stage}/bpd", bits_per_dim(gen_loss), on_epoch=True, sync_dist=True, batch_size=n)
        if self.clf_weight > 0:
            acc1 = getattr(self, f"{stage}_acc1")
            acc1(self.model.classify(features), labels)
            self.log(f"{stage}/acc1", acc1, on_epoch=True, prog_bar=True, batch_size=n)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _reset_histogram(self) -> None:
        self._histogram = torch.zeros(self.model.head.out_features, dtype=torch.long, device=self.device)

    def _log_unigram_bpd(self, stage: str) -> None:
        """The context-free baseline: entropy of the evaluated tokens' colour histogram, in bits / dim."""
        if self.objective != "autoregressive" or self._histogram.sum() == 0:
            return
        counts = self.all_gather(self._histogram)
        counts = (counts.sum(0) if counts.ndim > 1 else counts).double()
        p = counts[counts > 0] / counts.sum()
        self.log(f"{stage}/unigram_bpd", float(-(p * p.log2()).sum()) / 3)

    def on_validation_epoch_start(self) -> None:
        self._reset_histogram()

    def on_test_epoch_start(self) -> None:
        self._reset_histogram()

    def _due(self, settings: dict[str, Any] | None) -> bool:
        if not settings or self.trainer.sanity_checking:
            return False
        every = int(settings.get("every_n_epochs", 1))
        # always for trainer.validate(); during fit, every `every_n_epochs` epochs
        return self.trainer.state.fn != "fit" or every <= 0 or (self.current_epoch + 1) % every == 0

    def on_validation_epoch_end(self) -> None:
        self._log_unigram_bpd("val")
        if self._due(self.probe):
            self.log(
                "val/probe_acc", self._run_probe({"val": self.trainer.datamodule.val_dataloader()})["val"]
            )
        if self._due(self.samples) and self.objective == "autoregressive" and self.trainer.is_global_zero:
            self._save_samples()

    def on_test_epoch_end(self) -> None:
        self._log_unigram_bpd("test")
        if self.probe:
            datamodule = self.trainer.datamodule
            loaders = {"test": datamodule.test_dataloader()}
            if getattr(datamodule, "val_source", None) == "holdout":
                loaders["val"] = datamodule.val_dataloader()
            for stage, accuracy in self._run_probe(loaders).items():
                self.log(f"{stage}/probe_acc", accuracy)

    @torch.no_grad()
    def probe_features(
        self, loader: Any, layer: int | None, max_images: int | None = None, mask_seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean-pooled, normalised features of ``layer`` [N, D] (CPU) and labels [N] over a loader (its first
        batches covering ``max_images``, if given). The BERT model reads its inputs masked as in training,
        batch i with the masks of seed ``(mask_seed, i)``."""
        features, labels = [], []
        was_training = self.model.training
        self.model.eval()
        for index, (tokens, y) in enumerate(loader):
            if max_images is not None and sum(len(f) for f in features) >= max_images:
                break
            tokens = tokens.to(self.device)
            mask = None
            if self.objective == "bert":
                generator = torch.Generator(tokens.device).manual_seed(mask_seed * 1_000_003 + index)
                mask = (
                    torch.rand(tokens.shape, generator=generator, device=tokens.device) < self.bert_mask_prob
                )
            h = self.model.forward_features(tokens, mask, layer=layer)
            features.append(h.mean(1).float().cpu())
            labels.append(y.cpu())
        self.model.train(was_training)
        return torch.cat(features), torch.cat(labels)

    def _run_probe(self, eval_loaders: dict[str, Any]) -> dict[str, float]:
        """Fit a linear probe on the datamodule's probe training set; its accuracy on each of
        ``eval_loaders`` ({stage: loader}), by ``stage``."""
        layer, max_images = self.probe.get("layer"), self.probe.get("max_images")
        votes = int(self.probe.get("votes", 1)) if self.objective == "bert" else 1
        train_x, train_y = self.probe_features(
            self.trainer.datamodule.probe_train_dataloader(), layer, max_images
        )
        probe = fit_linear_probe(
            train_x, train_y, self.num_classes, self.probe.get("l2", 1e-3), self.probe.get("steps", 100)
        )
        accuracies = {}
        for stage, loader in eval_loaders.items():
            # evaluation masks are other draws than the training images' (seed 0)
            predictions = []
            for vote in range(votes):
                eval_x, eval_y = self.probe_features(loader, layer, max_images, mask_seed=1 + vote)
                predictions.append(probe_predict(probe, eval_x))
            accuracies[stage] = float((modal_vote(torch.stack(predictions)) == eval_y).double().mean())
            log.info(
                "linear probe on layer %s: %.4f %s accuracy (train %.4f, %d / %d images%s)",
                layer or "last", accuracies[stage], stage, probe_accuracy(probe, train_x, train_y),
                len(train_y), len(eval_y), f", vote of {votes} masks" if votes > 1 else "",
            )  # fmt: skip
        return accuracies

    @torch.no_grad()
    def sample_grid(self, prefixes: torch.Tensor) -> torch.Tensor:
        """A uint8 grid [3, H, W]: row 1 unconditional samples; then completions of ``prefixes`` [N, L] from
        their top half, and the originals."""
        settings = self.samples or {}
        palette = self.trainer.datamodule.palette
        size = self.model.img_size
        num = len(prefixes)
        generator = torch.Generator(self.device).manual_seed(int(settings.get("seed", 0)))
        kwargs = dict(
            temperature=settings.get("temperature", 1.0), top_k=settings.get("top_k"), generator=generator
        )
        was_training = self.model.training
        self.model.eval()
        unconditional = self.model.sample(num_samples=num, **kwargs)
        half = prefixes[:, : size * (size // 2)].to(self.device)
        completions = self.model.sample(prefix=half, **kwargs)
        self.model.train(was_training)
        images = palette.to_images(
            torch.cat([unconditional, completions, prefixes.to(self.device)]).cpu(), size
        )
        return make_grid(images, nrow=num, padding=1, pad_value=255)

    def _save_samples(self) -> None:
        num = int(self.samples.get("num", 8))
        val_set = self.trainer.datamodule.val_set
        prefixes = torch.stack([val_set[i][0] for i in range(min(num, len(val_set)))])
        grid = self.sample_grid(prefixes)
        folder = Path(self.trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch{self.current_epoch:03d}.png"
        array = grid.permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(array)).save(path)
        for logger in self.trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(logger, "log_image"):  # wandb
                logger.log_image(key="samples", images=[array], step=self.global_step)
            elif hasattr(experiment, "add_image"):  # tensorboard
                experiment.add_image("samples", grid, self.global_step)
        log.info("samples: %s (unconditional; completions of the top half; originals)", path)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.layer_decay is not None:
            groups = layer_decay_groups(self.model, self.weight_decay, self.layer_decay)
        else:
            groups = weight_decay_groups(self.model, self.weight_decay)
        return configure_optimizers(self, groups, self.optimizer_factory, self.scheduler_factory)
