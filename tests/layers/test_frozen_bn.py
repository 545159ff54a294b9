import copy

import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from tests.numerics import assert_close_to_scale
from vtrain.layers.frozen_bn import ConvFrozenBatchNorm2d, FoldedFrozenBatchNorm2d, fold_frozen_batchnorm


def _resnet18_frozen_bn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    generator = torch.Generator().manual_seed(seed)
    for name, buffer in model.named_buffers():  # non-trivial statistics, so a wrong fold would show
        if name.endswith("running_var"):
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
        elif name.endswith(("running_mean", "bias")):
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        elif name.endswith("weight") and buffer.dim() == 1:
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model


def test_folding_keeps_outputs_gradients_and_state_dict_keys():
    reference = _resnet18_frozen_bn()
    folded = fold_frozen_batchnorm(copy.deepcopy(reference))
    # stem, 2 convolutions per basic block (8 blocks) and 3 downsample convolutions
    assert sum(isinstance(m, ConvFrozenBatchNorm2d) for m in folded.modules()) == 1 + 16 + 3
    assert not any(type(m) is FrozenBatchNorm2d for m in folded.modules())
    assert list(folded.state_dict()) == list(reference.state_dict())

    x = torch.randn(2, 3, 64, 64)
    expected, actual = reference(x), folded(x)
    assert_close_to_scale(actual, expected)
    expected.square().mean().backward()
    actual.square().mean().backward()
    for (name, p), q in zip(reference.named_parameters(), folded.parameters(), strict=True):
        assert_close_to_scale(q.grad, p.grad, tol=1e-4, msg=name)


def test_folded_model_loads_moves_and_copies_with_its_statistics():
    folded = fold_frozen_batchnorm(_resnet18_frozen_bn(seed=1))
    other = _resnet18_frozen_bn(seed=2)
    folded.load_state_dict(other.state_dict())  # an unfolded model's checkpoint loads as it is
    x = torch.randn(1, 3, 32, 32)
    assert_close_to_scale(folded(x), other(x))
    clone = copy.deepcopy(folded).double()
    conv = clone.conv1
    assert isinstance(conv.frozen_bn, FoldedFrozenBatchNorm2d)
    assert conv.frozen_bn is clone.bn1  # the copy's convolution reads the copy's statistics
    assert conv.frozen_bn.running_var.dtype == torch.float64
    assert_close_to_scale(clone(x.double()).float(), other(x))
