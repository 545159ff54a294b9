import math

import pytest
import torch
from timm.optim import Lars as TimmLars

from vtrain.optim import LARS, warmup_schedule


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


def _official_lars_steps(params, grads, lr, weight_decay, momentum=0.9, trust=0.001):
    """facebookresearch/mae util/lars.py:22-47 (MoCo v3's LARS) written out, one parameter at a time."""
    params = [p.clone() for p in params]
    mus = [torch.zeros_like(p) for p in params]
    for step_grads in grads:
        for i, (p, g) in enumerate(zip(params, step_grads, strict=True)):
            if p.ndim > 1:
                g = g + weight_decay * p
                p_norm, g_norm = p.norm().item(), g.norm().item()
                if p_norm > 0 and g_norm > 0:
                    g = g * (trust * p_norm / g_norm)
            mus[i] = momentum * mus[i] + g
            params[i] = p - lr * mus[i]
    return params


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_lars_matches_the_official_update_rule(weight_decay):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 7, generator=gen), torch.randn(5, generator=gen), torch.zeros(3, 2)]
    grads = [[torch.randn(p.shape, generator=gen) for p in start] for _ in range(4)]
    expected = _official_lars_steps(start, grads, lr=0.5, weight_decay=weight_decay)

    def run(optimizer_class, **kwargs):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = optimizer_class(params, lr=0.5, weight_decay=weight_decay, momentum=0.9, **kwargs)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        return [p.detach() for p in params]

    ours = run(LARS)
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # timm's Lars is another rule: no trust ratio at weight decay 0 (unless always_adapt), 1-D scaled too
    timm = run(TimmLars, trust_coeff=0.001, always_adapt=True)
    assert not torch.allclose(timm[1], expected[1], rtol=1e-3)
    if weight_decay == 0.0:
        assert not torch.allclose(run(TimmLars)[0], expected[0], rtol=1e-3)
