"""`mode=predict` of the tasks beyond classification and detection, each from a tiny trained checkpoint on
real-format images (the tiny sets' own, and ../shared/data's when present): instance masks as COCO RLE of
the image's size, the panoptic PNG's segment ids against segments_info, Cityscapes label PNGs of the
image's size, TTSR outputs 4x their input (and PSNR with HR inputs), iGPT bits / dim and completions
that keep the top half."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from tests.conftest import SMOKE
from tests.test_predict import _train
from vtrain.cli import run
from vtrain.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_NAMES
from vtrain.data.palette import Palette
from vtrain.data.pixels import build_pixel_transform
from vtrain.data.tiny import build_tiny

INSTANCE = ["experiment=maskrcnn_tiny", *SMOKE]
PANOPTIC = ["experiment=detr_panoptic_tiny", *SMOKE]
SEGMENTATION = ["experiment=fpt_tiny", *SMOKE]
TTSR = ["experiment=ttsr_tiny", *SMOKE]
IGPT = ["experiment=igpt_tiny", *SMOKE]


def _predict(make_cfg, out: Path, overrides: list[str]) -> dict:
    run(make_cfg([*overrides, "mode=predict", "predict.progress=false"], output_dir=out))
    return json.loads((out / "predictions" / "predictions.json").read_text())


def _decoded(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _first_images(folder: Path, count: int, pattern: str = "*") -> Path:
    """A folder of links to the first `count` images of `folder` (sorted), for a short prediction run;
    `folder` is in a tiny set under the data root, built here if no test has built it yet."""
    tiny = next(parent for parent in folder.parents if parent.name.endswith("_tiny"))
    build_tiny(tiny.name, tiny)
    chosen = sorted(p for p in folder.rglob(pattern) if p.suffix.lower() in (".jpg", ".png"))[:count]
    assert chosen, f"no images in {folder}"
    out = folder.parent / f"predict_inputs_{folder.name}_{count}"
    out.mkdir(exist_ok=True)
    for path in chosen:
        link = out / path.name
        if not link.exists():
            link.symlink_to(path)
    return out


@pytest.fixture(scope="module")
def instance_ckpt(tmp_path_factory, data_dir) -> Path:
    return _train("instance", INSTANCE, tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def panoptic_ckpt(tmp_path_factory, data_dir) -> Path:
    return _train("panoptic", PANOPTIC, tmp_path_factory, data_dir)


def test_instance_masks_are_rle_of_the_image_size(make_cfg, tmp_path, data_dir, instance_ckpt):
    inputs = _first_images(data_dir / "coco_tiny" / "train2017", 2)
    out = tmp_path / "pred"
    # every box the barely trained detector finds, so that there are masks to check
    overrides = [
        *INSTANCE,
        f"ckpt_path={instance_ckpt}",
        f"predict.input={inputs}",
        "predict.score_threshold=0",
    ]
    result = _predict(make_cfg, out, [*overrides, "+model.box_score_thresh=0.0"])
    assert result["task"] == "instance" and len(result["predictions"]) == 2
    detections = [d for record in result["predictions"] for d in record["detections"]]
    assert detections
    for record in result["predictions"]:
        width, height = record["size"]
        for d in record["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert d["segmentation"]["size"] == [height, width]
            assert int(mask_utils.decode(d["segmentation"]).sum()) == d["area"]
            assert d["name"] != str(d["category_id"])  # the tiny set's category names, from the checkpoint
        assert _decoded(out / "predictions" / record["picture"]).shape[:2] >= (height, width)
    coco = json.loads((out / "predictions" / "predictions_coco.json").read_text())
    assert len(coco) == len(detections) and all("segmentation" in r for r in coco)


def test_panoptic_png_holds_the_segments_of_segments_info(make_cfg, tmp_path, data_dir, panoptic_ckpt):
    inputs = _first_images(data_dir / "coco_panoptic_tiny" / "val2017", 2)
    out = tmp_path / "pred"
    overrides = [*PANOPTIC, f"ckpt_path={panoptic_ckpt}", f"predict.input={inputs}"]
    # keep every query's segment: a smoke-trained model is not confident
    result = _predict(make_cfg, out, [*overrides, "task.postprocess.threshold=0.0"])
    assert result["task"] == "panoptic"
    segments_seen = 0
    for record in result["predictions"]:
        width, height = record["size"]
        rgb = _decoded(out / "predictions" / record["panoptic_png"]).astype(np.int64)
        assert rgb.shape == (height, width, 3)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
        segments = record["segments_info"]
        segments_seen += len(segments)
        assert {int(i) for i in np.unique(ids)} - {0} == {s["id"] for s in segments}
        for s in segments:
            assert int((ids == s["id"]).sum()) == s["area"] and s["name"] != str(s["category_id"])
        assert _decoded(out / "predictions" / record["picture"]).shape[:2] >= (height, width)
    assert segments_seen


def test_semantic_segmentation_writes_train_and_label_id_pngs(make_cfg, tmp_path, tmp_path_factory, data_dir):
    ckpt = _train("segmentation", SEGMENTATION, tmp_path_factory, data_dir)
    inputs = _first_images(data_dir / "cityscapes_tiny" / "leftImg8bit" / "val", 2, "*_leftImg8bit.png")
    out = tmp_path / "pred"
    result = _predict(make_cfg, out, [*SEGMENTATION, f"ckpt_path={ckpt}", f"predict.input={inputs}"])
    assert result["task"] == "segmentation" and result["class_names"].startswith("the checkpoint")
    label_ids = np.array([label_id for _, label_id, _ in CITYSCAPES_CLASSES])
    for record in result["predictions"]:
        width, height = record["size"]
        train_ids = _decoded(out / "predictions" / record["train_ids_png"])
        assert train_ids.shape == (height, width) and train_ids.max() < 19
        assert (_decoded(out / "predictions" / record["label_ids_png"]) == label_ids[train_ids]).all()
        assert set(record["classes"]) <= set(CITYSCAPES_NAMES)
        assert sum(record["classes"].values()) == pytest.approx(1.0, rel=1e-4)
        assert _decoded(out / "predictions" / record["picture"]).shape[:2] == (height, width)


@pytest.fixture(scope="module")
def ttsr_ckpt(tmp_path_factory, data_dir) -> Path:
    return _train("ttsr", TTSR, tmp_path_factory, data_dir)


def test_super_resolution_is_4x_its_input_and_scores_hr_inputs(make_cfg, tmp_path, data_dir, ttsr_ckpt):
    cufed5 = data_dir / "cufed_tiny" / "test" / "CUFED5"
    hr = sorted(cufed5.glob("*_0.png"))[:2]
    assert hr, f"no CUFED5-layout HR images in {cufed5}"
    folder = tmp_path / "hr"
    folder.mkdir()
    for path in hr:
        (folder / path.name).symlink_to(path)
    refs = tmp_path / "refs"
    refs.mkdir()
    for path in hr:  # each input's reference: its level-1 reference, under the input's name
        (refs / path.name).symlink_to(path.with_name(path.name.replace("_0.png", "_1.png")))
    out = tmp_path / "pred"
    args = [
        *TTSR,
        f"ckpt_path={ttsr_ckpt}",
        f"predict.input={folder}",
        f"predict.ref={refs}",
        "predict.hr=true",
    ]
    result = _predict(make_cfg, out, args)
    assert result["task"] == "super-resolution" and len(result["predictions"]) == 2
    for record, path in zip(result["predictions"], hr, strict=True):
        assert record["reference"] == str(refs / path.name)
        assert record["output_size"] == [4 * side for side in record["lr_size"]]
        output = _decoded(out / "predictions" / record["output_png"])
        assert output.shape[1::-1] == tuple(record["output_size"])
        assert 10 < record["metrics"]["psnr_y"] < 100 and 0 < record["metrics"]["ssim_y"] <= 1
        assert "psnr_y" in record["bicubic_metrics"]


def test_super_resolution_of_the_real_demo_pair(make_cfg, tmp_path, ttsr_ckpt, shared_data):
    demo = shared_data / "cufed_ttsr_demo" / "test" / "demo"
    if not demo.is_dir():
        pytest.skip(f"{demo} not present")
    out = tmp_path / "pred"
    args = [
        *TTSR,
        f"ckpt_path={ttsr_ckpt}",
        f"predict.input={demo / 'lr'}",
        f"predict.ref={demo / 'ref' / '0.png'}",
    ]
    (record,) = _predict(make_cfg, out, args)["predictions"]
    assert record["lr_size"] == [88, 125] and record["output_size"] == [352, 500]  # width, height
    assert "metrics" not in record
    side_by_side = _decoded(out / "predictions" / record["picture"])
    assert side_by_side.shape[0] == 500 and side_by_side.shape[1] > 2 * 352  # bicubic, output, reference


def test_references_are_required_and_paired_by_name(make_cfg, tmp_path, ttsr_ckpt, data_dir):
    inputs = sorted((data_dir / "cufed_tiny" / "test" / "CUFED5").glob("*_0.png"))[:1]
    refs = tmp_path / "refs"
    refs.mkdir()
    args = [*TTSR, f"ckpt_path={ttsr_ckpt}", f"predict.input={inputs[0]}", "predict.hr=true"]
    with pytest.raises(ValueError, match="needs references"):
        run(make_cfg([*args, "mode=predict"]))
    with pytest.raises(FileNotFoundError, match=f"no reference named {inputs[0].stem}"):
        run(make_cfg([*args, "mode=predict", f"predict.ref={refs}"]))


def test_igpt_bits_per_dim_completions_and_samples(make_cfg, tmp_path, tmp_path_factory, data_dir):
    ckpt = _train("igpt", IGPT, tmp_path_factory, data_dir)
    stored = torch.load(ckpt, weights_only=True)["vtrain_palette"]
    palette = Palette(torch.tensor(stored))
    inputs = tmp_path / "in"
    inputs.mkdir()
    pixels = torch.Generator().manual_seed(0)
    for i, size in enumerate([(16, 16), (40, 24)]):
        image = torch.randint(0, 256, (size[1], size[0], 3), generator=pixels, dtype=torch.uint8).numpy()
        Image.fromarray(image).save(inputs / f"image{i}.png")
    out = tmp_path / "pred"
    overrides = [
        f"ckpt_path={ckpt}",
        f"predict.input={inputs}",
        "predict.num_completions=3",
        "predict.num_samples=2",
    ]
    result = _predict(make_cfg, out, [*IGPT, *overrides])
    assert result["task"] == "generative" and result["samples"]["count"] == 2
    assert _decoded(out / "predictions" / "samples.png").ndim == 3
    transform = build_pixel_transform(16, "imagenet", train=False)
    for i, record in enumerate(result["predictions"]):
        assert 0 < record["bpd"] < 8 and record["nats_per_token"] == pytest.approx(
            record["bpd"] * 3 * np.log(2), rel=1e-4
        )
        # the picture: the quantised input, then its completions, which keep its top half
        grid = _decoded(out / "predictions" / record["picture"])
        tokens = palette.quantize_images(
            transform(Image.open(inputs / f"image{i}.png")).as_subclass(torch.Tensor)
        )
        quantised = palette.to_images(tokens[None], 16)[0].permute(1, 2, 0).numpy()
        scale = 8  # 16-pixel images enlarged to 128
        assert grid.shape[0] == 16 * scale + 4 and grid.shape[1] == 4 * (16 * scale + 2) + 2
        first = grid[2 : 2 + 16 * scale : scale, 2 : 2 + 16 * scale : scale]
        assert (first == quantised).all()
        for k in range(1, 4):
            left = 2 + k * (16 * scale + 2)
            completion = grid[2 : 2 + 16 * scale : scale, left : left + 16 * scale : scale]
            assert (completion[:8] == quantised[:8]).all()


# From official-format files (model.pretrained=FILE, no vtrain checkpoint): the layouts the model loaders
# take, with random weights.


def test_super_resolution_with_official_ttsr_weights(make_cfg, tmp_path, data_dir):
    from tests.models.test_ttsr import official_keys

    generator = torch.Generator().manual_seed(0)
    official = {k: 0.01 * torch.randn(s, generator=generator) for k, s in official_keys((1, 1, 1, 1)).items()}
    weights = tmp_path / "TTSR.pt"
    torch.save(official, weights)
    cufed5 = data_dir / "cufed_tiny" / "test" / "CUFED5"
    build_tiny("cufed_tiny", data_dir / "cufed_tiny")
    hr, ref = sorted(cufed5.glob("*_0.png"))[0], sorted(cufed5.glob("*_1.png"))[0]
    overrides = ["experiment=ttsr_rec_cufed", "data=cufed_tiny", "model.num_res_blocks=[1,1,1,1]"]
    args = [f"model.pretrained={weights}", f"predict.input={hr}", f"predict.ref={ref}", "predict.hr=true"]
    (record,) = _predict(make_cfg, tmp_path / "pred", [*overrides, *args])["predictions"]
    assert record["output_size"] == [4 * side for side in record["lr_size"]]
    assert np.isfinite(record["metrics"]["psnr_y"])


def test_igpt_with_hugging_face_weights_reads_their_palette(make_cfg, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ImageGPTConfig(vocab_size=513, n_positions=1024, n_embd=64, n_layer=1, n_head=4)
    weights = tmp_path / "pytorch_model.bin"
    torch.save(transformers.ImageGPTForCausalImageModeling(config).state_dict(), weights)
    centers = np.random.default_rng(0).uniform(-1, 1, (512, 3)).astype(np.float32)
    np.save(tmp_path / "kmeans_centers.npy", centers)  # the palette shipped beside the weights
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
        inputs / "a.png"
    )
    data = ["data=cifar10_pixels_tiny", "data.image_size=32", "data.palette_size=512"]
    model = ["+model.depth=1", "+model.embed_dim=64", "+model.num_heads=4", "task.probe=null"]
    args = [f"model.pretrained={weights}", f"predict.input={inputs}", "predict.num_completions=1"]
    result = _predict(make_cfg, tmp_path / "pred", ["experiment=igpt_s_cifar10", *data, *model, *args])
    (record,) = result["predictions"]
    assert record["bpd"] > 0
    # the picture's first image is the input quantised with the shipped palette, in its own order
    palette = Palette(torch.from_numpy(centers))
    pixels = build_pixel_transform(32, "imagenet", train=False)(Image.open(inputs / "a.png"))
    expected = palette.to_images(palette.quantize_images(pixels.as_subclass(torch.Tensor))[None], 32)[0]
    grid = _decoded(tmp_path / "pred" / "predictions" / record["picture"])
    assert (grid[2 : 2 + 128 : 4, 2 : 2 + 128 : 4] == expected.permute(1, 2, 0).numpy()).all()


def test_instance_segmentation_with_a_torchvision_state_dict(make_cfg, tmp_path, data_dir):
    from hydra.utils import instantiate

    cfg = make_cfg([*INSTANCE])
    weights = tmp_path / "maskrcnn.pth"
    torch.save(instantiate(cfg.model).state_dict(), weights)  # torchvision's MaskRCNN keys
    inputs = _first_images(data_dir / "coco_tiny" / "train2017", 1)
    args = [f"model.pretrained={weights}", f"predict.input={inputs}", "+model.box_score_thresh=0.0"]
    result = _predict(make_cfg, tmp_path / "pred", [*INSTANCE, *args, "predict.score_threshold=0"])
    (record,) = result["predictions"]
    assert result["weights"] == f"model.pretrained={weights}"
    width, height = record["size"]
    assert all(d["segmentation"]["size"] == [height, width] for d in record["detections"])
