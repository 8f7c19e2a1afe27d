"""The chat-backend contract the AutoTester's agents talk to, and the caching every backend shares.

Why one small contract: the agents (analyst, writer) only need "answer these conversations", and
the same pipeline must run on a 135M local model, a vLLM server or a hosted API. A backend turns a
batch of OpenAI-style message lists into strings, in order. Deterministic settings (greedy,
``temperature=0``) are the default so a seeded AutoTester run is reproducible; the disk cache
makes a re-run free and lets a run that died half-way resume where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Sequence

from masteer.runtime.errors import MasteerError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class BackendError(MasteerError):
    """A backend could not answer (unreachable server, exhausted retries, malformed reply, ...)."""


@dataclass(frozen=True)
class ChatParams:
    """Decoding settings; part of the cache key, so a change of settings is a new request."""
    max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.max_tokens <= 0:
            raise BackendError(f"max_tokens must be positive, got {self.max_tokens}")
        if self.temperature < 0:
            raise BackendError(f"temperature must be >= 0, got {self.temperature}")


def user(text: str, system: str | None = None) -> list[Message]:
    """A one-turn conversation, optionally with a system message."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """Messages as plain dicts with a known role and string content; raises BackendError otherwise."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise BackendError("a conversation must be a non-empty list of messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise BackendError(f"message {i} must be {{'role': system|user|assistant, 'content': str}}, "
                               f"got {message!r}")
        out.append({"role": message["role"], "content": message["content"]})
    return out


class ChatBackend:
    """Base class: caching and bookkeeping around ``_complete``, which subclasses implement.

    ``kind`` and ``model`` name the backend in every sample's provenance; ``stats`` counts cache
    hits and model calls so a summary can say what a run cost.
    """

    kind = "base"

    def __init__(self, model: str, cache=None):
        self.model = model
        self.cache = cache
        self.stats = {"requests": 0, "cache_hits": 0, "calls": 0}

    def describe(self) -> dict:
        return {"backend": self.kind, "model": self.model}

    def cache_key(self, messages: list[Message], params: ChatParams) -> str:
        payload = json.dumps({"kind": self.kind, "model": self.model, "messages": messages, "params": asdict(params)},
                             sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def chat(self, messages: Sequence[Message], params: ChatParams = ChatParams()) -> str:
        return self.chat_many([messages], params)[0]

    def chat_many(self, conversations: Sequence[Sequence[Message]], params: ChatParams = ChatParams(),
                  progress: bool = False, desc: str = "backend") -> list[str]:
        """Answers in the order asked; cached answers are not asked again."""
        convs = [check_messages(c) for c in conversations]
        keys = [self.cache_key(c, params) for c in convs]
        out: list[str | None] = [None] * len(convs)
        missing = []
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                out[i] = hit
            else:
                missing.append(i)
        self.stats["requests"] += len(convs)
        self.stats["cache_hits"] += len(convs) - len(missing)
        if missing:
            # A key asked twice in one batch is answered once.
            unique = list(dict.fromkeys(keys[i] for i in missing))
            first = {keys[i]: i for i in reversed(missing)}
            answers = self._complete([convs[first[k]] for k in unique], params, progress, desc)
            self.stats["calls"] += len(unique)
            by_key = dict(zip(unique, answers))
            for i in missing:
                out[i] = by_key[keys[i]]
            if self.cache is not None:
                for key, answer in by_key.items():
                    self.cache.put(key, answer, {"backend": self.kind, "model": self.model})
        return [str(o) for o in out]

    def _complete(self, conversations: list[list[Message]], params: ChatParams, progress: bool,
                  desc: str) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError
