"""Restraint: where the adapter should do nothing, it does exactly nothing.

Closed gates, the disable context, scale 0 and detaching each give the base model's logits; merging
grows the MLP by exactly the largest per-layer neuron count.
"""

from __future__ import annotations

import copy

import pytest
import torch

from masteer.runtime import SteeredModel, attach
from masteer.runtime.bake import MLP_ALIGNMENT
from masteer.runtime.hosts import decoder_layers, host_layout, intermediate_size, mlp_module
from tiny_models import NEURON_COUNTS, closed_adapter, left_padded_batch, logits, random_adapter, tiny_model

MIN_EFFECT = 1e-2


def _max_diff(a, b) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_closed_gates_leave_logits_unchanged(kind):
    model = tiny_model(kind)
    inputs = left_padded_batch()
    base = logits(model, inputs)
    adapter = closed_adapter(model)
    # The directions behind the closed gates are large: only the gates keep them out.
    for layer, count in NEURON_COUNTS.items():
        assert adapter.block(layer, "neuron")["direction"].norm(dim=-1).min() > 1.0
        assert len(adapter.layer_strategies(layer, "neuron")) == count
    steered = SteeredModel(model, adapter)
    closed = logits(steered, inputs)
    assert _max_diff(closed, base) <= 1e-6, f"{kind}: closed gates moved logits by {_max_diff(closed, base):.3e}"
    gates = steered.gate_activations(**inputs)
    assert set(gates) == set(NEURON_COUNTS)
    assert all(z.abs().max().item() <= 1e-6 for z in gates.values())

    # Control: open one gate of the same adapter and the logits do move, so the check above can fail.
    opened = copy.deepcopy(adapter)
    gate_key = "layers.0.neuron.gate"
    opened.tensors[gate_key] = torch.randn(opened.tensors[gate_key].shape, generator=torch.Generator().manual_seed(0))
    if opened.host_form == "gated":
        opened.tensors["layers.0.neuron.up"] = torch.randn(opened.tensors["layers.0.neuron.up"].shape,
                                                           generator=torch.Generator().manual_seed(1))
    else:
        opened.tensors["layers.0.neuron.bias"] = torch.zeros_like(opened.tensors["layers.0.neuron.bias"])
    steered.detach()
    assert _max_diff(logits(SteeredModel(model, opened), inputs), base) > MIN_EFFECT


def test_disable_adapter_gives_base_logits_exactly(kind):
    model = tiny_model(kind)
    inputs = left_padded_batch()
    base = logits(model, inputs)
    steered = SteeredModel(model, random_adapter(model, additive_layer=1))
    on = logits(steered, inputs)
    assert _max_diff(on, base) > MIN_EFFECT
    with steered.disable_adapter() as inner:
        assert inner is model
        assert torch.equal(logits(steered, inputs), base)
        assert torch.equal(logits(inner, inputs), base)
    # Leaving the context turns steering back on.
    assert torch.equal(logits(steered, inputs), on)


def test_disable_adapter_restores_on_error(kind):
    model = tiny_model(kind)
    inputs = left_padded_batch()
    steered = SteeredModel(model, random_adapter(model))
    on = logits(steered, inputs)
    try:
        with steered.disable_adapter():
            raise KeyError("boom")
    except KeyError:
        pass
    assert torch.equal(logits(steered, inputs), on)


def test_scale_zero_gives_base_logits(kind):
    model = tiny_model(kind)
    inputs = left_padded_batch()
    base = logits(model, inputs)
    steered = SteeredModel(model, random_adapter(model, additive_layer=1))
    on = logits(steered, inputs)
    assert _max_diff(on, base) > MIN_EFFECT
    steered.set_scale(0)
    assert _max_diff(logits(steered, inputs), base) <= 1e-6
    steered.set_scale(1)
    assert torch.equal(logits(steered, inputs), on)
    with steered.scaled(0.0):
        assert _max_diff(logits(steered, inputs), base) <= 1e-6
    assert torch.equal(logits(steered, inputs), on)
    # A scale between 0 and 1 is neither the base model nor full steering.
    with steered.scaled(0.5):
        half = logits(steered, inputs)
    assert _max_diff(half, base) > 1e-4 and _max_diff(half, on) > 1e-4


def test_detach_restores_state_dict_and_logits_exactly(kind):
    model = tiny_model(kind)
    inputs = left_padded_batch()
    before = _state(model)
    base = logits(model, inputs)
    steered = attach(model, random_adapter(model, additive_layer=1))
    assert steered.attached
    assert _max_diff(logits(steered, inputs), base) > MIN_EFFECT
    returned = steered.detach()
    assert returned is model and not steered.attached
    after = model.state_dict()
    assert list(after) == list(before), "detaching changed the state dict keys"
    for key, tensor in before.items():
        assert torch.equal(after[key], tensor), f"detaching changed {key}"
    for layer in range(len(decoder_layers(model))):
        mlp = mlp_module(model, layer)
        assert not mlp._forward_hooks and not mlp._forward_pre_hooks, f"hooks left on layer {layer}"
    assert torch.equal(logits(model, inputs), base)
    # Attaching never touched the weights either (hooks, not swapped modules).
    assert torch.equal(logits(returned, inputs), base)


def test_attach_does_not_touch_state_dict(kind):
    model = tiny_model(kind)
    before = _state(model)
    steered = SteeredModel(model, random_adapter(model, additive_layer=1))
    logits(steered, left_padded_batch())
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    steered.detach()


@pytest.mark.parametrize("pad_to", [0, 8, None])  # None: the default, a multiple of 64
def test_merge_and_unload_grows_the_mlp_by_the_most_neurons_rounded_up_to_pad_to(kind, pad_to):
    model = tiny_model(kind)
    layout = host_layout(model)
    width_before = intermediate_size(model)
    counts = {0: 3, 2: 1}
    adapter = random_adapter(model, counts=counts)
    inputs = left_padded_batch()
    steered = SteeredModel(model, adapter)
    expected = logits(steered, inputs)
    merged = steered.merge_and_unload() if pad_to is None else steered.merge_and_unload(pad_to=pad_to)
    multiple = MLP_ALIGNMENT if pad_to is None else max(pad_to, 1)
    exact = width_before + max(counts.values())
    width = exact + (-exact % multiple)
    assert multiple == 1 or (width % multiple == 0 and width > exact)  # the tiny widths do need padding
    assert merged is model and not steered.attached
    assert getattr(merged.config, layout.intermediate_attr) == width
    assert intermediate_size(merged) == width
    for layer in range(len(decoder_layers(merged))):
        mlp = mlp_module(merged, layer)
        out_proj = getattr(mlp, layout.out_proj)
        if layout.conv1d:  # GPT-2 Conv1D weight is [in, out]
            assert tuple(getattr(mlp, layout.in_projs[0]).weight.shape) == (merged.config.hidden_size, width)
            assert tuple(out_proj.weight.shape) == (width, merged.config.hidden_size)
        else:
            for name in layout.in_projs:
                assert getattr(mlp, name).out_features == width
            assert out_proj.in_features == width
    assert (logits(merged, inputs) - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("pad_to", [-1, 1.5, True, "64"])
def test_a_bad_pad_to_is_refused_before_the_adapter_is_detached(kind, pad_to):
    model = tiny_model(kind)
    steered = SteeredModel(model, random_adapter(model))
    with pytest.raises(ValueError, match="pad_to must be a whole number"):
        steered.merge_and_unload(pad_to=pad_to)
    assert steered.attached and intermediate_size(model) == intermediate_size(tiny_model(kind))


def test_merge_and_unload_with_uniform_counts(kind):
    """Same count on every steered layer: still grows by the max (2), not by the total (4)."""
    model = tiny_model(kind)
    width_before = intermediate_size(model)
    merged = SteeredModel(model, random_adapter(model, counts={0: 2, 1: 2})).merge_and_unload(pad_to=0)
    assert intermediate_size(merged) == width_before + 2
