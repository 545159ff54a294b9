"""`mode=predict`: images (a file, a folder, a glob) through a tiny trained checkpoint or an official-format
file, the records of predictions.json against the images, the CSV / COCO results files, the pictures, the
class names stored at training time, unreadable files, and the tasks it does not cover."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from tests.conftest import SMOKE, run_cli
from vtrain.cli import run
from vtrain.data.coco_names import COCO_CATEGORY_NAMES
from vtrain.data.imagenet import IMAGENET_WNIDS
from vtrain.data.tiny.classification import DIGIT_NAMES
from vtrain.modes.predict import class_names, find_images, output_stems

VIT = ["experiment=vit_cifar10_tiny", *SMOKE]
DETR = ["experiment=detr_coco_tiny", *SMOKE]


def _train(name: str, overrides: list[str], tmp_path_factory, data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp(name)
    args = [*overrides, "test=false", "logger=none", f"paths.data_dir={data_dir}", f"hydra.run.dir={out}"]
    run_cli(args, cwd=out)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory, data_dir) -> Path:
    return _train("vit", VIT, tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def detr_ckpt(tmp_path_factory, data_dir) -> Path:
    return _train("detr", DETR, tmp_path_factory, data_dir)


def _images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """Random RGB images of the given (width, height), named by size so that their order is known."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (width, height) in enumerate(sizes):
        pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8).numpy()
        path = folder / f"image{i}_{width}x{height}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _predict(make_cfg, out: Path, overrides: list[str]) -> dict:
    run(make_cfg([*overrides, "mode=predict"], output_dir=out))
    return json.loads((out / "predictions" / "predictions.json").read_text())


def _pictures_decode(out: Path, records: list[dict]) -> None:
    for record in records:
        with Image.open(out / "predictions" / record["picture"]) as picture:
            picture.load()
            assert picture.width >= record["size"][0] and picture.height >= record["size"][1]


def test_classification_of_a_folder_from_a_trained_checkpoint(make_cfg, tmp_path, vit_ckpt):
    stored = torch.load(vit_ckpt, weights_only=True)["vtrain_class_names"]
    assert stored == list(DIGIT_NAMES)  # the tiny set's batches.meta names, stored at training time
    paths = _images(tmp_path / "in", [(40, 30), (32, 32), (100, 57)])
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    result = _predict(make_cfg, out, [*VIT, f"ckpt_path={vit_ckpt}", f"predict.input={tmp_path / 'in'}"])

    assert result["task"] == "classification" and result["images"] == 3 and not result["skipped_unreadable"]
    records = result["predictions"]
    assert [r["path"] for r in records] == [str(p.absolute()) for p in paths]
    assert [r["size"] for r in records] == [[40, 30], [32, 32], [100, 57]]
    assert [r["picture"] for r in records] == [f"{p.stem}.png" for p in paths]
    for record in records:
        top = record["top_k"]
        probabilities = [t["probability"] for t in top]
        assert len(top) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-5
        assert all(t["name"] == DIGIT_NAMES[t["index"]] for t in top)
    _pictures_decode(out, records)
    with open(out / "predictions" / "predictions.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 15 and rows[0]["name"] == records[0]["top_k"][0]["name"] and rows[0]["rank"] == "1"


def test_detection_of_a_glob_from_a_trained_checkpoint(make_cfg, tmp_path, data_dir, detr_ckpt):
    stored = torch.load(detr_ckpt, weights_only=True)["vtrain_class_names"]
    assert stored[1] == "cat" and stored[10] == "coffee cup"  # the tiny annotation file's categories
    pattern = str(data_dir / "coco_tiny" / "train2017" / "*.jpg")
    out = tmp_path / "pred"
    overrides = [*DETR, f"ckpt_path={detr_ckpt}", f"predict.input={pattern}", "predict.score_threshold=0.0"]
    result = _predict(make_cfg, out, [*overrides, "predict.batch_size=16"])

    records = result["predictions"]
    assert result["task"] == "detection" and len(records) == 48
    for record in records:
        width, height = record["size"]
        with Image.open(record["path"]) as image:
            assert image.size == (width, height)
        assert record["detections"]  # no threshold: every query's box
        for d in record["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert d["name"] == stored[d["category_id"]]
    _pictures_decode(out, records[:4])
    coco = json.loads((out / "predictions" / "predictions_coco.json").read_text())
    assert len(coco) == sum(len(r["detections"]) for r in records)
    first, box = coco[0], records[0]["detections"][0]
    assert first["image_id"] == 0 and first["category_id"] == box["category_id"]
    assert first["bbox"][:2] == box["box"][:2]
    assert first["bbox"][2] == pytest.approx(box["box"][2] - box["box"][0], abs=0.011)

    result = _predict(make_cfg, tmp_path / "kept", [*overrides[:-1], "predict.score_threshold=0.99"])
    assert all(d["score"] >= 0.99 for r in result["predictions"] for d in r["detections"])


def test_classification_of_one_file_with_official_timm_weights(make_cfg, tmp_path):
    timm = pytest.importorskip("timm")
    # random weights in timm's layout for the tiny experiment's ViT (patch 4, width 96, depth 4)
    reference = timm.models.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0, num_classes=10
    )
    weights = tmp_path / "timm_vit.pth"
    torch.save(reference.state_dict(), weights)
    [image] = _images(tmp_path / "in", [(64, 48)])
    out = tmp_path / "pred"
    overrides = [*VIT, f"model.pretrained={weights}", f"predict.input={image}", "predict.top_k=3"]
    result = _predict(make_cfg, out, overrides)

    [record] = result["predictions"]
    assert result["weights"] == f"model.pretrained={weights}" and record["size"] == [64, 48]
    assert [t["name"] for t in record["top_k"]] == [str(t["index"]) for t in record["top_k"]]  # no names
    # the same image through timm's model and the experiment's eval preprocessing (resize, normalise)
    pixels = torch.from_numpy(np.array(Image.open(image).resize((32, 32), Image.BICUBIC)))
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    x = ((pixels.float() / 255 - mean) / std).permute(2, 0, 1)[None]
    expected = reference.eval()(x).softmax(-1)[0].topk(3)
    assert [t["index"] for t in record["top_k"]] == expected.indices.tolist()
    got = [t["probability"] for t in record["top_k"]]
    assert got == pytest.approx(expected.values.tolist(), abs=1e-4)
    _pictures_decode(out, [record])

    # the trainer's precision: bfloat16 autocast gives the same classes within bfloat16's resolution
    result = _predict(make_cfg, tmp_path / "bf16", [*overrides, "trainer.precision=bf16-mixed"])
    [bf16] = result["predictions"]
    assert bf16["top_k"][0]["probability"] == pytest.approx(got[0], abs=2e-2)


def test_classification_with_a_lambda_resnet_state_dict(make_cfg, tmp_path):
    lambda_tiny = ["experiment=lambda_tiny", *SMOKE]
    weights = tmp_path / "lambda_tiny.pth"
    torch.save(instantiate(make_cfg(lambda_tiny).model).state_dict(), weights)
    paths = _images(tmp_path / "in", [(48, 40), (30, 36)])
    overrides = [*lambda_tiny, f"model.pretrained={weights}", f"predict.input={tmp_path / 'in' / '*.png'}"]
    result = _predict(make_cfg, tmp_path / "pred", overrides)
    assert [r["path"] for r in result["predictions"]] == [str(p.absolute()) for p in paths]
    assert all(len(r["top_k"]) == 5 for r in result["predictions"])


def test_detection_with_official_detr_weights_names_coco_categories(make_cfg, tmp_path, data_dir):
    source = instantiate(make_cfg([*DETR, "data.num_classes=91"]).model)
    weights = tmp_path / "detr-official.pth"  # main.py's layout: {"model": state_dict, ...}
    torch.save({"model": source.state_dict(), "epoch": 1}, weights)
    [image] = _images(tmp_path / "in", [(150, 90)])
    out = tmp_path / "pred"
    overrides = [*DETR, "data.num_classes=91", f"model.pretrained={weights}", f"predict.input={image}"]
    result = _predict(make_cfg, out, [*overrides, "predict.score_threshold=0.0"])

    [record] = result["predictions"]
    assert result["class_names"] == "COCO's 91 category ids"
    assert record["detections"]
    for d in record["detections"]:
        assert d["name"] == COCO_CATEGORY_NAMES[d["category_id"]]
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= 150 and 0 <= y1 <= y2 <= 90
    _pictures_decode(out, [record])


def test_an_unreadable_file_is_named_or_skipped_and_counted(make_cfg, tmp_path, vit_ckpt):
    _images(tmp_path / "in", [(32, 32), (20, 20)])
    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    overrides = [*VIT, f"ckpt_path={vit_ckpt}", f"predict.input={tmp_path / 'in'}", "predict.batch_size=1"]
    with pytest.raises(OSError, match="broken.jpg"):
        run(make_cfg([*overrides, "mode=predict"], output_dir=tmp_path / "fails"))

    out = tmp_path / "pred"
    result = _predict(make_cfg, out, [*overrides, "data.skip_corrupt=true"])
    assert result["images"] == 3 and result["skipped_unreadable"] == [str(broken.absolute())]
    assert len(result["predictions"]) == 2 and "broken" not in json.dumps(result["predictions"])
    _pictures_decode(out, result["predictions"])


def test_output_files_are_named_after_their_input():
    assert output_stems([Path("x/a.jpg"), Path("y/a.png"), Path("b.jpeg")]) == ["a", "a_1", "b"]


def test_inputs_and_tasks_it_refuses(make_cfg, tmp_path):
    paths = _images(tmp_path / "in", [(8, 8), (9, 9)])
    (tmp_path / "in" / "a.txt").write_text("")
    assert find_images(str(tmp_path / "in")) == paths
    assert find_images(str(tmp_path / "in" / "*.png")) == paths
    assert find_images(str(paths[1])) == [paths[1]]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        find_images(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no image files"):
        find_images(str(tmp_path / "in" / "*.gif"))
    with pytest.raises(ValueError, match="predict.input=PATH"):
        run(make_cfg([*VIT, "mode=predict", "model.pretrained=x.pth"]))
    with pytest.raises(ValueError, match="needs the weights"):
        run(make_cfg([*VIT, "mode=predict", f"predict.input={paths[0]}"]))
    with pytest.raises(ValueError, match="needs references: predict.ref=FILE"):
        run(make_cfg(["experiment=ttsr_tiny", *SMOKE, "mode=predict", f"predict.input={paths[0]}"]))


def test_class_names_without_a_checkpoint_of_names(make_cfg):
    imagenet = make_cfg(["experiment=vit_s16_imagenet"])
    assert class_names("classification", 1000, None, imagenet)[0] == list(IMAGENET_WNIDS)
    assert class_names("detection", 91, None, imagenet)[0] == list(COCO_CATEGORY_NAMES)
    assert class_names("classification", 3, None, imagenet)[0] == ["0", "1", "2"]
    # names stored for fewer labels than the head has (DETR's spare classes) end in indices
    assert class_names("detection", 4, ["N/A", "cat"], imagenet)[0] == ["N/A", "cat", "2", "3"]


def test_coco_names_are_those_of_the_coco_annotation_files(shared_data):
    path = shared_data / "coco_min2" / "annotations" / "instances_val2017.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    categories = json.loads(path.read_text())["categories"]
    assert len(categories) == 80
    assert all(COCO_CATEGORY_NAMES[c["id"]] == c["name"] for c in categories)
    used = {c["id"] for c in categories}
    assert all(name == "N/A" for i, name in enumerate(COCO_CATEGORY_NAMES) if i not in used)
