"""``masteer serve``: every malformed request is an OpenAI-style 400 (or 413) naming the field, answered at
once; never a 200 that ignored what was asked, and never a traceback on the server. A bad port is refused
at start-up in one line."""

from __future__ import annotations

import json
import socket
import time

import pytest

from bad_input_helpers import invoke, one_line_error
from tiny_models import byte_tokenizer, tiny_chat_model

from masteer.compiler import cli
from masteer.compiler.common.models import LoadedModel
from masteer.compiler.serve import ChatEngine, background_server, make_server
from masteer.runtime.errors import MasteerError

MESSAGES = [{"role": "user", "content": "Say hello."}]
CONTEXT = 2048   # tiny_chat_model's max_position_embeddings


@pytest.fixture(scope="module")
def server():
    loaded = LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny-llama")
    with background_server(ChatEngine(loaded)) as srv:
        yield srv


def _raw(server, head: str, body: bytes = b"") -> tuple[int, dict]:
    """Send bytes as they are (no client library fixes the headers up); the status and the JSON reply."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"null")


def _post(server, payload) -> tuple[int, dict]:
    body = json.dumps(payload).encode()
    return _raw(server, f"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}", body)


@pytest.mark.parametrize("header, status, words", [
    ("Content-Length: abc", 400, ["Content-Length", "'abc'"]),
    ("Content-Length: -5", 400, ["Content-Length", "'-5'"]),
    ("Content-Length: 99999999999", 413, ["over"]),
], ids=["content-length-abc", "content-length-negative", "content-length-huge"])
def test_bad_content_length_is_answered_not_crashed(server, header, status, words):
    code, reply = _raw(server, f"POST /v1/chat/completions HTTP/1.0\r\n{header}", b"{}")
    assert code == status
    for word in words:
        assert word in reply["error"]["message"]
    assert _post(server, {"messages": MESSAGES, "max_tokens": 2})[0] == 200   # the server lives on


@pytest.mark.parametrize("extra, words", [
    ({"temperature": float("nan")}, ["temperature"]),
    ({"temperature": 3}, ["temperature", "0 to 2"]),
    ({"top_p": 0}, ["top_p"]),
    ({"top_p": "high"}, ["top_p"]),
    ({"max_tokens": 2.5}, ["max_tokens"]),
    ({"max_tokens": True}, ["max_tokens"]),
    ({"stream": "yes"}, ["stream"]),
    ({"seed": 2 ** 80}, ["seed"]),
    ({"n": True}, ["n=1"]),
    ({"stop": ["\n"]}, ["'stop'", "not supported"]),
    ({"tools": [{"type": "function"}]}, ["'tools'"]),
    ({"logprobs": True}, ["'logprobs'"]),
    ({"messages": [{"role": "user", "content": ["parts"]}]}, ["messages"]),
], ids=["temperature-nan", "temperature-3", "top-p-0", "top-p-string", "max-tokens-float", "max-tokens-bool",
        "stream-string", "seed-huge", "n-true", "stop", "tools", "logprobs", "content-list"])
def test_wrong_types_and_ranges_are_400_naming_the_field(server, extra, words):
    code, reply = _post(server, {"messages": MESSAGES, "max_tokens": 2, **extra})
    assert code == 400 and reply["error"]["type"] == "invalid_request_error"
    for word in words:
        assert word in reply["error"]["message"]


def test_a_prompt_beyond_the_context_is_400_at_once(server):
    started = time.monotonic()
    code, reply = _post(server, {"messages": [{"role": "user", "content": "x" * (CONTEXT + 10)}], "max_tokens": 4})
    assert code == 400 and f"maximum context length is {CONTEXT}" in reply["error"]["message"]
    assert time.monotonic() - started < 10   # refused before generating, not after minutes


def test_prompt_plus_max_tokens_beyond_the_context_is_400(server):
    text = "x" * (CONTEXT - 100)
    code, reply = _post(server, {"messages": [{"role": "user", "content": text}], "max_tokens": 200})
    assert code == 400 and "max_tokens asks for 200" in reply["error"]["message"]


def test_max_tokens_beyond_the_context_is_400_even_for_a_short_prompt(server):
    code, reply = _post(server, {"messages": MESSAGES, "max_tokens": 10 ** 9})
    assert code == 400 and "max_tokens asks for 1000000000" in reply["error"]["message"]


def test_json_nested_too_deeply_is_400(server):
    body = b"[" * 200_000 + b"]" * 200_000
    code, reply = _raw(server, f"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: {len(body)}", body)
    assert code == 400 and "too deeply" in reply["error"]["message"]


def test_without_max_tokens_a_long_prompt_gets_what_is_left(server):
    """The default (128 new tokens) shrinks to what the context leaves; the tiny model never stops early."""
    code, reply = _post(server, {"messages": [{"role": "user", "content": "x" * (CONTEXT - 60)}]})
    assert code == 200
    usage = reply["usage"]
    assert 0 < usage["completion_tokens"] < 128 and usage["total_tokens"] == CONTEXT


@pytest.mark.parametrize("port", ["-1", "70000", "http"])
def test_a_port_out_of_range_is_refused_at_start_up(port):
    one_line_error(invoke(cli.main, ["serve", "--port", port]), 2)


def test_make_server_refuses_a_port_out_of_range():
    with pytest.raises(MasteerError, match="port"):
        make_server(None, port=70000)


def test_a_port_in_use_names_host_and_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MasteerError, match=f"cannot listen on 127.0.0.1:{port}"):
            make_server(None, host="127.0.0.1", port=port)
