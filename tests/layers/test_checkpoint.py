"""vtrain.layers.checkpointed / checkpoint_seq: the same outputs and gradients, dropout included, and plain
calls where there is no graph to save."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import vtrain.layers.checkpoint as checkpoint_module
from vtrain.layers import DropPath, checkpoint_seq, checkpointed


def _stack(seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    return nn.ModuleList(
        nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Dropout(0.5), nn.Linear(32, 16), DropPath(0.5))
        for _ in range(3)
    ).train()


def _grads(blocks: nn.ModuleList, run, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for param in blocks.parameters():
        param.grad = None
    torch.manual_seed(seed)
    x = torch.randn(8, 5, 16, requires_grad=True)
    out = run(blocks, x)
    out.square().sum().backward()
    return out.detach(), [x.grad, *(p.grad for p in blocks.parameters())]


def test_checkpoint_seq_keeps_outputs_and_gradients_under_dropout_and_drop_path():
    blocks = _stack()
    out, grads = _grads(blocks, lambda b, x: checkpoint_seq(b, x, enabled=False))
    out_ckpt, grads_ckpt = _grads(blocks, lambda b, x: checkpoint_seq(b, x, enabled=True))
    assert torch.equal(out_ckpt, out)
    for a, b in zip(grads_ckpt, grads, strict=True):
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)
    # the recomputation redraws the dropout masks unless the random-number state is restored: without
    # that (preserve_rng_state=False), the gradients are those of other masks
    _, redrawn = _grads(
        blocks,
        lambda b, x: checkpoint_seq(
            [lambda t, block=block: checkpoint(block, t, use_reentrant=False, preserve_rng_state=False)
             for block in b], x, enabled=False,
        ),
    )  # fmt: skip
    assert not all(torch.allclose(a, b) for a, b in zip(redrawn, grads, strict=True))


def test_checkpointed_runs_plainly_without_grad_and_passes_keyword_arguments(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint called without grad")

    monkeypatch.setattr(checkpoint_module, "checkpoint", refuse)
    blocks = _stack().eval()
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(checkpoint_seq(blocks, x), blocks[2](blocks[1](blocks[0](x))))
    with torch.inference_mode():
        checkpointed(blocks[0], x)
    with pytest.raises(AssertionError, match="checkpoint called without grad"):
        checkpointed(blocks[0], x)
    monkeypatch.undo()
    attention = nn.MultiheadAttention(16, 2, batch_first=True)
    q = torch.randn(2, 5, 16, requires_grad=True)
    mask = torch.tensor([[False] * 5, [False, False, False, True, True]])
    out = checkpointed(attention, q, q, q, key_padding_mask=mask, need_weights=False)[0]
    expected = attention(q, q, q, key_padding_mask=mask, need_weights=False)[0]
    torch.testing.assert_close(out, expected, atol=0.0, rtol=0.0)
