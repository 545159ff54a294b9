"""Detection (DETR): boxes in the input image's pixels with their scores and category names."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from vtrain.io import atomic_write_text
from vtrain.predictors.base import Predictor, Size
from vtrain.predictors.pictures import enlarged, named_boxes


def detr_input(transform: Callable, image: Image.Image) -> torch.Tensor:
    """The DETR eval pipeline takes (image, target); an image without boxes gives the resized image."""
    empty = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=image.size[::-1])
    return transform(image, {"boxes": empty})[0]


def detection_records(
    detections: dict[str, torch.Tensor], size: Size, names: list[str], score_threshold: float
) -> list[dict[str, Any]]:
    """One image's detections scored at least `score_threshold`, best first: `box` [x1, y1, x2, y2] in
    pixels (clipped to the image), `score`, `category_id`, `name`. Also the order kept (indices)."""
    width, height = size
    keep = (detections["scores"] >= score_threshold).nonzero().flatten().cpu()
    scores, labels, boxes = (detections[k].detach().cpu()[keep] for k in ("scores", "labels", "boxes"))
    boxes = torch.minimum(boxes.float().clamp(min=0), torch.tensor([width, height, width, height]))
    order = scores.argsort(descending=True)
    return [
        {
            "box": [round(float(v), 2) for v in boxes[i]],
            "score": round(float(scores[i]), 6),
            "category_id": int(labels[i]),
            "name": names[int(labels[i])] if int(labels[i]) < len(names) else str(int(labels[i])),
            "_index": int(keep[i]),
        }
        for i in order.tolist()
    ]


def draw_detections(image: Image.Image, detections: list[dict], short_side: int = 384) -> torch.Tensor:
    """uint8 [3, H, W]: the image enlarged to at least `short_side` pixels, the boxes named and scored."""
    shown, scale = enlarged(image, short_side)
    picture = pil_to_tensor(shown)
    if detections:
        boxes = torch.tensor([d["box"] for d in detections]) * scale
        labels = [f"{d['name']} {d['score']:.2f}" for d in detections]
        picture = named_boxes(picture, boxes, labels, "red")
    return picture


def write_coco_results(out_dir: Path, records: list[dict], extra: Callable[[dict], dict] | None = None):
    """`predictions_coco.json`: every kept box in COCO results format (image_id = the image's index,
    bbox [x, y, w, h]), with `extra(detection)` merged in (the mask's RLE for instance segmentation)."""
    results = [
        {
            "image_id": record["image_id"],
            "category_id": d["category_id"],
            "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": d["score"],
            **(extra(d) if extra else {}),
        }
        for record in records
        for d in record["detections"]
        for x1, y1, x2, y2 in [d["box"]]
    ]
    atomic_write_text(out_dir / "predictions_coco.json", json.dumps(results))


class DetectionPredictor(Predictor):
    """Boxes of `task(images, mask)` through `task.postprocess`, in the input image's pixels, scored at least
    `score_threshold`; the picture shows them with their names and scores, on the image enlarged to at
    least 384 pixels."""

    pad = True

    def __init__(self, transform: Callable, names: list[str], score_threshold: float) -> None:
        super().__init__(transform)
        self.names, self.score_threshold = names, score_threshold

    def prepare(self, image: Image.Image, path: Path) -> dict:
        return {"images": detr_input(self.transform, image)}

    def outputs(self, task: Any, batch: dict, sizes: list[Size]) -> list[dict]:
        outputs = task(batch["images"], batch["mask"])
        outputs = {key: outputs[key].float() for key in ("pred_logits", "pred_boxes")}
        heights_widths = torch.tensor([[h, w] for w, h in sizes], device=batch["images"].device)
        return [
            {"detections": detection_records(detections, size, self.names, self.score_threshold)}
            for detections, size in zip(task.postprocess(outputs, heights_widths), sizes, strict=True)
        ]

    def draw(self, image: Image.Image, record: dict) -> Image.Image:
        return to_pil_image(draw_detections(image, record["detections"]))

    def write(self, out_dir: Path, records: list[dict]) -> None:
        write_coco_results(out_dir, records)
