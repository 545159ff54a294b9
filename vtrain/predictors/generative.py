"""Generative pretraining from pixels (iGPT): each image's code length, completions of its top half, and
unconditional samples; the class of each image too for a fine-tuned model.

Images are resized (short side) and centre-cropped to the model's size, then each pixel becomes the index
of its nearest palette colour: the palette stored in the checkpoint (the one the model was trained on),
else the data module's (`data.palette_path`, or the palette fitted on the data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid, save_image

from vtrain.data.palette import Palette
from vtrain.data.pixels import build_pixel_transform
from vtrain.predictors.base import Predictor, Size
from vtrain.predictors.pictures import enlarged
from vtrain.tasks.generative import bits_per_dim


class GenerativePredictor(Predictor):
    """Per image: `bpd` (bits per dimension of the autoregressive model's code, the unit of the paper's
    Table 2 on palette tokens), `predict.num_completions` completions of its top half (`predict.sampling`:
    temperature, top_k, seed), and, for a fine-tuned model, its top-k classes. The picture is a row of
    the quantised image and its completions; `samples.png` holds `predict.num_samples` unconditional
    samples."""

    def __init__(
        self,
        palette: Palette,
        image_size: int,
        names: list[str],
        num_completions: int,
        num_samples: int,
        sampling: dict[str, Any],
        top_k: int,
    ) -> None:
        super().__init__(build_pixel_transform(image_size, "imagenet", train=False))
        self.palette, self.image_size, self.names = palette, image_size, names
        self.num_completions, self.num_samples, self.top_k = num_completions, num_samples, top_k
        self.temperature = float(sampling.get("temperature", 1.0))
        self.sample_top_k = sampling.get("top_k")
        self.seed = int(sampling.get("seed", 0))

    def prepare(self, image: Image.Image, path: Path) -> dict:
        pixels = self.transform(image).as_subclass(torch.Tensor)
        return {"tokens": self.palette.quantize_images(pixels)}

    def _generator(self, device: torch.device, offset: int) -> torch.Generator:
        """Seeded per use (0: the unconditional samples, 1 + i: image i's completions), so that an image's
        completions do not depend on the batch it came in."""
        return torch.Generator(device).manual_seed(self.seed + offset)

    def outputs(self, task: Any, batch: dict, sizes: list[Size]) -> list[dict]:
        tokens = batch["tokens"]
        model, autoregressive = task.model, task.objective == "autoregressive"
        records: list[dict[str, Any]] = [{} for _ in range(len(tokens))]
        features = model.forward_features(tokens)
        if autoregressive:
            nll = F.cross_entropy(model.head(features).transpose(1, 2).float(), tokens, reduction="none")
            for record, nats in zip(records, nll.mean(1).tolist(), strict=True):
                record["nats_per_token"], record["bpd"] = round(nats, 6), round(float(bits_per_dim(nats)), 6)
        if getattr(model, "clf_head", None) is not None and getattr(task, "clf_weight", 0) > 0:
            probabilities = model.classify(features).float().softmax(-1)
            top = probabilities.topk(min(self.top_k, probabilities.shape[-1]), dim=-1)
            for record, values, indices in zip(records, top.values, top.indices, strict=True):
                record["top_k"] = [
                    {"index": int(i), "name": self.names[int(i)], "probability": round(float(p), 6)}
                    for p, i in zip(values.tolist(), indices.tolist(), strict=True)
                ]
        half = self.image_size * (self.image_size // 2)
        for index, record in enumerate(records):
            record["_tokens"] = tokens[index].cpu()
            if autoregressive and self.num_completions:
                prefix = tokens[index : index + 1, :half].expand(self.num_completions, half)
                generator = self._generator(tokens.device, 1 + index)
                completions = model.sample(
                    prefix=prefix, temperature=self.temperature, top_k=self.sample_top_k, generator=generator
                )
                record["_completions"] = completions.cpu()
        return records

    def draw(self, image: Image.Image, record: dict) -> Image.Image:
        rows = [record["_tokens"][None]]
        if "_completions" in record:
            rows.append(record["_completions"])
        images = enlarged(self.palette.to_images(torch.cat(rows), self.image_size), 128)[0]
        return to_pil_image(make_grid(images, nrow=len(images), padding=2, pad_value=255))

    def finish(self, task: Any, out_dir: Path) -> dict[str, Any]:
        if not self.num_samples or task.objective != "autoregressive":
            return {}
        device = next(task.parameters()).device
        samples = task.model.sample(
            num_samples=self.num_samples,
            temperature=self.temperature,
            top_k=self.sample_top_k,
            generator=self._generator(device, 0),
        )
        images = enlarged(self.palette.to_images(samples.cpu(), self.image_size), 128)[0].float() / 255
        save_image(
            make_grid(images, nrow=min(8, len(images)), padding=2, pad_value=1.0), out_dir / "samples.png"
        )
        return {"samples": {"picture": "samples.png", "count": self.num_samples}}
