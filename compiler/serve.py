"""``masteer serve``: an OpenAI-compatible chat-completions server for a base model, optionally steered.

Why: a user should be able to try a repair from any OpenAI client (``openai`` SDK, curl, a chat UI)
by pointing it at ``http://127.0.0.1:8000/v1``, with the compiled adapter attached (``--adapter``)
or as a baked checkpoint (``--model out/baked``). It is also the real server the HTTP backend is
tested against on loopback. Standard library only (``http.server``): this is a try-it-out and
test server for one model on one machine; production serving is a baked checkpoint in vLLM/TGI.

Endpoints: ``POST /v1/chat/completions`` (``stream: true`` sends Server-Sent Events, ``data:``
chunks of ``chat.completion.chunk`` ending with ``data: [DONE]``), ``GET /v1/models``,
``GET /health``. Requests are answered one generation at a time (a lock around the model);
connections are accepted concurrently. Errors are OpenAI-shaped JSON (``{"error": {...}}``).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import torch

from masteer.runtime import SteeredModel
from masteer.runtime.errors import MasteerError

from .samples.backends.base import BackendError, check_messages
from .samples.backends.local import encode_messages
from .common.model_checks import context_length
from .common.models import LoadedModel, load_model

DEFAULT_MAX_TOKENS = 128
MAX_BODY_BYTES = 1 << 20


class RequestError(Exception):
    """A client mistake: answered with ``status`` (400 unless said otherwise) and this message."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


# Request fields this server does not implement: accepted only at the value that means "off", so a client
# never gets a 200 that silently ignored what it asked for.
UNSUPPORTED_UNLESS = {"stop": (None, [], ""), "tools": (None, []), "functions": (None, []),
                      "tool_choice": (None, "none"), "logprobs": (None, False), "top_logprobs": (None, 0),
                      "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
                      "logit_bias": (None, {}), "response_format": (None, {"type": "text"})}
MAX_SEED = 2 ** 63 - 1


class _Streamer:
    """transformers' streamer protocol (``put``/``end``): turns new token ids into text deltas.

    The whole completion is decoded each time and only the new suffix is sent, so multi-token
    characters and tokenizer spacing come out right; a trailing replacement character (half a
    UTF-8 sequence) is held back until the next token completes it.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None], eos_token_id: int | None):
        self.tokenizer, self.on_text, self.eos = tokenizer, on_text, eos_token_id
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.stopped = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.stopped:
                continue
            if self.eos is not None and token == self.eos:
                self.stopped = True
                continue
            self.ids.append(token)
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if text.startswith(self.sent) and len(text) > len(self.sent):
            delta, self.sent = text[len(self.sent):], text
            self.on_text(delta)


class ChatEngine:
    """One model (with an optional adapter) answering chat requests, one at a time."""

    def __init__(self, loaded: LoadedModel, adapter: str | Path | None = None, model_id: str | None = None,
                 max_tokens_cap: int = 1024):
        self.loaded = loaded
        self.adapter_path = str(adapter) if adapter else None
        self.model = SteeredModel.from_pretrained(loaded.model, adapter) if adapter else loaded.model
        self.model_id = model_id or (f"{loaded.name}+{Path(adapter).name}" if adapter else loaded.name)
        self.max_tokens_cap = max_tokens_cap
        self.lock = threading.Lock()

    def generate(self, messages: list[dict], max_tokens: int, temperature: float, seed: int | None,
                 on_text: Callable[[str], None] | None = None, top_p: float = 1.0) -> dict:
        """Generate one answer; ``on_text`` receives text deltas as tokens arrive (streaming)."""
        tokenizer = self.loaded.tokenizer
        prompt = encode_messages(tokenizer, messages)
        eos = tokenizer.eos_token_id
        streamer = _Streamer(tokenizer, on_text or (lambda _: None), eos)
        kwargs = {"do_sample": False}
        if temperature > 0:
            kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}
        device = next(self.model.parameters()).device
        with self.lock, torch.no_grad():
            if temperature > 0:
                torch.manual_seed(0 if seed is None else seed)
            ids = torch.tensor([prompt], device=device)
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      pad_token_id=tokenizer.pad_token_id, streamer=streamer, **kwargs)
        new = out[0, len(prompt):].tolist()
        finish = "stop" if eos is not None and eos in new else "length"
        completion = new.index(eos) if finish == "stop" else len(new)
        return {"text": tokenizer.decode(new[:completion], skip_special_tokens=True), "finish_reason": finish,
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion,
                          "total_tokens": len(prompt) + completion}}

    def parse_request(self, body: dict) -> dict:
        """Validated generation settings from a chat-completions request body; RequestError otherwise.

        Types and ranges are checked field by field, and the prompt plus ``max_tokens`` must fit the
        model's context (OpenAI's 400), so no request runs for minutes to return an empty answer."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        try:
            messages = check_messages(body.get("messages"))
        except BackendError as exc:
            raise RequestError(f"'messages': {exc}") from None
        for name, off in UNSUPPORTED_UNLESS.items():
            if name in body and not any(body[name] == value and type(body[name]) is type(value) for value in off):
                raise RequestError(f"'{name}' is not supported by this server (got {body[name]!r})")
        given = body.get("max_tokens", body.get("max_completion_tokens"))
        if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given <= 0):
            raise RequestError(f"'max_tokens' must be a positive integer, got {given!r}")
        temperature = _number(body, "temperature", 0.0, low=0.0, high=2.0)
        top_p = _number(body, "top_p", 1.0, low=0.0, high=1.0)
        if top_p == 0.0:
            raise RequestError("'top_p' must be above 0 (and at most 1), got 0")
        n = body.get("n", 1)
        if n is not None and (isinstance(n, bool) or n != 1):
            raise RequestError(f"only n=1 is supported, got {n!r}")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
            raise RequestError(f"'seed' must be an integer from 0 to {MAX_SEED}, got {seed!r}")
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise RequestError(f"'stream' must be true or false, got {stream!r}")
        max_tokens = self._fit_context(messages, given)
        return {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                "seed": seed, "stream": bool(stream)}

    def _fit_context(self, messages: list[dict], asked: int | None) -> int:
        """The new tokens to generate: ``asked`` (or the default, shrunk to what the context leaves), at most
        ``max_tokens_cap``; RequestError when the prompt and what was asked do not fit the model's context."""
        prompt = len(encode_messages(self.loaded.tokenizer, messages))
        limit = context_length(self.loaded.model)
        room = None if limit is None else limit - prompt
        if room is not None and (room < 1 or (asked is not None and asked > room)):
            raise RequestError(f"this model's maximum context length is {limit} tokens; the messages are {prompt} "
                               f"tokens and max_tokens asks for {asked if asked is not None else 'at least 1'} more")
        wanted = DEFAULT_MAX_TOKENS if asked is None else asked
        return min(wanted, self.max_tokens_cap, *([room] if room is not None else []))


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    """A finite number field within [low, high] (JSON's NaN and Infinity, which Python reads, are refused)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise RequestError(f"'{name}' must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


class ChatHandler(BaseHTTPRequestHandler):
    """HTTP/1.0 handler: one request per connection, which is also how the SSE stream is delimited."""

    server_version = "masteer-serve/0.1"
    timeout = 30  # seconds a client may take to send its request: a short body must not hold a thread forever

    @property
    def engine(self) -> ChatEngine:
        return self.server.engine  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    # ------------------------------------------------------------------ helpers
    def send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, status: int, message: str, kind: str = "invalid_request_error",
                        headers: dict | None = None) -> None:
        self.send_json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def read_body(self) -> bytes:
        """The body as Content-Length says; RequestError for a header that is not a count, a body over
        MAX_BODY_BYTES (413), or one shorter than announced (the socket times out after ``timeout``)."""
        header = (self.headers.get("Content-Length") or "0").strip()
        if not header.isdigit():
            raise RequestError(f"the Content-Length header must be a whole number of bytes, got {header!r}")
        length = int(header)
        if length > MAX_BODY_BYTES:
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) != length:
            raise RequestError(f"the body has {len(body)} bytes, Content-Length said {length}")
        return body

    def authorised(self) -> bool:
        key = getattr(self.server, "api_key", None)
        if not key or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self.send_error_json(HTTPStatus.UNAUTHORIZED, "missing or wrong API key", "authentication_error")
        return False

    # ------------------------------------------------------------------ routes
    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self.send_json(HTTPStatus.OK, {"status": "ok", "model": self.engine.model_id})
        elif path in ("/v1/models", "/models"):
            if self.authorised():
                self.send_json(HTTPStatus.OK, {"object": "list", "data": [
                    {"id": self.engine.model_id, "object": "model", "created": 0, "owned_by": "masteer"}]})
        else:
            self.send_error_json(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found_error")

    def do_POST(self):  # noqa: N802
        try:
            body = self.read_body()
        except RequestError as exc:
            self.send_error_json(exc.status, str(exc))
            return
        except TimeoutError:
            self.send_error_json(HTTPStatus.REQUEST_TIMEOUT, "the request body did not arrive in time")
            return
        self.handle_chat(body)

    def handle_chat(self, body: bytes) -> None:
        if self.path.split("?")[0].rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self.send_error_json(HTTPStatus.NOT_FOUND, f"no route {self.path}", "not_found_error")
            return
        if not self.authorised():
            return
        try:
            request = self.engine.parse_request(json.loads(body or b"null"))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.send_error_json(HTTPStatus.BAD_REQUEST, f"the request body is not valid JSON: {exc}")
            return
        except RecursionError:
            self.send_error_json(HTTPStatus.BAD_REQUEST, "the request body nests JSON too deeply")
            return
        except RequestError as exc:
            self.send_error_json(exc.status, str(exc))
            return
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        settings = {k: request[k] for k in ("max_tokens", "temperature", "top_p", "seed")}
        if request["stream"]:
            self.stream(request["messages"], settings, ident, created)
            return
        try:
            result = self.engine.generate(request["messages"], **settings)
        except Exception as exc:  # noqa: BLE001 - a failed generation is the server's 500, not a crash
            self.send_error_json(HTTPStatus.INTERNAL_SERVER_ERROR, f"generation failed: {exc}", "server_error")
            return
        self.send_json(HTTPStatus.OK, {
            "id": ident, "object": "chat.completion", "created": created, "model": self.engine.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                         "finish_reason": result["finish_reason"]}],
            "usage": result["usage"]})

    def stream(self, messages: list[dict], settings: dict, ident: str, created: int) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

        def chunk(delta: dict, finish: str | None = None) -> None:
            payload = {"id": ident, "object": "chat.completion.chunk", "created": created,
                       "model": self.engine.model_id,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode("utf-8"))
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        try:
            result = self.engine.generate(messages, on_text=lambda text: chunk({"content": text}), **settings)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client went away
        except Exception as exc:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
            self.wfile.write(f"data: {json.dumps({'error': {'message': f'generation failed: {exc}', 'type': 'server_error'}})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        chunk({}, result["finish_reason"])
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class ChatServer(ThreadingHTTPServer):
    """The HTTP server; a connection that fails (a client gone mid-request) is logged in one line, not as
    the standard library's traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if getattr(self, "verbose", False):
            print(f"masteer serve: connection from {client_address[0]} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def make_server(engine: ChatEngine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                handler: type[ChatHandler] = ChatHandler, verbose: bool = False) -> ThreadingHTTPServer:
    """A bound, not yet running server (``port=0`` picks a free port: ``server.server_address[1]``)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise MasteerError(f"port must be a whole number from 0 to 65535, got {port!r}")
    try:
        server = ChatServer((host, port), handler)
    except OSError as exc:   # a host that does not resolve, a port in use or reserved
        raise MasteerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.engine = engine  # type: ignore[attr-defined]
    server.api_key = api_key  # type: ignore[attr-defined]
    server.verbose = verbose  # type: ignore[attr-defined]
    return server


def serve(model: str, adapter: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, log: Callable[[str], None] = print) -> None:
    """Load ``model`` (a base model or a baked checkpoint), attach ``adapter`` if given, serve until Ctrl-C."""
    engine = ChatEngine(load_model(model), adapter=adapter)
    server = make_server(engine, host, port, api_key=api_key, verbose=True)
    address = f"http://{host}:{server.server_address[1]}/v1"
    log(f"masteer serve: {engine.model_id} at {address} (POST /chat/completions, GET /models); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@contextlib.contextmanager
def background_server(engine: ChatEngine, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                      handler: type[ChatHandler] = ChatHandler) -> Iterator[ThreadingHTTPServer]:
    """A server answering in a background thread for the ``with`` block (tests, notebooks); its base URL
    is ``f"http://{host}:{server.server_address[1]}/v1"``."""
    server = make_server(engine, host, port, api_key=api_key, handler=handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def base_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/v1"
