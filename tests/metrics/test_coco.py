"""COCO AP: ground truth fed back scores 1.0, a hand-checkable case, and the two backends agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vtrain.metrics.coco import STAT_NAMES, CocoEvaluator, to_coco_results


def _write_annotations(path: Path) -> Path:
    """Two 100x100 images; image 1 holds a cat (id 3) and a dog (id 7), image 2 a cat and a crowd of dogs."""
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 1, "width": 100, "height": 100, "file_name": "1.jpg"},
                    {"id": 2, "width": 100, "height": 100, "file_name": "2.jpg"},
                ],
                "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 1,
                        "category_id": 3,
                        "bbox": [10, 10, 40, 40],
                        "area": 1600,
                        "iscrowd": 0,
                    },
                    {
                        "id": 2,
                        "image_id": 1,
                        "category_id": 7,
                        "bbox": [50, 50, 30, 20],
                        "area": 600,
                        "iscrowd": 0,
                    },
                    {
                        "id": 3,
                        "image_id": 2,
                        "category_id": 3,
                        "bbox": [0, 0, 60, 60],
                        "area": 3600,
                        "iscrowd": 0,
                    },
                    {
                        "id": 4,
                        "image_id": 2,
                        "category_id": 7,
                        "bbox": [60, 60, 40, 40],
                        "area": 1600,
                        "iscrowd": 1,
                        "segmentation": {"counts": [6060, 40, 60, 40, 3800], "size": [100, 100]},
                    },
                ],
            }
        )
    )
    return path


def _ground_truth_as_detections(annotation_file: Path) -> list[dict]:
    data = json.loads(annotation_file.read_text())
    per_image: dict[int, list] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            per_image[ann["image_id"]].append(ann)
    detections = []
    for image_id, anns in per_image.items():
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        detections.append(
            {
                "image_id": image_id,
                "boxes": boxes,
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor([a["category_id"] for a in anns]),
            }
        )
    return detections


def test_to_coco_results_converts_xyxy_to_xywh():
    [record] = to_coco_results(
        5, torch.tensor([[10.0, 20.0, 40.0, 60.0]]), torch.tensor([0.5]), torch.tensor([3])
    )
    assert record == {"image_id": 5, "category_id": 3, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.5}


def test_ground_truth_fed_back_scores_ap_one(tmp_path):
    annotations = _write_annotations(tmp_path / "instances_val2017.json")
    evaluator = CocoEvaluator(annotations)
    evaluator.update(_ground_truth_as_detections(annotations))
    stats = evaluator.compute()
    assert list(stats) == list(STAT_NAMES)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)


def test_a_detection_on_the_crowd_is_ignored_and_a_miss_halves_ap(tmp_path):
    annotations = _write_annotations(tmp_path / "instances_val2017.json")
    detections = _ground_truth_as_detections(annotations)
    # a dog detected on the crowd region of image 2: matched to the crowd, so neither TP nor FP
    detections[1] = {
        **detections[1],
        "boxes": torch.cat([detections[1]["boxes"], torch.tensor([[60.0, 60, 100, 100]])]),
        "scores": torch.tensor([1.0, 0.9]),
        "labels": torch.tensor([3, 7]),
    }
    evaluator = CocoEvaluator(annotations)
    evaluator.update(detections)
    assert evaluator.compute()["AP"] == pytest.approx(1.0)
    # the cat of image 2 missed: cat recall 0.5 at every threshold -> cat AP about 0.5, dog AP 1
    detections[1] = {
        "image_id": 2,
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.long),
    }
    evaluator.reset()
    evaluator.update(detections)
    assert evaluator.compute()["AP"] == pytest.approx((0.5 + 1.0) / 2, abs=0.01)


def test_only_the_images_seen_are_evaluated(tmp_path):
    annotations = _write_annotations(tmp_path / "instances_val2017.json")
    evaluator = CocoEvaluator(annotations)
    evaluator.update(_ground_truth_as_detections(annotations)[:1])
    assert evaluator.compute()["AP"] == pytest.approx(1.0)


def test_real_coco_ground_truth_round_trip(shared_data):
    annotations = shared_data / "coco_tiny" / "annotations" / "instances_train2017.json"
    evaluator = CocoEvaluator(annotations)
    evaluator.update(_ground_truth_as_detections(annotations))
    stats = evaluator.compute()
    assert stats["AP"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(1.0)


def test_faster_coco_eval_agrees_with_pycocotools(tmp_path, shared_data):
    pytest.importorskip("faster_coco_eval")
    annotations = shared_data / "coco_tiny" / "annotations" / "instances_train2017.json"
    generator = torch.Generator().manual_seed(0)
    detections = []
    for det in _ground_truth_as_detections(annotations):
        n = len(det["boxes"])
        jitter = torch.randn(n, 4, generator=generator, dtype=torch.float64) * 4
        detections.append(
            {**det, "boxes": det["boxes"] + jitter, "scores": torch.rand(n, generator=generator)}
        )
    stats = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        evaluator = CocoEvaluator(annotations, backend=backend)
        evaluator.update(detections)
        stats[backend] = evaluator.compute()
    assert 0.2 < stats["pycocotools"]["AP"] < 0.95
    for name in STAT_NAMES:
        assert stats["faster_coco_eval"][name] == pytest.approx(stats["pycocotools"][name], abs=1e-4), name


def test_unknown_backend_and_missing_file_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoEvaluator(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="backend"):
        CocoEvaluator(_write_annotations(tmp_path / "a.json"), backend="detectron")
