"""The per-prompt arm: the program decided once per prompt, measured beside the per-token gates.

On a tiny random model: routes follow the anchors' openings at the last prompt token, a routed arm
answers each prompt exactly as its routed adapter alone would, and bad routes are named.
"""

from __future__ import annotations

from dataclasses import replace


import pytest
import torch


from tiny_models import byte_tokenizer, tiny_chat_model  # noqa: E402

from masteer.compiler.capture.activations import encode_prompt  # noqa: E402
from masteer.compiler.compile import AdaptiveOptions, compile_program  # noqa: E402
from masteer.compiler.evaluation import evaluate_refusal  # noqa: E402
from masteer.compiler.evaluation.refusal_table import Routed  # noqa: E402
from masteer.compiler.evaluation.gate_report import OPEN  # noqa: E402
from masteer.compiler.common.models import LoadedModel  # noqa: E402
from masteer.compiler.pipeline import CompileOptions  # noqa: E402
from masteer.compiler.evaluation.prompt_decision import BASE_ROUTE, always_on, decided_per_prompt  # noqa: E402
from masteer.compiler.samples.sample_set import Sample  # noqa: E402
from masteer.runtime import SteeredModel  # noqa: E402
from masteer.runtime.artifact import ADDITIVE  # noqa: E402
from masteer.runtime.errors import MasteerError  # noqa: E402


@pytest.fixture(scope="module")
def compiled(small_samples):
    torch.set_num_threads(1)
    loaded = LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny-llama")
    options = CompileOptions(layers=(0, 1, 2), samples_path=str(small_samples), progress=False, evaluate=False)
    adaptive = AdaptiveOptions(algorithms=("mean_difference", "pca", "lda"), keep_layers=1, budget=10.0)
    return loaded, compile_program(options, adaptive, loaded=loaded, log=lambda _: None)


def _prompts(result) -> list[str]:
    return [s.prompt for s in result.samples.samples]


def test_each_prompt_is_routed_to_the_strategies_open_at_its_last_token(compiled):
    loaded, result = compiled
    prompts = _prompts(result)
    arm = decided_per_prompt(loaded.model, loaded.tokenizer, result.program, result.adapter, prompts, batch_size=7)
    steered = SteeredModel(loaded.model, result.adapter)
    try:
        for prompt in prompts:   # one prompt at a time, unpadded: the batched decision must agree
            ids = torch.tensor([encode_prompt(loaded.tokenizer, prompt)])
            openings = steered.openings(input_ids=ids)
            opened = [name for name in result.program.names if float(openings[name][0, -1]) >= OPEN]
            assert arm.route[prompt] == (" + ".join(opened) if opened else BASE_ROUTE)
    finally:
        steered.detach()
    routes = set(arm.route.values())
    # a random model's anchors open on some prompts and not on others; both kinds of route are exercised
    assert BASE_ROUTE in routes and len(routes) >= 2, routes
    assert arm.adapters[BASE_ROUTE] is None
    for key, adapter in arm.adapters.items():
        if adapter is not None:
            assert [s.strategy for s in adapter.strategies] == key.split(" + ")


def test_always_on_writes_each_strategy_at_its_full_strength(compiled):
    _, result = compiled
    names = result.program.names
    adapter = always_on(result.program, names, result.adapter)
    assert [s.kind for s in adapter.strategies] == [ADDITIVE] * len(names)
    for spec, strategy in zip(adapter.strategies, result.program.strategies):
        assert (spec.strategy, spec.layer, spec.strength) == (strategy.name, strategy.layer, strategy.strength)
    for layer in adapter.layers:
        rows = adapter.block(layer, ADDITIVE)["direction"]
        expected = torch.stack([s.direction for s in result.program.strategies if s.layer == layer])
        assert torch.equal(rows.reshape(expected.shape), expected.to(rows.dtype))
    assert adapter.fingerprint == result.adapter.fingerprint


def test_a_routed_arm_answers_each_prompt_as_its_adapter_alone_would(compiled):
    loaded, result = compiled
    prompts = _prompts(result)[:6]
    samples = [Sample(id=f"p{i}", prompt=p, label="target", split="test") for i, p in enumerate(prompts)]
    steer = always_on(result.program, result.program.names[:1], result.adapter)
    for spec in steer.strategies:
        spec.strength = 50.0   # large enough that the steered answers differ from the base model's
    routed = Routed(adapters={"steer": steer}, route={p: "steer" for p in prompts[::2]})
    table = evaluate_refusal(loaded.model, loaded.tokenizer, {"base": None, "steer": steer, "routed": routed},
                             {"all": samples}, {"all": "up"}, max_new_tokens=4, batch_size=4, examples=6,
                             progress=False)
    answers = table.groups[0].examples
    expected = [answers["steer"][i] if i % 2 == 0 else answers["base"][i] for i in range(6)]
    assert answers["routed"] == expected
    assert answers["steer"] != answers["base"]


def test_a_route_to_an_unknown_adapter_is_named():
    with pytest.raises(MasteerError, match=r"routes to \['gone'\]"):
        Routed(adapters={"here": None}, route={"a prompt": "gone"})


def test_the_compile_measures_the_per_prompt_arm_and_the_static_frontier_on_test(tiny_compile):
    """The whole evaluation on a tiny compile: the table has the per-prompt arm, and the static frontier has
    one row per strength the matching tried, each agreeing with that strength measured on its own."""
    from masteer.compiler.compile import (ADAPTIVE_ARM, PER_PROMPT_ARM, evaluate_program, frontier_markdown,
                                                   summary_markdown)
    loaded, options, result = tiny_compile()
    # a random model refuses nothing, so the matching stops at its first strength: add a far larger one
    result.static_match["tried"].append({"strength": 40.0, "val_target_refusal": 0.0})
    brief = evaluate_program(result, loaded, options, suites=False, log=lambda _: None)
    assert brief.refusal.arms == ["base", "static", ADAPTIVE_ARM]   # the default compile: no diagnostics
    assert not (brief.frontier or brief.teacher_forced or brief.gates or brief.fluency or brief.breakdowns)
    options = replace(options, full_report=True)   # --full-report
    evaluation = evaluate_program(result, loaded, options, suites=False, log=lambda _: None)
    assert PER_PROMPT_ARM in evaluation.refusal.arms and "single" in evaluation.refusal.arms
    for arm in ("base", "static", ADAPTIVE_ARM):   # the diagnostics change none of the main table's answers
        assert evaluation.refusal.responses[arm] == brief.refusal.responses[arm]
    assert PER_PROMPT_ARM not in evaluation.teacher_forced   # a routed arm has no single forward pass
    tried = sorted({row["strength"] for row in result.static_match["tried"]})
    rows = evaluation.frontier
    static_rows, (program_row,) = rows[:-1], rows[-1:]
    assert [r["strength"] for r in static_rows] == tried and len(static_rows) >= 2
    assert program_row["arm"] == ADAPTIVE_ARM
    # the frontier runs on the test prompts as written: each row agrees with the main table's verdicts there
    written = [s for s in result.samples.select(split="test") if s.family in ("direct", "")]
    assert 0 < len(written) < len(result.samples.select(split="test")) == len(evaluation.refusal.verdicts["base"])
    up = [s.prompt for s in written if s.label == "target"]
    for arm, row in (("static", next(r for r in static_rows if r["strength"] == result.static_match["chosen_strength"])),
                     (ADAPTIVE_ARM, program_row)):
        assert row["test_up"] == pytest.approx(sum(evaluation.refusal.verdicts[arm][p] for p in up) / len(up))
        assert row["test_neutral_kl"] == pytest.approx(evaluation.teacher_forced[arm]["kl"], abs=1e-5)
    assert static_rows[-1]["test_neutral_kl"] > static_rows[0]["test_neutral_kl"]   # a larger push drifts more
    table = frontier_markdown(rows)
    assert table.count("| static |") == len(static_rows) and f"**{ADAPTIVE_ARM}**" in table
    assert "every strength the matching tried" in summary_markdown(result, evaluation)
    assert "static_frontier" in evaluation.to_dict()


def test_arms_of_the_same_content_are_scored_once_in_the_teacher_forced_table(compiled, monkeypatch):
    import copy
    from masteer.compiler import compile as compile_driver
    loaded, result = compiled
    calls = []
    real = compile_driver.score_adapter

    def spy(model, scorer, adapter):
        calls.append(adapter)
        return real(model, scorer, adapter)

    monkeypatch.setattr(compile_driver, "score_adapter", spy)
    arms = {"base": None, "adaptive": result.adapter, "twin": copy.deepcopy(result.adapter)}
    table = compile_driver.teacher_forced_table(loaded, result.samples, arms, batch_size=7, progress=False)
    assert len(calls) == 1 and table["twin"] == table["adaptive"] and table["twin"] is not table["adaptive"]
    other = copy.deepcopy(result.adapter)
    other.strategies[0].strength *= 2
    table = compile_driver.teacher_forced_table(loaded, result.samples, {**arms, "stronger": other}, 7, False)
    assert len(calls) == 3 and table["stronger"]["effect"] != table["adaptive"]["effect"]


def test_the_frontier_reads_the_effect_tables_scorer_and_scores_no_content_twice(tiny_compile, monkeypatch):
    """The effect table and the static frontier share one test scorer: the test neutral prompts' base passes run
    once, the matched strength and the program are scored once, and every frontier KL is what a scorer of the test
    neutral prompts alone gives."""
    from masteer.compiler import compile as compile_driver
    from masteer.compiler.compile import ADAPTIVE_ARM, evaluate_program
    from masteer.compiler.program.applicability import adapter_drift
    from masteer.compiler.strategies.scoring import HeldOutScorer
    loaded, options, result = tiny_compile(full_report=True)
    result.static_match["tried"].append({"strength": 40.0, "val_target_refusal": 0.0})
    built, scored, drifted = [], [], []

    class Spy(HeldOutScorer):
        def __init__(self, *args, **kwargs):
            built.append(args[3])
            super().__init__(*args, **kwargs)

    real_score, real_drift = compile_driver.score_adapter, compile_driver.adapter_drift
    monkeypatch.setattr(compile_driver, "HeldOutScorer", Spy)
    monkeypatch.setattr(compile_driver, "score_adapter", lambda *a: scored.append(a[2]) or real_score(*a))
    monkeypatch.setattr(compile_driver, "adapter_drift", lambda *a: drifted.append(a[2]) or real_drift(*a))
    evaluation = evaluate_program(result, loaded, options, suites=False, log=lambda _: None)
    assert len(built) == 1   # one scorer: its base passes over the test neutral prompts ran once
    table_arms = {compile_driver.arm_key(a) for a in compile_driver.program_arms(result, single=True).values() if a}
    assert len(scored) == len(table_arms)
    rows = evaluation.frontier
    matched = result.static_match["chosen_strength"]
    assert len(drifted) == len(rows) - 2   # every strength but the matched one; the program's row from the table
    assert all(compile_driver.arm_key(a) not in table_arms for a in drifted)
    neutral = [s.prompt for s in result.samples.select(split="test", label="neutral")]
    alone = HeldOutScorer(loaded.model, loaded.tokenizer, [], neutral, options.batch_size,
                          replay_layers=compile_driver.arm_layers([result.static, result.adapter]))
    for row in rows:
        adapter = (result.adapter if row["arm"] == ADAPTIVE_ARM
                   else compile_driver.at_strength(result.static, row["strength"]))
        assert row["test_neutral_kl"] == pytest.approx(adapter_drift(loaded.model, alone, adapter), abs=1e-5)
    assert next(r for r in rows if r["strength"] == matched)["test_neutral_kl"] == evaluation.teacher_forced["static"]["kl"]
    assert len({r["test_neutral_kl"] for r in rows}) == len(rows)   # the strengths differ, so do their KLs
