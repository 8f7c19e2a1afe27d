"""The PEFT LoRA lowering: PEFT and transformers load it with the masteer runtime's logits, its merge equals
``masteer bake``, gated programs are refused in one line, and a masteer adapter folder handed to PEFT or
transformers stops them with one line saying what to do.

Every equality is preceded by a check that the steering changes the logits, so it cannot pass because nothing
happened. The tiny models have random norm weights, so a merge that moved a tied LM head would show.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from masteer.compiler import cli
from masteer.compiler.lowering.lora import plan_lora, save_lora
from masteer.runtime import LoweringError, attach, merge_into_model
from tiny_models import HIDDEN, MODEL_KINDS, left_padded_batch, logits, max_diff, random_adapter
from tiny_models import tiny_model_random_norms as tiny_model

ATOL = 1e-4
MIN_EFFECT = 1e-2
CASES = ("additive", "ablation", "both")


@pytest.fixture(autouse=True)
def _quiet():
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # PEFT warns about tied embeddings and lora_bias on bias-less layers
        yield


def program(model, case: str):
    """An always-on vector on layer 1, a rank-2 directional ablation, or both."""
    adapter = random_adapter(model, counts={}, additive_layer=None if case == "ablation" else 1)
    if case != "additive":
        directions = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(5))
        adapter.add_ablation("no_refusal", direction=directions, normalize=True, strength=1.0)
    return adapter


def runtime_logits(model, adapter, batch, scale: float = 1.0):
    steered = attach(model, adapter)
    steered.set_scale(scale)
    try:
        return logits(model, batch)
    finally:
        steered.detach()


def mergeable(kind: str, case: str) -> bool:
    """PEFT merges a lora_bias only into a layer that has a bias: GPT-2's MLPs do, Llama's and Qwen2's do not."""
    return case == "ablation" or kind == "gpt2"


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("case", CASES)
def test_peft_loads_the_lowering_with_the_runtime_logits(kind, case, tmp_path):
    from peft import PeftModel
    model, batch = tiny_model(kind), left_padded_batch()
    adapter = program(model, case)
    base = logits(model, batch)
    steered = runtime_logits(model, adapter, batch)
    assert max_diff(steered, base) > MIN_EFFECT
    path = save_lora(model, adapter, tmp_path / "lora")
    assert max_diff(logits(model, batch), base) == 0.0, "the export must leave the caller's model as it was"
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["lora_alpha"] == config["r"]
    peft_model = PeftModel.from_pretrained(tiny_model(kind), path).eval()
    assert max_diff(logits(peft_model, batch), steered) <= ATOL
    with peft_model.disable_adapter():
        assert max_diff(logits(peft_model, batch), base) == 0.0


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("case", CASES)
def test_merge_and_unload_equals_masteer_bake(kind, case, tmp_path):
    from peft import PeftModel
    model, batch = tiny_model(kind), left_padded_batch()
    adapter = program(model, case)
    path = save_lora(model, adapter, tmp_path / "lora", scale=0.5)
    peft_model = PeftModel.from_pretrained(tiny_model(kind), path)
    if not mergeable(kind, case):
        with pytest.raises(RuntimeError, match="lora_bias"):
            peft_model.merge_and_unload()
        return
    merged = peft_model.merge_and_unload()
    baked = merge_into_model(tiny_model(kind), adapter, scale=0.5)
    assert max_diff(logits(baked, batch), logits(tiny_model(kind), batch)) > MIN_EFFECT
    assert max_diff(logits(merged, batch), logits(baked, batch)) <= ATOL
    merged_weights, baked_weights = merged.state_dict(), baked.state_dict()
    shared = [k for k in baked_weights if k in merged_weights and merged_weights[k].shape == baked_weights[k].shape]
    assert len(shared) == len(baked_weights), "the merged model has the baked one's tensors"
    assert max(max_diff(merged_weights[k], baked_weights[k]) for k in shared) <= 1e-5
    untied = merged.get_output_embeddings().weight.data_ptr() != merged.get_input_embeddings().weight.data_ptr()
    assert untied == (case != "additive"), "an ablation leaves the LM head on the original embedding, as the bake"


def test_transformers_loads_the_lowering_by_path_and_by_load_adapter(tmp_path):
    from transformers import AutoModelForCausalLM
    model, batch = tiny_model("llama"), left_padded_batch()
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    adapter = program(model, "both")
    adapter.base_model_name_or_path = str(base_dir)
    steered = runtime_logits(model, adapter, batch)
    path = save_lora(model, adapter, tmp_path / "lora")
    by_path = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert max_diff(logits(by_path, batch), steered) <= ATOL
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    plain.load_adapter(str(path))
    assert max_diff(logits(plain, batch), steered) <= ATOL


def test_a_gated_program_is_refused_in_one_line_that_points_to_bake(tmp_path):
    model = tiny_model("llama")
    adapter = random_adapter(model, additive_layer=1)          # neurons: gated strategies
    with pytest.raises(LoweringError) as err:
        save_lora(model, adapter, tmp_path / "lora")
    assert "\n" not in str(err.value) and "masteer bake" in str(err.value) and "s0_0" in str(err.value)
    assert not (tmp_path / "lora").exists() and not list(tmp_path.iterdir())


def test_a_rotation_and_an_empty_program_are_refused(tmp_path):
    model = tiny_model("llama")
    adapter = random_adapter(model, counts={})
    with pytest.raises(LoweringError, match="nothing to lower"):
        plan_lora(model, adapter)
    adapter.add_rotation(1, "turn", direction=torch.randn(HIDDEN), degrees=10, normalize=True)
    with pytest.raises(LoweringError, match="rotation strategies \\['turn'\\]"):
        plan_lora(model, adapter)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_the_lowering_ranks(kind):
    """Rank K for a K-direction ablation on every residual writer; rank 1, weights zero, for a vector alone."""
    model = tiny_model(kind)
    plan = plan_lora(model, program(model, "additive"))
    assert plan.rank == 1 and len(plan.updates) == 1 and not plan.replaced
    (update,) = plan.updates.values()
    assert update.a.abs().max() == 0 and update.b.abs().max() == 0 and update.bias.norm() > 0.5
    plan = plan_lora(model, program(model, "ablation"))
    layers = model.config.num_hidden_layers
    assert plan.rank == 2 and len(plan.updates) == 2 * layers
    assert len(plan.replaced) == (2 if kind == "gpt2" else 1)   # token (and GPT-2's position) embeddings


def test_peft_and_transformers_pointed_at_a_masteer_adapter_say_what_to_do(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model = tiny_model("llama")
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    adapter = random_adapter(model)
    adapter.base_model_name_or_path = str(base_dir)   # a local base: no network involved
    folder = adapter.save(tmp_path / "masteer")
    for load in (lambda: PeftModel.from_pretrained(tiny_model("llama"), folder),
                 lambda: AutoModelForCausalLM.from_pretrained(folder),
                 lambda: tiny_model("llama").load_adapter(str(folder))):
        with pytest.raises(KeyError) as err:
            load()
        message = str(err.value)
        assert "masteer steering adapter" in message and "masteer bake" in message and "\n" not in message


def small_tokenizer(size: int):
    """A word-level tokenizer with ``size`` tokens: a saved model folder needs one that fits its embedding
    (loading refuses a tokenizer larger than the vocabulary), and the byte tokenizer has 259."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def test_export_lora_through_the_cli(tmp_path):
    from peft import PeftModel
    model, batch = tiny_model("gpt2"), left_padded_batch()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    small_tokenizer(model.config.vocab_size).save_pretrained(model_dir)   # within the model's vocabulary
    adapter = program(model, "both")
    steered = runtime_logits(model, adapter, batch)
    adapter.save(tmp_path / "adapter")
    out = tmp_path / "lora"
    result = CliRunner().invoke(cli.main, ["export", "lora", str(tmp_path / "adapter"), "--model", str(model_dir),
                                           "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "PeftModel.from_pretrained" in result.output
    peft_model = PeftModel.from_pretrained(tiny_model("gpt2"), out).eval()
    assert max_diff(logits(peft_model, batch), steered) <= ATOL
    gated = random_adapter(model)
    gated.save(tmp_path / "gated")
    result = CliRunner().invoke(cli.main, ["export", "lora", str(tmp_path / "gated"), "--model", str(model_dir),
                                           "--out", str(tmp_path / "lora2")])
    assert result.exit_code == 1 and "masteer bake" in result.output and not (tmp_path / "lora2").exists()
