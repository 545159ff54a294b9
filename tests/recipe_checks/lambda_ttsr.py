"""Recipe checks of the LambdaNetworks and TTSR cards (docs/recipes.md): the LambdaResNet-50 the experiment
builds, its strided downsampling, weight-decay groups and ImageNet transforms; TTSR's validation epochs,
CUFED training pairs and augmentation, its Y-channel PSNR, and the items these recipes leave off."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from tests.recipe_checks import recipe_check
from vtrain.data.cufed import CUFEDTrain
from vtrain.data.transforms import build_classification_transforms
from vtrain.metrics.sr import sr_metrics
from vtrain.models.lambda_resnet import LambdaLayer
from vtrain.tasks.common import weight_decay_groups
from vtrain.tasks.super_resolution import SuperResolutionTask


def _lambda_model(cfg: DictConfig) -> nn.Module:
    with torch.device("meta"):
        return instantiate(cfg.model)


@recipe_check("lambda_resnet50_architecture")
def lambda_resnet50_architecture(cfg: DictConfig) -> None:
    """Every bottleneck 3x3 convolution a lambda layer with |k| = 16, |h| = 4, |u| = 1 and a size-23 lambda
    convolution; 14,995,592 parameters with 1000 classes (paper: 15.0M)."""
    model = _lambda_model(cfg)
    blocks = [b for stage in range(1, 5) for b in getattr(model, f"layer{stage}")]
    assert [len(getattr(model, f"layer{s}")) for s in range(1, 5)] == [3, 4, 6, 3]
    layers = [b.conv2 for b in blocks]
    assert all(isinstance(layer, LambdaLayer) for layer in layers), "a bottleneck kept its 3x3 convolution"
    settings = {(layer.dim_k, layer.heads, layer.dim_u, layer.r) for layer in layers}
    assert settings == {(16, 4, 1, 23)}, settings
    count = sum(p.numel() for p in model.parameters())
    assert count == 14_995_592, count


@recipe_check("lambda_strided_pool")
def lambda_strided_pool(cfg: DictConfig) -> None:
    """The three strided lambda layers (first blocks of c3, c4, c5) downsample with the paper's 3x3 average
    pooling, stride 2, after the layer."""
    model = _lambda_model(cfg)
    pools = [
        getattr(model, f"layer{stage}")[0].conv2.pool for stage in range(1, 5)
    ]  # c2's first block has stride 1
    assert isinstance(pools[0], nn.Identity)
    for pool in pools[1:]:
        assert isinstance(pool, nn.AvgPool2d), pool
        assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1), pool


@recipe_check("lambda_weight_decay_groups")
def lambda_weight_decay_groups(cfg: DictConfig) -> None:
    """Weight decay on every convolution, lambda-convolution and classifier weight; BatchNorm parameters and
    the classifier bias are left out."""
    model = _lambda_model(cfg)
    decayed, exempt = weight_decay_groups(model, cfg.task.weight_decay)
    assert decayed["weight_decay"] == cfg.task.weight_decay and exempt["weight_decay"] == 0.0
    exempt_ids = {id(p) for p in exempt["params"]}
    exempt_names = {name for name, p in model.named_parameters() if id(p) in exempt_ids}
    one_d = {name for name, p in model.named_parameters() if p.ndim <= 1}
    assert exempt_names == one_d, sorted(exempt_names ^ one_d)[:5]
    norms = {
        f"{n}.{k}"
        for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for k in ("weight", "bias")
    }
    assert norms | {"fc.bias"} == one_d, sorted(one_d ^ (norms | {"fc.bias"}))[:5]
    assert id(model.layer3[0].conv2.lambda_conv.weight) not in exempt_ids


@recipe_check("lambda_imagenet_transforms")
def lambda_imagenet_transforms(cfg: DictConfig) -> None:
    """Train: a random-resized crop to 224 (area 0.08 to 1, aspect 3/4 to 4/3) and a horizontal flip, nothing
    else; evaluation: resize to 256, centre crop 224. Both normalised with the ImageNet mean / std."""
    d = cfg.data
    args = dict(
        image_size=d.image_size,
        recipe=d.recipe,
        mean=tuple(d.mean),
        std=tuple(d.std),
        crop_pct=d.crop_pct,
        randaugment_magnitude=d.randaugment_magnitude,
        hflip=d.hflip,
        random_erasing=d.random_erasing,
    )
    train = build_classification_transforms(train=True, **args).transforms
    kinds = [type(t) for t in train]
    augmenting = [k for k in kinds if k not in (v2.ToImage, v2.ToDtype, v2.Normalize, v2.ToPureTensor)]
    assert augmenting == [v2.RandomResizedCrop, v2.RandomHorizontalFlip], augmenting
    crop = train[0]
    assert crop.size == [224, 224] or tuple(crop.size) == (224, 224), crop.size
    assert tuple(crop.scale) == (0.08, 1.0) and tuple(round(r, 4) for r in crop.ratio) == (0.75, 1.3333)
    evaluation = build_classification_transforms(train=False, **args).transforms
    resize, center = evaluation[0], evaluation[1]
    assert isinstance(resize, v2.Resize) and list(resize.size) == [256], resize
    assert isinstance(center, v2.CenterCrop) and tuple(center.size) == (224, 224), center
    normalize = next(t for t in train if isinstance(t, v2.Normalize))
    assert list(normalize.mean) == [0.485, 0.456, 0.406] and list(normalize.std) == [0.229, 0.224, 0.225]


@recipe_check("lambda_no_dropout")
def lambda_no_dropout(cfg: DictConfig) -> None:
    """The 90-epoch set-up has no dropout (the paper uses it in the 350-epoch set-up only)."""
    model = _lambda_model(cfg)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))


def _schedule(cfg: DictConfig) -> list[int]:
    """The 1-based epochs after which the experiment validates."""
    task = SimpleNamespace(warmup_epochs=cfg.task.warmup_epochs, val_every_epochs=cfg.task.val_every_epochs)
    return [e + 1 for e in range(cfg.trainer.max_epochs) if SuperResolutionTask.validates_after(task, e)]


@recipe_check("ttsr_validation_epochs")
def ttsr_validation_epochs(cfg: DictConfig) -> None:
    """CUFED5 after every 10th epoch counted after the warm-up (researchmm/TTSR main.py:42-47), the last
    epoch included, with Lightning's own schedule left at every epoch."""
    assert cfg.trainer.check_val_every_n_epoch == 1
    epochs = _schedule(cfg)
    warmup, total = cfg.task.warmup_epochs, cfg.trainer.max_epochs
    assert epochs == list(range(warmup + 10, total + 1, 10)), epochs
    assert epochs[-1] == total


def _write_pair(root: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
    ref = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    for sub, image in (("input", hr), ("ref", ref)):
        (root / sub).mkdir(parents=True)
        Image.fromarray(image).save(root / sub / "000.png")
    return hr, ref


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips / quarter rotations of a [C, H, W] image."""
    out = []
    for flipped in (x, x.flip(-1)):
        out += [torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4)]
    return out


def _which(x: torch.Tensor, variants: list[torch.Tensor]) -> int:
    matches = [i for i, v in enumerate(variants) if torch.equal(x, v)]
    assert matches, "not a flip / rotation of the original"
    return matches[0]


@recipe_check("cufed_training_pairs")
def cufed_training_pairs(cfg: DictConfig) -> None:
    """A CUFED training sample as the official TrainSet builds it (dataset/cufed.py:77-117): the whole
    160 x 160 HR image, its 40 x 40 bicubic LR and the LR upsampled back, the reference and its down-up
    copy padded to ref_size with black (-1) at the bottom right, everything in [-1, 1]."""
    with tempfile.TemporaryDirectory() as folder:
        hr, ref = _write_pair(Path(folder))
        sample = CUFEDTrain(folder, ref_size=cfg.data.ref_size, augment=False)[0]
    assert cfg.data.ref_size == 160
    assert sample["hr"].shape == (3, 160, 160) and sample["lr"].shape == (3, 40, 40)
    assert sample["lr_up"].shape == (3, 160, 160) and sample["ref"].shape == (3, 160, 160)
    expected_hr = torch.from_numpy(hr).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(sample["hr"], expected_hr)
    lr = np.array(Image.fromarray(hr).resize((40, 40), Image.BICUBIC))
    torch.testing.assert_close(sample["lr"], torch.from_numpy(lr).permute(2, 0, 1).float() / 127.5 - 1)
    assert (sample["ref"][:, 100:, :] == -1).all() and (sample["ref"][:, :, 120:] == -1).all()


@recipe_check("cufed_flips_and_rotations")
def cufed_flips_and_rotations(cfg: DictConfig) -> None:
    """Random horizontal / vertical flips and quarter rotations (dataset/cufed.py:20-48), the same for HR,
    LR and LR-up, drawn independently for the reference."""
    assert cfg.data.augment is True
    with tempfile.TemporaryDirectory() as folder:
        _write_pair(Path(folder))
        plain = CUFEDTrain(folder, ref_size=cfg.data.ref_size, augment=False)[0]
        augmented = CUFEDTrain(folder, ref_size=cfg.data.ref_size, augment=True)
        torch.manual_seed(0)
        draws = [augmented[0] for _ in range(128)]
    hr_variants, lr_variants = _dihedral(plain["hr"]), _dihedral(plain["lr"])
    ref_variants = _dihedral(plain["ref"])
    hr_kinds, ref_kinds = [], []
    for draw in draws:
        kind = _which(draw["hr"], hr_variants)
        assert _which(draw["lr"], lr_variants) == kind, "LR and HR transformed differently"
        hr_kinds.append(kind)
        ref_kinds.append(_which(draw["ref"], ref_variants))
    assert len(set(hr_kinds)) == 8 and len(set(ref_kinds)) == 8, (set(hr_kinds), set(ref_kinds))
    assert hr_kinds != ref_kinds


@recipe_check("ttsr_psnr_y_as_official")
def ttsr_psnr_y_as_official(cfg: DictConfig) -> None:
    """PSNR on the BT.601 Y channel of the 8-bit-rounded images, no border (researchmm/TTSR utils.py:79-90):
    vtrain's metric equals the formula evaluated here in NumPy."""
    generator = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, 24, 20, generator=generator) * 1.8 - 0.9
    sr = (hr + 0.1 * torch.randn(hr.shape, generator=generator)).clamp(-1, 1)
    ours = float(sr_metrics(sr, hr, cfg.task.y_border, cfg.task.rgb_border)["psnr_y"][0])
    a = np.round((sr[0].numpy().astype(np.float64) + 1) * 127.5)
    b = np.round((hr[0].numpy().astype(np.float64) + 1) * 127.5)
    weights = np.array([65.738, 129.057, 25.064])[:, None, None] / 256.0
    diff_y = ((a - b) / 255.0 * weights).sum(axis=0)
    official = -10 * math.log10(np.mean(diff_y**2))
    assert cfg.task.y_border == 0
    assert abs(ours - official) < 1e-6 * official, (ours, official)


@recipe_check("ttsr_no_weight_decay")
def ttsr_no_weight_decay(cfg: DictConfig) -> None:
    """Adam without weight decay for the generator and the critic (trainer.py:38, loss/loss.py:81-83)."""
    param = nn.Parameter(torch.zeros(1))
    for key in ("optimizer", "discriminator_optimizer"):
        node = cfg.task.get(key)
        if node is None:
            continue
        optimizer = instantiate(node)([param])
        assert all(group["weight_decay"] == 0 for group in optimizer.param_groups), key


@recipe_check("ttsr_no_ema")
def ttsr_no_ema(cfg: DictConfig) -> None:
    """No exponential moving average of the weights among the callbacks."""
    targets = [str(node.get("_target_", "")) for node in cfg.callbacks.values() if node is not None]
    assert not any("WeightAveraging" in t or "EMA" in t for t in targets), targets
