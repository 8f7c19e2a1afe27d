"""A held-out scorer's base passes, stored: a second scorer of the same rows reads them back instead of running the
base model, and scores any steering with the same numbers bit for bit."""

from __future__ import annotations

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

from masteer.compiler.strategies.scorer_store import SUFFIX, ScorerBaseStore
from masteer.compiler.strategies.scoring import HeldOutScorer
from masteer.runtime import SteeredModel

from test_scoring import NEUTRAL, TARGETS   # the same target items and neutral prompts


def _scorer(model, store, **kwargs):
    return HeldOutScorer(model, byte_tokenizer(), TARGETS, NEUTRAL, batch_size=2, replay_layers=[1], store=store,
                         **kwargs)


def _scores(model, scorer):
    steered = SteeredModel(model, random_adapter(model, counts={1: 2}, strength=4.0), check_fingerprint=False)
    try:
        return scorer.score_samples(start=1), scorer.score_samples(start=1, gates=steered)
    finally:
        steered.detach()


def _calls(model):
    """Count the model's top-level calls (a hook outside the decoder blocks: not steering)."""
    calls = []
    return calls, model.register_forward_pre_hook(lambda *args: calls.append(1))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_a_stored_scorer_runs_only_its_prefix_and_scores_the_same(kind, tmp_path):
    model = tiny_chat_model(kind).double().eval()
    store = ScorerBaseStore(tmp_path, log=lambda line: None)
    computed = _scorer(model, store)
    assert store.saved == 1 and len(list(tmp_path.glob(f"*{SUFFIX}"))) == 1
    calls, handle = _calls(model)
    try:
        loaded = _scorer(model, store)
    finally:
        handle.remove()
    assert store.loaded == 1 and len(calls) == 1   # the shared prefix's one-row pass alone
    assert torch.equal(loaded.base_target, computed.base_target)
    for (effect, drift), (effect_again, drift_again) in zip(_scores(model, computed), _scores(model, loaded)):
        assert effect.abs().max() > 1e-3 and drift > 1e-6   # the steering moves what is compared
        assert torch.equal(effect, effect_again) and drift == drift_again


def test_other_rows_or_settings_are_another_file_and_no_store_writes_nothing(tmp_path):
    model = tiny_chat_model("llama").double().eval()
    store = ScorerBaseStore(tmp_path, log=lambda line: None)
    _scorer(model, store)
    HeldOutScorer(model, byte_tokenizer(), TARGETS, NEUTRAL[:4], batch_size=2, replay_layers=[1], store=store)
    HeldOutScorer(model, byte_tokenizer(), TARGETS, NEUTRAL, batch_size=3, replay_layers=[1], store=store)
    HeldOutScorer(model, byte_tokenizer(), TARGETS, NEUTRAL, batch_size=2, replay_layers=[1, 2], store=store)
    assert store.saved == 4 and store.loaded == 0 and len(list(tmp_path.glob(f"*{SUFFIX}"))) == 4
    _scorer(model, None)
    assert len(list(tmp_path.iterdir())) == 4


def test_an_unreadable_file_is_moved_aside_and_the_passes_made_again(tmp_path):
    model = tiny_chat_model("llama").double().eval()
    lines = []
    store = ScorerBaseStore(tmp_path, log=lines.append)
    computed = _scorer(model, store)
    (path,) = tmp_path.glob(f"*{SUFFIX}")
    path.write_bytes(b"not a safetensors file")
    again = _scorer(model, store)
    assert torch.equal(again.base_target, computed.base_target)
    assert path.with_name(path.name + ".unreadable").exists() and "could not be read" in lines[0]
    assert path.exists() and store.saved == 2   # written again, readable
    assert _scorer(model, store) is not None and store.loaded == 1


def test_logits_that_are_more_than_the_projection_are_not_stored(tmp_path):
    """Gemma-3 caps its logits after the projection: projecting the kept input again would not give the base
    numbers, so nothing is stored and every scorer computes its own."""
    model = tiny_chat_model("gemma3_text").double().eval()
    model.config.final_logit_softcapping = 3.0
    store = ScorerBaseStore(tmp_path, log=lambda line: None)
    first, second = _scorer(model, store), _scorer(model, store)
    assert store.saved == 0 and store.loaded == 0 and not list(tmp_path.iterdir())
    assert torch.equal(first.base_target, second.base_target)


def test_a_stored_file_gets_the_usual_mode(tmp_path):
    import os
    model = tiny_chat_model("llama").double().eval()
    _scorer(model, ScorerBaseStore(tmp_path, log=lambda line: None))
    (path,) = tmp_path.glob(f"*{SUFFIX}")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary file left behind
