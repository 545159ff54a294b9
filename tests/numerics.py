"""Float comparisons relative to the scale of the expected values: a network's outputs of magnitude 30
carry float32 rounding of ~1e-5 x 30, which a fixed absolute tolerance would call a failure."""

from __future__ import annotations

from collections.abc import Callable

import torch


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5, msg=None) -> None:
    """`actual` equals `expected` up to `tol` times the largest magnitude of `expected` (at least 1)."""
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=tol * scale, rtol=tol, msg=msg)


def assert_checkpointing_changes_nothing(
    plain: torch.nn.Module,
    checkpointed: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module], torch.Tensor],
    blocks: int,
    monkeypatch,
    seed: int = 0,
) -> None:
    """`checkpointed` (the same weights as `plain`, built with grad_checkpointing=True) gives the same loss
    and the same gradient of every parameter, from the same random-number state (dropout and drop path
    draw the same masks), and recomputes exactly `blocks` blocks through vtrain.layers.checkpointed."""
    import vtrain.layers.checkpoint as module

    calls = []
    original = module.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "checkpoint", counting)
    checkpointed.load_state_dict(plain.state_dict())
    losses = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(seed)
        loss = loss_fn(model)
        loss.backward()
        losses.append(loss.detach())
    assert calls == [False] * blocks, f"expected {blocks} non-reentrant checkpoints, found {calls}"
    torch.testing.assert_close(losses[1], losses[0], atol=0.0, rtol=0.0)
    grads = dict(checkpointed.named_parameters())
    for name, param in plain.named_parameters():
        if param.grad is None:
            assert grads[name].grad is None, name
            continue
        assert_close_to_scale(grads[name].grad, param.grad, tol=1e-6, msg=name)
