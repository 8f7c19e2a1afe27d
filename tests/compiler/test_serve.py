"""``masteer serve`` on loopback with a tiny random model: OpenAI-shaped replies, SSE streaming, adapters, errors.

The server runs in a background thread for the module and is shut down after it; every request
goes through a real socket with urllib, as any OpenAI client would send it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch


from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model  # noqa: E402

from masteer.compiler.common.models import LoadedModel  # noqa: E402
from masteer.compiler.serve import ChatEngine, background_server, base_url  # noqa: E402

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def _loaded(seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    return LoadedModel(model=tiny_chat_model("llama", seed=seed), tokenizer=byte_tokenizer(), name="tiny-llama")


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    with background_server(ChatEngine(_loaded()), api_key=None) as srv:
        yield srv


def _post(url: str, payload, headers: dict | None = None, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def _chat(server, **extra):
    status, _, body = _post(base_url(server) + "/chat/completions", {"model": "x", "messages": MESSAGES, **extra})
    assert status == 200, body
    return json.loads(body)


def test_completion_has_the_openai_shape_and_counts_tokens(server):
    reply = _chat(server, max_tokens=7)
    assert reply["object"] == "chat.completion" and reply["id"].startswith("chatcmpl-")
    assert reply["model"] == "tiny-llama"
    (choice,) = reply["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"  # the tiny model has no eos: it runs to max_tokens
    usage = reply["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7 and usage["prompt_tokens"] > 20


def test_greedy_completions_are_deterministic(server):
    assert _chat(server, max_tokens=6)["choices"][0]["message"]["content"] == \
        _chat(server, max_tokens=6)["choices"][0]["message"]["content"]


def test_stream_sends_sse_chunks_that_add_up_to_the_completion(server):
    full = _chat(server, max_tokens=9)["choices"][0]["message"]["content"]
    status, headers, body = _post(base_url(server) + "/chat/completions",
                                  {"messages": MESSAGES, "max_tokens": 9, "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [line[len("data: "):] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["choices"][0]["delta"] == {}
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert sum(1 for p in pieces if p) >= 3  # streamed in several pieces, not one
    assert "".join(pieces) == full


def test_models_and_health(server):
    with urllib.request.urlopen(base_url(server) + "/models", timeout=10) as response:
        models = json.loads(response.read())
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny-llama"
    root = base_url(server)[: -len("/v1")]
    with urllib.request.urlopen(root + "/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


@pytest.mark.parametrize("payload, words", [
    ({"messages": []}, ["messages"]),
    ({"messages": [{"role": "robot", "content": "hi"}]}, ["messages", "role"]),
    ({"messages": MESSAGES, "max_tokens": 0}, ["max_tokens"]),
    ({"messages": MESSAGES, "max_tokens": "5"}, ["max_tokens"]),
    ({"messages": MESSAGES, "temperature": -1}, ["temperature"]),
    ({"messages": MESSAGES, "n": 2}, ["n=1"]),
    ([1, 2], ["JSON object"]),
], ids=["empty-messages", "bad-role", "zero-tokens", "string-tokens", "negative-temperature", "n2", "not-object"])
def test_bad_requests_are_400_with_an_openai_error(server, payload, words):
    status, _, body = _post(base_url(server) + "/chat/completions", payload)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"]


def test_invalid_json_and_unknown_routes(server):
    status, _, body = _post(base_url(server) + "/chat/completions", None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]["message"]
    status, _, body = _post(base_url(server) + "/completions", {"prompt": "hi"})
    assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"


def test_adapter_changes_the_answer_and_the_model_id(tmp_path):
    loaded = _loaded()
    adapter = random_adapter(loaded.model, seed=3, strength=50.0)
    path = adapter.save(tmp_path / "adapter")
    prompt = {"messages": MESSAGES, "max_tokens": 8}
    with background_server(ChatEngine(_loaded())) as plain:
        base = json.loads(_post(base_url(plain) + "/chat/completions", prompt)[2])
    with background_server(ChatEngine(_loaded(), adapter=path)) as steered:
        reply = json.loads(_post(base_url(steered) + "/chat/completions", prompt)[2])
    assert reply["model"] == "tiny-llama+adapter"
    assert reply["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]


def test_api_key_is_required_when_set():
    with background_server(ChatEngine(_loaded()), api_key="sesame") as srv:
        url = base_url(srv) + "/chat/completions"
        status, _, body = _post(url, {"messages": MESSAGES, "max_tokens": 2})
        assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
        status, _, _ = _post(url, {"messages": MESSAGES, "max_tokens": 2}, {"Authorization": "Bearer sesame"})
        assert status == 200
