"""`mode=predict`: run a model on image files and write what it sees, no data set needed.

The weights come from a vtrain checkpoint (`ckpt_path=RUN.ckpt`) or official weights loaded into the
experiment's model (`model.pretrained=FILE`), as in `mode=eval`. `predict.input` is an image file, a folder
(its images, sorted by name) or a glob. Each image goes through the experiment's evaluation preprocessing
(the data module's `eval_transform`) on the trainer's device and at its precision. Written under
`<run dir>/predictions/`:

    predictions.json       per image: path, size [width, height] in pixels and the task's outputs
    predictions.csv        classification: one row per image and rank of the top-k classes
    predictions_coco.json  detection: the boxes in COCO results format (image_id = the image's index)
    <image stem>.png       per image: the top-1 class and its probability, or the boxes with their names

A detection batch pads its images to the largest (as evaluation does), which changes DETR's outputs a
little (docs/detr.md); `predict.batch_size=1` runs every image alone.

Class names are those stored in the checkpoint at training time (the data's: CIFAR's batches.meta names,
ImageNet wnids, the categories of the annotation file); for official weights COCO's 91 category names
(DETR), ImageNet's wnids (1000 classes), else the class index.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

from vtrain.data.coco import pad_images
from vtrain.data.coco_names import COCO_CATEGORY_NAMES
from vtrain.data.imagenet import IMAGENET_WNIDS
from vtrain.data.images import ImageFileLoader, open_rgb
from vtrain.io import atomic_write_text
from vtrain.modes.common import build_run, load_task_weights, weights_to_run

log = logging.getLogger("vtrain")

# the tasks' classes (the last part of `task._target_`) that mode=predict knows
TASKS = {"ClassificationTask": "classification", "DetectionTask": "detection"}

Size = tuple[int, int]  # (width, height) in pixels


def task_kind(cfg: DictConfig) -> str:
    """ "classification" or "detection", from the experiment's `task._target_`.

    Raises:
        ValueError: another task (instance, panoptic, segmentation, super-resolution, generative).
    """
    target = str(cfg.task.get("_target_", ""))
    kind = TASKS.get(target.rsplit(".", 1)[-1])
    if kind is None:
        raise ValueError(
            f"mode=predict is not implemented for {target} (experiment {cfg.get('name')}): it supports "
            f"{' and '.join(TASKS.values())} ({', '.join(TASKS)}); evaluate other tasks with mode=eval"
        )
    return kind


def find_images(source: str) -> list[Path]:
    """The files of `predict.input`: one file, a folder's images (by extension, sorted by name) or the
    files matching a glob (sorted; `**` recurses).

    Raises:
        FileNotFoundError: nothing there, or no image in the folder / matching the pattern.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        where = f"folder {path} (looked for {', '.join(IMG_EXTENSIONS)})"
    elif glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        where = f"glob {source}"
    else:
        raise FileNotFoundError(f"predict.input={source}: no such file or folder, and it is not a glob")
    if not files:
        raise FileNotFoundError(f"predict.input={source}: no image files in the {where}")
    return files


class ImageFiles(Dataset):
    """`paths` opened as 8-bit RGB and preprocessed: `(index, (width, height), image tensor)`, or None for
    a file that `loader` skipped as unreadable (`data.skip_corrupt=true`; else it raises naming the file)."""

    def __init__(self, paths: Sequence[Path], prepare: Callable, loader: ImageFileLoader) -> None:
        self.paths, self.prepare, self.loader = list(paths), prepare, loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Size, torch.Tensor] | None:
        image = self.loader(self.paths[index])
        if image is None:
            return None
        return index, image.size, self.prepare(image)


def collate_images(samples: Sequence[Any], pad: bool) -> dict[str, Any] | None:
    """A batch of the readable samples: `index`, `size` lists, `images` [B, 3, H, W] (zero-padded at the
    bottom and right when `pad`, with `mask` [B, H, W] True on padding); None when none was readable."""
    kept = [sample for sample in samples if sample is not None]
    if not kept:
        return None
    indices, sizes, images = zip(*kept, strict=True)
    if pad:
        batch, mask = pad_images(list(images))
    else:
        batch, mask = torch.stack(images), None
    return {"index": list(indices), "size": list(sizes), "images": batch, "mask": mask}


def _enlarged(image: Image.Image, short_side: int) -> tuple[Image.Image, int]:
    """`image` enlarged by the smallest whole factor that makes its short side at least `short_side`
    (pixels repeated, so a small input stays sharp and its labels legible), and that factor."""
    scale = max(1, -(-short_side // min(image.size)))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST), scale


class ClassificationPredictor:
    """Top-k classes of `task.model(images [B, 3, S, S]) -> logits [B, K]`; the picture shows the image
    (enlarged to at least 256 pixels) under a band with its top-1 name and probability. `square`: resize
    every image to S x S first (bicubic), for eval pipelines without a resize of their own."""

    pad = False

    def __init__(self, transform: Callable, names: list[str], top_k: int, square: int | None = None) -> None:
        self.transform, self.names, self.top_k, self.square = transform, names, top_k, square

    def prepare(self, image: Image.Image) -> torch.Tensor:
        if self.square is not None and image.size != (self.square, self.square):
            image = image.resize((self.square, self.square), Image.BICUBIC)
        return self.transform(image)

    def outputs(self, task: Any, images: torch.Tensor, mask: None, sizes: list[Size]) -> list[dict]:
        probabilities = task(images).float().softmax(-1)
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
        shown, _ = _enlarged(image, 256)
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
        with open(out_dir / "predictions.csv", "w", newline="") as file:
            csv.writer(file).writerows(rows)


class DetectionPredictor:
    """Boxes of `task.model(images, mask)` through `task.postprocess`, in the input image's pixels, scored
    at least `score_threshold`; the picture shows them with their names and scores, on the image enlarged
    to at least 384 pixels."""

    pad = True

    def __init__(self, transform: Callable, names: list[str], score_threshold: float) -> None:
        self.transform, self.names, self.score_threshold = transform, names, score_threshold

    def prepare(self, image: Image.Image) -> torch.Tensor:
        # the eval pipeline takes (image, target); an image without boxes gives the resized image alone
        empty = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=image.size[::-1])
        return self.transform(image, {"boxes": empty})[0]

    def outputs(self, task: Any, images: torch.Tensor, mask: torch.Tensor, sizes: list[Size]) -> list[dict]:
        outputs = task(images, mask)
        outputs = {key: outputs[key].float() for key in ("pred_logits", "pred_boxes")}
        heights_widths = torch.tensor([[h, w] for w, h in sizes], device=images.device)
        records = []
        for detections, (width, height) in zip(task.postprocess(outputs, heights_widths), sizes, strict=True):
            keep = detections["scores"] >= self.score_threshold
            scores, labels, boxes = (detections[k][keep].cpu() for k in ("scores", "labels", "boxes"))
            boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height]))
            order = scores.argsort(descending=True)
            records.append(
                {
                    "detections": [
                        {
                            "box": [round(float(v), 2) for v in boxes[i]],
                            "score": round(float(scores[i]), 6),
                            "category_id": int(labels[i]),
                            "name": self.names[int(labels[i])],
                        }
                        for i in order.tolist()
                    ]
                }
            )
        return records

    def draw(self, image: Image.Image, record: dict) -> Image.Image:
        detections = record["detections"]
        image, scale = _enlarged(image, 384)
        if not detections:
            return image
        boxes = torch.tensor([d["box"] for d in detections]) * scale
        labels = [f"{d['name']} {d['score']:.2f}" for d in detections]
        width = max(2, min(image.size) // 200)
        drawn = draw_bounding_boxes(
            pil_to_tensor(image), boxes, labels, colors="red", width=width, fill_labels=True
        )
        return to_pil_image(drawn)

    def write(self, out_dir: Path, records: list[dict]) -> None:
        results = [
            {
                "image_id": record["image_id"],
                "category_id": d["category_id"],
                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": d["score"],
            }
            for record in records
            for d in record["detections"]
            for x1, y1, x2, y2 in [d["box"]]
        ]
        atomic_write_text(out_dir / "predictions_coco.json", json.dumps(results))


def class_names(
    kind: str, num_classes: int, stored: list[str] | None, cfg: DictConfig
) -> tuple[list[str], str]:
    """The name of every label and where the names come from: the checkpoint's (the data it was trained
    on), COCO's 91 category names (a detector with COCO's label space), ImageNet's wnids (1000 classes
    of an ImageNet experiment), else the label index."""
    if stored:
        return [*stored, *map(str, range(len(stored), num_classes))], "the checkpoint (its training data)"
    if kind == "detection" and num_classes == len(COCO_CATEGORY_NAMES):
        return list(COCO_CATEGORY_NAMES), "COCO's 91 category ids"
    if kind == "classification" and cfg.data.get("dataset") == "imagenet" and num_classes == 1000:
        return list(IMAGENET_WNIDS), "ImageNet-1k wnids"
    return [str(i) for i in range(num_classes)], "none known: the class index"


def _picture_names(paths: Sequence[Path]) -> list[str]:
    """`<stem>.png` per input; a stem met before gets its index (`a.jpg`, `a.png` -> `a.png`, `a_1.png`)."""
    seen: set[str] = set()
    names = []
    for index, path in enumerate(paths):
        name = path.stem if path.stem not in seen else f"{path.stem}_{index}"
        seen.add(name)
        names.append(f"{name}.png")
    return names


def predict(cfg: DictConfig) -> None:
    """Predict on `predict.input` and write `<run dir>/predictions/` (see the module docstring)."""
    source = (cfg.get("predict") or {}).get("input")
    if not source:
        raise ValueError(
            "mode=predict needs images: predict.input=PATH (an image file, a folder of images or a glob)"
        )
    kind = task_kind(cfg)
    ckpt_path, pretrained = weights_to_run(cfg, "run")
    paths = [path.absolute() for path in find_images(str(source))]
    run = build_run(cfg, weights_from_checkpoint=ckpt_path is not None)
    stored = None
    if ckpt_path is not None:
        stored = load_task_weights(run.task, ckpt_path, run.cfg).get("vtrain_class_names")
    num_classes = int(getattr(run.task.model, "num_classes", None) or cfg.data.num_classes)
    names, names_from = class_names(kind, num_classes, stored, cfg)
    log.info("%d images; class names from %s", len(paths), names_from)
    transform = getattr(run.datamodule, "eval_transform", None)
    if transform is None:
        raise ValueError(
            f"mode=predict preprocesses with the data module's eval_transform; {cfg.data._target_} has none"
        )
    settings = cfg.predict
    if kind == "classification":
        # CIFAR's eval pipeline has no resize (its images have the model's size): other images get one
        square = int(cfg.data.image_size) if cfg.data.get("recipe") == "cifar" else None
        predictor = ClassificationPredictor(transform, names, int(settings.top_k), square)
    else:
        predictor = DetectionPredictor(transform, names, float(settings.score_threshold))

    dataset = ImageFiles(paths, predictor.prepare, ImageFileLoader(bool(cfg.data.get("skip_corrupt"))))
    loader = DataLoader(
        dataset,
        batch_size=int(settings.batch_size),
        num_workers=int(cfg.data.get("num_workers") or 0),
        collate_fn=functools.partial(collate_images, pad=predictor.pad),
    )
    precision = run.trainer.precision_plugin
    device = run.trainer.strategy.root_device
    task = precision.convert_module(run.task).to(device).eval()
    found: dict[int, dict] = {}
    with torch.no_grad():
        for batch in loader:
            if batch is None:
                continue
            images = precision.convert_input(batch["images"].to(device))
            mask = None if batch["mask"] is None else batch["mask"].to(device)
            with precision.forward_context():
                outputs = predictor.outputs(task, images, mask, batch["size"])
            for index, size, output in zip(batch["index"], batch["size"], outputs, strict=True):
                found[index] = {"image_id": index, "path": str(paths[index]), "size": list(size), **output}

    out_dir = run.output_dir / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = _picture_names(paths)
    records = []
    for index in sorted(found):
        record = {**found[index], "picture": pictures[index]}
        predictor.draw(open_rgb(paths[index]), record).save(out_dir / pictures[index])
        records.append(record)
    skipped = [str(path) for index, path in enumerate(paths) if index not in found]
    summary = {
        "task": kind,
        "weights": ckpt_path if ckpt_path is not None else f"model.pretrained={pretrained}",
        "input": str(source),
        "class_names": names_from,
        "images": len(paths),
        "skipped_unreadable": skipped,
        "predictions": records,
    }
    atomic_write_text(out_dir / "predictions.json", json.dumps(summary, indent=2))
    predictor.write(out_dir, records)
    if skipped:
        log.warning("%d unreadable images skipped: %s", len(skipped), ", ".join(skipped))
    print(f"predictions for {len(records)} of {len(paths)} images in {out_dir}")
