"""Strategy groups, openings and exclusive selection in the runtime.

A *group* is the strategy several neurons implement (a ramp gate is two); its *opening* is the
weighted sum of its neurons' outputs. Exclusive selection keeps, per token and layer, only the group
with the highest anchor score, and cannot be baked.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tiny_models import _empty_adapter, left_padded_batch, logits, position_ids, tiny_model

from masteer.runtime import SteeredModel, SteeringAdapter, bake
from masteer.runtime.artifact import CONFIG_NAME, EXCLUSIVE, INDEPENDENT
from masteer.runtime.errors import AdapterFormatError, LoweringError
from masteer.runtime.hosts import GATED, decoder_layers, mlp_module

LAYER = 1
GROUPS = ("alpha", "beta", "gamma")


def grouped_adapter(model, selection: str = INDEPENDENT, seed: int = 4, groups=GROUPS) -> SteeringAdapter:
    """Per group a ramp-like pair: an "open" neuron (opening +1) and a "cap" neuron (opening -1) that
    writes the negated direction, plus a lone single-neuron strategy on layer 0."""
    hidden = model.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    adapter = _empty_adapter(model)
    adapter.selection = selection
    gated = adapter.host_form == GATED

    def extra():
        return ({"up": torch.randn(hidden, generator=gen) * (2.0 / math.sqrt(hidden))} if gated
                else {"bias": float(torch.randn((), generator=gen)) * 0.5})

    for group in groups:
        gate = torch.randn(hidden, generator=gen) * (3.0 / math.sqrt(hidden))
        direction = torch.randn(hidden, generator=gen)
        direction = direction / direction.norm()
        open_extra = extra()
        adapter.add_neuron(LAYER, group, gate=gate, direction=direction, strength=2.0, group=group, opening=1.0,
                           **open_extra)
        # the cap neuron opens later than the open one: a smaller gate (gated) or a lower bias (plain)
        cap_gate, cap_extra = (0.5 * gate, {"up": open_extra["up"]}) if gated else \
            (gate, {"bias": open_extra["bias"] - 1.0})
        adapter.add_neuron(LAYER, f"{group}:cap", gate=cap_gate, direction=-direction, strength=2.0, group=group,
                           opening=-1.0, **cap_extra)
    adapter.add_neuron(0, "lone", gate=torch.randn(hidden, generator=gen) * (2.0 / math.sqrt(hidden)),
                       direction=torch.eye(hidden)[0], strength=1.0, **extra())
    return adapter


def neuron_outputs(model, adapter, inputs) -> torch.Tensor:
    """z of every neuron at LAYER, [batch, seq, K], through SteeredModel.gate_activations."""
    steered = SteeredModel(model, adapter)
    try:
        return steered.gate_activations(**inputs)[LAYER]
    finally:
        steered.detach()


def test_openings_are_the_weighted_neuron_sums_per_group(kind):
    model = tiny_model(kind)
    adapter = grouped_adapter(model)
    inputs = left_padded_batch()
    steered = SteeredModel(model, adapter)
    z = steered.gate_activations(**inputs)[LAYER]
    openings = steered.openings(**inputs)
    assert set(openings) == {*GROUPS, "lone"}
    for g, group in enumerate(GROUPS):
        expected = z[..., 2 * g] - z[..., 2 * g + 1]
        torch.testing.assert_close(openings[group], expected, atol=1e-6, rtol=1e-5)
        assert openings[group].abs().max() > 0  # the test data opens every group somewhere
    z0 = steered.gate_activations(**inputs)[0]
    torch.testing.assert_close(openings["lone"], z0[..., 0])


def test_exclusive_keeps_only_the_highest_scoring_group_per_token(kind):
    model = tiny_model(kind)
    inputs = left_padded_batch(seed=8)
    independent = neuron_outputs(model, grouped_adapter(model), inputs)
    exclusive = neuron_outputs(model, grouped_adapter(model, EXCLUSIVE), inputs)
    scores = torch.stack([independent[..., 2 * g] for g in range(len(GROUPS))], -1)  # positively weighted neurons
    winner = scores.argmax(-1)
    for g in range(len(GROUPS)):
        wins = (winner == g)[..., None]
        pair = slice(2 * g, 2 * g + 2)
        assert torch.equal(exclusive[..., pair], torch.where(wins, independent[..., pair], 0.0))
    # more than one group wins somewhere, so the selection really switched between strategies
    mask = inputs["attention_mask"].bool()
    assert len(set(winner[mask].tolist())) >= 2
    # and the logits differ from independent gates, where several groups write at once
    assert not torch.allclose(logits(SteeredModel(tiny_model(kind), grouped_adapter(model, EXCLUSIVE)), inputs),
                              logits(SteeredModel(tiny_model(kind), grouped_adapter(model)), inputs))


def test_exclusive_with_one_group_per_layer_is_independent(kind):
    model = tiny_model(kind)
    inputs = left_padded_batch()
    a = logits(SteeredModel(model, grouped_adapter(model, EXCLUSIVE, groups=("alpha",))), inputs)
    b = logits(SteeredModel(tiny_model(kind), grouped_adapter(model, INDEPENDENT, groups=("alpha",))), inputs)
    assert torch.equal(a, b)


def test_exclusive_rows_do_not_depend_on_the_batch(kind):
    model = tiny_model(kind)
    steered = SteeredModel(model, grouped_adapter(model, EXCLUSIVE))
    batch = left_padded_batch(lengths=(7, 3, 5))
    batch["position_ids"] = position_ids(batch["attention_mask"])
    together = logits(steered, batch)
    for row in range(3):
        mask = batch["attention_mask"][row].bool()
        alone = {k: v[row:row + 1, -int(mask.sum()):] for k, v in batch.items()}
        got = logits(steered, alone)[0]
        assert (got - together[row, mask]).abs().max() <= 1e-5


def test_exclusive_adapter_refuses_to_bake_and_leaves_the_model_alone(kind, tmp_path):
    model = tiny_model(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = grouped_adapter(model, EXCLUSIVE)
    with pytest.raises(LoweringError, match="exclusive.*argmax.*independent"):
        bake(model, adapter, tmp_path / "baked")
    assert not (tmp_path / "baked").exists()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(mlp_module(model, LAYER)._forward_hooks.values())
    steered = SteeredModel(model, adapter)
    with pytest.raises(LoweringError):
        steered.merge_and_unload()
    assert steered.attached


def test_independent_grouped_adapter_bakes_exactly(kind, tmp_path):
    from transformers import AutoModelForCausalLM
    model = tiny_model(kind)
    adapter = grouped_adapter(model)
    inputs = left_padded_batch()
    expected = logits(SteeredModel(tiny_model(kind), adapter), inputs)
    mask = inputs["attention_mask"].bool()
    # the grouped strategies must change these logits, or equality below would hold with nothing steered
    assert (expected[mask] - logits(tiny_model(kind), inputs)[mask]).abs().max() > 1e-3
    folder = bake(model, adapter, tmp_path / "baked")
    baked = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert (logits(baked, inputs)[mask] - expected[mask]).abs().max() <= 1e-4


def test_groups_openings_and_selection_round_trip(kind, tmp_path):
    model = tiny_model(kind)
    adapter = grouped_adapter(model, EXCLUSIVE)
    folder = adapter.save(tmp_path / "a")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format_version"] == 3 and config["selection"] == EXCLUSIVE
    loaded = SteeringAdapter.load(folder)
    assert loaded.selection == EXCLUSIVE
    assert [(s.name, s.group, s.opening) for s in loaded.strategies] == \
        [(s.name, s.group, s.opening) for s in sorted(adapter.strategies, key=lambda s: s.layer)]
    inputs = left_padded_batch()
    assert torch.equal(logits(SteeredModel(tiny_model(kind), adapter), inputs),
                       logits(SteeredModel(tiny_model(kind), loaded), inputs))


def test_unknown_selection_and_bad_opening_are_named(kind, tmp_path):
    model = tiny_model(kind)
    folder = grouped_adapter(model, EXCLUSIVE).save(tmp_path / "a")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["selection"] = "round-robin"
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match="selection 'round-robin' is not one of independent, exclusive"):
        SteeringAdapter.load(folder)
    adapter = grouped_adapter(model)
    with pytest.raises(AdapterFormatError, match="opening weight must be finite"):
        adapter.add_neuron(0, "bad", gate=torch.zeros(48), direction=torch.eye(48)[0], strength=1.0,
                           opening=float("nan"), **({"up": torch.zeros(48)} if adapter.host_form == GATED
                                                    else {"bias": 0.0}))


def test_openings_stop_the_pass_after_the_last_gated_layer(kind):
    model = tiny_model(kind)
    adapter = grouped_adapter(model)   # neurons at layers 0 and 1 of the tiny model's blocks
    inputs = left_padded_batch()
    layers = decoder_layers(model)
    assert len(layers) > LAYER + 1
    steered = SteeredModel(model, adapter)
    try:
        # what a full pass reads at LAYER: a pre-hook on its MLP while the steered model runs to the end
        full = {}

        def read(module, args):
            full["z"] = steered.steering[str(LAYER)].activations(args[0]).float()
        hook = mlp_module(model, LAYER).register_forward_pre_hook(read)
        try:
            model(**inputs)
        finally:
            hook.remove()
        ran = []
        above = [layers[i].register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
                 for i in range(LAYER + 1, len(layers))]
        head = model.get_output_embeddings().register_forward_pre_hook(lambda m, a: ran.append("head"))
        try:
            z = steered.gate_activations(**inputs)[LAYER]
        finally:
            for h in above + [head]:
                h.remove()
        assert ran == []                 # nothing above the last gated layer ran
        assert torch.equal(z, full["z"])   # and what was read is the full pass's
        assert steered.openings(**inputs)["lone"].shape == inputs["input_ids"].shape
    finally:
        steered.detach()
