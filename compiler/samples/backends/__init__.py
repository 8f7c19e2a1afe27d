"""Chat backends for the AutoTester: a local ``transformers`` model or an OpenAI-compatible endpoint.

``make_backend("local", model)`` / ``make_backend("openai", model)`` build one with the shared
disk cache (``cache=False`` turns it off); ``"none"`` means "no LLM": the AutoTester then writes
samples from templates and retrieved seed items only.
"""

from __future__ import annotations

import os

from .base import BackendError, ChatBackend, ChatParams, Message, user
from .cache import DiskCache, default_cache_dir

KINDS = ("local", "openai", "none")


def make_backend(kind: str, model: str | None = None, cache: bool | str | os.PathLike = True,
                 **options) -> ChatBackend | None:
    """A backend by kind; ``options`` go to the backend (e.g. ``base_url``, ``timeout``, ``concurrency``)."""
    store = None if cache is False else DiskCache(None if cache is True else cache)
    if kind == "none":
        return None
    if kind == "local":
        from ...common.models import EMBEDDED_NAME
        from .local import LocalBackend
        return LocalBackend(model or EMBEDDED_NAME, cache=store, **options)
    if kind == "openai":
        from .openai_http import OpenAIBackend
        if not model:
            raise BackendError("the openai backend needs --model: the model name the endpoint serves")
        return OpenAIBackend(model, cache=store, **options)
    raise BackendError(f"unknown backend {kind!r}; known: {', '.join(KINDS)}")


__all__ = ["BackendError", "ChatBackend", "ChatParams", "DiskCache", "KINDS", "Message", "default_cache_dir",
           "make_backend", "user"]
