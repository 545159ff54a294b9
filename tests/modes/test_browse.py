"""`mode=browse` on a tiny experiment of every task: one decodable picture per sample, and records whose
targets fit the pictures (boxes inside the image, names from the data, SR panels of matching sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import SMOKE
from vtrain.cli import run
from vtrain.data.cityscapes import CITYSCAPES_NAMES

EXPERIMENTS = {
    "vit_cifar10_tiny": "classification",
    "detr_coco_tiny": "detection",
    "detr_panoptic_tiny": "panoptic",
    "maskrcnn_tiny": "instance",
    "fpt_tiny": "segmentation",
    "ttsr_tiny": "super-resolution",
    "igpt_tiny": "generative",
    "mae_tiny": "classification",
}


def browse(make_cfg, experiment: str, *overrides: str) -> tuple[dict, list[Image.Image], object]:
    cfg = make_cfg([f"experiment={experiment}", *SMOKE, "mode=browse", "browse.num_samples=3", *overrides])
    run(cfg)
    out = cfg.paths.output_dir + "/browse"
    summary = json.loads(Path(out, "browse.json").read_text())
    pictures = [Image.open(f"{out}/{record['picture']}") for record in summary["samples"]]
    for picture in pictures:
        picture.load()  # decodes
    return summary, pictures, out


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_browse_draws_each_sample_with_its_target(make_cfg, experiment):
    summary, pictures, _ = browse(make_cfg, experiment)
    assert summary["task"] == EXPERIMENTS[experiment]
    assert len(summary["samples"]) == len(pictures) == 3
    for record, picture in zip(summary["samples"], pictures, strict=True):
        if "boxes_xyxy" in record:
            height, width = record["size"]
            assert len(record["boxes_xyxy"]) == len(record["names"]) == len(record["labels"]) > 0
            for x1, y1, x2, y2 in record["boxes_xyxy"]:
                assert -0.5 <= x1 < x2 <= width + 0.5 and -0.5 <= y1 < y2 <= height + 0.5
            assert all(
                name != str(label) for name, label in zip(record["names"], record["labels"], strict=True)
            )
            assert picture.width >= width and picture.height >= height
        if summary["task"] == "segmentation":
            assert set(record["classes"]) <= set(CITYSCAPES_NAMES) and record["classes"]
            assert picture.width == 2 * record["size"][1]  # image and label map side by side
        if summary["task"] == "super-resolution":
            assert record["sizes"]["hr"] == [4 * side for side in record["sizes"]["lr"]]
        if summary["task"] in ("classification", "generative"):
            assert record["name"] != str(record["label"])  # a name from the data, not the index


def test_browse_of_the_validation_split_uses_the_evaluation_preprocessing(make_cfg):
    first, _, _ = browse(make_cfg, "detr_coco_tiny", "browse.split=val")
    again, _, _ = browse(make_cfg, "detr_coco_tiny", "browse.split=val")
    assert first["split"] == "val" and first["samples"] == again["samples"]


def test_browse_refuses_an_unknown_split(make_cfg):
    with pytest.raises(ValueError, match="browse.split must be train or val"):
        browse(make_cfg, "vit_cifar10_tiny", "browse.split=test")
