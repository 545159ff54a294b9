import math

import pytest
import torch

from vtrain.optim import warmup_schedule


def _lrs(**kwargs) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_schedule(opt, **kwargs)
    lrs = []
    for _ in range(kwargs["total_steps"]):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_linear_warmup_then_cosine_to_min():
    lrs = _lrs(total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_warmup_in_epochs_and_linear_decay():
    lrs = _lrs(total_steps=40, steps_per_epoch=4, warmup_epochs=2.5, decay="linear")
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[8] == pytest.approx(0.9)
    assert lrs[25] == pytest.approx(1 - 15 / 30)


def test_unknown_decay_is_rejected():
    with pytest.raises(ValueError, match="decay"):
        _lrs(total_steps=5, decay="exponential")


def test_step_decay_at_epoch_milestones():
    lrs = _lrs(total_steps=30, steps_per_epoch=3, decay="step", milestones=[4, 8], gamma=0.1)
    assert lrs[11] == pytest.approx(1.0)
    assert lrs[12] == pytest.approx(0.1) and lrs[23] == pytest.approx(0.1)
    assert lrs[24] == pytest.approx(0.01)


def test_step_decay_at_step_milestones():
    # Detectron's iteration schedules (FPT's COCO config: x0.1 at 120k and 160k of 180k), here / 1000
    lrs = _lrs(total_steps=180, warmup_steps=5, decay="step", milestone_steps=[120, 160], gamma=0.1)
    assert lrs[119] == pytest.approx(1.0) and lrs[120] == pytest.approx(0.1)
    assert lrs[159] == pytest.approx(0.1) and lrs[160] == pytest.approx(0.01)
