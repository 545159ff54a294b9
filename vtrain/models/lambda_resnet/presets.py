"""LambdaResNet presets for ``vtrain.create_model``; any :class:`LambdaResNet` argument can be overridden.

Two families, as in the paper:

- ``lambda_resnet50`` (and ``lambda_resnet26``): the controlled comparison of the paper's Table 3 and
  ablations, every bottleneck 3x3 convolution replaced by a lambda layer with |k| = 16, |h| = 4, |u| = 1
  and a lambda convolution of size 23: 14,995,592 parameters with 1000 classes (paper: 15.0M, 78.4% top-1).
  ``lambda_resnet50_u4`` is the |u| = 4 row (paper: 16.0M, 78.9%); its 16,040,360 match the paper with a
  lambda convolution of size 7, which is what we use (size 23 would give 16.56M).
- ``lambda_resnet{50,101,152,200,270,350,420}_hybrid``: the hybrid LambdaResNets of the speed-accuracy
  study: lambda layers in every block of the last stage (c5) and in 1 (ResNet-50), 3 (101), 6
  (152/200/270/350) or 8 (420) blocks of the third stage (c4), convolutions elsewhere. The paper does not
  say which c4 blocks; we space them evenly, ending with c4's last block. ``img_size`` is the resolution
  we record for each depth (the paper trains each depth at one or more of 128-320 px; see docs/lambda.md).
  Depths beyond 152 use ResNet-RS block counts. **Architecture only**: the paper's hybrids sit on
  ResNet-RS (ResNet-D stem, squeeze-excitation) and are trained with the speed-accuracy study's own
  recipe (350 epochs, RandAugment, dropout, stochastic depth, a smaller weight decay); vtrain reproduces
  neither, and no experiment trains them. ``lambda_resnet50_imagenet`` is the 90-epoch recipe of the
  controlled comparison (Table 3): a hybrid trained with it is not the paper's hybrid, and its accuracy is
  not comparable to the paper's speed-accuracy tables.
- ``lambda_tiny``: a CPU-sized LambdaResNet (one block per stage, widths 16-128, stride-2 3x3 stem), not
  from the paper.
"""

from __future__ import annotations

from vtrain.models.lambda_resnet.resnet import LambdaResNet

CONV = ()
ALL = "all"


def spaced_blocks(depth: int, count: int) -> tuple[int, ...]:
    """``count`` block indices spread evenly over a stage of ``depth`` blocks, the last one included."""
    step = depth / count
    return tuple(sorted(depth - 1 - int(i * step) for i in range(count)))


def _build(overrides: dict, **preset) -> LambdaResNet:
    return LambdaResNet(**{**preset, **overrides})


def lambda_resnet26(**overrides) -> LambdaResNet:
    """ResNet-26 (2, 2, 2, 2 bottlenecks) with a lambda layer in every block."""
    return _build(overrides, layers=(2, 2, 2, 2), lambda_blocks=(ALL,) * 4)


def lambda_resnet50(**overrides) -> LambdaResNet:
    """The paper's LambdaResNet-50 of Table 3: every 3x3 convolution a lambda layer (|u| = 1, r = 23)."""
    return _build(overrides, layers=(3, 4, 6, 3), lambda_blocks=(ALL,) * 4)


def lambda_resnet50_u4(**overrides) -> LambdaResNet:
    """LambdaResNet-50 with intra-depth |u| = 4 (lambda convolution of size 7)."""
    return _build(overrides, layers=(3, 4, 6, 3), lambda_blocks=(ALL,) * 4, dim_u=4, r=7)


# depth: (blocks per stage, lambda layers in c4, image size)
HYBRIDS = {
    50: ((3, 4, 6, 3), 1, 128),
    101: ((3, 4, 23, 3), 3, 160),
    152: ((3, 8, 36, 3), 6, 256),
    200: ((3, 24, 36, 3), 6, 256),
    270: ((4, 29, 53, 4), 6, 256),
    350: ((4, 36, 72, 4), 6, 288),
    420: ((4, 44, 87, 4), 8, 320),
}


def _hybrid(depth: int, overrides: dict) -> LambdaResNet:
    """The hybrid LambdaResNet of ``depth`` on a plain ResNet v1.5 (architecture only: not the paper's
    ResNet-RS base nor its training recipe, see the module docstring)."""
    layers, in_c4, img_size = HYBRIDS[depth]
    lambda_blocks = (CONV, CONV, spaced_blocks(layers[2], in_c4), ALL)
    return _build(overrides, layers=layers, lambda_blocks=lambda_blocks, img_size=img_size)


def lambda_resnet50_hybrid(**overrides) -> LambdaResNet:
    """Hybrid LambdaResNet-50, architecture only (no ResNet-RS stem / SE, not the paper's recipe)."""
    return _hybrid(50, overrides)


def lambda_resnet101_hybrid(**overrides) -> LambdaResNet:
    """Hybrid LambdaResNet-101, architecture only (no ResNet-RS stem / SE, not the paper's recipe)."""
    return _hybrid(101, overrides)


def lambda_resnet152_hybrid(**overrides) -> LambdaResNet:
    """Hybrid LambdaResNet-152, architecture only (no ResNet-RS stem / SE, not the paper's recipe)."""
    return _hybrid(152, overrides)


def lambda_resnet200_hybrid(**overrides) -> LambdaResNet:
    """Hybrid LambdaResNet-200, architecture only (no ResNet-RS stem / SE, not the paper's recipe)."""
    return _hybrid(200, overrides)


def lambda_resnet270_hybrid(**overrides) -> LambdaResNet:
    """Hybrid LambdaResNet-270, architecture only (no ResNet-RS stem / SE, not the paper's recipe)."""
    return _hybrid(270, overrides)


def lambda_resnet350_hybrid(**overrides) -> LambdaResNet:
    """Hybrid LambdaResNet-350, architecture only (no ResNet-RS stem / SE, not the paper's recipe)."""
    return _hybrid(350, overrides)


def lambda_resnet420_hybrid(**overrides) -> LambdaResNet:
    """Hybrid LambdaResNet-420, architecture only (no ResNet-RS stem / SE, not the paper's recipe)."""
    return _hybrid(420, overrides)


def lambda_tiny(**overrides) -> LambdaResNet:
    """One bottleneck per stage, widths 16-128, a stride-2 3x3 stem (16x16 maps from 32x32 images), lambda
    layers (r = 7) in every block."""
    return _build(
        overrides,
        layers=(1, 1, 1, 1),
        widths=(16, 32, 64, 128),
        stem="cifar",
        stem_width=16,
        stem_stride=2,
        lambda_blocks=(ALL,) * 4,
        r=7,
        img_size=32,
    )


PRESETS = {
    fn.__name__: fn
    for fn in (
        lambda_resnet26,
        lambda_resnet50,
        lambda_resnet50_u4,
        lambda_resnet50_hybrid,
        lambda_resnet101_hybrid,
        lambda_resnet152_hybrid,
        lambda_resnet200_hybrid,
        lambda_resnet270_hybrid,
        lambda_resnet350_hybrid,
        lambda_resnet420_hybrid,
        lambda_tiny,
    )
}
