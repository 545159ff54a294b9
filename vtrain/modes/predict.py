"""`mode=predict`: run a model on image files and write what it sees, no data set needed.

The weights come from a vtrain checkpoint (`ckpt_path=RUN.ckpt`) or official weights loaded into the
experiment's model (`model.pretrained=FILE`), as in `mode=eval`. `predict.input` is an image file, a folder
(its images, sorted by name) or a glob. Each image goes through the experiment's evaluation preprocessing
on the trainer's device and at its precision, `predict.batch_size` at a time. Written under
`<run dir>/predictions/`:

    predictions.json       per image: path, size [width, height] in pixels and the task's outputs
    <image stem>.png       per image: the prediction drawn on it
    ...                    each task's own files (vtrain.predictors): predictions.csv (classification),
                           predictions_coco.json (detection, instance), <stem>_panoptic.png,
                           <stem>_trainids.png / _labelids.png, <stem>_x4.png, samples.png (iGPT)

A detection batch pads its images to the largest (as evaluation does), which changes DETR's outputs a
little (docs/detr.md); `predict.batch_size=1` runs every image alone.

Class names are those stored in the checkpoint at training time (the data's: CIFAR's batches.meta names,
ImageNet wnids, the categories of the annotation file); for official weights those of the label space the
model's size gives (see `class_names`), else the class index.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from vtrain.data.cityscapes import CITYSCAPES_NAMES
from vtrain.data.coco_names import COCO_CATEGORY_NAMES, coco_panoptic_names
from vtrain.data.imagenet import IMAGENET_WNIDS
from vtrain.data.images import ImageFileLoader, open_rgb
from vtrain.data.palette import Palette
from vtrain.io import atomic_write_text
from vtrain.modes.common import build_run, load_task_weights, weights_to_run
from vtrain.predictors import KINDS, Predictor, Size
from vtrain.predictors.classification import ClassificationPredictor
from vtrain.predictors.detection import DetectionPredictor
from vtrain.predictors.generative import GenerativePredictor
from vtrain.predictors.instance import InstancePredictor
from vtrain.predictors.panoptic import PanopticPredictor
from vtrain.predictors.segmentation import SegmentationPredictor
from vtrain.predictors.super_resolution import References, SuperResolutionPredictor

log = logging.getLogger("vtrain")


def task_kind(cfg: DictConfig) -> str:
    """The predictor kind of the experiment's `task._target_` (see `vtrain.predictors`).

    Raises:
        ValueError: a task no predictor knows.
    """
    target = str(cfg.task.get("_target_", ""))
    kind = KINDS.get(target.rsplit(".", 1)[-1])
    if kind is None:
        raise ValueError(
            f"mode=predict is not implemented for {target} (experiment {cfg.get('name')}): it knows "
            f"{', '.join(KINDS)}"
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
    """`paths` opened as 8-bit RGB and prepared by the predictor: `(index, (width, height), sample)`, or None
    for a file that `loader` skipped as unreadable (`data.skip_corrupt=true`; else it raises naming it)."""

    def __init__(self, paths: Sequence[Path], prepare: Callable, loader: ImageFileLoader) -> None:
        self.paths, self.prepare, self.loader = list(paths), prepare, loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Size, dict] | None:
        image = self.loader(self.paths[index])
        if image is None:
            return None
        return index, image.size, self.prepare(image, self.paths[index])


def collate_images(samples: Sequence[Any], collate: Callable) -> dict[str, Any] | None:
    """A batch of the readable samples: `index` and `size` lists and the predictor's collated fields;
    None when none was readable."""
    kept = [sample for sample in samples if sample is not None]
    if not kept:
        return None
    indices, sizes, fields = zip(*kept, strict=True)
    return {"index": list(indices), "size": list(sizes), **collate(list(fields))}


def json_ready(value: Any) -> Any:
    """`value` without the entries whose key starts with `_` (tensors kept for the pictures), at any depth."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def class_names(
    kind: str, num_classes: int, stored: list[str] | None, cfg: DictConfig
) -> tuple[list[str], str]:
    """The name of every label and where the names come from: the checkpoint's (the data it was trained
    on), else the label space the model's size says it has (COCO's 91 category ids for a detector or
    Mask R-CNN, COCO panoptic's 250 for DETR panoptic, Cityscapes' 19 train ids, ImageNet's 1000 wnids for
    an ImageNet experiment), else the label index."""
    if stored:
        return [*stored, *map(str, range(len(stored), num_classes))], "the checkpoint (its training data)"
    if kind in ("detection", "instance") and num_classes == len(COCO_CATEGORY_NAMES):
        return list(COCO_CATEGORY_NAMES), "COCO's 91 category ids"
    if kind == "panoptic" and num_classes == 250:
        return coco_panoptic_names(num_classes), "COCO panoptic's category ids"
    if kind == "segmentation" and num_classes == len(CITYSCAPES_NAMES):
        return list(CITYSCAPES_NAMES), "Cityscapes' 19 train ids"
    if cfg.data.get("dataset") == "imagenet" and num_classes == 1000:
        return list(IMAGENET_WNIDS), "ImageNet-1k wnids"
    return [str(i) for i in range(num_classes)], "none known: the class index"


def _palette(run: Any, checkpoint: dict[str, Any]) -> Palette:
    """iGPT's palette: the checkpoint's (the colours its tokens mean), else the data module's."""
    if checkpoint.get("vtrain_palette") is not None:
        return Palette(torch.tensor(checkpoint["vtrain_palette"]))
    run.datamodule.prepare_data()
    run.datamodule.setup("test")
    return run.datamodule.palette


def build_predictor(
    kind: str, cfg: DictConfig, run: Any, names: list[str], checkpoint: dict, references: References | None
) -> Predictor:
    """The predictor of `kind` with this experiment's eval preprocessing and `cfg.predict`'s settings
    (`references`: TTSR's reference images)."""
    settings = cfg.predict
    if kind == "super-resolution":
        task = run.task
        return SuperResolutionPredictor(references, bool(settings.get("hr")), task.y_border, task.rgb_border)
    if kind == "generative":
        return GenerativePredictor(
            _palette(run, checkpoint),
            int(cfg.data.image_size),
            names,
            int(settings.num_completions),
            int(settings.num_samples),
            dict(settings.get("sampling") or {}),
            int(settings.top_k),
        )
    transform = getattr(run.datamodule, "eval_transform", None)
    if transform is None:
        raise ValueError(
            f"mode=predict preprocesses with the data module's eval_transform; {cfg.data._target_} has none"
        )
    if kind == "classification":
        # CIFAR's eval pipeline has no resize (its images have the model's size): other images get one
        square = int(cfg.data.image_size) if cfg.data.get("recipe") == "cifar" else None
        return ClassificationPredictor(transform, names, int(settings.top_k), square)
    threshold = float(settings.score_threshold)
    if kind == "detection":
        return DetectionPredictor(transform, names, threshold)
    if kind == "instance":
        return InstancePredictor(transform, names, threshold)
    if kind == "panoptic":
        return PanopticPredictor(transform, names)
    return SegmentationPredictor(transform, names)


def output_stems(paths: Sequence[Path]) -> list[str]:
    """The stem of each input's output files (`<stem>.png`, ...): its own, or with its index for a stem met
    before (`a.jpg`, `a.png` -> `a`, `a_1`)."""
    seen: set[str] = set()
    stems = []
    for index, path in enumerate(paths):
        stem = path.stem if path.stem not in seen else f"{path.stem}_{index}"
        seen.add(stem)
        stems.append(stem)
    return stems


def predict(cfg: DictConfig) -> None:
    """Predict on `predict.input` and write `<run dir>/predictions/` (see the module docstring)."""
    source = (cfg.get("predict") or {}).get("input")
    if not source:
        raise ValueError(
            "mode=predict needs images: predict.input=PATH (an image file, a folder of images or a glob)"
        )
    kind = task_kind(cfg)
    # every input is checked before any model is built
    references = References(cfg.predict.get("ref")) if kind == "super-resolution" else None
    paths = [path.absolute() for path in find_images(str(source))]
    ckpt_path, pretrained = weights_to_run(cfg, "run")
    run = build_run(cfg, weights_from_checkpoint=ckpt_path is not None)
    checkpoint: dict[str, Any] = {}
    if ckpt_path is not None:
        checkpoint = load_task_weights(run.task, ckpt_path, run.cfg)
    model = getattr(run.task, "model", None)
    num_classes = int(getattr(model, "num_classes", None) or cfg.data.get("num_classes") or 0)
    names, names_from = class_names(kind, num_classes, checkpoint.get("vtrain_class_names"), cfg)
    log.info("%d images; class names from %s", len(paths), names_from)
    predictor = build_predictor(kind, cfg, run, names, checkpoint, references)

    dataset = ImageFiles(paths, predictor.prepare, ImageFileLoader(bool(cfg.data.get("skip_corrupt"))))
    loader = DataLoader(
        dataset,
        batch_size=predictor.batch_size or int(cfg.predict.batch_size),
        num_workers=int(cfg.data.get("num_workers") or 0),
        collate_fn=functools.partial(collate_images, collate=predictor.collate),
    )
    precision = run.trainer.precision_plugin
    device = run.trainer.strategy.root_device
    task = precision.convert_module(run.task).to(device).eval()
    found: dict[int, dict] = {}
    with torch.no_grad():
        for batch in tqdm(
            loader, desc="predict", unit="batch", disable=not cfg.predict.get("progress", True)
        ):
            if batch is None:
                continue
            inputs = {key: _to(value, device, precision) for key, value in batch.items()}
            with precision.forward_context():
                outputs = predictor.outputs(task, inputs, batch["size"])
            for index, size, output in zip(batch["index"], batch["size"], outputs, strict=True):
                found[index] = {"image_id": index, "path": str(paths[index]), "size": list(size), **output}

    out_dir = run.output_dir / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = output_stems(paths)
    records = []
    for index in sorted(found):
        record = found[index]
        record |= predictor.save(out_dir, stems[index], open_rgb(paths[index]), record)
        records.append(record)
    with torch.no_grad():
        extra = predictor.finish(task, out_dir)
    skipped = [str(path) for index, path in enumerate(paths) if index not in found]
    summary = {
        "task": kind,
        "weights": ckpt_path if ckpt_path is not None else f"model.pretrained={pretrained}",
        "input": str(source),
        "class_names": names_from,
        "images": len(paths),
        "skipped_unreadable": skipped,
        "predictions": json_ready(records),
        **extra,
    }
    atomic_write_text(out_dir / "predictions.json", json.dumps(summary, indent=2))
    predictor.write(out_dir, json_ready(records))
    if skipped:
        log.warning("%d unreadable images skipped: %s", len(skipped), ", ".join(skipped))
    print(f"predictions for {len(records)} of {len(paths)} images in {out_dir}")


def _to(value: Any, device: torch.device, precision: Any) -> Any:
    """A batch entry on `device`, floating-point images at the trainer's precision."""
    if isinstance(value, list):
        return [_to(v, device, precision) for v in value]
    if not isinstance(value, torch.Tensor):
        return value
    value = value.to(device)
    return precision.convert_input(value) if value.is_floating_point() else value
