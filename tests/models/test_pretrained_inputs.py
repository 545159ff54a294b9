"""Required pretrained inputs and official weights through the experiment configs.

Every file a paper's recipe starts from (an ImageNet backbone, TTSR's VGG19, a fine-tuning experiment's
checkpoint) is required: without it the model config does not build, with an error naming the key, the
file expected and the opt-out ``scratch``. ``model.pretrained=FILE`` loads each family's official format
(random weights saved with the official key names here) into the experiment's model, and replaces the
backbone files it would otherwise need.
"""

from __future__ import annotations

import logging
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from tests.models.test_ttsr import official_keys as ttsr_official_keys
from tests.models.test_vit import _jax_vit_arrays
from vtrain.config import config_dir
from vtrain.models.pretrained import (
    SCRATCH,
    MissingWeightsError,
    replaced_by_checkpoint,
    require_weights,
)

# experiment -> its required inputs in the order they are asked for (`model.pretrained=scratch` starts
# from random, so the ImageNet backbone a full checkpoint would have replaced is asked for next), each with
# a piece of the expected file's description
REQUIRED = {
    "detr_coco": [
        ("model.backbone_weights", "torchvision ImageNet resnet50 state dict such as resnet50-0676ba61.pth")
    ],
    "detr_coco_500ep": [("model.backbone_weights", "resnet50-0676ba61.pth")],
    "detr_panoptic_stage1_coco": [("model.backbone_weights", "resnet50-0676ba61.pth")],
    "detr_finetune_custom": [
        ("model.pretrained", "official detr-r50-e632da11.pth"),
        ("model.backbone_weights", "resnet50-0676ba61.pth"),
    ],
    "detr_panoptic_coco": [
        ("model.pretrained", "detr-r50-panoptic-00ce5173.pth"),
        ("model.backbone_weights", "resnet50-0676ba61.pth"),
    ],
    "maskrcnn_coco": [("model.backbone_weights", "resnet50-0676ba61.pth")],
    "fpt_maskrcnn_coco": [("model.backbone_weights", "resnet50-0676ba61.pth")],
    "fpn_cityscapes": [("model.backbone_weights", "resnet50-0676ba61.pth")],
    "fpt_cityscapes": [("model.backbone_weights", "resnet50-0676ba61.pth")],
    "ttsr_cufed": [("model.vgg_weights", "torchvision ImageNet vgg19 state dict such as vgg19-dcbb9e9d.pth")],
    "ttsr_rec_cufed": [("model.vgg_weights", "vgg19-dcbb9e9d.pth")],
    "vit_b16_cifar10": [
        ("model.pretrained", "ImageNet-21k ViT-B/16 to fine-tune: official imagenet21k/ViT-B_16.npz")
    ],
    "vit_b16_imagenet_ft384": [("model.pretrained", "the 224 px ImageNet-1k ViT-B/16 to fine-tune")],
    "igpt_cifar10_probe": [("model.pretrained", "Hugging Face state dict of openai/imagegpt-small")],
    "igpt_cifar10_finetune": [("model.pretrained", "Hugging Face state dict of openai/imagegpt-small")],
    "mae_vit_b16_finetune": [("model.pretrained", "MAE ViT-B/16 encoder to fine-tune: official mae_pre")],
    "mae_vit_b16_linprobe": [("model.pretrained", "MAE ViT-B/16 encoder to probe: official mae_pretrain")],
    "mae_tiny_finetune": [("model.pretrained", "mae_tiny encoder to fine-tune: a mae_tiny_cifar10")],
}
# smaller networks of the same layout, to keep the tests fast (the backbones keep their size)
SHRINK = {
    "detr": ["model.enc_layers=1", "model.dec_layers=1"],
    "vit": ["+model.depth=1"],
    "igpt": ["+model.depth=1"],
    "mae": ["+model.depth=1", "+model.decoder_depth=1"],
    "ttsr": ["model.num_res_blocks=[1,1,1,1]"],
}
# from-scratch recipes and the CPU-sized experiments need no file
NOTHING_REQUIRED = [
    "vit_b16_imagenet",
    "vit_s16_imagenet",
    "lambda_resnet50_imagenet",
    "igpt_s_cifar10",
    "detr_coco_tiny",
    "detr_panoptic_tiny",
    "maskrcnn_tiny",
    "fpt_maskrcnn_tiny",
    "fpt_tiny",
    "ttsr_tiny",
    "lambda_tiny",
    "igpt_tiny",
    "mae_vit_b16_imagenet",
    "mae_tiny",
    # the teacher file (task.distillation.teacher.path) is the task's input, asked for when training starts
    "deit_s16_distilled_imagenet",
    "deit_distilled_tiny",
]


def _shrink(experiment: str) -> list[str]:
    overrides = SHRINK.get(experiment.split("_")[0], [])
    if experiment.endswith(("_finetune", "_linprobe")) and experiment.startswith("mae_"):
        overrides = SHRINK["vit"]  # the MAE classifiers are ViTs: no decoder
    if experiment == "detr_finetune_custom":  # its class count is read from the data set otherwise
        overrides = [*overrides, "model.num_classes=11"]
    return overrides


def build(cfg: DictConfig) -> torch.nn.Module:
    """``instantiate(cfg.model)`` with Hydra's wrapper taken off the builder's error."""
    try:
        return instantiate(cfg.model)
    except InstantiationException as e:
        raise e.__cause__ from None


def _files_in(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *keys: str) -> None:
    ours = model.state_dict()
    for key in keys:
        assert torch.equal(ours[key], state_dict[key]), key


# -------------------------------------------------------------------------------------- required inputs


@pytest.mark.parametrize(
    ("experiment", "index"),
    [(experiment, i) for experiment, inputs in REQUIRED.items() for i in range(len(inputs))],
)
def test_a_missing_required_input_names_key_file_and_scratch(make_cfg, experiment, index):
    given = [f"{key}={SCRATCH}" for key, _ in REQUIRED[experiment][:index]]
    key, expected = REQUIRED[experiment][index]
    cfg = make_cfg([f"experiment={experiment}", *given, *_shrink(experiment)])
    with pytest.raises(MissingWeightsError) as error:
        build(cfg)
    message = str(error.value)
    assert message.startswith(f"{key} is required: expected ")
    assert expected in message and f"{key}=PATH" in message and f"{key}=scratch" in message


@pytest.mark.parametrize("experiment", sorted(REQUIRED))
def test_scratch_builds_the_model_from_a_random_initialisation(make_cfg, experiment):
    given = [f"{key}={SCRATCH}" for key, _ in REQUIRED[experiment]]
    assert isinstance(
        build(make_cfg([f"experiment={experiment}", *given, *_shrink(experiment)])), torch.nn.Module
    )


@pytest.mark.parametrize("experiment", NOTHING_REQUIRED)
def test_from_scratch_and_tiny_experiments_need_no_file(make_cfg, experiment):
    cfg = make_cfg([f"experiment={experiment}", *_shrink(experiment)])
    assert isinstance(build(cfg), torch.nn.Module)


@pytest.mark.parametrize("model", sorted(p.stem for p in (config_dir() / "model").glob("*.yaml")))
def test_every_model_config_has_a_pretrained_key_for_create_model(make_cfg, model):
    cfg = make_cfg([f"model={model}"])
    assert cfg.model._target_ == "vtrain.create_model" and cfg.model.pretrained is None


def test_a_required_file_that_does_not_exist_is_named_with_its_key(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=maskrcnn_coco", f"model.backbone_weights={tmp_path / 'r50.pth'}"])
    with pytest.raises(
        FileNotFoundError, match=r"model\.backbone_weights=.*r50\.pth: no such file; expected"
    ):
        build(cfg)


def test_the_backbone_file_loads_into_the_experiments_model(make_cfg, tmp_path):
    resnet = torchvision.models.resnet50(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    model = build(
        make_cfg(
            [
                "experiment=detr_coco",
                f"model.backbone_weights={tmp_path / 'resnet50-0676ba61.pth'}",
                *SHRINK["detr"],
            ]
        )
    )
    assert torch.equal(model.backbone[0].body.layer3[2].conv2.weight, resnet.layer3[2].conv2.weight)


def test_require_weights_and_replaced_by_checkpoint(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"")
    assert require_weights(str(path), "model.x", "a file") == path
    assert require_weights(SCRATCH, "model.x", "a file") is None
    node = {
        "_target_": "vtrain.create_model",
        "name": "detr_r50",
        "pretrained": None,
        "backbone_weights": "a",
    }
    assert replaced_by_checkpoint(node) == {**node, "pretrained": SCRATCH, "backbone_weights": SCRATCH}


def test_ttsr_perceptual_loss_needs_vgg19_to_train_not_to_evaluate(make_cfg):
    cfg = make_cfg(["experiment=ttsr_cufed", "model.vgg_weights=scratch", *SHRINK["ttsr"]])
    task = instantiate(cfg.task, model=build(cfg), vgg_weights=None)
    task.setup("validate")
    with pytest.raises(MissingWeightsError, match=r"task\.vgg_weights is required: .*vgg19-dcbb9e9d\.pth"):
        task.setup("fit")
    instantiate(cfg.task, model=build(cfg)).setup("fit")  # scratch, from model.vgg_weights


# ------------------------------------------------------------------------- official weights, per family


def test_official_detr_checkpoint_evaluates_without_backbone_weights(make_cfg, tmp_path):
    torch.manual_seed(0)
    source = build(make_cfg(["experiment=detr_coco", "model.backbone_weights=scratch", *SHRINK["detr"]]))
    state_dict = source.state_dict()
    # facebookresearch/detr's names (models/detr.py, backbone.py Joiner, transformer.py)
    assert {
        "backbone.0.body.layer1.0.bn1.running_mean",
        "transformer.decoder.layers.0.multihead_attn.in_proj_weight",
        "query_embed.weight",
        "input_proj.weight",
        "class_embed.weight",
        "bbox_embed.layers.2.bias",
    } <= set(state_dict)
    path = tmp_path / "detr-r50-e632da11.pth"
    torch.save({"model": state_dict, "args": Namespace(lr=1e-4, backbone="resnet50")}, path)
    torch.manual_seed(1)
    model = build(
        make_cfg(["experiment=detr_coco", "mode=eval", f"model.pretrained={path}", *SHRINK["detr"]])
    )
    _files_in(
        model, state_dict, "backbone.0.body.conv1.weight", "transformer.encoder.layers.0.linear1.weight"
    )
    _files_in(model, state_dict, "class_embed.weight", "query_embed.weight")


def test_official_detr_checkpoint_is_what_detr_finetune_custom_starts_from(make_cfg, tmp_path, caplog):
    torch.manual_seed(0)
    source = build(make_cfg(["experiment=detr_coco", "model.backbone_weights=scratch", *SHRINK["detr"]]))
    path = tmp_path / "detr-r50-e632da11.pth"
    torch.save({"model": source.state_dict()}, path)
    overrides = [
        "experiment=detr_finetune_custom",
        f"model.pretrained={path}",
        *_shrink("detr_finetune_custom"),
    ]
    with caplog.at_level(logging.WARNING):
        model = build(make_cfg(overrides))
    assert "keeping the model's initial class head" in caplog.text  # 91 COCO classes -> 11
    _files_in(
        model, source.state_dict(), "bbox_embed.layers.0.weight", "backbone.0.body.layer4.2.conv3.weight"
    )


def test_official_panoptic_checkpoint_loads_into_detr_panoptic_coco(make_cfg, tmp_path):
    torch.manual_seed(0)
    overrides = ["experiment=detr_panoptic_coco", *SHRINK["detr"]]
    source = build(make_cfg([*overrides, "model.pretrained=scratch", "model.backbone_weights=scratch"]))
    state_dict = source.state_dict()
    assert {"detr.class_embed.weight", "bbox_attention.q_linear.weight", "mask_head.lay1.weight"} <= set(
        state_dict
    )
    path = tmp_path / "detr-r50-panoptic-00ce5173.pth"
    torch.save({"model": state_dict}, path)
    torch.manual_seed(1)
    model = build(make_cfg([*overrides, "mode=eval", f"model.pretrained={path}"]))
    _files_in(
        model,
        state_dict,
        "mask_head.out_lay.weight",
        "bbox_attention.k_linear.weight",
        "detr.query_embed.weight",
    )


def test_timm_state_dict_loads_into_vit_b16_cifar10(make_cfg, tmp_path):
    from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

    torch.manual_seed(0)
    timm_vit = TimmVisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=1, num_heads=12)
    path = tmp_path / "vit_base_patch16_224.pth"
    torch.save(timm_vit.state_dict(), path)
    model = build(make_cfg(["experiment=vit_b16_cifar10", f"model.pretrained={path}", *SHRINK["vit"]]))
    _files_in(
        model, timm_vit.state_dict(), "cls_token", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"
    )
    assert model.pos_embed.shape[1] == 1 + 24 * 24  # resampled from 14 x 14 to the 384 px grid


def test_official_jax_npz_loads_into_vit_b16_cifar10(make_cfg, tmp_path):
    # imagenet21k/ViT-B_16.npz's layout: a pre-logits layer, 21k classes (here fewer), a 14 x 14 grid
    arrays = _jax_vit_arrays(
        depth=1, dim=768, heads=12, patch=16, grid=14, num_classes=50, representation_size=768
    )
    path = tmp_path / "ViT-B_16.npz"
    np.savez(path, **arrays)
    model = build(make_cfg(["experiment=vit_b16_cifar10", f"model.pretrained={path}", *SHRINK["vit"]]))
    assert torch.equal(model.cls_token, torch.from_numpy(arrays["cls"]))
    assert torch.equal(
        model.blocks[0].norm1.weight, torch.from_numpy(arrays["Transformer/encoderblock_0/LayerNorm_0/scale"])
    )
    assert torch.equal(model.patch_embed.proj.bias, torch.from_numpy(arrays["embedding/bias"]))


def test_vit_b16_imagenet_run_is_what_vit_b16_imagenet_ft384_starts_from(make_cfg, tmp_path):
    # the 224 px run's model (pre-logits layer of 768, 14 x 14 grid) saved as a vtrain checkpoint
    pretraining = build(make_cfg(["experiment=vit_b16_imagenet", *SHRINK["vit"]]))
    with torch.no_grad():
        for parameter in pretraining.parameters():
            parameter.normal_(0, 0.02, generator=torch.Generator().manual_seed(parameter.numel()))
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in pretraining.state_dict().items()}}, path)
    model = build(make_cfg(["experiment=vit_b16_imagenet_ft384", f"model.pretrained={path}", *SHRINK["vit"]]))
    # the official drop-head variant: no pre-logits, a zero-initialised 1000-way head (ViT section 3.2)
    assert isinstance(model.pre_logits, torch.nn.Identity) and torch.count_nonzero(model.head.weight) == 0
    assert torch.equal(model.blocks[0].attn.qkv.weight, pretraining.blocks[0].attn.qkv.weight)
    # 14 x 14 -> 24 x 24 as vit_jax/checkpoint.py:209-238: class token kept, the grid's corners too
    grid = model.pos_embed[0, 1:].detach().reshape(24, 24, 768)
    old = pretraining.pos_embed[0, 1:].detach().reshape(14, 14, 768)
    assert torch.equal(model.pos_embed[:, 0], pretraining.pos_embed[:, 0])
    for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        torch.testing.assert_close(grid[corner], old[corner], rtol=0, atol=1e-6)


def test_official_mae_checkpoints_load_into_mae_vit_b16_imagenet(make_cfg, tmp_path, caplog):
    """mae_visualize_vit_*.pth (the whole autoencoder) and mae_pretrain_vit_*.pth (the encoder only, the
    decoder kept fresh), both under ``model`` as facebookresearch/mae releases them."""
    cfg = make_cfg(["experiment=mae_vit_b16_imagenet", *SHRINK["mae"]])
    source = build(cfg)
    torch.nn.init.normal_(source.decoder_pred.weight)
    whole, encoder = tmp_path / "mae_visualize_vit_base.pth", tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": source.state_dict()}, whole)
    torch.save(
        {"model": {k: v for k, v in source.state_dict().items() if not k.startswith(("decoder", "mask_"))}},
        encoder,
    )
    loaded = build(make_cfg(["experiment=mae_vit_b16_imagenet", f"model.pretrained={whole}", *SHRINK["mae"]]))
    assert torch.equal(loaded.decoder_pred.weight, source.decoder_pred.weight)
    with caplog.at_level(logging.WARNING):
        loaded = build(
            make_cfg(["experiment=mae_vit_b16_imagenet", f"model.pretrained={encoder}", *SHRINK["mae"]])
        )
    assert "holds an encoder only" in caplog.text
    assert torch.equal(loaded.blocks[0].mlp.fc2.weight, source.blocks[0].mlp.fc2.weight)
    assert not torch.equal(loaded.decoder_pred.weight, source.decoder_pred.weight)


@pytest.mark.parametrize("experiment", ["igpt_cifar10_probe", "igpt_cifar10_finetune"])
def test_hugging_face_imagegpt_loads_into_the_igpt_experiments(make_cfg, tmp_path, experiment):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # openai/imagegpt-small's configuration (its pytorch_model.bin is this class's state dict), one layer deep
    config = transformers.ImageGPTConfig(vocab_size=513, n_positions=1024, n_embd=512, n_layer=1, n_head=8)
    hf = transformers.ImageGPTForCausalImageModeling(config)
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf.state_dict(), path)
    model = build(make_cfg([f"experiment={experiment}", f"model.pretrained={path}", *SHRINK["igpt"]]))
    hf_state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    assert torch.equal(model.wte.weight, hf_state["wte.weight"][:512])
    assert torch.equal(model.sos, hf_state["wte.weight"][512])
    assert torch.equal(model.blocks[0].attn.qkv.weight, hf_state["h.0.attn.c_attn.weight"].t())


def test_official_ttsr_checkpoint_loads_into_ttsr_cufed_without_vgg_weights(make_cfg, tmp_path):
    generator = torch.Generator().manual_seed(0)
    official = {
        k: torch.randn(shape, generator=generator) for k, shape in ttsr_official_keys((1, 1, 1, 1)).items()
    }
    path = tmp_path / "TTSR.pt"
    torch.save(official, path)
    model = build(
        make_cfg(["experiment=ttsr_cufed", "mode=eval", f"model.pretrained={path}", *SHRINK["ttsr"]])
    )
    _files_in(
        model,
        official,
        "LTE.slice3.10.weight",
        "MainNet.SFE.conv_head.weight",
        "MainNet.merge_tail.conv_tail2.bias",
    )


@pytest.fixture(scope="module")
def torchvision_maskrcnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision maskrcnn_resnet50_fpn state dict (maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth's layout)."""
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    path = tmp_path_factory.mktemp("maskrcnn") / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_torchvision_maskrcnn_loads_into_maskrcnn_coco(make_cfg, torchvision_maskrcnn):
    path, state_dict = torchvision_maskrcnn
    # torchvision's layout (no GroupNorm): every tensor has its place
    torchvision_layout = ["model.group_norm=false", f"model.pretrained={path}"]
    model = build(make_cfg(["experiment=maskrcnn_coco", "mode=eval", *torchvision_layout]))
    _files_in(
        model, state_dict, "backbone.body.layer1.0.conv1.weight", "backbone.fpn.layer_blocks.3.0.weight"
    )
    _files_in(
        model, state_dict, "rpn.head.conv.0.0.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight"
    )
    # the recipe's GroupNorm neck and heads: the ResNet and the RPN still load
    model = build(make_cfg(["experiment=maskrcnn_coco", "mode=eval", f"model.pretrained={path}"]))
    _files_in(model, state_dict, "backbone.body.layer1.0.conv1.weight", "rpn.head.conv.0.0.weight")


def test_torchvision_maskrcnn_into_fpt_maskrcnn_coco_leaves_the_fpt_fresh(
    make_cfg, torchvision_maskrcnn, caplog
):
    path, state_dict = torchvision_maskrcnn
    after_fpn = ["model.fpt_placement=fpn", "model.group_norm=false", f"model.pretrained={path}"]
    with caplog.at_level(logging.WARNING):
        model = build(make_cfg(["experiment=fpt_maskrcnn_coco", "mode=eval", *after_fpn]))
    assert "the FPT stays freshly initialised" in caplog.text
    _files_in(model, state_dict, "backbone.fpn.inner_blocks.0.0.weight", "roi_heads.box_head.fc6.weight")
    assert any(".fpt." in key for key in model.state_dict())
    # the paper's placement has no FPN: the file's FPN is left out, the ResNet and the RPN load
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model = build(make_cfg(["experiment=fpt_maskrcnn_coco", "mode=eval", f"model.pretrained={path}"]))
    assert "the model has no FPN" in caplog.text
    _files_in(model, state_dict, "backbone.body.layer4.2.conv3.weight", "rpn.head.conv.0.0.weight")


def test_a_file_with_no_fitting_key_is_refused_not_ignored(make_cfg, tmp_path):
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(ValueError, match=r"resnet50\.pth: none of its keys .*model\.backbone_weights"):
        build(make_cfg(["experiment=maskrcnn_coco", f"model.pretrained={tmp_path / 'resnet50.pth'}"]))


def test_lambda_resnet_state_dict_loads_into_lambda_resnet50_imagenet(make_cfg, tmp_path):
    torch.manual_seed(0)
    source = build(make_cfg(["experiment=lambda_resnet50_imagenet"]))
    path = tmp_path / "lambda_resnet50.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    model = build(make_cfg(["experiment=lambda_resnet50_imagenet", "mode=eval", f"model.pretrained={path}"]))
    _files_in(
        model, source.state_dict(), "layer3.0.conv2.to_q.weight", "fc.weight", "layer1.0.bn1.running_var"
    )
