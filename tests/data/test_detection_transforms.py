import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from vtrain.data.detection_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomShortSideResize,
    RandomSizeCrop,
    build_detr_transforms,
    resized_size,
)


def _target(boxes: list[list[float]], height: int, width: int, labels: list[int] | None = None) -> dict:
    n = len(boxes)
    size = torch.tensor([height, width])
    return {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(height, width),
        ),
        "labels": torch.tensor(labels if labels is not None else list(range(1, n + 1)), dtype=torch.int64),
        "area": torch.arange(n, dtype=torch.float32) * 100,
        "iscrowd": torch.zeros(n, dtype=torch.int64),
        "image_id": 42,
        "orig_size": size,
        "size": size.clone(),
    }


def _painted(height: int, width: int, box: list[int]) -> Image.Image:
    """A black image with the box [x1, y1, x2, y2) filled in white."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = 255
    return Image.fromarray(pixels)


def _white_extent(image: torch.Tensor) -> list[int] | None:
    """[x1, y1, x2, y2) of the pixels above half intensity in a [3, H, W] ImageNet-normalised image."""
    pixels = image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    ys, xs = torch.nonzero(pixels.mean(0) > 0.5, as_tuple=True)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _pixel_box(target: dict) -> torch.Tensor:
    """The target's normalised cx, cy, w, h boxes as x1, y1, x2, y2 in pixels of the transformed image."""
    height, width = target["size"].tolist()
    cx, cy, w, h = (target["boxes"] * torch.tensor([width, height, width, height])).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


@pytest.mark.parametrize(
    ("height", "width", "size", "max_size", "expected"),
    [
        (480, 640, 800, 1333, (800, 1066)),  # long side 1066.7 is truncated
        (427, 640, 800, 1333, (800, 1199)),
        (640, 427, 800, 1333, (1199, 800)),  # portrait
        (400, 1000, 800, 1333, (533, 1332)),  # long side limits: short = round(1333 * 400 / 1000) = 533
        (333, 1000, 800, 1333, (444, 1333)),  # round(443.9) = 444, then int(444 * 1000 / 333) = 1333
        (1000, 100, 800, 1333, (1330, 133)),  # round(133.3) = 133, then 133 * 10
        (800, 1000, 800, 1333, (800, 1000)),  # short side already 800: unchanged
        (600, 600, 800, 1333, (800, 800)),
        (300, 500, 480, None, (480, 800)),
        (128, 160, 96, 120, (96, 120)),  # a tiny config: 96 * 1.25 = 120 is not above max_size
        (128, 160, 112, 120, (96, 120)),  # 140 > 120: short = round(120 * 128 / 160) = 96
    ],
)
def test_resized_size_follows_detr_sizing(height, width, size, max_size, expected):
    assert resized_size(height, width, size, max_size) == expected


def test_resize_differs_from_torchvision_resize_where_detr_does():
    image = Image.new("RGB", (1000, 400))
    ours = RandomShortSideResize([800], max_size=1333)(image)
    theirs = v2.Resize(800, max_size=1333)(image)
    assert (ours.height, ours.width) == (533, 1332) and (theirs.height, theirs.width) == (533, 1333)


def test_resize_scales_boxes_with_the_image():
    image, target = RandomShortSideResize([50])(
        Image.new("RGB", (200, 100)), _target([[10, 20, 30, 40]], 100, 200)
    )
    assert image.size == (100, 50)
    assert target["boxes"].tolist() == [[5, 10, 15, 20]] and target["boxes"].canvas_size == (50, 100)


def test_flip_mirrors_boxes():
    flip = v2.RandomHorizontalFlip(p=1.0)
    _, target = flip(Image.new("RGB", (100, 60)), _target([[10, 20, 30, 40]], 60, 100))
    assert target["boxes"].tolist() == [[70, 20, 90, 40]]


def test_random_size_crop_moves_and_clamps_boxes_exactly():
    torch.manual_seed(0)
    box = [20, 30, 50, 45]
    crop = v2.Compose([RandomSizeCrop(30, 70), v2.SanitizeBoundingBoxes(), v2.ToImage()])
    kept = dropped = 0
    for _ in range(40):
        image, target = crop(_painted(80, 100, box), _target([box], 80, 100))
        height, width = image.shape[-2:]
        assert 30 <= height <= 70 and 30 <= width <= 70
        extent = _white_extent(v2.functional.normalize(image.float() / 255, IMAGENET_MEAN, IMAGENET_STD))
        if extent is None:
            assert len(target["boxes"]) == len(target["labels"]) == 0
            dropped += 1
        else:
            assert target["boxes"].tolist() == [extent] and target["labels"].tolist() == [1]
            kept += 1
    assert kept and dropped


def test_sanitize_drops_boxes_cut_away_with_their_labels_area_and_iscrowd():
    # A 50 x 50 crop of a 100 x 100 image never holds both corners.
    torch.manual_seed(0)
    pipeline = build_detr_transforms(
        True, scales=[50], max_size=100, pre_crop_scales=[100], crop_min=50, crop_max=50
    )
    corners = [[0, 0, 10, 10], [90, 90, 100, 100]]
    counts = set()
    for _ in range(30):
        _, target = pipeline(Image.new("RGB", (100, 100)), _target(corners, 100, 100, labels=[3, 7]))
        n = len(target["boxes"])
        assert len(target["labels"]) == len(target["area"]) == len(target["iscrowd"]) == n
        counts.add(n)
        for label, area in zip(target["labels"], target["area"], strict=True):
            assert area == {3: 0, 7: 100}[int(label)]
    assert counts <= {0, 1, 2} and 1 in counts


def test_train_pipeline_boxes_follow_the_painted_object():
    torch.manual_seed(0)
    pipeline = build_detr_transforms(
        True, scales=[96, 128, 160], max_size=200, pre_crop_scales=[100, 120], crop_min=60, crop_max=100
    )
    box = [20, 30, 80, 70]  # off-centre, so that a flip moves it
    for _ in range(30):
        image, target = pipeline(_painted(120, 160, box), _target([box], 120, 160))
        assert type(image) is torch.Tensor and image.dtype == torch.float32
        assert target["size"].tolist() == list(image.shape[-2:]) and target["orig_size"].tolist() == [
            120,
            160,
        ]
        assert max(target["size"]) <= 200
        extent = _white_extent(image)
        if extent is None:  # cropped away
            assert target["boxes"].shape == (0, 4)
            continue
        # Resizing blurs the edges: up to a pixel either way.
        assert torch.allclose(_pixel_box(target)[0], torch.tensor(extent, dtype=torch.float32), atol=1.0)


def test_eval_pipeline_gives_normalised_cxcywh_and_sizes():
    image, target = build_detr_transforms(False, eval_size=100, max_size=150)(
        Image.new("RGB", (100, 50), (255, 255, 255)), _target([[10, 5, 30, 25]], 50, 100)
    )
    assert image.shape == (3, 75, 150)  # short side 100 would make the long side 200 > 150
    assert target["size"].tolist() == [75, 150] and target["orig_size"].tolist() == [50, 100]
    assert type(target["boxes"]) is torch.Tensor and target["boxes"].dtype == torch.float32
    assert torch.allclose(target["boxes"], torch.tensor([[0.2, 0.3, 0.2, 0.4]]))
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(image[:, 10, 10], white, atol=1e-5)
    assert target["image_id"] == 42 and target["labels"].tolist() == [1]


def test_images_without_boxes_pass_through():
    for train in (True, False):
        _, target = build_detr_transforms(train)(Image.new("RGB", (64, 48)), _target([], 48, 64))
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_invalid_sizes_are_refused():
    with pytest.raises(ValueError, match="min_size <= max_size"):
        RandomSizeCrop(100, 50)
    with pytest.raises(ValueError, match="non-empty"):
        RandomShortSideResize([])
    with pytest.raises(ValueError, match="max_size 500 is smaller than the largest short side 800"):
        RandomShortSideResize([480, 800], max_size=500)
