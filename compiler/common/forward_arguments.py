"""What a model's forward accepts, read off its signature: wrappers and transformers versions differ."""

from __future__ import annotations

import inspect

from masteer.runtime import SteeredModel


def forward_takes(model, argument: str) -> bool:
    """Whether the model's forward takes ``argument`` (transformers causal LMs take ``logits_to_keep`` and
    ``use_cache``; a wrapper may not). A ``SteeredModel`` passes every argument to its base model, so the base
    model's forward decides (it had answered no: the steered arms of the evaluation projected every position
    onto the vocabulary, the base arm only the last ones)."""
    if isinstance(model, SteeredModel):
        model = model.base_model
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def cache_argument(model) -> str:
    """The keyword a forward (and ``generate``) takes a KV cache by: ``cache`` in recent transformers, where
    ``past_key_values`` is deprecated, ``past_key_values`` before."""
    return "cache" if forward_takes(model, "cache") else "past_key_values"


def output_cache(output) -> object | None:
    """The KV cache a forward returned (``cache`` in recent transformers, ``past_key_values`` before), if it is
    one with per-layer entries (``cache.layers``), the form the prefill store and the shared prefix handle."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    return cache if hasattr(cache, "layers") else None
