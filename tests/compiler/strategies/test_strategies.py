"""The library survey on a tiny random model: one capture, every algorithm x layer, layer ranking and
strength calibration under the drift budget, the typed rows and the ``masteer strategies`` command.

A random model cannot show which algorithm steers best (the benchmark under tools/ does, on the
embedded model); these tests check the selection rules and the plumbing.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner


from tiny_models import byte_tokenizer, tiny_chat_model  # noqa: E402

from masteer.compiler import cli  # noqa: E402
from masteer.compiler.strategies.algorithms import available  # noqa: E402
from masteer.compiler.common.models import LoadedModel  # noqa: E402
from masteer.compiler.pipeline import CompileOptions, survey_strategies  # noqa: E402
from masteer.compiler.strategies.library import calibrate  # noqa: E402
from masteer.runtime.errors import MasteerError  # noqa: E402

LAYERS = (0, 1, 2)
BUDGET = 0.05


@pytest.fixture(scope="module")
def loaded():
    torch.set_num_threads(1)
    return LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny-llama")


@pytest.fixture(scope="module")
def survey(loaded, small_samples):
    options = CompileOptions(layers=LAYERS, samples_path=str(small_samples), progress=False)
    return survey_strategies(options, loaded=loaded, keep_layers=2, budget=BUDGET, log=lambda _: None)


def test_every_algorithm_is_scored_at_every_layer(survey):
    assert {(r.algorithm, r.layer) for r in survey.rows} == {(a, l) for a in available() for l in LAYERS}
    assert len(available()) >= 7


def test_the_best_layers_by_separation_are_kept(survey):
    for algorithm in available():
        rows = [r for r in survey.rows if r.algorithm == algorithm and not r.error]
        kept = [r for r in rows if r.kept]
        assert len(kept) == min(2, len(rows))
        if len(rows) > len(kept):
            assert min(r.separation for r in kept) >= max(r.separation for r in rows if not r.kept)
        assert all(0.0 <= r.sign_consistency <= 1.0 for r in rows)


def test_chosen_strength_is_the_largest_effect_within_the_drift_budget(survey):
    calibrated = [r for r in survey.rows if r.kept and not r.error]
    assert calibrated
    # at least one row must choose a strength, or every check below could pass on rows that chose none
    assert any(r.strength is not None for r in calibrated)
    for r in calibrated:
        assert r.tried, r
        within = [t for t in r.tried if t["drift"] <= BUDGET]
        if not within:
            assert r.strength is None and not r.moved
            continue
        best = max(within, key=lambda t: t["effect"])
        assert r.strength == best["strength"] and r.effect == best["effect"] and r.drift <= BUDGET
        # drift grows with strength for an always-on vector: the calibration saw a real trade-off
        drifts = [t["drift"] for t in r.tried]
        assert drifts[-1] > drifts[0]
    for r in survey.rows:
        if not r.kept:
            assert r.strength is None and r.tried == []


def test_rows_round_trip_through_json(survey):
    data = json.loads(json.dumps(survey.to_dict(), allow_nan=True))
    assert data["drift_budget"] == BUDGET and len(data["rows"]) == len(survey.rows)
    assert {"algorithm", "layer", "kind", "lowering", "separation", "strength", "effect", "drift", "moved"} <= set(
        data["rows"][0])
    table = survey.table()
    assert table.count("\n") == len(survey.rows) + 1
    assert "rotation" in table and "adapter only" in table and "weight orthogonalisation" in table


def test_calibrate_refuses_every_strength_over_budget():
    class Scorer:
        def score(self, steering, start=None):
            with steering():
                return 1.0, 1.0  # a big effect, far over budget
    from tiny_models import random_adapter, tiny_model
    model = tiny_model("llama")
    strength, effect, drift, tried = calibrate(model, random_adapter(model), Scorer(), (0.5, 1.0), budget=0.1)
    assert strength is None and math.isnan(effect) and math.isnan(drift) and len(tried) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithms": ["mean_difference", "no_such"]}, "unknown algorithm.*no_such"),
    ({"keep_layers": 0}, "keep_layers must be at least 1"),
    ({"budget": float("nan")}, "drift budget must be a positive"),
    ({"budget": 0.0}, "drift budget must be a positive"),
])
def test_bad_survey_options_fail_before_any_work(loaded, small_samples, kwargs, message):
    with pytest.raises(MasteerError, match=message):
        survey_strategies(CompileOptions(samples_path=str(small_samples), progress=False), loaded=loaded,
                          log=lambda _: None, **kwargs)


def test_the_strategies_command_prints_the_table_and_writes_json(loaded, small_samples, tmp_path):
    model_dir = tmp_path / "tiny"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "survey.json"
    result = CliRunner().invoke(cli.main, ["strategies", "refusal", "--model", str(model_dir), "--layers", "0,2",
                                           "--algorithms", "mean_difference,rotation", "--samples", str(small_samples),
                                           "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "| mean_difference | 0 |" in result.output and "| rotation | 2 |" in result.output
    assert "did not move:" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["algorithm"], r["layer"]) for r in rows) == [("mean_difference", 0), ("mean_difference", 2),
                                                                   ("rotation", 0), ("rotation", 2)]
