"""Gemma-3 (``gemma3_text``) as a host: a tiny random model with sliding-window layers and sandwich norms.

Gemma-3 normalises each sublayer's output (``post_feedforward_layernorm``) before the residual add.
Steering neurons still bake exactly because the adapter adds its delta to the MLP's output, before that
norm, where widened ``down_proj`` columns write too; these tests pin that placement and its consequence
(the write into the residual saturates), and what Gemma-3 cannot lower (ablation, always-on vectors).
"""

from __future__ import annotations

import math

import pytest
import torch

from bake_checks import check_bake
from masteer.runtime import SteeredModel, merge_into_model
from masteer.runtime.errors import HostNotSupported, LoweringError
from masteer.runtime.hosts import GATED, decoder_layers, host_layout
from tiny_models import PAD_ID, left_padded_batch, random_adapter, tiny_model

ATOL = 1e-4
MIN_EFFECT = 1e-2


def test_gemma3_text_is_a_gated_host_with_sublayer_output_norms():
    model = tiny_model("gemma3_text")
    layout = host_layout(model)
    assert (layout.form, layout.sublayer_output_norm) == (GATED, True)
    assert model.config.layer_types[:2] == ["sliding_attention", "sliding_attention"]


def test_baked_gemma3_equals_adapter_with_left_padding_and_kv_cache(tmp_path):
    inputs = left_padded_batch(lengths=(9, 4, 7))   # longer than the sliding window of 4
    model = tiny_model("gemma3_text")
    result = check_bake(model, random_adapter(model), inputs, tmp_path / "baked", pad_id=PAD_ID, new_tokens=6)
    assert result.effect > MIN_EFFECT, "steering should change the logits"
    assert result.logit_diff <= ATOL
    assert result.same_tokens and result.new_tokens == 6
    assert result.step_diff <= ATOL
    assert result.cache_diff <= ATOL


def _layer_write(model, adapter, inputs, layer: int) -> torch.Tensor:
    """How much the adapter changes the residual stream leaving ``layer`` ([batch, seq, hidden])."""
    out = {}
    block = decoder_layers(model)[layer]
    handle = block.register_forward_hook(lambda m, a, o: out.__setitem__("h", (o[0] if isinstance(o, tuple) else o)))
    steered = SteeredModel(model, adapter)
    try:
        with torch.no_grad():
            steered(**inputs)
            steered_h = out["h"].clone()
            with steered.disable_adapter():
                steered(**inputs)
    finally:
        handle.remove()
        steered.detach()
    return steered_h - out["h"]


def test_steering_enters_before_the_post_mlp_norm_so_its_write_saturates():
    """At strength 1000 the residual write stays within 2 sqrt(hidden) times the norm's largest gain: the
    delta is normalised together with the MLP's output, exactly where the baked columns write too. Added
    after the norm, the write would grow with the strength (on this model to hundreds)."""
    model = tiny_model("gemma3_text")
    inputs = left_padded_batch(lengths=(5, 5))
    layer = 2   # one neuron there, nothing after it
    small = random_adapter(model, counts={layer: 1}, strength=1.0)
    large = random_adapter(model, counts={layer: 1}, strength=1000.0)
    mask = inputs["attention_mask"].bool()
    write_small = _layer_write(model, small, inputs, layer)[mask].norm(dim=-1)
    write_large = _layer_write(model, large, inputs, layer)[mask].norm(dim=-1)
    gain = (1.0 + decoder_layers(model)[layer].post_feedforward_layernorm.weight).abs().max().item()
    bound = 2 * math.sqrt(model.config.hidden_size) * gain
    assert write_small.max().item() > 0.5, "the neuron should be open on some token"
    assert write_large.max().item() <= bound, "a write added after the norm would grow with the strength"


def test_gemma3_refuses_ablation_and_always_on_vectors_by_name():
    model = tiny_model("gemma3_text")
    ablation = random_adapter(model, counts={})
    direction = torch.nn.functional.normalize(torch.randn(1, model.config.hidden_size), dim=-1)
    ablation.add_ablation("abl", direction=direction, normalize=True)
    with pytest.raises(HostNotSupported, match="gemma3_text.*normalises"):
        SteeredModel(model, ablation)
    additive = random_adapter(model, counts={}, additive_layer=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LoweringError, match="gemma3_text"):
        merge_into_model(model, additive)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
