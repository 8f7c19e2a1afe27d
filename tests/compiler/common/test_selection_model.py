"""The bfloat16 copy the compile's selection stages run on: a faithful copy, never the model itself."""

from __future__ import annotations

import pytest
import torch

from tiny_models import byte_tokenizer, tiny_chat_model

from masteer.compiler.common.models import LoadedModel
from masteer.compiler.common.selection_model import bfloat16_copy, resolve_precision, selection_model
from masteer.compiler.pipeline import CompileOptions
from masteer.runtime import SteeredModel, model_fingerprint
from masteer.runtime.errors import MasteerError


def _loaded(kind="qwen2"):
    return LoadedModel(tiny_chat_model(kind), byte_tokenizer(), f"tiny-{kind}")


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_the_copy_is_bfloat16_close_to_the_model_and_leaves_it_untouched(kind):
    loaded = _loaded(kind)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    chooser, precision = selection_model(loaded, "bf16")
    assert precision == "bf16" and chooser is not loaded and chooser.tokenizer is loaded.tokenizer
    assert {p.dtype for p in chooser.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    ids = torch.randint(3, 120, (2, 12))
    with torch.no_grad():
        exact = loaded.model(input_ids=ids).logits
        fast = chooser.model(input_ids=ids).logits.float()
    assert not torch.equal(exact, fast)                              # it is another precision...
    assert (exact - fast).abs().max() < 0.05 * exact.abs().max()     # ...of the same model
    # an adapter made for the model attaches to the copy (the fingerprint tolerates bfloat16)
    assert model_fingerprint(loaded.model).matches(model_fingerprint(chooser.model))


def test_tied_weights_stay_tied_and_buffers_keep_their_dtype():
    model = tiny_chat_model("qwen2")   # ties its embeddings and output projection
    assert model.lm_head.weight is model.model.embed_tokens.weight
    copy = bfloat16_copy(model)
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    assert {b.dtype for b in copy.buffers()} == {b.dtype for b in model.buffers()}
    assert not copy.training


def test_exact_selects_on_the_model_itself_and_auto_follows_the_device():
    loaded = _loaded()
    assert selection_model(loaded, "exact") == (loaded, "exact")
    chooser, precision = selection_model(loaded, "auto")
    assert precision in ("bf16", "exact") and (chooser is loaded) == (precision == "exact")
    half = LoadedModel(tiny_chat_model("qwen2").to(torch.float16), byte_tokenizer(), "tiny-fp16")
    assert resolve_precision("auto", half.model) == "exact"          # only a float32 model gets a copy
    for precision in ("bf16", "bf16-search"):
        with pytest.raises(MasteerError, match=f"selection precision {precision} needs a float32 or bfloat16 model"):
            resolve_precision(precision, half.model)
    chooser, precision = selection_model(_loaded(), "bf16-search")   # the copy is made; the caller decides its use
    assert precision == "bf16-search" and {p.dtype for p in chooser.model.parameters()} == {torch.bfloat16}


def test_a_steered_copy_runs():
    from tiny_models import random_adapter
    loaded = _loaded("llama")
    chooser, _ = selection_model(loaded, "bf16")
    steered = SteeredModel(chooser.model, random_adapter(loaded.model))
    try:
        out = steered(input_ids=torch.randint(3, 120, (1, 8))).logits
    finally:
        steered.detach()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("value", ["fast", "", None, "BF16"])
def test_an_unknown_precision_is_refused_where_it_is_given(value):
    with pytest.raises(MasteerError, match="selection_precision must be one of auto, exact, bf16, bf16-search"):
        CompileOptions(selection_precision=value)
    with pytest.raises(MasteerError, match="selection precision must be one of"):
        resolve_precision(value, tiny_chat_model("llama"))
