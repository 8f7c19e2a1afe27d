"""Drift of a gated adapter skips the rows its gates leave untouched: their KL is zero to float32, so only the
touched rows run above the gate layer, replayed as a narrower batch. On float64 hosts the drift equals the full
computation less exactly the skipped rows' KL."""

from __future__ import annotations

import pytest
import torch

from tiny_models import byte_tokenizer, closed_adapter, random_adapter, tiny_chat_model

from masteer.compiler.capture.activations import encode_prompt
from masteer.compiler.common.prefix_replay import PrefixReplay
from masteer.compiler.strategies import scoring
from masteer.compiler.strategies.scoring import RECORD, HeldOutScorer, forward_rows
from masteer.runtime import SteeredModel

NEUTRAL = ["What is the capital of France?", "Name a colour.", "How many legs has a spider?",
           "Write a long story about a dragon who learns to fly over the sea.", "Hi", "Count to five, please."]


def _model(kind: str = "llama"):
    return tiny_chat_model(kind).double().eval()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_replayed_subset_of_rows_computes_those_rows(kind):
    model = _model(kind)
    tok = byte_tokenizer()
    rows = [encode_prompt(tok, p) for p in NEUTRAL[:4]]
    replay = PrefixReplay(model, [1])
    forward_rows(model, rows, tok.pad_token_id, replay, "batch", RECORD)
    steered = SteeredModel(model, random_adapter(model, counts={1: 2}, strength=8.0), check_fingerprint=False)
    try:
        full, _, ran = forward_rows(model, rows, tok.pad_token_id, replay, "batch", 1)
        part, _, ran_part = forward_rows(model, [rows[1], rows[2]], tok.pad_token_id, replay, "batch", 1,
                                         replay_rows=[1, 2])
    finally:
        steered.detach()
    assert part.shape[1] < full.shape[1]   # narrower: the subset pads to its own longest row
    for got, want in ((part[0][ran_part[0].bool()], full[1][ran[1].bool()]),
                      (part[1][ran_part[1].bool()], full[2][ran[2].bool()])):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def _per_row_kl(drift, start, prefix):
    """Each neutral row's summed KL, from full passes (no skipping): {(batch, row): KL}."""
    out = {}
    for number, (p, p_log_p) in enumerate(drift.base):
        kl = p_log_p - torch.linalg.vecdot(p, drift._logprobs(number, start, prefix))
        for row in range(len(drift.batches[number])):
            out[number, row] = float(kl[drift._row_positions(number, [row])].sum())
    return out


def test_rows_left_untouched_are_skipped_and_the_rest_counted(monkeypatch):
    model = _model()
    tok = byte_tokenizer()
    scorer = HeldOutScorer(model, tok, [], NEUTRAL, batch_size=3, replay_layers=[1])
    drift = scorer.drift_reference
    steered = SteeredModel(model, random_adapter(model, counts={1: 2}, strength=8.0), check_fingerprint=False)
    try:
        prefix = scorer._prefix()
        full = drift.drift(1, prefix)
        per_row = _per_row_kl(drift, 1, prefix)
        sizes = {}
        for number in range(len(drift.batches)):
            out, _, ran = forward_rows(model, [drift.encoded[i] for i in drift.batches[number]], tok.pad_token_id,
                                       drift.replay, (drift.tag, number), 1, prefix, read=steered.delta_sizes)
            largest = torch.stack(list(out.values())).amax(0).masked_fill(~ran.bool(), 0).amax(-1)
            sizes.update({(number, row): float(v) for row, v in enumerate(largest)})
        # call rows below the median size "untouched" (a random adapter touches every row), so that the
        # bookkeeping of a partial batch is what is checked
        threshold = sorted(sizes.values())[len(sizes) // 2]
        monkeypatch.setattr(scoring, "UNTOUCHED", threshold)
        monkeypatch.setattr(drift, "_untouched", staticmethod(lambda *args: True))   # the prefix counts as untouched
        skipped = drift.drift(1, prefix, gates=steered)
    finally:
        steered.detach()
    untouched = [key for key, size in sizes.items() if size <= threshold]
    partial = {n for n, _ in untouched} & {n for n, _ in set(sizes) - set(untouched)}
    assert untouched and partial   # a batch with rows skipped and rows run: the narrower replay is exercised
    expected = full - sum(per_row[key] for key in untouched) / drift.positions
    assert sum(per_row[key] for key in untouched) > 1e-4 * drift.positions * full   # what is skipped is not nothing
    assert skipped == pytest.approx(expected, rel=1e-9)


def test_an_adapter_whose_gates_never_open_runs_no_row_above_them():
    model = _model()
    tok = byte_tokenizer()
    scorer = HeldOutScorer(model, tok, [], NEUTRAL, batch_size=3, replay_layers=[1])
    passes = []
    handle = model.model.norm.register_forward_hook(lambda *args: passes.append(1))   # reached only past the gates
    steered = SteeredModel(model, closed_adapter(model, counts={1: 2}), check_fingerprint=False)
    try:
        prefix = scorer._prefix()
        passes.clear()
        assert scorer.drift_reference.drift(1, prefix, gates=steered) == 0.0
        assert passes == []
        assert scorer.drift_reference.drift(1, prefix) == pytest.approx(0.0, abs=1e-12)   # the full passes agree
        assert len(passes) == len(scorer.drift_reference.batches)
    finally:
        steered.detach()
        handle.remove()


def test_only_gated_neurons_are_skipped_for():
    """An always-on vector touches every row: the scorer is not given the gates, and the drift is the full one."""
    from masteer.compiler.program.applicability import score_adapter
    model = _model()
    tok = byte_tokenizer()
    scorer = HeldOutScorer(model, tok, [], NEUTRAL, batch_size=3, replay_layers=[1])
    seen = []
    real = scorer.drift_reference.drift
    scorer.drift_reference.drift = lambda start, prefix, gates=None: seen.append(gates) or real(start, prefix, gates)
    score_adapter(model, scorer, closed_adapter(model, counts={1: 1}))
    score_adapter(model, scorer, random_adapter(model, counts={1: 1}, additive_layer=1))
    assert isinstance(seen[0], SteeredModel) and seen[1] is None
