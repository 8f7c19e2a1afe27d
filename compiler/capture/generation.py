"""Batched greedy generation with left padding: the one way every stage generates text."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
from tqdm.auto import tqdm

from masteer.runtime import SteeredModel

from .activations import encode_prompt
from .prefill_sharing import active_store, batch_key
from .shared_prefix import batch_inputs
from ..common.prefix_replay import unhooked_prefix


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24, batch_size: int = 32,
             progress: bool = True, desc: str = "generating") -> list[str]:
    """Greedy completions, in prompt order; ``model`` may be a base model or a SteeredModel."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    base = getattr(model, "base_model", model) if isinstance(model, SteeredModel) else model
    store = active_store(base)   # prefills shared between the arms of a compile (``prefill_sharing``)
    prefix = unhooked_prefix(base) if store is not None else 0
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        batch = order[start:start + batch_size]
        # the rows' common prefix (chat header, system prompt) prefilled once (``shared_prefix``), outside the
        # prefill store's recording: the store sees the rows' own tokens, the same way for every arm
        inputs = batch_inputs(model, [encoded[i] for i in batch], tokenizer.pad_token_id, max_new_tokens)
        ids, mask = inputs.ids, inputs.mask
        with store.around(batch_key(ids, mask), prefix) if store is not None else nullcontext():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **inputs.cache_kwargs,
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for row, i in enumerate(batch):
            outputs[i] = tokenizer.decode(out[row, ids.shape[1]:], skip_special_tokens=True)
    return outputs
