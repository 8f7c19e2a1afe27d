"""One exact-bake measurement shared by the tiny-model tests and the real-weights tests.

It keeps at most two copies of a model in memory (the steered one, baked in place afterwards, and the
baked folder loaded back), so a 0.5B float32 model fits next to other work. Every number a test needs
is returned; the tests assert on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from masteer.runtime import SteeredModel, save_baked


@dataclass
class BakeCheck:
    logit_diff: float        # max |baked - adapter| over the non-padding positions of a left-padded batch
    effect: float            # max |adapter - base| there: steering must move the logits for the above to mean anything
    same_tokens: bool        # greedy KV-cache generation: the same tokens from the adapter and the baked model
    step_diff: float         # max |baked - adapter| over the generation scores of every step
    cache_diff: float        # max |adapter with KV cache - adapter recomputing the prefix| over those steps
    new_tokens: int


def greedy(model, inputs: dict, new_tokens: int, pad_id: int, use_cache: bool = True):
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id, eos_token_id=None,
                              bos_token_id=None, use_cache=use_cache, output_scores=True,
                              return_dict_in_generate=True)
    with torch.no_grad():
        return model.generate(**inputs, generation_config=config)


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def check_bake(model, adapter, inputs: dict, folder, pad_id: int, new_tokens: int = 4) -> BakeCheck:
    """Attach ``adapter`` to ``model``, bake it into the same model, write it to ``folder`` and load it back
    with plain transformers; compare logits on ``inputs`` (left padded) and greedy KV-cache generation.
    ``model`` is consumed (baked in place)."""
    mask = inputs["attention_mask"].bool()
    dtype = next(model.parameters()).dtype
    steered = SteeredModel(model, adapter)
    with torch.no_grad():
        steered_logits = steered(**inputs).logits.float()
        with steered.disable_adapter():
            base_logits = steered(**inputs).logits.float()
    steered_gen = greedy(steered, inputs, new_tokens, pad_id)
    nocache_gen = greedy(steered, inputs, new_tokens, pad_id, use_cache=False)
    save_baked(steered.merge_and_unload(), folder, adapter=adapter)
    del steered, model
    baked = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    with torch.no_grad():
        baked_logits = baked(**inputs).logits.float()
    baked_gen = greedy(baked, inputs, new_tokens, pad_id)
    return BakeCheck(
        logit_diff=_max(baked_logits[mask], steered_logits[mask]),
        effect=_max(steered_logits[mask], base_logits[mask]),
        same_tokens=torch.equal(steered_gen.sequences, baked_gen.sequences),
        step_diff=max(_max(a, b) for a, b in zip(steered_gen.scores, baked_gen.scores)),
        cache_diff=max(_max(a, b) for a, b in zip(steered_gen.scores, nocache_gen.scores)),
        new_tokens=len(baked_gen.scores))
