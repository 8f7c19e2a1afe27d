"""The main commands succeed through the command line, on a tiny random model saved to disk as a user's model
would be: ``masteer-compile`` (both modes) writes a complete adapter folder, and ``masteer bake`` turns it
into a checkpoint that plain transformers loads and that gives the adapter's logits."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from tiny_models import byte_tokenizer, tiny_chat_model

from masteer.compiler import cli
from masteer.compiler.capture.activations import encode_prompt
from masteer.compiler.samples.sample_set import TARGET, SampleSet
from masteer.runtime import NEURON, SteeredModel, SteeringAdapter


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tiny_chat_model("llama").save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("mode, extra", [("single", ["--no-suites", "--max-new-tokens", "2"]),
                                         ("adaptive", ["--no-eval", "--budget", "10"])])
def test_compile_then_bake_through_the_cli(model_dir, small_samples, tmp_path, mode, extra):
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    out = tmp_path / "adapter"
    result = CliRunner().invoke(cli.compile_command, ["refusal", "--model", str(model_dir), "--samples",
                                                      str(small_samples), "--layers", "0,1", "--out", str(out),
                                                      "--mode", mode, "--quiet", *extra])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md",
                                                "samples.jsonl", "compile_report.json"}
    report = json.loads((out / "compile_report.json").read_text())
    assert report["samples"]["hash"] == SampleSet.load(small_samples).content_hash
    adapter = SteeringAdapter.load(out)
    assert adapter.strategies and adapter.base_model_name_or_path == str(model_dir)

    baked = tmp_path / "baked"
    result = CliRunner().invoke(cli.main, ["bake", str(out), "--model", str(model_dir), "--out", str(baked)])
    assert result.exit_code == 0, result.output
    tokenizer = byte_tokenizer()
    target = next(s for s in SampleSet.load(small_samples).select(split="train", label=TARGET) if s.positive)
    ids = torch.tensor([encode_prompt(tokenizer, target.prompt) + tokenizer(target.positive)["input_ids"]])
    base_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        base = base_model(input_ids=ids).logits
        steered = SteeredModel(base_model, adapter)
        try:
            expected = steered(input_ids=ids).logits
        finally:
            steered.detach()
        got = AutoModelForCausalLM.from_pretrained(baked, dtype=torch.float32).eval()(input_ids=ids).logits
    assert (expected - base).abs().max() > 1e-3          # the adapter steers this target sequence
    assert (got - expected).abs().max() <= 1e-4          # and the baked checkpoint does exactly the same

    exact = tiny_chat_model("llama").config.intermediate_size + max(
        len(adapter.layer_strategies(layer, NEURON)) for layer in adapter.layers)
    padded = json.loads((baked / "config.json").read_text())["intermediate_size"]
    assert padded % 64 == 0 and padded > exact and f"MLP {padded} wide" in result.output   # the default: aligned
    assert json.loads((baked / "masteer_program.json").read_text())["baked_mlp_width"] == padded
    unpadded = tmp_path / "baked-unpadded"
    result = CliRunner().invoke(cli.main, ["bake", str(out), "--model", str(model_dir), "--out", str(unpadded),
                                           "--pad-to", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads((unpadded / "config.json").read_text())["intermediate_size"] == exact
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(unpadded, dtype=torch.float32).eval()(input_ids=ids).logits
    assert (got - expected).abs().max() <= 1e-4
