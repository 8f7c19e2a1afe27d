"""Any OpenAI-compatible chat-completions endpoint as a backend (vLLM, llama.cpp server, Ollama, hosted APIs).

Why only the standard library: the client is a POST of JSON and a parse of JSON; ``urllib`` does
that, and a dependency would add nothing but weight. What a real endpoint needs, and this does:

- base URL and key from the environment (``MASTEER_OPENAI_BASE_URL`` or ``OPENAI_BASE_URL``;
  ``MASTEER_OPENAI_API_KEY`` or ``OPENAI_API_KEY``), or passed in;
- a timeout per attempt; retries with exponential backoff on 429 and 5xx, on timeouts and on
  refused connections, honouring ``Retry-After``; other 4xx fail at once (retrying a bad request
  changes nothing); every give-up names the URL, the status and the attempts made;
- a concurrency limit (a thread pool of ``concurrency`` workers; answers keep the asked order);
- the shared disk cache, so a re-run sends nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from tqdm.auto import tqdm

from .base import BackendError, ChatBackend, ChatParams, Message

BASE_URL_VARS = ("MASTEER_OPENAI_BASE_URL", "OPENAI_BASE_URL")
API_KEY_VARS = ("MASTEER_OPENAI_API_KEY", "OPENAI_API_KEY")
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def _from_env(names: tuple[str, ...]) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def completions_url(base_url: str) -> str:
    """``.../v1`` or a server root -> its chat-completions URL."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend(ChatBackend):
    kind = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, cache=None,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 0.5, max_backoff: float = 20.0,
                 concurrency: int = 4, sleep: Callable[[float], None] = time.sleep):
        super().__init__(model, cache=cache)
        base_url = base_url or _from_env(BASE_URL_VARS)
        if not base_url:
            raise BackendError(f"the OpenAI-compatible backend needs a base URL: set {BASE_URL_VARS[0]} (or "
                               f"{BASE_URL_VARS[1]}), e.g. http://127.0.0.1:8000/v1")
        if not base_url.startswith(("http://", "https://")):
            raise BackendError(f"base URL must start with http:// or https://, got {base_url!r}")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise BackendError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        self.url = completions_url(base_url)
        self.api_key = api_key if api_key is not None else _from_env(API_KEY_VARS)
        self.timeout, self.max_retries, self.concurrency = timeout, max_retries, concurrency
        self.backoff, self.max_backoff, self.sleep = backoff, max_backoff, sleep

    def describe(self) -> dict:
        return {"backend": self.kind, "model": self.model, "url": self.url}

    # ------------------------------------------------------------------ one request
    def _attempt(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            if exc.code in RETRY_STATUSES:
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                try:
                    wait = float(retry_after) if retry_after is not None else None
                except ValueError:
                    wait = None
                raise _Retryable(f"HTTP {exc.code}: {detail}", wait) from None
            raise BackendError(f"{self.url} answered HTTP {exc.code} (not retried): {detail}") from None
        except (TimeoutError, socket.timeout) as exc:
            raise _Retryable(f"timed out after {self.timeout:g} s ({exc})") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"timed out after {self.timeout:g} s") from None
            raise _Retryable(f"cannot connect: {exc.reason}") from None
        except (ConnectionError, OSError) as exc:  # reset or closed half-way through the reply
            raise _Retryable(f"connection failed: {exc}") from None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BackendError(f"{self.url} returned malformed JSON (not retried): "
                               f"{raw[:200].decode('utf-8', 'replace')!r}") from None

    def _post(self, payload: dict) -> dict:
        body = json.dumps(payload).encode("utf-8")
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(body)
            except _Retryable as exc:
                if attempt == attempts - 1:
                    raise BackendError(f"{self.url}: gave up after {attempts} attempt(s); last error: {exc}") from None
                delay = min(self.max_backoff, self.backoff * 2 ** attempt)
                if exc.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, exc.retry_after))
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _one(self, messages: list[Message], params: ChatParams) -> str:
        payload = {"model": self.model, "messages": messages, "max_tokens": params.max_tokens,
                   "temperature": params.temperature, "seed": params.seed, "stream": False}
        reply = self._post(payload)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.url} returned JSON without choices[0].message.content: "
                               f"{json.dumps(reply)[:200]}") from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise BackendError(f"{self.url} returned non-text content: {content!r:.200}")
        return content.strip()

    def _complete(self, conversations: list[list[Message]], params: ChatParams, progress: bool,
                  desc: str) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(self._one, c, params) for c in conversations]
            results = []
            try:
                for future in tqdm(futures, desc=desc, disable=not progress, leave=False):
                    results.append(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return results
