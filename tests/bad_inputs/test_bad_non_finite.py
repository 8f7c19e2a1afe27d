"""Silently wrong: nothing non-finite is ever written or trusted. Scales and strengths are bounded where they
enter, merged weights are checked before saving, a checkpoint holding NaN/Inf is refused in one line, and a
negative scale is recorded where the checkpoint says what it holds."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bad_input_helpers import invoke, one_line_error, tree_digest
from tiny_models import byte_tokenizer, tiny_chat_model

from masteer.compiler import cli
from masteer.runtime import SteeredModel, SteeringAdapter, save_baked
from masteer.runtime.errors import MasteerError


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf", "1e39", "101"])
def test_bake_refuses_a_non_finite_or_huge_scale_and_writes_nothing(adapter_dir, model_dir, tmp_path, scale):
    out = tmp_path / "baked"
    line = one_line_error(invoke(cli.main, ["bake", adapter_dir, "--model", model_dir, "--out", out,
                                            "--scale", scale]))
    assert "--scale" in line and "finite" in line
    assert os.listdir(tmp_path) == []


def test_an_adapter_strength_of_1e39_is_refused_when_loaded(adapter_dir, model_dir, tmp_path):
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in os.listdir(adapter_dir):
        (edited / name).write_bytes((adapter_dir / name).read_bytes())
    config = json.loads((edited / "adapter_config.json").read_text())
    first = next(iter(config["layers"].values()))[0]
    first["strength"] = 1e39
    (edited / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "baked"
    line = one_line_error(invoke(cli.main, ["bake", edited, "--model", model_dir, "--out", out]))
    assert first["name"] in line and "1e+39" in line
    assert not out.exists()


def test_merged_weights_with_nan_are_not_saved(tmp_path):
    model = tiny_chat_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(MasteerError, match="layers.1.mlp.down_proj.weight"):
        save_baked(model, tmp_path / "baked")
    assert os.listdir(tmp_path) == []


def test_eval_refuses_a_checkpoint_with_nan_weights_in_one_line(model_dir, tmp_path):
    broken = tmp_path / "nan-checkpoint"
    model = tiny_chat_model("llama")
    with torch.no_grad():
        model.lm_head.weight[3] = float("inf")
    model.save_pretrained(broken)
    byte_tokenizer().save_pretrained(broken)
    line = one_line_error(invoke(cli.main, ["eval", "--model", model_dir, "--checkpoint", broken, "--suite", "kl",
                                            "--n", "2", "--out", tmp_path / "report", "--quiet"]))
    assert str(broken) in line and "NaN/Inf" in line and "lm_head.weight" in line


def test_a_negative_scale_is_recorded_and_baked_exactly(adapter_dir, model_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    out = tmp_path / "reversed"
    result = invoke(cli.main, ["bake", adapter_dir, "--model", model_dir, "--out", out, "--scale", "-1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "masteer_program.json").read_text())["baked_scale"] == -1.0
    card = (out / "README.md").read_text()
    assert "Baked at scale -1" in card and "reverses" in card
    ids = torch.tensor([[5, 40, 77, 120, 9, 200, 31]])
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    steered = SteeredModel(base, SteeringAdapter.load(adapter_dir))
    with torch.no_grad():
        plus = steered(input_ids=ids).logits
        with steered.scaled(-1.0):
            minus = steered(input_ids=ids).logits
        steered.detach()
        baked = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(input_ids=ids).logits
    assert (plus - minus).abs().max() > 1e-2            # the sign matters on this input
    assert (baked - minus).abs().max() <= 1e-4          # and the checkpoint holds the reversed program


def test_an_unchanged_adapter_folder_after_a_refused_bake(adapter_dir, model_dir, tmp_path):
    before = tree_digest(adapter_dir)
    one_line_error(invoke(cli.main, ["bake", adapter_dir, "--model", model_dir, "--out", tmp_path / "b",
                                     "--scale", "nan"]))
    assert tree_digest(adapter_dir) == before


def test_a_recipe_strength_of_1e39_is_refused_before_work(tmp_path, monkeypatch):
    import masteer.compiler.common.models as models
    from masteer.compiler.samples.recipes import builtin_recipes
    monkeypatch.setattr(models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    text = builtin_recipes()["refusal"].read_text()
    recipe = tmp_path / "huge.toml"
    recipe.write_text(text.replace("strength = ", "strength = 1e39 #", 1))
    line = one_line_error(invoke(cli.compile_command, [recipe, "--out", tmp_path / "out"]))
    assert str(recipe) in line and "'defaults.strength'" in line and "1e+39" in line
