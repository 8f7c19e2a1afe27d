"""Resume after an interruption: finished generations are reused, not made again; the log survives a crash."""

from __future__ import annotations

import json

import pytest
import torch


from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model  # noqa: E402

from masteer.compiler.capture import generations  # noqa: E402
from masteer.compiler.capture.cache import ResultCache, adapter_digest  # noqa: E402
from masteer.compiler.evaluation.harness import evaluate  # noqa: E402
from masteer.compiler.common.judge import RefusalJudge  # noqa: E402
from masteer.runtime.errors import MasteerError  # noqa: E402

torch.set_num_threads(1)


def test_cache_round_trip_and_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = ResultCache(path)
    cache.put_many([("a", "first"), ("b", [1.0, 2])])
    with open(path, "a") as fh:
        fh.write('{"key": "c", "val')            # a crash in the middle of an append
    again = ResultCache(path)
    assert (again.get("a"), again.get("b"), again.get("c")) == ("first", [1.0, 2], None)
    assert again.dropped_torn_line and (again.hits, again.misses) == (2, 1)
    again.put_many([("c", "third")])            # appending after a dropped torn line keeps the file valid
    assert ResultCache(path).get("c") == "third"
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_corrupt_line_in_the_middle_is_an_error_naming_it(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "value": 1}\nnot json\n{"key": "b", "value": 2}\n')
    with pytest.raises(MasteerError, match=r"cache.jsonl:2: not a cache record"):
        ResultCache(path)


def test_adapter_digest_follows_content_not_metrics():
    model = tiny_chat_model("llama")
    adapter = random_adapter(model)
    digest = adapter_digest(adapter)
    adapter.metrics = {"table": [{"x": "1"}]}
    assert adapter_digest(adapter) == digest
    assert adapter_digest(random_adapter(model, seed=2)) != digest


class Interrupted(Exception):
    pass


def _run(model, tok, adapter, cache):
    return evaluate(model, tok, {"base": None, "steered": adapter}, ["refusal", "kl"], n=6,
                    judge=RefusalJudge(relevance=False), cache=cache, max_new_tokens=3, batch_size=2,
                    progress=False, n_boot=50)


def test_resume_after_an_interruption_reuses_finished_generations(tmp_path, monkeypatch):
    model, tok = tiny_chat_model("llama"), byte_tokenizer()
    adapter = random_adapter(model, additive_layer=1)
    real_generate = generations.generate
    generated: list[str] = []

    def flaky(model_, tokenizer, prompts, **kwargs):
        if len(generated) >= 8:                   # base done (6), steered got one batch (2): stop
            raise Interrupted
        generated.extend(prompts)
        return real_generate(model_, tokenizer, prompts, **kwargs)

    path = tmp_path / "cache.jsonl"
    monkeypatch.setattr(generations, "generate", flaky)
    with pytest.raises(Interrupted):
        _run(model, tok, adapter, ResultCache(path))
    assert len(generated) == 8
    assert len(ResultCache(path)) == 8 + 6 + 1    # 8 generations, the base arm's 6 KL items, the judge's validation

    generated.clear()
    monkeypatch.setattr(generations, "generate", lambda *a, **k: generated.extend(a[2]) or real_generate(*a, **k))
    resumed = _run(model, tok, adapter, ResultCache(path))
    assert len(generated) == 4                    # only the steered arm's last two batches
    assert resumed.settings["cache"]["hits"] >= 8

    generated.clear()
    fresh = _run(model, tok, adapter, ResultCache())
    assert len(generated) == 12
    for name in ("refusal", "kl"):
        for arm in ("base", "steered"):
            assert resumed.suite(name).arms[arm].values == fresh.suite(name).arms[arm].values
    assert resumed.suite("refusal").arms["steered"].examples == fresh.suite("refusal").arms["steered"].examples

    generated.clear()
    again = _run(model, tok, adapter, ResultCache(path))      # everything cached: nothing generated
    assert generated == [] and again.settings["cache"]["misses"] == 0


def test_other_settings_do_not_reuse_cached_work(tmp_path):
    model, tok = tiny_chat_model("llama"), byte_tokenizer()
    cache = ResultCache(tmp_path / "cache.jsonl")
    evaluate(model, tok, {"base": None}, ["refusal"], n=2, judge=RefusalJudge(relevance=False), cache=cache,
             max_new_tokens=2, progress=False, n_boot=20)
    before = len(cache)
    evaluate(model, tok, {"base": None}, ["refusal"], n=2, judge=RefusalJudge(relevance=False), cache=cache,
             max_new_tokens=3, progress=False, n_boot=20)
    assert len(cache) == before + 2


# ------------------------------------------------------------------------ the base arm stored across compiles
def test_only_the_base_arm_is_stored_and_a_second_compile_generates_only_the_steered_arm(tmp_path, monkeypatch):
    from masteer.compiler.capture.cache import BaseArmCache, stored_results_name
    model, tok = tiny_chat_model("llama"), byte_tokenizer()
    adapter = random_adapter(model, additive_layer=1)
    path = tmp_path / stored_results_name(model)
    first = _run(model, tok, adapter, BaseArmCache(path))
    assert len(ResultCache(path)) == 6 + 6 + 1    # the base arm's 6 generations and 6 KL items, the judge's
    #                                               validation; nothing steered

    real_generate = generations.generate
    generated: list[str] = []
    monkeypatch.setattr(generations, "generate", lambda *a, **k: generated.extend(a[2]) or real_generate(*a, **k))
    second = _run(model, tok, adapter, BaseArmCache(path))
    assert len(generated) == 6                    # the steered arm again, the base arm read back
    for name in ("refusal", "kl"):
        for arm in ("base", "steered"):
            assert second.suite(name).arms[arm].values == first.suite(name).arms[arm].values


def test_the_stored_file_is_named_by_what_the_numbers_depend_on():
    from masteer.compiler.capture.cache import stored_results_name
    model = tiny_chat_model("llama")
    assert stored_results_name(model) == stored_results_name(tiny_chat_model("llama"))
    assert stored_results_name(model) != stored_results_name(tiny_chat_model("llama", seed=1))
    assert stored_results_name(model) != stored_results_name(tiny_chat_model("llama").to(torch.bfloat16))


def test_an_unreadable_stored_file_is_moved_aside_not_a_failed_compile(tmp_path):
    from masteer.compiler.capture.cache import BASE_ARM, BaseArmCache
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a", "value": 1}\nnot json\n{"key": "b", "value": 2}\n')
    said: list[str] = []
    cache = BaseArmCache(path, log=said.append)
    assert len(said) == 1 and "results.jsonl.unreadable" in said[0] and "could not be read" in said[0]
    assert (tmp_path / "results.jsonl.unreadable").read_text().startswith('{"key": "a"')
    cache.for_arm(BASE_ARM).put_many([("k", 1)])
    assert ResultCache(path).get("k") == 1 and len(ResultCache(path)) == 1
