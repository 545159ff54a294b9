"""Panoptic quality: a hand-made image whose PQ / SQ / RQ are worked out by hand (void, crowd, a category
mismatch), the id <-> RGB round trip, and the ground truth of the real COCO panoptic sample scoring 100."""

import json

import numpy as np
import pytest

from vtrain.metrics.panoptic import (
    PanopticEvaluator,
    id2rgb,
    pq_compute,
    pq_image_stats,
    pq_summary,
    read_segmentation,
    rgb2id,
)

# things 1, 5, 7; stuff 20, 30
ISTHING = {1: True, 5: True, 7: True, 20: False, 30: False}


def _hand_made() -> tuple[np.ndarray, list[dict], np.ndarray, list[dict]]:
    """10 x 12 image. Ground truth: stuff 20 on rows 0-4 (cols 0-9, 50 px); a person (1) on rows 5-9 cols
    0-4 (25 px); a crowd of persons on rows 5-9 cols 5-7 (15 px); void on rows 5-9 cols 8-9; a thing of
    category 5 on cols 10-11 (20 px). Prediction: stuff 20 on rows 0-5 (60 px, 2 of them on void); a person
    on rows 6-9 cols 0-4 (20 px); a person on rows 6-9 cols 5-9 (12 px crowd + 8 px void: ignored); a
    category-7 thing on cols 10-11 (wrong category: one FN for 5, one FP for 7)."""
    gt = np.zeros((10, 12), np.int64)
    gt[:5, :10], gt[5:, :5], gt[5:, 5:8], gt[:, 10:] = 1, 2, 3, 4
    gt_segments = [
        {"id": 1, "category_id": 20, "iscrowd": 0},
        {"id": 2, "category_id": 1, "iscrowd": 0},
        {"id": 3, "category_id": 1, "iscrowd": 1},
        {"id": 4, "category_id": 5, "iscrowd": 0},
    ]
    pred = np.zeros((10, 12), np.int64)
    pred[:6, :10], pred[6:, :5], pred[6:, 5:10], pred[:, 10:] = 10, 11, 12, 13
    pred_segments = [
        {"id": 10, "category_id": 20},
        {"id": 11, "category_id": 1},
        {"id": 12, "category_id": 1},
        {"id": 13, "category_id": 7},
    ]
    return gt, gt_segments, pred, pred_segments


def test_hand_made_image_gives_the_pq_worked_out_by_hand():
    gt, gt_segments, pred, pred_segments = _hand_made()
    stats = pq_image_stats(gt, gt_segments, pred, pred_segments, ISTHING)
    stuff_iou = 50 / (60 + 50 - 50 - 2)  # the 2 predicted pixels on void are not in the union
    np.testing.assert_allclose(stats[20], [1, 0, 0, stuff_iou])
    np.testing.assert_allclose(stats[1], [1, 0, 0, 20 / 25])  # the crowd-covering person is not an FP
    np.testing.assert_allclose(stats[5], [0, 0, 1, 0])
    np.testing.assert_allclose(stats[7], [0, 1, 0, 0])
    assert 30 not in stats
    summary = pq_summary(stats, ISTHING)
    assert summary["N"] == 4 and summary["N_th"] == 3 and summary["N_st"] == 1  # category 30 never occurs
    assert summary["PQ"] == pytest.approx(100 * (0.8 + stuff_iou) / 4)
    assert summary["SQ"] == pytest.approx(100 * (0.8 + stuff_iou) / 4)
    assert summary["RQ"] == pytest.approx(50)
    assert summary["PQ_th"] == pytest.approx(100 * 0.8 / 3)
    assert summary["RQ_th"] == pytest.approx(100 / 3)
    assert summary["PQ_st"] == summary["SQ_st"] == pytest.approx(100 * stuff_iou)
    assert summary["RQ_st"] == pytest.approx(100)


def test_an_unmatched_prediction_mostly_on_a_crowd_of_another_category_is_a_false_positive():
    gt, gt_segments, pred, pred_segments = _hand_made()
    pred_segments[2] = {"id": 12, "category_id": 5}  # 12 px on a person crowd, 8 on void: 8/20 ignored
    stats = pq_image_stats(gt, gt_segments, pred, pred_segments, ISTHING)
    np.testing.assert_allclose(stats[5], [0, 1, 1, 0])


def test_iou_of_exactly_one_half_does_not_match():
    gt = np.array([[1, 1, 1, 1]])
    pred = np.array([[2, 2, 3, 3]])
    stats = pq_image_stats(
        gt,
        [{"id": 1, "category_id": 1}],
        pred,
        [{"id": 2, "category_id": 1}, {"id": 3, "category_id": 1}],
        {1},
    )
    np.testing.assert_allclose(stats[1], [0, 2, 1, 0])


def test_unlisted_ids_and_unknown_categories_are_errors():
    gt, gt_segments, pred, pred_segments = _hand_made()
    with pytest.raises(ValueError, match="segment id 13, which is not listed"):
        pq_image_stats(gt, gt_segments, pred, pred_segments[:3], ISTHING)
    with pytest.raises(ValueError, match="category 7"):
        pq_image_stats(gt, gt_segments, pred, pred_segments, {1, 5, 20})


def test_rgb_id_round_trip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 256**3 - 1, 123456]])
    np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)
    assert id2rgb(np.array([[256 + 2 * 65536]]))[0, 0].tolist() == [0, 1, 2]


def test_ground_truth_fed_back_scores_100_on_the_real_sample(shared_data):
    folder = shared_data / "coco_panoptic" / "annotations"
    gt_json = folder / "panoptic_val2017.json"
    summary = pq_compute(gt_json, gt_json)
    assert summary["PQ"] == summary["PQ_th"] == summary["PQ_st"] == pytest.approx(100)
    assert summary["SQ"] == summary["RQ"] == pytest.approx(100)
    content = json.loads(gt_json.read_text())
    categories = {c["id"]: c["isthing"] for c in content["categories"]}
    assert len(categories) == 133 and sum(categories.values()) == 80
    used = {s["category_id"] for a in content["annotations"] for s in a["segments_info"] if not s["iscrowd"]}
    assert summary["N"] == len(used) and summary["N_th"] + summary["N_st"] == len(used)

    # drop one person of the first image (it becomes void): one FN among that category's segments
    annotation = content["annotations"][0]
    seg = read_segmentation(folder / "panoptic_val2017" / annotation["file_name"])
    person = next(s for s in annotation["segments_info"] if s["category_id"] == 1 and not s["iscrowd"])
    persons = sum(
        1
        for a in content["annotations"]
        for s in a["segments_info"]
        if s["category_id"] == 1 and not s["iscrowd"]
    )
    seg[seg == person["id"]] = 0
    evaluator = PanopticEvaluator(gt_json)
    evaluator.update(
        annotation["image_id"], seg, [s for s in annotation["segments_info"] if s["id"] != person["id"]]
    )
    for other in content["annotations"][1:]:
        evaluator.update(
            other["image_id"],
            read_segmentation(folder / "panoptic_val2017" / other["file_name"]),
            other["segments_info"],
        )
    dropped = evaluator.compute()
    pq_person = (persons - 1) / (persons - 1 + 0.5)
    assert dropped["PQ_th"] == pytest.approx(100 * (summary["N_th"] - 1 + pq_person) / summary["N_th"])
    assert dropped["PQ_st"] == pytest.approx(100)
