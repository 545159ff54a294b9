"""COCO panoptic loading: the real sample (segment masks from the PNG ids, crowd flags, 133 categories),
the targets of the official loader (crowd segments kept, boxes from the masks), the tiny COCO-panoptic-format
set, the masks following DETR's augmentation, and the data module's batches."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import masks_to_boxes

from tests.data.panoptic_sample import CROWD_BOX, HEIGHT, SEGMENTS, WIDTH, segment_ids, write_panoptic_sample
from vtrain.data.coco_panoptic import CocoPanoptic, PanopticDataModule
from vtrain.data.detection_transforms import build_detr_transforms
from vtrain.data.images import ImageSizeError
from vtrain.metrics.panoptic import pq_compute


def test_real_sample_loads_every_segment_as_a_mask(shared):
    root = shared("coco_panoptic")
    dataset = CocoPanoptic(root, "val")
    content = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    assert len(dataset) == 2 and len(dataset.categories) == 133 and sum(dataset.isthing.values()) == 80
    assert dataset.num_classes == 201 and dataset.category_names[1] == "person"
    for annotation in content["annotations"]:
        index = dataset.ids.index(annotation["image_id"])
        image, target = dataset[index]
        segments = annotation["segments_info"]
        assert target["masks"].shape == (len(segments), image.height, image.width)
        assert target["labels"].tolist() == [s["category_id"] for s in segments]
        assert target["iscrowd"].tolist() == [s["iscrowd"] for s in segments]
        assert target["area"].tolist() == [s["area"] for s in segments]  # the PNG's pixel counts
        assert target["masks"].sum(0).max() == 1  # segments do not overlap
        # the boxes are the masks' (last pixel included), one pixel short of the JSON's, which counts pixels
        boxes = torch.tensor([s["bbox"] for s in segments], dtype=torch.float32)
        boxes[:, 2:] += boxes[:, :2] - 1
        torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), boxes)
    assert any(target["iscrowd"].any() for _, target in dataset)  # the sample's crowd segments are targets


def test_crowd_segments_are_targets_and_boxes_are_the_extent_of_their_masks(tmp_path):
    """As the official loader (detr datasets/coco_panoptic.py:41-63): no segment is left out, crowd or not,
    and a box runs from the first to the last column and row of its mask (util/box_ops.py:64-88)."""
    root = write_panoptic_sample(tmp_path)
    image, target = CocoPanoptic(root, "val")[0]
    assert image.size == (WIDTH, HEIGHT)
    assert list(SEGMENTS) == [1000, 2000, 3000]
    assert target["labels"].tolist() == [92, 1, 1] and target["iscrowd"].tolist() == [0, 0, 1]
    masks = target["masks"].as_subclass(torch.Tensor)
    assert torch.equal(
        masks, torch.from_numpy(segment_ids())[None] == torch.tensor([1000, 2000, 3000])[:, None, None]
    )
    boxes = target["boxes"].as_subclass(torch.Tensor)
    assert boxes[2].tolist() == CROWD_BOX
    assert boxes.tolist() == [[0.0, 0.0, 15.0, 11.0], [1.0, 1.0, 4.0, 3.0], CROWD_BOX]
    assert target["area"].tolist() == [float(m.sum()) for m in masks]
    # the first stage's box model: the same boxes, no masks
    _, boxes_only = CocoPanoptic(root, "val", masks=False)[0]
    assert "masks" not in boxes_only and boxes_only["iscrowd"].tolist() == [0, 0, 1]
    assert boxes_only["boxes"].as_subclass(torch.Tensor).tolist() == boxes.tolist()
    # and after DETR's eval transform, the crowd box in normalised cx, cy, w, h of the resized image
    _, resized = CocoPanoptic(root, "val", transform=build_detr_transforms(train=False, eval_size=24))[0]
    x0, y0, x1, y1 = CROWD_BOX
    expected = [(x0 + x1) / 2 / WIDTH, (y0 + y1) / 2 / HEIGHT, (x1 - x0) / WIDTH, (y1 - y0) / HEIGHT]
    torch.testing.assert_close(resized["boxes"][2], torch.tensor(expected))


def test_a_segment_missing_from_its_png_is_an_error_naming_both_files(tmp_path):
    root = write_panoptic_sample(tmp_path)
    annotation_file = root / "annotations" / "panoptic_val2017.json"
    content = json.loads(annotation_file.read_text())
    content["annotations"][0]["segments_info"][1]["id"] = 4000
    annotation_file.write_text(json.dumps(content))
    with pytest.raises(
        ValueError, match=r"sample\.png: segments \[4000\] of image 7 in .*panoptic_val2017\.json"
    ):
        CocoPanoptic(root, "val")[0]


def test_masks_follow_the_eval_resize_and_the_train_augmentation(shared):
    root = shared("coco_panoptic")
    dataset = CocoPanoptic(
        root, "val", transform=build_detr_transforms(train=False, eval_size=128, max_size=400)
    )
    image, target = dataset[0]
    assert image.shape[-2:] == target["masks"].shape[-2:] == tuple(target["size"].tolist())
    assert target["boxes"].max() <= 1
    torch.manual_seed(0)
    augmented = CocoPanoptic(
        root,
        "val",
        transform=build_detr_transforms(
            train=True, scales=[96], max_size=200, pre_crop_scales=[128], crop_min=64, crop_max=96
        ),
    )
    for _ in range(6):
        image, target = augmented[1]
        n = len(target["labels"])
        assert target["masks"].shape == (n, *image.shape[-2:]) and target["boxes"].shape == (n, 4)
        assert target["masks"].flatten(1).any(1).all()  # the cut-away segments went with their boxes


def test_tiny_panoptic_set_is_exact_and_its_ground_truth_scores_100(tiny):
    root = tiny("coco_panoptic_tiny")
    for split, count in (("train", 48), ("val", 16)):
        dataset = CocoPanoptic(root, split)
        assert len(dataset) == count
        gt = root / "annotations" / f"panoptic_{split}2017.json"
        assert pq_compute(gt, gt)["PQ"] == pytest.approx(100)
    assert {n for c, n in dataset.categories.items() if not dataset.isthing[c]} == {
        "grass",
        "gravel",
        "wall-brick",
        "building",
    }
    crowded = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        masks = target["masks"]
        assert masks.sum(0).min() == 1 == masks.sum(0).max()  # no void: every pixel in one segment
        stuff = [not dataset.isthing[int(c)] for c in target["labels"]]
        assert sum(stuff) == 2
        crowded += int(target["iscrowd"].any())
        things = masks[~torch.tensor(stuff) & (target["iscrowd"] == 0)]
        assert torch.equal(target["boxes"].as_subclass(torch.Tensor), masks_to_boxes(masks))
        boxes = masks_to_boxes(things)
        areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
        assert torch.equal(areas, things.flatten(1).sum(1).float())  # pasted things are exact rectangles
        pixels = np.asarray(image, dtype=np.float32)
        assert pixels.std() > 10
    assert crowded == 2
    instances = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert {c["id"] for c in instances["categories"]} == {1, 3, 7, 10}


def test_datamodule_batches_masks_with_the_images(tiny, data_dir):
    module = PanopticDataModule(
        root=str(data_dir / "coco_panoptic_tiny"),
        tiny="coco_panoptic_tiny",
        scales=[96, 112],
        max_size=200,
        pre_crop_scales=[96],
        crop_min=64,
        crop_max=96,
        eval_size=112,
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
    )
    module.prepare_data()
    module.setup("fit")
    assert module.num_classes == 18 and module.val_panoptic_file.is_file()
    assert module.val_annotation_file.is_file()
    images, mask, targets = next(iter(module.train_dataloader()))
    assert images.shape[0] == 4 and mask.shape == (4, *images.shape[-2:])
    for target, image_mask in zip(targets, mask, strict=True):
        h, w = target["size"].tolist()
        assert target["masks"].shape == (len(target["labels"]), h, w)
        assert not image_mask[:h, :w].any()
    module = PanopticDataModule(root=str(data_dir / "coco_panoptic_tiny"), num_classes=5)
    with pytest.raises(ValueError, match="largest category id is 17"):
        module.setup("validate")


def test_images_and_segment_pngs_whose_size_differs_from_the_json_name_both(shared, tmp_path):
    root = Path(shutil.copytree(shared("coco_panoptic"), tmp_path / "coco_panoptic"))
    annotation_file = root / "annotations" / "panoptic_val2017.json"
    content = json.loads(annotation_file.read_text())
    image, width, height = content["images"][0], content["images"][0]["width"], content["images"][0]["height"]
    image["width"] += 1
    annotation_file.write_text(json.dumps(content))
    dataset = CocoPanoptic(root, "val")
    index = dataset.ids.index(image["id"])
    with pytest.raises(ImageSizeError) as error:
        dataset[index]
    assert str(error.value).startswith(
        f"{root / 'val2017' / image['file_name']}: the image is {width} x {height} pixels (width x height) "
        f"but {annotation_file} (image id {image['id']}) gives {width + 1} x {height}"
    )

    image["width"] = width
    annotation_file.write_text(json.dumps(content))
    png = root / "annotations" / "panoptic_val2017" / dataset.annotations[image["id"]]["file_name"]
    with Image.open(png) as segments:
        segments.resize((width // 2, height // 2), Image.NEAREST).save(png)
    with pytest.raises(ImageSizeError) as error:
        CocoPanoptic(root, "val")[index]
    assert str(error.value) == (
        f"{png}: the segment PNG of image {image['id']} is {width // 2} x {height // 2} pixels "
        f"(width x height) but its image is {width} x {height}"
    )
