"""Chat backends: the disk cache, the local transformers backend, and the OpenAI-compatible HTTP backend
tested against a real ``masteer serve`` on loopback (tiny random model), including its error paths.

Faults are injected by a handler subclass in front of the real server's handler: a scripted list of
"429", "500", "sleep" and "garbage" answers is consumed one per request, after which requests are
served for real. Backoff sleeps are recorded instead of slept, so the tests run in seconds.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch


from tiny_models import byte_tokenizer, tiny_chat_model  # noqa: E402

from masteer.compiler.samples.autotester.pipeline import AutoTesterOptions, run_autotester  # noqa: E402
from masteer.compiler.samples.backends import BackendError, ChatParams, DiskCache, make_backend, user  # noqa: E402
from masteer.compiler.samples.backends.base import ChatBackend  # noqa: E402
from masteer.compiler.samples.backends.local import LocalBackend  # noqa: E402
from masteer.compiler.samples.backends.openai_http import OpenAIBackend, completions_url  # noqa: E402
from masteer.compiler.common.models import LoadedModel  # noqa: E402
from masteer.compiler.serve import ChatEngine, ChatHandler, background_server, base_url  # noqa: E402

ISSUE = "when asked whether it is a human, the model claims to be one"


def _loaded() -> LoadedModel:
    return LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny-llama")


class FaultyHandler(ChatHandler):
    """Consumes ``server.faults`` one per request before serving for real; counts requests and concurrency."""

    def do_POST(self):  # noqa: N802
        body = self.read_body()
        server = self.server
        with server.lock:
            server.requests += 1
            server.in_flight += 1
            fault = server.faults.pop(0) if server.faults else None
        try:
            if server.delay:
                # Concurrency is counted while requests wait here, before any answer is written: a client may
                # send its next request as soon as it has read an answer, before this handler's ``finally``.
                with server.lock:
                    server.waiting += 1
                    server.max_in_flight = max(server.max_in_flight, server.waiting)
                time.sleep(server.delay)
                with server.lock:
                    server.waiting -= 1
            if fault == "429":
                self.send_error_json(429, "rate limited", "rate_limit_error", {"Retry-After": "0.25"})
            elif fault == "500":
                self.send_error_json(500, "internal failure", "server_error")
            elif fault == "400":
                self.send_error_json(400, "bad model name")
            elif fault == "garbage":
                payload = b"{this is not json"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            elif fault == "sleep":
                time.sleep(1.0)  # longer than the client's timeout; the client has gone when we answer
                try:
                    self.handle_chat(body)
                except OSError:
                    pass
            else:
                self.handle_chat(body)
        finally:
            with server.lock:
                server.in_flight -= 1


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    with background_server(ChatEngine(_loaded()), handler=FaultyHandler) as srv:
        srv.lock = threading.Lock()
        srv.requests, srv.in_flight, srv.waiting, srv.max_in_flight, srv.faults, srv.delay = 0, 0, 0, 0, [], 0.0
        yield srv


@pytest.fixture
def fresh(server):
    """The shared server with its counters and fault script reset, once earlier requests have finished
    (a handler answering a client that timed out may still be sleeping)."""
    deadline = time.monotonic() + 5
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    server.requests, server.max_in_flight, server.faults, server.delay = 0, 0, [], 0.0
    return server


def _backend(server, sleeps: list | None = None, cache=None, **options) -> OpenAIBackend:
    recorder = sleeps.append if sleeps is not None else (lambda s: None)
    return OpenAIBackend("tiny-llama", base_url=base_url(server), cache=cache, sleep=recorder, **options)


PARAMS = ChatParams(max_tokens=6)


# ------------------------------------------------------------------------------------- the disk cache
def test_disk_cache_round_trip_and_misses(tmp_path):
    cache = DiskCache(tmp_path / "c")
    key = "ab" * 32
    assert cache.get(key) is None and len(cache) == 0
    cache.put(key, "hello \u2713", {"backend": "x"})
    assert cache.get(key) == "hello \u2713" and len(cache) == 1
    (tmp_path / "c" / key[:2] / f"{key}.json").write_text("{truncated")
    assert cache.get(key) is None  # a damaged entry is a miss, not a crash
    with pytest.raises(ValueError):
        cache.get("../../etc/passwd")


class CountingBackend(ChatBackend):
    kind = "counting"

    def __init__(self, cache=None):
        super().__init__("echo", cache=cache)
        self.asked: list[str] = []

    def _complete(self, conversations, params, progress, desc):
        self.asked += [c[-1]["content"] for c in conversations]
        return [f"echo: {c[-1]['content']}" for c in conversations]


def test_cache_answers_repeats_and_dedupes_within_a_batch(tmp_path):
    backend = CountingBackend(DiskCache(tmp_path))
    answers = backend.chat_many([user("a"), user("b"), user("a")], PARAMS)
    assert answers == ["echo: a", "echo: b", "echo: a"] and backend.asked == ["a", "b"]
    again = CountingBackend(DiskCache(tmp_path))
    assert again.chat_many([user("b"), user("a")], PARAMS) == ["echo: b", "echo: a"]
    assert again.asked == [] and again.stats == {"requests": 2, "cache_hits": 2, "calls": 0}
    assert again.chat(user("a"), ChatParams(max_tokens=7)) == "echo: a" and again.asked == ["a"]  # new params


def test_bad_messages_and_params_are_rejected():
    backend = CountingBackend()
    with pytest.raises(BackendError, match="message 0"):
        backend.chat([{"role": "wizard", "content": "x"}])
    with pytest.raises(BackendError, match="non-empty"):
        backend.chat([])
    with pytest.raises(BackendError, match="max_tokens"):
        ChatParams(max_tokens=0)


def test_make_backend_kinds(monkeypatch):
    assert make_backend("none") is None
    assert make_backend("local", "some/model", cache=False).describe() == {"backend": "local", "model": "some/model"}
    for name in ("MASTEER_OPENAI_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(BackendError, match="OPENAI_BASE_URL"):
        make_backend("openai", "m")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    backend = make_backend("openai", "m", cache=False)
    assert backend.url == "http://127.0.0.1:9/v1/chat/completions" and backend.api_key == "k"
    with pytest.raises(BackendError, match="--model"):
        make_backend("openai", None)
    with pytest.raises(BackendError, match="unknown backend"):
        make_backend("carrier-pigeon")


@pytest.mark.parametrize("base, url", [("http://h:1", "http://h:1/v1/chat/completions"),
                                       ("http://h:1/v1/", "http://h:1/v1/chat/completions"),
                                       ("https://h/api/v1/chat/completions", "https://h/api/v1/chat/completions")])
def test_completions_url(base, url):
    assert completions_url(base) == url


# ------------------------------------------------------------------------------------- local backend
def test_local_backend_is_greedy_deterministic_and_batch_independent():
    torch.set_num_threads(1)
    backend = LocalBackend(_loaded(), batch_size=4)
    prompts = [user("hi"), user("a much longer question about something"), user("x", system="Be brief.")]
    together = backend.chat_many(prompts, ChatParams(max_tokens=5))
    alone = [LocalBackend(_loaded()).chat(p, ChatParams(max_tokens=5)) for p in prompts]
    assert together == alone
    assert all(isinstance(a, str) for a in together) and len(set(together)) > 1
    sampled = [backend.chat(prompts[0], ChatParams(max_tokens=5, temperature=1.0, seed=s)) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # a seeded sample is reproducible


# ------------------------------------------------------------------------------------- HTTP backend
def test_http_backend_matches_the_server_reply(fresh):
    answer = _backend(fresh).chat(user("Say hello."), PARAMS)
    engine_answer = fresh.engine.generate([{"role": "user", "content": "Say hello."}], 6, 0.0, None)["text"]
    assert answer == engine_answer.strip() and fresh.requests == 1


def test_429_then_success_backs_off_and_succeeds(fresh):
    fresh.faults = ["429", "429"]
    sleeps: list[float] = []
    answer = _backend(fresh, sleeps, backoff=0.01).chat(user("Say hello."), PARAMS)
    assert answer == _backend(fresh).chat(user("Say hello."), PARAMS)
    assert fresh.requests == 4  # two 429s, the success, and the comparison request
    assert sleeps == [0.25, 0.25]  # Retry-After honoured (above the 0.01/0.02 exponential backoff)


def test_500_until_the_retries_run_out_gives_a_clear_error(fresh):
    fresh.faults = ["500"] * 5
    sleeps: list[float] = []
    with pytest.raises(BackendError) as info:
        _backend(fresh, sleeps, max_retries=2, backoff=0.5).chat(user("Say hello."), PARAMS)
    message = str(info.value)
    assert "gave up after 3 attempt(s)" in message and "HTTP 500" in message and "internal failure" in message
    assert base_url(fresh) in message
    assert fresh.requests == 3 and sleeps == [0.5, 1.0]  # exponential backoff between attempts


def test_timeout_is_retried_then_reported(fresh):
    fresh.faults = ["sleep", "sleep"]
    start = time.perf_counter()
    with pytest.raises(BackendError, match=r"gave up after 2 attempt\(s\); last error: timed out after 0.3 s"):
        _backend(fresh, timeout=0.3, max_retries=1).chat(user("Say hello."), PARAMS)
    assert time.perf_counter() - start < 3.0


def test_timeout_then_success(fresh):
    fresh.faults = ["sleep"]
    assert _backend(fresh, timeout=0.3, max_retries=2).chat(user("Say hello."), PARAMS) == \
        _backend(fresh).chat(user("Say hello."), PARAMS)


def test_malformed_json_is_not_retried_and_names_what_came_back(fresh):
    fresh.faults = ["garbage"]
    with pytest.raises(BackendError, match=r"malformed JSON \(not retried\): '\{this is not json'"):
        _backend(fresh).chat(user("Say hello."), PARAMS)
    assert fresh.requests == 1


def test_client_errors_are_not_retried(fresh):
    fresh.faults = ["400"]
    with pytest.raises(BackendError, match=r"HTTP 400 \(not retried\).*bad model name"):
        _backend(fresh).chat(user("Say hello."), PARAMS)
    assert fresh.requests == 1


def test_unreachable_server_is_retried_then_reported():
    sleeps: list[float] = []
    backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", max_retries=1, sleep=sleeps.append, timeout=2)
    with pytest.raises(BackendError, match="cannot connect"):
        backend.chat(user("x"), PARAMS)
    assert len(sleeps) == 1


def test_concurrency_limit_and_order(fresh):
    fresh.delay = 0.15
    prompts = [user(f"question {k}") for k in range(6)]
    answers = _backend(fresh, concurrency=2).chat_many(prompts, PARAMS)
    assert fresh.max_in_flight == 2 and fresh.requests == 6
    fresh.delay = 0.0
    assert answers == [_backend(fresh).chat(p, PARAMS) for p in prompts]  # order kept


def test_full_sample_run_over_http_and_a_cached_rerun_costs_nothing(fresh, tmp_path):
    options = AutoTesterOptions(seed=1, per_scenario=6, neutral=10, llm_paraphrases=4, llm_rewrites=4,
                                max_tokens=12, progress=False)
    first = run_autotester(ISSUE, _backend(fresh, cache=DiskCache(tmp_path)), options)
    sent = fresh.requests
    record = first.samples.meta["autotester"]
    # analyst 1 + paraphrases 4 + rewrites of the (few distinct) template replies; one request per distinct text
    assert sent == record["backend_stats"]["calls"] >= 1 + 4 + 2
    assert record["backend"]["backend"] == "openai" and record["backend"]["model"] == "tiny-llama"
    assert "LLM analysis rejected" in " ".join(record["analysis"]["notes"])  # a random model writes no JSON
    llm_rejected = [r for r in record["rejected"] if str(r["provenance"]["method"]).startswith("llm")]
    assert llm_rejected and all(r["provenance"]["backend"] == "openai" for r in llm_rejected)
    assert any(s.label == "target" for s in first.samples.samples)
    again = run_autotester(ISSUE, _backend(fresh, cache=DiskCache(tmp_path)), options)
    assert fresh.requests == sent  # nothing sent: every answer came from the disk cache
    assert again.samples.content_hash == first.samples.content_hash
    stats = again.samples.meta["autotester"]["backend_stats"]
    assert stats["calls"] == 0 and stats["cache_hits"] == record["backend_stats"]["requests"]
