"""A baked checkpoint in vLLM itself (runs when vLLM's venv exists: ``bash tools/vllm_setup.sh``).

A tiny random Llama (head size 64, which vLLM's CPU attention kernels take) with a random steering program baked
in (gated neurons on two layers and an always-on vector, so a widened MLP and Llama's ``mlp_bias``), saved to a
temporary folder: vLLM's greedy tokens, from tools/vllm_worker.py in vLLM's venv, equal transformers' in float32,
for the base and the baked checkpoint, and the steering changed the answers."""

from __future__ import annotations

import warnings

import pytest
import torch

from tool_scripts import load_tool

vc = load_tool("vllm_check")

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(not vc.DEFAULT_VLLM_PYTHON.exists(),
                                 reason=f"no vLLM venv at {vc.DEFAULT_VLLM_PYTHON} (bash tools/vllm_setup.sh)")]

PROMPTS = [[1, 40, 77, 120, 9, 200, 33, 61], [1, 7, 8, 9], [1, 250, 3, 3, 100, 17], [1, 60]]
STOPS = [2]
NEW_TOKENS = 12


def tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig
    config = LlamaConfig(vocab_size=264, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, initializer_range=0.2)
    torch.manual_seed(0)   # a wide initialisation: decisive logits, no near-ties for the two engines to split
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.config.architectures = [type(model).__name__]
    return model


def test_vllm_gives_transformers_greedy_tokens_in_float32_base_and_baked(tmp_path):
    from transformers import AutoModelForCausalLM

    from masteer.runtime import bake
    from tiny_models import byte_tokenizer, random_adapter
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    base_dir = tmp_path / "base"
    model = tiny_llama()
    model.save_pretrained(base_dir)
    byte_tokenizer().save_pretrained(base_dir)
    adapter = random_adapter(model, counts={0: 3, 1: 2}, additive_layer=2, strength=6.0)
    baked_dir = bake(tiny_llama(), adapter, tmp_path / "baked", tokenizer=byte_tokenizer())
    answers = {}
    for arm, folder in (("base", base_dir), ("baked", baked_dir)):
        reference = vc.transformers_answers(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
                                            PROMPTS, NEW_TOKENS, STOPS)
        served = vc.run_vllm(vc.DEFAULT_VLLM_PYTHON, folder, "float32", PROMPTS, STOPS, NEW_TOKENS, 1, tmp_path,
                             timeout=600)
        print(arm, "transformers", reference, "vllm", served["tokens"])
        assert served["tokens"] == reference
        assert served["rounds"][0]["tokens"] == NEW_TOKENS * len(PROMPTS)   # timed rounds ignore end-of-sequence
        answers[arm] = reference
    assert answers["baked"] != answers["base"]   # the baked program is active in what vLLM served
