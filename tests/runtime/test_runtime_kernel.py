"""The steering kernel keeps its buffers cast to the activations' dtype: it must compute, bit for bit, what
casting them on every call computed, drop the kept casts when its buffers are replaced, and never hand autograd
a tensor made in inference mode."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from masteer.runtime import SteeredModel
from tiny_models import random_adapter, supports_additive_bake, tiny_model


def _kernels(kind: str) -> dict[str, torch.nn.Module]:
    model = tiny_model(kind)
    adapter = random_adapter(model, additive_layer=1 if supports_additive_bake(kind) else None)
    return dict(SteeredModel(model, adapter).steering)


def _cast_every_call(steering, x: torch.Tensor) -> torch.Tensor:
    """The kernel's formula with every buffer cast at the call (what it did before it kept the casts)."""
    delta = torch.zeros((), dtype=x.dtype)
    if steering.has_neurons:
        pre = F.linear(x, steering.gate.to(x.dtype))
        z = (steering.act(pre) * F.linear(x, steering.up.to(x.dtype)) if steering.gated
             else steering.act(pre + steering.bias.to(x.dtype)))
        delta = F.linear(z, steering.down.T.to(x.dtype))
    if steering.has_additive:
        delta = delta + steering.vector.to(x.dtype)
    return delta * steering.scale


def test_a_bfloat16_call_is_bit_identical_to_casting_at_every_call(kind):
    kernels = _kernels(kind)
    assert any(k.has_neurons for k in kernels.values())
    assert any(k.has_additive for k in kernels.values()) == supports_additive_bake(kind)
    hidden = next(iter(kernels.values())).gate.shape[1]
    x = torch.randn(3, 5, hidden, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for steering in kernels.values():
        first, again = steering(x), steering(x)                      # the second call reads the kept casts
        expected = _cast_every_call(steering, x)
        assert first.dtype == torch.bfloat16 and expected.abs().max() > 0.05  # it steers: equality means something
        assert torch.equal(first, expected) and torch.equal(again, expected)
        steering.scale = 0.5                                         # the global dial (set_scale sets it)
        assert torch.equal(steering(x), _cast_every_call(steering, x))
        steering.scale = 1.0


def test_replacing_the_buffers_drops_the_kept_casts(kind):
    steering = next(iter(_kernels(kind).values()))
    x = torch.randn(2, 4, steering.gate.shape[1], generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    before = steering(x)
    steering._apply(lambda t: t * 2 if t.is_floating_point() else t)   # what .to()/.cuda()/.half() go through
    after = steering(x)
    assert not torch.equal(after, before)
    assert torch.equal(after, _cast_every_call(steering, x))


def test_casts_kept_during_inference_mode_serve_a_call_that_autograd_records(kind):
    steering = next(iter(_kernels(kind).values()))
    hidden = steering.gate.shape[1]
    with torch.inference_mode():
        steering(torch.randn(2, hidden).to(torch.bfloat16))           # the casts are made here
    x = torch.randn(2, hidden).to(torch.bfloat16).requires_grad_()
    steering(x).float().pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
