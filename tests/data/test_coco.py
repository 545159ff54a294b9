import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from vtrain.data.coco import CocoDetection, collate_detection, pad_images
from vtrain.data.coco_instance import CocoInstanceSegmentation
from vtrain.data.detection import DetectionDataModule
from vtrain.data.detection_transforms import IMAGENET_MEAN, IMAGENET_STD, resized_size
from vtrain.data.images import CorruptImageError, ImageSizeError

# A hand-made set: image 1 is 40 x 30 px, image 2 (20 x 25 px) has no annotation.
HANDMADE_ANNOTATIONS = [
    (1, [2, 3, 10, 5], 5, 0),  # kept: xyxy [2, 3, 12, 8]
    (2, [30, 20, 20, 20], 2, 0),  # clipped to the image: [30, 20, 40, 30]
    (3, [0, 0, 40, 30], 5, 1),  # crowd: left out of training targets
    (4, [5, 5, 0, 4], 2, 0),  # zero width: dropped
    (5, [45, 10, 5, 5], 2, 0),  # right of the image: no area once clipped, dropped
    (6, [-4, -2, 8, 6], 5, 0),  # clipped: [0, 0, 4, 4]
]


def _write_coco(root: Path, split: str = "train", content: dict | None = None) -> Path:
    images = [(1, "a.jpg", 40, 30), (2, "b.jpg", 20, 25)]
    for _, name, width, height in images:
        path = root / f"{split}2017" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)
    annotations = [
        {"id": i, "image_id": 1, "bbox": bbox, "category_id": cat, "iscrowd": crowd, "area": 10.0 * i}
        for i, bbox, cat, crowd in HANDMADE_ANNOTATIONS
    ]
    content = content or {
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "annotations": annotations,
        "categories": [{"id": 2, "name": "square"}, {"id": 5, "name": "circle"}],
    }
    annotation_file = root / "annotations" / f"instances_{split}2017.json"
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(content))
    return annotation_file


def _json_targets(annotation_file: Path) -> dict[int, tuple[list, list]]:
    """image id -> (xyxy boxes, category ids) of its non-crowd annotations, straight from the json."""
    content = json.loads(annotation_file.read_text())
    targets = {image["id"]: ([], []) for image in content["images"]}
    for a in content["annotations"]:
        if not a["iscrowd"]:
            x, y, w, h = a["bbox"]
            targets[a["image_id"]][0].append([x, y, x + w, y + h])
            targets[a["image_id"]][1].append(a["category_id"])
    return targets


def test_handmade_targets_clip_drop_and_leave_crowds_out(tmp_path):
    _write_coco(tmp_path)
    dataset = CocoDetection(tmp_path, "train")

    assert len(dataset) == 2 and dataset.ids == [1, 2]
    image, target = dataset[0]
    assert image.size == (40, 30)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].format.name == "XYXY"
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [30, 20, 40, 30], [0, 0, 4, 4]]
    assert target["labels"].tolist() == [5, 2, 5] and target["labels"].dtype == torch.int64
    assert target["area"].tolist() == [10, 20, 60] and target["iscrowd"].tolist() == [0, 0, 0]
    assert target["image_id"] == 1 and target["orig_size"].tolist() == target["size"].tolist() == [30, 40]
    # The image without annotations is kept, with empty targets.
    _, empty = dataset[1]
    assert (
        empty["boxes"].shape == (0, 4)
        and empty["labels"].shape == (0,)
        and empty["orig_size"].tolist() == [25, 20]
    )


def test_dropped_boxes_are_counted_by_reason_and_logged(tmp_path, caplog):
    annotation_file = _write_coco(tmp_path)
    with caplog.at_level(logging.WARNING):
        dataset = CocoDetection(tmp_path, "train")
    # annotation 4 has zero width, annotation 5 lies right of its 40 px wide image; 3 is a crowd, not dropped
    assert dataset.scan_counts.counts == {
        "data/boxes_dropped_degenerate": 1,
        "data/boxes_dropped_off_image": 1,
    }
    assert dataset.scan_counts.source == str(annotation_file)
    assert f"{annotation_file}: left out 1 annotations whose box has no width or height" in caplog.text
    assert "(data/boxes_dropped_off_image): annotation 5" in caplog.text
    datamodule = DetectionDataModule(str(tmp_path), val_split="train", batch_size=1, num_workers=0)
    datamodule.setup("fit")  # train and val read one file: counted once
    assert datamodule.data_counts() == {
        "data/boxes_dropped_degenerate": 1,
        "data/boxes_dropped_off_image": 1,
        "data/corrupt_images_skipped": 0,
    }


@pytest.mark.parametrize("dataset_class", [CocoDetection, CocoInstanceSegmentation])
def test_image_whose_size_differs_from_the_json_names_both(tmp_path, dataset_class):
    annotation_file = _write_coco(tmp_path)
    content = json.loads(annotation_file.read_text())
    content["images"][0]["width"] = 50  # a.jpg is 40 x 30
    annotation_file.write_text(json.dumps(content))
    dataset = dataset_class(tmp_path, "train")
    with pytest.raises(ImageSizeError) as error:
        dataset[0]
    assert str(error.value).startswith(
        f"{tmp_path / 'train2017' / 'a.jpg'}: the image is 40 x 30 pixels (width x height) but "
        f"{annotation_file} (image id 1) gives 50 x 30; its annotations would not line up with the pixels"
    )
    assert dataset[1][1]["image_id"] == 2  # the other image agrees with the file


def test_images_need_their_size_in_the_json(tmp_path):
    annotation_file = _write_coco(tmp_path)
    content = json.loads(annotation_file.read_text())
    del content["images"][1]["height"]
    annotation_file.write_text(json.dumps(content))
    with pytest.raises(ValueError) as error:
        CocoDetection(tmp_path, "train")
    assert str(error.value) == (
        f"{annotation_file}: image 2 needs a positive integer 'width' and 'height' (the size of its file, "
        "which is checked against them), found 20 and None"
    )


def test_eval_targets_keep_crowds_flagged(tmp_path):
    _write_coco(tmp_path)
    _, target = CocoDetection(tmp_path, "train", train=False)[0]
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [30, 20, 40, 30], [0, 0, 40, 30], [0, 0, 4, 4]]
    assert target["iscrowd"].tolist() == [0, 0, 1, 0]


def test_category_ids_are_the_labels_of_a_custom_set(tmp_path):
    _write_coco(tmp_path)
    dataset = CocoDetection(tmp_path, "train")
    assert dataset.num_classes == 6 and dataset.categories == {2: "square", 5: "circle"}
    assert dataset.category_names == ["N/A", "N/A", "square", "N/A", "N/A", "circle"]


def test_real_coco_targets_match_the_json(shared):
    root = shared("coco_tiny")
    dataset = CocoDetection(root, "train")
    expected = _json_targets(dataset.annotation_file)
    content = json.loads(dataset.annotation_file.read_text())

    assert len(dataset) == 80 and dataset.num_classes == 91
    assert dataset.category_names[1] == "person" and dataset.category_names[12] == "N/A"
    assert dataset.category_names[90] == "toothbrush"
    sizes = {image["id"]: (image["height"], image["width"]) for image in content["images"]}
    for image_id in dataset.ids:
        target = dataset.target(image_id, *sizes[image_id])
        boxes, labels = expected[image_id]
        assert torch.allclose(target["boxes"], torch.tensor(boxes).reshape(-1, 4))
        assert target["labels"].tolist() == labels
    assert sum(len(labels) for _, labels in expected.values()) == 705 - 6  # the 6 crowd regions left out
    with_crowds = CocoDetection(root, "train", train=False)
    crowds = [int(d.target(i, *sizes[i])["iscrowd"].sum()) for d in (dataset, with_crowds) for i in d.ids]
    assert sum(crowds[: len(dataset)]) == 0 and sum(crowds[len(dataset) :]) == 6
    # The sizes of the decoded images are those of the json.
    for index in (0, 41, 79):
        image, target = dataset[index]
        assert target["orig_size"].tolist() == list(sizes[target["image_id"]]) == [image.height, image.width]


def test_real_coco_val_image(shared):
    dataset = CocoDetection(shared("coco_min2"), "val")
    image, target = dataset[0]
    boxes, labels = _json_targets(dataset.annotation_file)[397133]

    assert len(dataset) == 1 and target["image_id"] == 397133 and image.size == (640, 427)
    assert len(boxes) == 19 and torch.allclose(target["boxes"], torch.tensor(boxes))
    assert target["labels"].tolist() == labels and target["boxes"].canvas_size == (427, 640)


def test_missing_files_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        CocoDetection(tmp_path, "val")
    assert str(tmp_path / "annotations" / "instances_val2017.json") in str(error.value)
    assert "<root>/annotations/instances_<split>2017.json" in str(error.value)

    annotation_file = _write_coco(tmp_path, "val")
    (tmp_path / "val2017" / "a.jpg").unlink()
    (tmp_path / "val2017" / "b.jpg").unlink()
    (tmp_path / "val2017").rmdir()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'val2017'} is not a directory"):
        CocoDetection(tmp_path, "val")
    assert annotation_file.is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"images": [', "is not valid JSON"),
        ('{"images": [], "annotations": []}', "expected a list under the key 'categories'"),
        (
            '{"images": [{"id": 1}], "annotations": [], "categories": []}',
            r"every entry of 'images' needs the keys \('id', 'file_name'\)",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}], '
            '"annotations": [{"id": 9, "image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1]}]}',
            r"annotation 9: category_id 4 is not in 'categories' \[1\]",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}], '
            '"annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}',
            r"annotation 9: bbox must be \[x, y, w, h\]",
        ),
    ],
)
def test_malformed_annotations_name_the_file(tmp_path, content, message):
    annotation_file = _write_coco(tmp_path)
    annotation_file.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        CocoDetection(tmp_path, "train")
    assert str(annotation_file) in str(error.value)


def test_corrupt_image_names_the_file_or_is_skipped(tmp_path, caplog):
    _write_coco(tmp_path)
    broken = tmp_path / "train2017" / "a.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(CorruptImageError, match=str(broken)):
        CocoDetection(tmp_path, "train")[0]

    dataset = CocoDetection(tmp_path, "train", skip_corrupt=True)
    with caplog.at_level(logging.WARNING):
        assert dataset[0] is None
    assert dataset.loader.skipped == 1 and str(broken) in caplog.text
    images, mask, targets = collate_detection([None, (torch.zeros(3, 2, 2), {"image_id": 2})])
    assert images.shape == (1, 3, 2, 2) and [t["image_id"] for t in targets] == [2]
    with pytest.raises(CorruptImageError, match="all 2 samples"):
        collate_detection([None, None])


def test_pad_images_masks_exactly_the_padding():
    a, b = torch.rand(3, 2, 5), torch.rand(3, 4, 3)
    batch, mask = pad_images([a, b])

    assert batch.shape == (2, 3, 4, 5) and mask.shape == (2, 4, 5) and mask.dtype == torch.bool
    assert torch.equal(batch[0, :, :2, :5], a) and torch.equal(batch[1, :, :4, :3], b)
    expected = torch.ones(2, 4, 5, dtype=torch.bool)
    expected[0, :2, :5] = False
    expected[1, :4, :3] = False
    assert torch.equal(mask, expected)
    assert batch[mask.unsqueeze(1).expand_as(batch)].abs().sum() == 0  # zeros on padding

    batch, mask = pad_images([a, b], size_divisibility=4)
    assert batch.shape == (2, 3, 4, 8) and mask[:, :, 5:].all() and not mask[1, :4, :3].any()


def test_pad_images_refuses_what_it_cannot_batch():
    with pytest.raises(ValueError, match="no images"):
        pad_images([])
    with pytest.raises(ValueError, match=r"\[\(3, 2, 2\), \(1, 2, 2\)\]"):
        pad_images([torch.zeros(3, 2, 2), torch.zeros(1, 2, 2)])


# DataModule on the tiny COCO set, with sizes shrunk to its 128-160 px images.
TINY_SIZES = dict(
    scales=(96, 112, 128),
    max_size=200,
    pre_crop_scales=(80, 96, 112),
    crop_min=64,
    crop_max=112,
    eval_size=128,
)


def _datamodule(root: Path, **overrides) -> DetectionDataModule:
    args = dict(root=str(root), tiny="coco_tiny", num_classes=11, batch_size=4, num_workers=0, **TINY_SIZES)
    return DetectionDataModule(**{**args, **overrides})


def _check_batch(images, mask, targets, batch_size):
    assert (
        images.dtype == torch.float32 and type(images) is torch.Tensor and images.shape[:2] == (batch_size, 3)
    )
    assert (
        mask.dtype == torch.bool
        and mask.shape == (batch_size, *images.shape[-2:])
        and len(targets) == batch_size
    )
    for image_mask, target in zip(mask, targets, strict=True):
        height, width = target["size"].tolist()
        assert not image_mask[:height, :width].any() and image_mask.sum() == mask[0].numel() - height * width
        boxes = target["boxes"]
        assert type(boxes) is torch.Tensor and boxes.dtype == torch.float32 and boxes.shape[1] == 4
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert target["labels"].dtype == torch.int64 and set(target["labels"].tolist()) <= {1, 3, 7, 10}
        assert len(target["labels"]) == len(boxes) and not target["iscrowd"].any()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_batches_on_coco_tiny(data_dir, num_workers):
    datamodule = _datamodule(data_dir / "coco_tiny", num_workers=num_workers, eval_batch_size=5)
    datamodule.prepare_data()
    datamodule.setup("fit")

    assert datamodule.val_annotation_file == data_dir / "coco_tiny" / "annotations" / "instances_val2017.json"
    assert datamodule.val_annotation_file.is_file() and datamodule.category_names[7] == "digit"
    assert len(datamodule.train_dataloader()) == 48 // 4 and len(datamodule.val_dataloader()) == 4
    for images, mask, targets in datamodule.train_dataloader():
        _check_batch(images, mask, targets, 4)
        assert max(images.shape[-2:]) <= 200
    images, mask, targets = next(iter(datamodule.val_dataloader()))
    _check_batch(images, mask, targets, 5)
    # Normalised: undoing mean / std gives back pixels in [0, 1] inside the images.
    pixels = images[0] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    inside = pixels[:, ~mask[0]]
    assert inside.min() >= -1e-5 and inside.max() <= 1 + 1e-5 and inside.std() > 0.05


def test_datamodule_val_targets_are_the_json_boxes_rescaled(tiny):
    datamodule = _datamodule(tiny("coco_tiny"))
    datamodule.setup("validate")
    expected = _json_targets(datamodule.val_annotation_file)

    assert datamodule.train_set is None and datamodule.num_classes == 11
    for _, _, targets in datamodule.val_dataloader():
        for target in targets:
            orig_h, orig_w = target["orig_size"].tolist()
            height, width = target["size"].tolist()
            assert (height, width) == resized_size(orig_h, orig_w, 128, 200)
            cx, cy, w, h = target["boxes"].unbind(-1)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor(
                [orig_w, orig_h, orig_w, orig_h]
            )
            boxes, labels = expected[target["image_id"]]
            assert (
                torch.allclose(xyxy, torch.tensor(boxes), atol=1e-3) and target["labels"].tolist() == labels
            )


def test_datamodule_checks_num_classes_and_batch_size(tiny):
    with pytest.raises(
        ValueError, match=r"instances_val2017.json: num_classes is 91 but the largest category id is 10"
    ):
        _datamodule(tiny("coco_tiny"), num_classes=91).setup("fit")

    datamodule = _datamodule(tiny("coco_tiny"), num_classes=None, train_subset=8)
    datamodule.setup("fit")
    assert datamodule.num_classes == 11 and len(datamodule.train_set) == 8
    with pytest.raises(ValueError, match="3 training samples are fewer than batch_size 4"):
        _datamodule(tiny("coco_tiny"), train_subset=3).setup("fit")


def test_datamodule_on_real_coco_keeps_91_classes(shared):
    datamodule = DetectionDataModule(str(shared("coco_min2")), num_classes=91, batch_size=1, num_workers=0)
    datamodule.setup("fit")
    images, mask, targets = next(iter(datamodule.train_dataloader()))
    assert images.shape[0] == 1 and 480 <= min(targets[0]["size"].tolist()) <= 800
    assert datamodule.category_names[1] == "person" and len(datamodule.category_names) == 91
    images, mask, targets = next(iter(datamodule.val_dataloader()))
    assert images.shape == (1, 3, 800, 1199) and not mask.any() and targets[0]["image_id"] == 397133
