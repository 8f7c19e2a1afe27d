"""The adapter folder: exact round trip, and a clear AdapterFormatError for every kind of bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import masteer.runtime.artifact as artifact
from masteer.runtime import (AdapterFormatError, FingerprintMismatch, LoweringError, MasteerError, SteeredModel,
                             SteeringAdapter, attach, bake, model_fingerprint)
from masteer.runtime.artifact import CARD_NAME, CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from tiny_models import left_padded_batch, logits, random_adapter, supports_additive_bake, tiny_model


def _saved(kind, tmp_path, name="adapter", **kwargs):
    model = tiny_model(kind)
    adapter = random_adapter(model, additive_layer=1, **kwargs)
    return model, adapter, adapter.save(tmp_path / name)


def _listing(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# --------------------------------------------------------------------------- round trip
def test_save_load_roundtrip_is_exact(kind, tmp_path):
    model, adapter, folder = _saved(kind, tmp_path)
    assert _listing(folder) == sorted([CONFIG_NAME, WEIGHTS_NAME, CARD_NAME])
    loaded = SteeringAdapter.load(folder)
    assert sorted(loaded.tensors) == sorted(adapter.tensors)
    for key, tensor in adapter.tensors.items():
        assert loaded.tensors[key].dtype == tensor.dtype
        assert torch.equal(loaded.tensors[key], tensor), key
    assert loaded.config_dict() == adapter.config_dict()
    assert loaded.fingerprint == adapter.fingerprint
    # The config groups strategies by layer; within a layer the order (= tensor row order) is kept.
    by_layer = sorted(adapter.strategies, key=lambda s: s.layer)
    assert [(s.name, s.layer, s.kind, s.strength, s.issue, s.algorithm, s.metadata) for s in loaded.strategies] == \
        [(s.name, s.layer, s.kind, s.strength, s.issue, s.algorithm, s.metadata) for s in by_layer]
    # Same numbers when attached.
    inputs = left_padded_batch()
    a = logits(SteeredModel(tiny_model(kind), adapter), inputs)
    b = logits(SteeredModel(tiny_model(kind), loaded), inputs)
    assert torch.equal(a, b)
    # No pickle: the weights file is safetensors, the config plain JSON, the card has front matter.
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format_version"] == 1  # neurons and additive vectors: the lowest version that expresses them
    assert config["fingerprint"]["digest"] == model_fingerprint(model).digest
    assert (folder / CARD_NAME).read_text().startswith("---\nbase_model: ")


def test_roundtrip_keeps_row_order_when_layers_added_out_of_order(kind, tmp_path):
    """Strategies added layer 2, then 0, then 2 again: rows must still belong to the right strategy."""
    model = tiny_model(kind)
    adapter = random_adapter(model, counts={2: 1, 0: 2})
    extra = random_adapter(model, seed=9, counts={2: 1})
    block = extra.block(2, "neuron")
    kwargs = ({"up": block["up"][0]} if adapter.host_form == "gated" else {"bias": block["bias"][0]})
    adapter.add_neuron(2, "late", gate=block["gate"][0], direction=block["direction"][0], strength=1.5, **kwargs)
    loaded = SteeringAdapter.load(adapter.save(tmp_path / "a"))
    assert [s.name for s in loaded.layer_strategies(2, "neuron")] == ["s2_0", "late"]
    assert torch.equal(loaded.block(2, "neuron")["gate"][1], block["gate"][0])
    inputs = left_padded_batch()
    assert torch.equal(logits(SteeredModel(tiny_model(kind), adapter), inputs),
                       logits(SteeredModel(tiny_model(kind), loaded), inputs))


def test_the_same_adapter_saves_to_the_same_bytes(tmp_path):
    """safetensors writes its metadata map in no fixed order: without sorting, 12 saves came out in both orders."""
    model = tiny_model("llama")
    adapter = random_adapter(model, additive_layer=1)
    files = {(adapter.save(tmp_path / f"a{i}") / WEIGHTS_NAME).read_bytes() for i in range(12)}
    assert len(files) == 1
    (data,) = files
    length = int.from_bytes(data[:8], "little")
    assert list(json.loads(data[8:8 + length])["__metadata__"]) == ["format", "masteer_format_version"]
    assert set(load_file(tmp_path / "a0" / WEIGHTS_NAME)) == set(adapter.tensors)


def test_from_pretrained_and_attach_by_path(kind, tmp_path):
    _, adapter, folder = _saved(kind, tmp_path)
    inputs = left_padded_batch()
    expected = logits(SteeredModel(tiny_model(kind), adapter), inputs)
    assert torch.equal(logits(SteeredModel.from_pretrained(tiny_model(kind), folder), inputs), expected)
    assert torch.equal(logits(attach(tiny_model(kind), str(folder)), inputs), expected)


# --------------------------------------------------------------------------- fingerprints
def test_attach_to_other_weights_raises_fingerprint_mismatch(kind, tmp_path):
    model, adapter, folder = _saved(kind, tmp_path)
    other = tiny_model(kind, seed=5)  # same config, other weights
    want, have = adapter.fingerprint.digest, model_fingerprint(other).digest
    assert want != have
    for source in (adapter, folder):
        with pytest.raises(FingerprintMismatch) as info:
            attach(tiny_model(kind, seed=5), source)
        message = str(info.value)
        assert want in message and have in message, message
        assert isinstance(info.value, MasteerError)
    # The model was left alone: no hooks.
    inputs = left_padded_batch()
    base_other = logits(other, inputs)
    with pytest.raises(FingerprintMismatch):
        SteeredModel(other, adapter)
    assert torch.equal(logits(other, inputs), base_other)
    # The override attaches anyway.
    forced = SteeredModel(other, adapter, check_fingerprint=False)
    assert (logits(forced, inputs) - base_other).abs().max().item() > 1e-2


def test_fingerprint_matches_same_weights_and_rejects_other_shape(kind):
    assert model_fingerprint(tiny_model(kind)) == model_fingerprint(tiny_model(kind))
    a = model_fingerprint(tiny_model(kind))
    assert a.matches(model_fingerprint(tiny_model(kind).to(torch.bfloat16)))  # same weights, other dtype
    assert not a.matches(model_fingerprint(tiny_model(kind, seed=5)))


def test_bake_refuses_other_weights(kind, tmp_path):
    model = tiny_model(kind)
    adapter = random_adapter(model)
    with pytest.raises(FingerprintMismatch):
        bake(tiny_model(kind, seed=5), adapter, tmp_path / "baked")
    assert not (tmp_path / "baked").exists()


# --------------------------------------------------------------------------- bad folders
def test_unknown_future_format_version(kind, tmp_path):
    _, _, folder = _saved(kind, tmp_path)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["format_version"] = FORMAT_VERSION + 98
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError) as info:
        SteeringAdapter.load(folder)
    message = str(info.value)
    assert f"format_version {FORMAT_VERSION + 98}" in message and str(FORMAT_VERSION) in message, message


def test_missing_tensor_is_named(kind, tmp_path):
    _, adapter, folder = _saved(kind, tmp_path)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    gone = "layers.0.neuron.direction"
    assert gone in tensors
    del tensors[gone]
    save_file(tensors, str(folder / WEIGHTS_NAME))
    with pytest.raises(AdapterFormatError) as info:
        SteeringAdapter.load(folder)
    assert gone in str(info.value) and "missing" in str(info.value), str(info.value)


def test_extra_tensor_is_named(kind, tmp_path):
    _, _, folder = _saved(kind, tmp_path)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    tensors["layers.1.neuron.gate"] = torch.zeros(1, tensors["layers.0.neuron.gate"].shape[1])
    save_file(tensors, str(folder / WEIGHTS_NAME))
    with pytest.raises(AdapterFormatError, match=r"layers\.1\.neuron\.gate"):
        SteeringAdapter.load(folder)


def test_wrong_shape_is_named(kind, tmp_path):
    _, _, folder = _saved(kind, tmp_path)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    tensors["layers.0.neuron.gate"] = tensors["layers.0.neuron.gate"][:, :-1].contiguous()
    save_file(tensors, str(folder / WEIGHTS_NAME))
    with pytest.raises(AdapterFormatError, match=r"layers\.0\.neuron\.gate.*shape"):
        SteeringAdapter.load(folder)


def test_nan_tensor_is_named(kind, tmp_path):
    _, _, folder = _saved(kind, tmp_path)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    bad = "layers.2.neuron.gate"
    tensors[bad][0, 3] = float("nan")
    save_file(tensors, str(folder / WEIGHTS_NAME))
    with pytest.raises(AdapterFormatError) as info:
        SteeringAdapter.load(folder)
    assert bad in str(info.value) and "NaN" in str(info.value), str(info.value)


def test_nan_refused_on_save(kind, tmp_path):
    adapter = random_adapter(tiny_model(kind))
    adapter.tensors["layers.0.neuron.direction"][1, 0] = float("nan")
    with pytest.raises(AdapterFormatError, match=r"layers\.0\.neuron\.direction.*NaN"):
        adapter.save(tmp_path / "a")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("cut", ["half", "empty", "length-prefix-only", "last-byte-missing"])
def test_truncated_weights_file(kind, tmp_path, cut):
    _, _, folder = _saved(kind, tmp_path)
    data = (folder / WEIGHTS_NAME).read_bytes()
    keep = {"half": len(data) // 2, "empty": 0, "length-prefix-only": 8, "last-byte-missing": len(data) - 1}[cut]
    (folder / WEIGHTS_NAME).write_bytes(data[:keep])
    with pytest.raises(AdapterFormatError) as info:
        SteeringAdapter.load(folder)
    message = str(info.value)
    assert WEIGHTS_NAME in message and "truncated" in message, message


def test_missing_folder_and_files(kind, tmp_path):
    with pytest.raises(AdapterFormatError, match="does not exist") as info:
        SteeringAdapter.load(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)
    with pytest.raises(AdapterFormatError, match="does not exist"):
        attach(tiny_model(kind), tmp_path / "nowhere")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(AdapterFormatError, match="not a folder"):
        SteeringAdapter.load(tmp_path / "afile")

    _, _, folder = _saved(kind, tmp_path)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(AdapterFormatError, match=CONFIG_NAME.replace(".", r"\.") + ".*missing"):
        SteeringAdapter.load(folder)

    _, _, folder = _saved(kind, tmp_path, name="adapter2")
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(AdapterFormatError, match=WEIGHTS_NAME.replace(".", r"\.") + ".*missing"):
        SteeringAdapter.load(folder)


def test_malformed_config(kind, tmp_path):
    _, _, folder = _saved(kind, tmp_path)
    original = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterFormatError, match="not valid JSON"):
        SteeringAdapter.load(folder)
    for field in ("fingerprint", "host", "layers"):
        broken = {k: v for k, v in original.items() if k != field}
        (folder / CONFIG_NAME).write_text(json.dumps(broken))
        with pytest.raises(AdapterFormatError, match=repr(field)):
            SteeringAdapter.load(folder)
    (folder / CONFIG_NAME).write_text(json.dumps({**original, "format": "something-else"}))
    with pytest.raises(AdapterFormatError, match="not a masteer adapter"):
        SteeringAdapter.load(folder)


# --------------------------------------------------------------------------- atomic saves
def _failing_save_file(real):
    def save_file_then_die(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:  # half a file, as a full disk or Ctrl-C would leave it
            fh.write(b"\x00" * 17)
        raise OSError("disk full (simulated)")
    return save_file_then_die


def test_interrupted_save_leaves_nothing(kind, tmp_path, monkeypatch):
    adapter = random_adapter(tiny_model(kind), additive_layer=1)
    monkeypatch.setattr(artifact, "write_safetensors", _failing_save_file(artifact.write_safetensors))
    with pytest.raises(OSError, match="simulated"):
        adapter.save(tmp_path / "adapter")
    assert _listing(tmp_path) == [], f"an interrupted save left {_listing(tmp_path)}"


def test_interrupted_overwrite_keeps_old_adapter(kind, tmp_path, monkeypatch):
    model, old, folder = _saved(kind, tmp_path)
    old_bytes = {name: (folder / name).read_bytes() for name in _listing(folder)}
    new = random_adapter(model, seed=99, counts={1: 2})
    monkeypatch.setattr(artifact, "write_safetensors", _failing_save_file(artifact.write_safetensors))
    with pytest.raises(OSError, match="simulated"):
        new.save(folder)
    assert _listing(tmp_path) == ["adapter"], f"leftovers: {_listing(tmp_path)}"
    assert {name: (folder / name).read_bytes() for name in _listing(folder)} == old_bytes
    reloaded = SteeringAdapter.load(folder)
    assert reloaded.config_dict() == old.config_dict()
    assert all(torch.equal(reloaded.tensors[k], v) for k, v in old.tensors.items())


def test_successful_overwrite_replaces_and_cleans_up(kind, tmp_path):
    model, _, folder = _saved(kind, tmp_path)
    new = random_adapter(model, seed=99, counts={1: 2})
    new.save(folder)
    assert _listing(tmp_path) == ["adapter"]
    assert SteeringAdapter.load(folder).config_dict() == new.config_dict()


# --------------------------------------------------------------------------- additive lowering
def test_additive_strategy_bakes_exactly_or_refuses_by_name(kind, tmp_path):
    from transformers import AutoModelForCausalLM
    model = tiny_model(kind)
    adapter = random_adapter(model, additive_layer=1)
    inputs = left_padded_batch()
    steered_logits = logits(SteeredModel(tiny_model(kind), adapter), inputs)
    target = tmp_path / "baked"
    victim = tiny_model(kind)
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    if not supports_additive_bake(kind):
        with pytest.raises(LoweringError) as info:
            bake(victim, adapter, target)
        assert "always_on" in str(info.value), str(info.value)
        assert not target.exists() and _listing(tmp_path) == []
        after = victim.state_dict()  # refused before touching the weights
        assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
        # Neurons alone still bake on this host.
        neurons_only = random_adapter(model)
        bake(tiny_model(kind), neurons_only, target)
        assert target.is_dir()
        return
    baked = AutoModelForCausalLM.from_pretrained(bake(victim, adapter, target)).eval()
    mask = inputs["attention_mask"].bool()
    diff = (logits(baked, inputs)[mask] - steered_logits[mask]).abs().max().item()
    assert diff <= 1e-4, f"{kind}: baked additive differs by {diff:.3e}"
    # An additive-only program (no neurons at all) bakes exactly too and leaves the MLP width alone.
    only = random_adapter(model, counts={}, additive_layer=2)
    steered_only = logits(SteeredModel(tiny_model(kind), only), inputs)
    assert (steered_only - logits(tiny_model(kind), inputs))[mask].abs().max().item() > 1e-2
    baked_only = AutoModelForCausalLM.from_pretrained(bake(tiny_model(kind), only, tmp_path / "only")).eval()
    assert (logits(baked_only, inputs)[mask] - steered_only[mask]).abs().max().item() <= 1e-4
    from masteer.runtime.hosts import intermediate_size
    assert intermediate_size(baked_only) == intermediate_size(tiny_model(kind))   # no padding without neurons
    assert "MLPs are" not in (tmp_path / "only" / "README.md").read_text()           # nor a width note on its card
