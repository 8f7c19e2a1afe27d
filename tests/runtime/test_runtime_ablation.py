"""Directional ablation: the residual stream never carries the ablated directions, and a weight-
orthogonalised checkpoint computes exactly what the attached adapter does (tied embeddings included).

Each equality is preceded by a check that the ablation clearly changes the logits, so it cannot pass
because nothing happened.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig

from masteer.runtime import (ABLATION, AdapterFormatError, HostNotSupported, SteeredModel, SteeringAdapter,
                             attach, bake, merge_into_model)
from masteer.runtime.artifact import ABLATION_TENSOR, CONFIG_NAME, WEIGHTS_NAME
from masteer.runtime.hosts import attention_out_proj, decoder_layers, embedding_modules, mlp_module
from tiny_models import (HIDDEN, NEURON_COUNTS, PAD_ID, left_padded_batch, logits, random_adapter,
                         supports_additive_bake)
from tiny_models import max_diff as _max_diff
from tiny_models import nonpad as _nonpad
from tiny_models import tiny_model_random_norms as tiny_model

ATOL = 1e-4
MIN_EFFECT = 1e-2
TIED = {"llama": False, "qwen2": True, "gpt2": True}  # tiny_models' configs


def _directions(k: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.randn(k, HIDDEN, generator=torch.Generator().manual_seed(seed))


def _ablation_adapter(model, k: int = 2, neurons: bool = False, additive: bool = False, strength: float = 1.0):
    """K random orthonormal directions; optionally with the default neurons and an always-on vector."""
    adapter = random_adapter(model, counts=None if neurons else {}, additive_layer=1 if additive else None)
    adapter.add_ablation("no_refusal", direction=_directions(k), normalize=True, strength=strength,
                         issue="tiny-issue", algorithm="diff-in-means")
    return adapter






@torch.no_grad()
def _residuals(model, inputs) -> list[torch.Tensor]:
    """The residual stream entering layer 0 and leaving every decoder layer, [tokens, H] at non-pad tokens."""
    captured: list[torch.Tensor] = []
    layers = decoder_layers(model.base_model if isinstance(model, SteeredModel) else model)
    handles = [layers[0].register_forward_pre_hook(
        lambda mod, args, kwargs: captured.append(kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True)]
    for layer in layers:
        handles.append(layer.register_forward_hook(
            lambda mod, args, out: captured.append(out[0] if isinstance(out, tuple) else out)))
    try:
        model(**inputs)
    finally:
        for h in handles:
            h.remove()
    mask = inputs["attention_mask"].bool()
    return [h[mask].float() for h in captured]


def _relative_component(h: torch.Tensor, r: torch.Tensor) -> float:
    return ((h @ r.T).norm(dim=-1) / h.norm(dim=-1)).max().item()


# --------------------------------------------------------------------------- the residual stream
@pytest.mark.parametrize("k", [1, 2])
def test_residual_stream_never_carries_the_directions(kind, k):
    """Every layer's output (and the embeddings) has |h.r| <= 1e-5 |h|, even with neurons and an
    always-on vector writing into the same MLPs."""
    model = tiny_model(kind)
    adapter = _ablation_adapter(model, k=k, neurons=True, additive=True)
    r = adapter.ablation_directions
    inputs = left_padded_batch()
    base = _residuals(model, inputs)
    assert len(base) == len(decoder_layers(model)) + 1
    assert min(_relative_component(h, r) for h in base) > 1e-2, "the base residual must carry r for this to mean much"
    steered = SteeredModel(model, adapter)
    for i, h in enumerate(_residuals(steered, inputs)):
        worst = _relative_component(h, r)
        assert worst <= 1e-5, f"{kind}: residual {i} keeps {worst:.2e} of its norm along the ablated directions"
    # The neurons' directions do have components along r: the projection really removes them.
    assert (adapter.block(0, "neuron")["direction"] @ r.T).abs().max() > 1e-2


def test_neuron_writing_along_the_direction_is_cancelled(kind):
    """The projection applies to the MLP's output after the steering delta: a neuron whose direction is
    exactly r contributes nothing, on the adapter and in the baked checkpoint."""
    model = tiny_model(kind)
    adapter = _ablation_adapter(model, k=1)
    only_ablation = logits(SteeredModel(tiny_model(kind), adapter), left_padded_batch())
    gated = adapter.host_form == "gated"
    r = adapter.ablation_directions[0]
    extra = {"up": torch.full((HIDDEN,), 0.3)} if gated else {"bias": 1.0}
    adapter.add_neuron(1, "along_r", gate=torch.full((HIDDEN,), 0.3), direction=r, strength=8.0, **extra)
    inputs = left_padded_batch()
    with_neuron = logits(SteeredModel(tiny_model(kind), adapter), inputs)
    mask = inputs["attention_mask"]
    assert _max_diff(_nonpad(with_neuron, mask), _nonpad(only_ablation, mask)) <= ATOL  # float rounding only
    no_ablation = SteeredModel(tiny_model(kind), adapter)
    with _ablation_disabled(no_ablation):
        assert _max_diff(logits(no_ablation, inputs), only_ablation) > MIN_EFFECT, "the neuron must fire"
    merged = merge_into_model(tiny_model(kind), adapter)
    assert _max_diff(_nonpad(logits(merged, inputs), mask), _nonpad(with_neuron, mask)) <= ATOL


class _ablation_disabled:
    def __init__(self, steered):
        self.steered = steered

    def __enter__(self):
        self.steered.ablation.enabled = False

    def __exit__(self, *exc):
        self.steered.ablation.enabled = True


# --------------------------------------------------------------------------- exact lowering
def _assert_baked_equals_runtime(kind, adapter, baked, inputs, steered_logits, base_logits, label):
    mask = inputs["attention_mask"]
    assert (mask[:, 0] == 0).any(), "the batch must be left-padded"
    effect = _max_diff(_nonpad(steered_logits, mask), _nonpad(base_logits, mask))
    assert effect > MIN_EFFECT, f"{kind}: ablation barely changes the logits ({effect:.2e})"
    diff = _max_diff(_nonpad(logits(baked, inputs), mask), _nonpad(steered_logits, mask))
    assert diff <= ATOL, f"{kind}/{label}: baked differs from the adapter by {diff:.3e}"
    return diff


def test_orthogonalised_checkpoint_equals_runtime_ablation(kind, tmp_path):
    base = tiny_model(kind)
    adapter = _ablation_adapter(base)
    inputs = left_padded_batch()
    steered_logits, base_logits = logits(SteeredModel(tiny_model(kind), adapter), inputs), logits(base, inputs)

    # In memory.
    merged = merge_into_model(tiny_model(kind), adapter)
    _assert_baked_equals_runtime(kind, adapter, merged, inputs, steered_logits, base_logits, "in memory")
    # bake(): saved and loaded back by plain transformers in this process.
    folder = bake(tiny_model(kind), adapter, tmp_path / "baked")
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    _assert_baked_equals_runtime(kind, adapter, loaded, inputs, steered_logits, base_logits, "bake + load")
    # save_pretrained of the merged model (no masteer involved in the save).
    merged.save_pretrained(tmp_path / "plain")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "plain", dtype=torch.float32).eval()
    assert torch.equal(logits(again, inputs), logits(merged, inputs))
    program = json.loads((folder / "masteer_program.json").read_text())
    assert program["global"][0]["kind"] == ABLATION and program["layers"] == {}

    # The orthogonalised weights really do not write r (every residual writer, not only some).
    r = adapter.ablation_directions.double()
    for module in embedding_modules(loaded):
        assert (module.weight.double() @ r.T).abs().max() <= 1e-5
    for layer in range(len(decoder_layers(loaded))):
        for proj in (attention_out_proj(loaded, layer), getattr(mlp_module(loaded, layer),
                                                                 "c_proj" if kind == "gpt2" else "down_proj")):
            w = proj.weight.double() if kind == "gpt2" else proj.weight.double().T  # [in, H]
            assert (w @ r.T).abs().max() <= 1e-5
            if proj.bias is not None:
                assert (proj.bias.double() @ r.T).abs().max() <= 1e-5


def test_tied_lm_head_is_untied_and_keeps_the_original_embedding(kind, tmp_path):
    """Orthogonalising a tied embedding would also change the LM head, which the runtime never touches.
    The bake unties it: the head keeps the original weights, config.tie_word_embeddings becomes false,
    and that survives save/load."""
    original = tiny_model(kind)
    embedding = original.get_input_embeddings().weight.detach().clone()
    head_before = original.get_output_embeddings().weight.detach().clone()  # == embedding when tied
    assert (original.get_output_embeddings().weight.data_ptr() == original.get_input_embeddings().weight.data_ptr()) \
        == TIED[kind]
    folder = bake(tiny_model(kind), _ablation_adapter(original), tmp_path / "baked")
    config = json.loads((folder / "config.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    head, emb = loaded.get_output_embeddings().weight, loaded.get_input_embeddings().weight
    assert head.data_ptr() != emb.data_ptr()
    assert torch.equal(head, head_before), "the LM head must keep its original (un-orthogonalised) weights"
    assert not torch.allclose(emb, embedding)
    if TIED[kind]:
        assert config["tie_word_embeddings"] is False
        assert loaded.config.tie_word_embeddings is False
        saved = load_file(str(folder / "model.safetensors"))
        assert any("lm_head" in key for key in saved), "the untied head must be saved under its own name"


def test_ablation_with_neurons_and_additive_bakes_exactly(kind, tmp_path):
    base = tiny_model(kind)
    adapter = _ablation_adapter(base, neurons=True, additive=supports_additive_bake(kind))
    inputs = left_padded_batch(seed=11)
    steered = SteeredModel(tiny_model(kind), adapter)
    steered_logits = logits(steered, inputs)
    # Both parts act: neurons alone and ablation alone each give other logits.
    with _ablation_disabled(steered):
        neurons_only = logits(steered, inputs)
    mask = inputs["attention_mask"]
    assert _max_diff(_nonpad(neurons_only, mask), _nonpad(steered_logits, mask)) > MIN_EFFECT
    folder = bake(tiny_model(kind), adapter, tmp_path / "baked")
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    _assert_baked_equals_runtime(kind, adapter, loaded, inputs, steered_logits, logits(base, inputs), "mixed")


def test_bake_with_scale_equals_runtime_with_same_scale(kind, tmp_path):
    """scale multiplies the ablation coefficient: x - s (x R^T) R, which orthogonalisation lowers exactly."""
    base = tiny_model(kind)
    adapter = _ablation_adapter(base, neurons=True)
    inputs = left_padded_batch(seed=13)
    mask = inputs["attention_mask"]
    steered = SteeredModel(tiny_model(kind), adapter)
    full = logits(steered, inputs)
    for scale in (0.5, 2.0):
        with steered.scaled(scale):
            partial = logits(steered, inputs)
        assert _max_diff(_nonpad(partial, mask), _nonpad(full, mask)) > MIN_EFFECT
        folder = bake(tiny_model(kind), adapter, tmp_path / f"s{scale}", scale=scale)
        baked = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        diff = _max_diff(_nonpad(logits(baked, inputs), mask), _nonpad(partial, mask))
        assert diff <= ATOL, f"{kind}: scale {scale}: baked differs by {diff:.3e}"


def test_strength_half_keeps_half_the_component(kind):
    model = tiny_model(kind)
    adapter = _ablation_adapter(model, k=1, strength=0.5)
    inputs = left_padded_batch()
    r = adapter.ablation_directions
    # The embedding output: half of its component along r is left.
    with torch.no_grad():
        raw = model.get_input_embeddings()(inputs["input_ids"])
        steered = SteeredModel(model, adapter)
        projected = model.get_input_embeddings()(inputs["input_ids"])
    assert torch.allclose(projected @ r.T, 0.5 * (raw @ r.T), atol=1e-6)
    steered.detach()


def test_generation_matches_baked_checkpoint(kind, tmp_path):
    adapter = _ablation_adapter(tiny_model(kind), neurons=True)
    steered = SteeredModel(tiny_model(kind), adapter)
    baked = AutoModelForCausalLM.from_pretrained(bake(tiny_model(kind), adapter, tmp_path / "b")).eval()
    config = GenerationConfig(max_new_tokens=5, min_new_tokens=5, do_sample=False, eos_token_id=None,
                              pad_token_id=PAD_ID, output_scores=True, return_dict_in_generate=True)
    inputs = left_padded_batch(seed=5)
    with torch.no_grad():
        a = steered.generate(**inputs, generation_config=config)
        b = baked.generate(**inputs, generation_config=config)
    assert torch.equal(a.sequences, b.sequences)
    assert max(_max_diff(x, y) for x, y in zip(a.scores, b.scores)) <= ATOL


# --------------------------------------------------------------------------- restraint
def test_disable_scale_zero_and_detach_restore_the_base_model(kind):
    model = tiny_model(kind)
    inputs = left_padded_batch()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base = logits(model, inputs)
    steered = attach(model, _ablation_adapter(model, neurons=True))
    on = logits(steered, inputs)
    assert _max_diff(on, base) > MIN_EFFECT
    with steered.disable_adapter():
        assert torch.equal(logits(steered, inputs), base)
    with steered.scaled(0.0):
        assert torch.equal(logits(steered, inputs), base)
    assert torch.equal(logits(steered, inputs), on)
    steered.detach()
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    hooked = [name for name, module in model.named_modules() if module._forward_hooks or module._forward_pre_hooks]
    assert hooked == [], f"hooks left on {hooked}"
    assert torch.equal(logits(model, inputs), base)


def test_scale_zero_bake_leaves_weights_and_tie_alone(kind, tmp_path):
    model = tiny_model(kind)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    merged = SteeredModel(model, _ablation_adapter(model))
    merged.set_scale(0.0)
    out = merged.merge_and_unload()
    after = out.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert bool(getattr(out.config, "tie_word_embeddings", False)) == TIED[kind]


def test_ablation_refused_on_hosts_that_normalise_sublayer_outputs():
    from transformers import Gemma2Config
    config = Gemma2Config(vocab_size=64, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    model.config.architectures = [type(model).__name__]
    adapter = random_adapter(model, counts={})
    adapter.add_ablation("abl", direction=_directions(1), normalize=True)
    with pytest.raises(HostNotSupported, match="gemma2.*normalises"):
        SteeredModel(model, adapter)
    with pytest.raises(HostNotSupported, match="gemma2"):
        merge_into_model(model, adapter)
    assert not any(m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------- the artifact
def test_artifact_roundtrip_stores_one_global_direction_set(kind, tmp_path):
    model = tiny_model(kind)
    adapter = _ablation_adapter(model, k=3, neurons=True)
    folder = adapter.save(tmp_path / "a")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format_version"] == 2  # the lowest version that can express an ablation
    assert [s["name"] for s in config["global"]] == ["no_refusal"] and config["global"][0]["kind"] == "ablation"
    assert all(s["kind"] == "neuron" for specs in config["layers"].values() for s in specs)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    assert tuple(tensors[ABLATION_TENSOR].shape) == (3, HIDDEN)
    loaded = SteeringAdapter.load(folder)
    assert loaded.config_dict() == adapter.config_dict()
    assert loaded.ablation_strategy.layer is None and loaded.layers == sorted(NEURON_COUNTS)
    assert torch.equal(loaded.ablation_directions, adapter.ablation_directions)
    r = loaded.ablation_directions.double()
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-6)
    inputs = left_padded_batch()
    assert torch.equal(logits(SteeredModel(tiny_model(kind), loaded), inputs),
                       logits(SteeredModel(tiny_model(kind), adapter), inputs))
    card = (folder / "README.md").read_text()
    assert "| all | no_refusal |" in card and "`ablation`" in card


def test_normalize_keeps_each_rows_orientation():
    adapter = random_adapter(tiny_model("llama"), counts={})
    raw = _directions(2)
    adapter.add_ablation("a", direction=raw, normalize=True)
    r = adapter.ablation_directions
    assert torch.allclose(r[0], raw[0] / raw[0].norm(), atol=1e-6)
    assert float(r[1] @ raw[1]) > 0 and abs(float(r[0] @ r[1])) < 1e-6


def test_builder_errors_are_clear():
    adapter = random_adapter(tiny_model("llama"), counts={})
    raw = _directions(2)
    with pytest.raises(AdapterFormatError, match=r"norm .*unit vector.*normalize=True"):
        adapter.add_ablation("a", direction=raw[0])
    unit = raw / raw.norm(dim=-1, keepdim=True)
    with pytest.raises(AdapterFormatError, match="not orthogonal"):
        adapter.add_ablation("a", direction=unit)
    with pytest.raises(AdapterFormatError, match="shape"):
        adapter.add_ablation("a", direction=torch.ones(HIDDEN + 1), normalize=True)
    with pytest.raises(AdapterFormatError, match="NaN"):
        adapter.add_ablation("a", direction=torch.full((HIDDEN,), float("nan")))
    with pytest.raises(AdapterFormatError, match="linearly dependent"):
        adapter.add_ablation("a", direction=torch.stack([raw[0], 2 * raw[0]]), normalize=True)
    adapter.add_ablation("a", direction=raw, normalize=True)
    with pytest.raises(AdapterFormatError, match="at most one ablation"):
        adapter.add_ablation("b", direction=raw[0], normalize=True)
    assert [s.name for s in adapter.strategies] == ["a"]


def _saved_ablation(tmp_path, kind="qwen2"):
    adapter = _ablation_adapter(tiny_model(kind), k=2, neurons=True)
    return adapter.save(tmp_path / "a")


@pytest.mark.parametrize("damage,pattern", [
    ("scale", r"ablation\.direction.*row 1 has norm 2"),
    ("skew", r"ablation\.direction.*rows 0 and 1 are not orthogonal"),
    ("nan", r"ablation\.direction.*NaN"),
    ("shape", r"ablation\.direction.*shape \(2, 47\)"),
    ("missing", r"ablation\.direction.*missing"),
])
def test_bad_ablation_tensor_is_named_on_load(tmp_path, damage, pattern):
    folder = _saved_ablation(tmp_path)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    r = tensors[ABLATION_TENSOR]
    if damage == "scale":
        r[1] *= 2
    elif damage == "skew":
        r[1] = (r[1] + 0.3 * r[0]) / (r[1] + 0.3 * r[0]).norm()
    elif damage == "nan":
        r[0, 0] = float("nan")
    elif damage == "shape":
        tensors[ABLATION_TENSOR] = r[:, :-1].contiguous()
    elif damage == "missing":
        del tensors[ABLATION_TENSOR]
    save_file(tensors, str(folder / WEIGHTS_NAME))
    with pytest.raises(AdapterFormatError, match=pattern):
        SteeringAdapter.load(folder)


def test_bad_ablation_config_is_named(tmp_path):
    folder = _saved_ablation(tmp_path)
    original = json.loads((folder / CONFIG_NAME).read_text())
    spec = original["global"][0]
    # An ablation placed under a layer.
    broken = {**original, "global": [], "layers": {**original["layers"], "1": [spec]}}
    (folder / CONFIG_NAME).write_text(json.dumps(broken))
    with pytest.raises(AdapterFormatError, match="adapter-wide.*global"):
        SteeringAdapter.load(folder)
    # Two ablation strategies.
    (folder / CONFIG_NAME).write_text(json.dumps({**original, "global": [spec, {**spec, "name": "other"}]}))
    with pytest.raises(AdapterFormatError, match="at most one ablation"):
        SteeringAdapter.load(folder)
    # A per-layer kind in the global list.
    neuron_in_global = {**spec, "name": "n", "kind": "neuron"}
    (folder / CONFIG_NAME).write_text(json.dumps({**original, "global": [spec, neuron_in_global]}))
    with pytest.raises(AdapterFormatError, match="needs a layer"):
        SteeringAdapter.load(folder)
    # No ablation in the config: the tensor is an orphan.
    (folder / CONFIG_NAME).write_text(json.dumps({k: v for k, v in original.items() if k != "global"}))
    with pytest.raises(AdapterFormatError, match=r"ablation\.direction.*belong to no strategy"):
        SteeringAdapter.load(folder)


def test_version_1_folders_still_load(kind, tmp_path):
    adapter = random_adapter(tiny_model(kind), additive_layer=1)
    folder = adapter.save(tmp_path / "a")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["format_version"] = 1
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    loaded = SteeringAdapter.load(folder)
    assert loaded.format_version == 1 and loaded.config_dict()["format_version"] == 1
    # Adding a version-2 kind raises the written version, so a version-1 reader refuses it by version.
    loaded.add_ablation("abl", direction=_directions(1), normalize=True)
    assert loaded.config_dict()["format_version"] == 2
