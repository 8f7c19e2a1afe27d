"""``SteeredModel.delta_sizes``: per token, the largest entry of what the steering adds to the MLP output at each
layer with neurons. It is what a caller checks before treating a row as the base model's (the compile's drift
skips such rows), so it must be exactly the delta the forward pass adds, and zero where nothing is added."""

from __future__ import annotations

import pytest
import torch

from tiny_models import closed_adapter, left_padded_batch, random_adapter, tiny_model

from masteer.runtime import SteeredModel
from masteer.runtime.hosts import mlp_module


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_sizes_are_what_the_forward_pass_adds(kind):
    model = tiny_model(kind)
    adapter = random_adapter(model, counts={0: 2, 1: 1})
    inputs = left_padded_batch()
    outputs = []

    def mlp_output():   # what layer 0's MLP returns, after every hook registered before this one
        hook = mlp_module(model, 0).register_forward_hook(lambda module, args, output: outputs.append(output))
        try:
            with torch.no_grad():
                model(**inputs)
        finally:
            hook.remove()
    mlp_output()
    steered = SteeredModel(model, adapter)
    try:
        mlp_output()
        sizes = steered.delta_sizes(**inputs)
        with steered.disable_adapter():
            off = steered.delta_sizes(**inputs)
    finally:
        steered.detach()
    assert set(sizes) == {0, 1}
    # layer 0 is read on the base model's input, so its delta is exactly the steered minus the base output there
    assert torch.allclose(sizes[0], (outputs[1] - outputs[0]).abs().amax(-1), atol=1e-6)
    assert sizes[1].shape == inputs["input_ids"].shape and sizes[0].max() > 0.1
    assert all(float(v.abs().max()) == 0.0 for v in off.values())


def test_gates_that_never_open_add_nothing():
    model = tiny_model("llama")
    steered = SteeredModel(model, closed_adapter(model, counts={1: 2}))
    try:
        sizes = steered.delta_sizes(**left_padded_batch())
    finally:
        steered.detach()
    assert list(sizes) == [1] and float(sizes[1].max()) == 0.0
