"""Rotation (angle-preserving steering): norms kept, angles to the target reduced by theta without
overshoot, exact identity at angle 0, batch independence, and a LoweringError naming the strategy
when asked to bake.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from masteer.runtime import (ROTATION, AdapterFormatError, LoweringError, SteeredModel, SteeringAdapter, attach,
                             bake, merge_into_model)
from masteer.runtime.artifact import CONFIG_NAME, WEIGHTS_NAME
from masteer.runtime.hosts import decoder_layers
from masteer.runtime.rotation import rotate_layer_output, rotate_toward
from tiny_models import HIDDEN, PAD_ID, left_padded_batch, logits, random_adapter, tiny_model
from tiny_models import max_diff as _max_diff
from tiny_models import nonpad as _nonpad
from tiny_models import pad_left as _pad_left

LAYER = 1
MIN_EFFECT = 1e-2






@torch.no_grad()
def _layer_output(model, inputs, layer: int = LAYER) -> torch.Tensor:
    """The hidden state leaving decoder layer ``layer`` (after any rotation hook), [tokens, H] at non-pad tokens."""
    inner = model.base_model if isinstance(model, SteeredModel) else model
    captured = []
    handle = decoder_layers(inner)[layer].register_forward_hook(
        lambda mod, args, out: captured.append(out[0] if isinstance(out, tuple) else out))
    # Registered after the steering hook, so it sees the rotated output.
    try:
        model(**inputs)
    finally:
        handle.remove()
    return captured[0][inputs["attention_mask"].bool()].float()


def _angles(h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Angle of each row to ``d`` via atan2 (well conditioned near 0, unlike arccos)."""
    h, d = h.double(), d.double()
    a = h @ d
    return torch.atan2((h - a[:, None] * d).norm(dim=-1), a)


def _target_direction(kind: str, inputs) -> torch.Tensor:
    """A direction close to some tokens (so the clamp is exercised) and far from others."""
    h = _layer_output(tiny_model(kind), inputs)
    d = h[:4].mean(0)
    return d / d.norm()


def _rotation_adapter(kind, direction, angle, layer: int = LAYER, neurons: bool = False):
    adapter = random_adapter(tiny_model(kind), counts=None if neurons else {})
    adapter.add_rotation(layer, "toward_refusal", direction=direction, angle=angle, issue="tiny-issue",
                         algorithm="angular")
    return adapter


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("theta", [0.3, 1.0])
def test_norm_kept_and_angle_reduced_by_theta_without_overshoot(kind, theta):
    inputs = left_padded_batch()
    d = _target_direction(kind, inputs)
    h = _layer_output(tiny_model(kind), inputs)
    steered = SteeredModel(tiny_model(kind), _rotation_adapter(kind, d, theta))
    out = _layer_output(steered, inputs)

    norm_err = ((out.norm(dim=-1) - h.norm(dim=-1)).abs() / h.norm(dim=-1)).max().item()
    assert norm_err <= 1e-5, f"{kind}: rotation changed a token's norm by {norm_err:.2e} (relative)"
    before, after = _angles(h, d), _angles(out, d)
    expected = (before - theta).clamp(min=0)
    assert (after - expected).abs().max().item() <= 1e-5, f"{kind}: angles {after} vs {expected}"
    clamped = before < theta
    if theta == 1.0:
        assert clamped.any() and (~clamped).any(), "both the clamp and the full turn must be exercised"
    if clamped.any():  # no overshoot: the tokens that were closer than theta end on d, with their norm
        target = h.norm(dim=-1, keepdim=True)[clamped] * d
        assert torch.allclose(out[clamped], target, atol=1e-5 * target.norm(dim=-1).max().item())
    # The rotation stays in the plane span(d, h): nothing outside it changes.
    basis = torch.stack([d.expand_as(h), h - (h @ d)[:, None] * d], dim=1).double()  # [T, 2, H]
    q, _ = torch.linalg.qr(basis.transpose(1, 2))  # [T, H, 2]
    outside = out.double() - (q @ (q.transpose(1, 2) @ out.double()[..., None]))[..., 0]
    assert (outside.norm(dim=-1) / out.norm(dim=-1)).max().item() <= 1e-5
    # And the logits do change.
    base = logits(tiny_model(kind), inputs)
    assert _max_diff(_nonpad(logits(steered, inputs), inputs["attention_mask"]),
                     _nonpad(base, inputs["attention_mask"])) > MIN_EFFECT


def test_rotate_toward_edge_cases():
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(HIDDEN, generator=gen)
    d = d / d.norm()
    other = torch.randn(HIDDEN, generator=gen)
    perp = other - (other @ d) * d
    perp = perp / perp.norm()
    h = torch.stack([3 * d, -2 * d, torch.zeros(HIDDEN), 2 * (math.cos(0.5) * d + math.sin(0.5) * perp),
                     1.5 * (math.cos(2.0) * d + math.sin(2.0) * perp)])
    out = rotate_toward(h, d, 0.8)
    assert torch.equal(out[0], h[0])        # already on d
    assert torch.equal(out[1], h[1])        # antiparallel: no plane, left alone
    assert torch.equal(out[2], h[2])        # zero vector
    assert torch.allclose(out[3], 2 * d, atol=1e-6)  # 0.5 rad < 0.8: ends on d, no overshoot
    assert torch.allclose(out[4], 1.5 * (math.cos(1.2) * d + math.sin(1.2) * perp), atol=1e-6)
    # A negative angle turns away, at most to -d.
    away = rotate_toward(h[3:], d, -0.4)
    assert torch.allclose(away[0], 2 * (math.cos(0.9) * d + math.sin(0.9) * perp), atol=1e-6)
    assert torch.allclose(rotate_toward(h[4:], d, -5.0)[0], -1.5 * d, atol=1e-6)
    # bfloat16 in, bfloat16 out (computed in float32).
    assert rotate_toward(h.bfloat16(), d, 0.3).dtype == torch.bfloat16


def test_layer_output_as_tensor_or_tuple():
    """transformers 5 decoder layers return a tensor, 4.x a tuple (hidden, ...): both are rotated."""
    adapter = _rotation_adapter("llama", torch.eye(HIDDEN)[0], 0.5)
    steered = SteeredModel(tiny_model("llama"), adapter)
    rotation = steered.rotation[str(LAYER)]
    h = torch.randn(2, 3, HIDDEN, generator=torch.Generator().manual_seed(1))
    as_tensor = rotate_layer_output(rotation, h)
    extra = torch.ones(1)
    as_tuple = rotate_layer_output(rotation, (h, extra))
    assert isinstance(as_tuple, tuple) and as_tuple[1] is extra and torch.equal(as_tuple[0], as_tensor)
    assert not torch.equal(as_tensor, h)
    with pytest.raises(TypeError, match="hidden state"):
        rotate_layer_output(rotation, {"hidden": h})


# --------------------------------------------------------------------------- restraint
def test_zero_angle_scale_zero_and_disable_are_the_identity(kind):
    inputs = left_padded_batch()
    model = tiny_model(kind)
    base = logits(model, inputs)
    d = _target_direction(kind, inputs)
    assert torch.equal(logits(SteeredModel(tiny_model(kind), _rotation_adapter(kind, d, 0.0)), inputs), base)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    steered = attach(model, _rotation_adapter(kind, d, 0.7))
    on = logits(steered, inputs)
    assert _max_diff(on, base) > MIN_EFFECT
    with steered.scaled(0.0):
        assert torch.equal(logits(steered, inputs), base)
    with steered.disable_adapter():
        assert torch.equal(logits(steered, inputs), base)
    assert torch.equal(logits(steered, inputs), on)
    steered.detach()
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(logits(model, inputs), base)


def test_scale_multiplies_the_angle(kind):
    inputs = left_padded_batch()
    d = _target_direction(kind, inputs)
    half = SteeredModel(tiny_model(kind), _rotation_adapter(kind, d, 0.8))
    half.set_scale(0.5)
    direct = SteeredModel(tiny_model(kind), _rotation_adapter(kind, d, 0.4))
    full = SteeredModel(tiny_model(kind), _rotation_adapter(kind, d, 0.8))
    assert _max_diff(logits(half, inputs), logits(direct, inputs)) <= 1e-6
    assert _max_diff(logits(half, inputs), logits(full, inputs)) > MIN_EFFECT


# --------------------------------------------------------------------------- lowering
def test_bake_and_merge_refuse_by_name(kind, tmp_path):
    inputs = left_padded_batch()
    d = _target_direction(kind, inputs)
    adapter = _rotation_adapter(kind, d, 0.5, neurons=True)
    victim = tiny_model(kind)
    before = {k: v.detach().clone() for k, v in victim.state_dict().items()}
    base = logits(victim, inputs)
    with pytest.raises(LoweringError, match=r"rotation strategies \['toward_refusal'\].*no exact linear lowering"):
        bake(victim, adapter, tmp_path / "baked")
    assert not (tmp_path / "baked").exists()
    after = victim.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(m._forward_hooks for m in victim.modules()), "a refused bake must not leave hooks"
    assert torch.equal(logits(victim, inputs), base)

    with pytest.raises(LoweringError, match="toward_refusal"):
        merge_into_model(tiny_model(kind), adapter)
    steered = SteeredModel(tiny_model(kind), adapter)
    on = logits(steered, inputs)
    with pytest.raises(LoweringError, match="toward_refusal"):
        steered.merge_and_unload()
    assert steered.attached and torch.equal(logits(steered, inputs), on), "a refused merge keeps the adapter on"


# --------------------------------------------------------------------------- batches and the cache


def test_row_logits_do_not_depend_on_other_rows_or_padding(kind):
    inputs = left_padded_batch()
    model = SteeredModel(tiny_model(kind), _rotation_adapter(kind, _target_direction(kind, inputs), 0.9,
                                                             neurons=True))
    gen = torch.Generator().manual_seed(21)
    rows = [torch.randint(3, 128, (n,), generator=gen) for n in (5, 9, 3, 7)]
    with torch.no_grad():
        alone = model(input_ids=rows[0][None]).logits[0]
        base_alone = tiny_model(kind)(input_ids=rows[0][None]).logits[0]
        assert _max_diff(alone, base_alone) > MIN_EFFECT
        for batch, index in ((_pad_left([rows[0], rows[1], rows[2]]), 0), (_pad_left([rows[3], rows[1], rows[0]]), 2),
                             (_pad_left([rows[2], rows[0]], extra_pad=6), 1)):
            assert batch["attention_mask"][index, 0] == 0
            inside = model(**batch).logits[index][batch["attention_mask"][index].bool()]
            assert _max_diff(inside, alone) <= 1e-5


def test_kv_cache_generation_equals_recomputation(kind):
    from transformers import GenerationConfig
    inputs = left_padded_batch(seed=5)
    model = SteeredModel(tiny_model(kind), _rotation_adapter(kind, _target_direction(kind, inputs), 0.9))

    def greedy(use_cache):
        config = GenerationConfig(max_new_tokens=5, min_new_tokens=5, do_sample=False, eos_token_id=None,
                                  pad_token_id=PAD_ID, use_cache=use_cache, output_scores=True,
                                  return_dict_in_generate=True)
        with torch.no_grad():
            return model.generate(**inputs, generation_config=config)

    cached, fresh = greedy(True), greedy(False)
    assert torch.equal(cached.sequences, fresh.sequences)
    assert max(_max_diff(a, b) for a, b in zip(cached.scores, fresh.scores)) <= 1e-4


# --------------------------------------------------------------------------- the artifact
def test_artifact_roundtrip_and_card(kind, tmp_path):
    inputs = left_padded_batch()
    d = _target_direction(kind, inputs)
    adapter = random_adapter(tiny_model(kind))
    adapter.add_rotation(2, "a", direction=3 * d, degrees=30, normalize=True)
    adapter.add_rotation(2, "b", direction=torch.eye(HIDDEN)[1], angle=-0.2)
    folder = adapter.save(tmp_path / "r")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format_version"] == 2  # rotations need a version-2 reader
    specs = [s for s in config["layers"]["2"] if s["kind"] == ROTATION]
    assert [s["name"] for s in specs] == ["a", "b"] and math.isclose(specs[0]["strength"], math.radians(30))
    assert tuple(load_file(str(folder / WEIGHTS_NAME))["layers.2.rotation.direction"].shape) == (2, HIDDEN)
    loaded = SteeringAdapter.load(folder)
    assert loaded.config_dict() == adapter.config_dict()
    assert torch.equal(logits(SteeredModel(tiny_model(kind), loaded), inputs),
                       logits(SteeredModel(tiny_model(kind), adapter), inputs))
    card = (folder / "README.md").read_text()
    assert "| 2 | a |" in card and "rad (30 deg)" in card and "`rotation`" in card


def test_builder_and_loader_errors(tmp_path):
    adapter = random_adapter(tiny_model("llama"), counts={})
    d = torch.eye(HIDDEN)[0]
    with pytest.raises(AdapterFormatError, match="exactly one of"):
        adapter.add_rotation(0, "r", direction=d)
    with pytest.raises(AdapterFormatError, match="exactly one of"):
        adapter.add_rotation(0, "r", direction=d, angle=0.1, degrees=5)
    with pytest.raises(AdapterFormatError, match=r"norm 2.*unit vector.*normalize=True"):
        adapter.add_rotation(0, "r", direction=2 * d, angle=0.1)
    with pytest.raises(AdapterFormatError, match="one direction"):
        adapter.add_rotation(0, "r", direction=torch.eye(HIDDEN)[:2], angle=0.1)
    with pytest.raises(AdapterFormatError, match="zero direction"):
        adapter.add_rotation(0, "r", direction=torch.zeros(HIDDEN), angle=0.1, normalize=True)
    adapter.add_rotation(0, "r", direction=d, angle=0.1)
    folder = adapter.save(tmp_path / "a")
    key = "layers.0.rotation.direction"
    for damage, pattern in (("scale", r"rotation\.direction.*norm 3"), ("nan", r"rotation\.direction.*NaN"),
                            ("shape", r"rotation\.direction.*shape")):
        tensors = load_file(str(folder / WEIGHTS_NAME))
        if damage == "scale":
            tensors[key] = tensors[key] * 3
        elif damage == "nan":
            tensors[key][0, 1] = float("nan")
        else:
            tensors[key] = tensors[key][:, :-1].contiguous()
        save_file(tensors, str(folder / WEIGHTS_NAME))
        with pytest.raises(AdapterFormatError, match=pattern):
            SteeringAdapter.load(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["layers"]["0"][0]["strength"] = float("nan")
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match="strength"):
        SteeringAdapter.load(folder)
