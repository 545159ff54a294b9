"""Classification (ViT, DeiT, LambdaResNet, fine-tuned iGPT on images): the top-k classes of each image."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from vtrain.io import atomic_write_text
from vtrain.predictors.base import Predictor, Size
from vtrain.predictors.pictures import enlarged


class ClassificationPredictor(Predictor):
    """Top-k classes of `task(images [B, 3, S, S]) -> logits [B, K]`; the picture shows the image (enlarged
    to at least 256 pixels) under a band with its top-1 name and probability. `square`: resize every image
    to S x S first (bicubic), for eval pipelines without a resize of their own (CIFAR's)."""

    def __init__(self, transform: Callable, names: list[str], top_k: int, square: int | None = None) -> None:
        super().__init__(transform)
        self.names, self.top_k, self.square = names, top_k, square

    def prepare(self, image: Image.Image, path: Path) -> dict:
        if self.square is not None and image.size != (self.square, self.square):
            image = image.resize((self.square, self.square), Image.BICUBIC)
        return {"images": self.transform(image)}

    def outputs(self, task: Any, batch: dict, sizes: list[Size]) -> list[dict]:
        probabilities = task(batch["images"]).float().softmax(-1)
        top = probabilities.topk(min(self.top_k, probabilities.shape[-1]), dim=-1)
        return [
            {
                "top_k": [
                    {"index": int(i), "name": self.names[int(i)], "probability": round(float(p), 6)}
                    for p, i in zip(values, indices, strict=True)
                ]
            }
            for values, indices in zip(top.values.cpu(), top.indices.cpu(), strict=True)
        ]

    def draw(self, image: Image.Image, record: dict) -> Image.Image:
        shown, _ = enlarged(image, 256)
        band = 32
        picture = Image.new("RGB", (shown.width, shown.height + band), "black")
        picture.paste(shown, (0, band))
        best = record["top_k"][0]
        text = f"{best['name']} {100 * best['probability']:.1f}%"
        ImageDraw.Draw(picture).text((6, 6), text, fill="white", font=ImageFont.load_default(size=18))
        return picture

    def write(self, out_dir: Path, records: list[dict]) -> None:
        rows = [["path", "width", "height", "rank", "index", "name", "probability"]]
        for record in records:
            for rank, top in enumerate(record["top_k"], start=1):
                rows.append(
                    [record["path"], *record["size"], rank, top["index"], top["name"], top["probability"]]
                )
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        atomic_write_text(out_dir / "predictions.csv", text.getvalue())
