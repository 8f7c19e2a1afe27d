"""The whole compile with the single-strategy preset on a tiny random model: stages, held-out discipline,
saved folder, errors.

A random model cannot show that steering works (the embedded end-to-end tests do); these tests
check the mechanics every compile relies on, in seconds.
"""

from __future__ import annotations

import json

import pytest
import torch


from tiny_models import byte_tokenizer, tiny_chat_model  # noqa: E402

from masteer.compiler.common.models import LoadedModel  # noqa: E402
from masteer.compiler.compile import compile_program, evaluate_program, save_program, summary_markdown
from masteer.compiler.pipeline import REPORT_NAME, SAMPLES_NAME, CompileOptions, check_disjoint
from masteer.compiler.program.single_strategy import SingleStrategy
from masteer.compiler.samples.sample_set import SampleSet  # noqa: E402
from masteer.runtime import SteeredModel, SteeringAdapter, bake  # noqa: E402
from masteer.runtime.errors import MasteerError  # noqa: E402



@pytest.fixture(scope="module", params=["llama", "gpt2"])
def compiled(request, small_samples):
    torch.set_num_threads(1)
    loaded = LoadedModel(model=tiny_chat_model(request.param), tokenizer=byte_tokenizer(), name=f"tiny-{request.param}")
    options = CompileOptions(recipe="refusal", layers=(0, 2), strength=1.0, samples_path=str(small_samples),
                             max_new_tokens=3, progress=False)
    lines: list[str] = []
    result = compile_program(options, SingleStrategy(), loaded=loaded, log=lines.append)
    evaluation = evaluate_program(result, loaded, options, suites=False, log=lines.append)
    return loaded, result, evaluation, lines


def test_compile_ranks_every_candidate_layer_and_keeps_the_best(compiled):
    _, result, _, lines = compiled
    assert [c.layer for c in result.candidates] == [0, 2]
    scores = {c.layer: c.score for c in result.candidates}
    assert all(torch.isfinite(torch.tensor(v)) for v in scores.values())
    assert result.chosen_layer == max(scores, key=scores.get)
    assert any(line.startswith("chosen layer") for line in lines)


def test_adapter_is_one_ramp_strategy_on_the_chosen_layer(compiled):
    _, result, evaluation, _ = compiled
    adapter = result.adapter
    assert adapter.layers == [result.chosen_layer]
    roles = sorted(s.metadata["gate_role"] for s in adapter.strategies)
    assert roles == ["cap", "open"]
    directions = adapter.tensors[f"layers.{result.chosen_layer}.neuron.direction"]
    # the cap neuron writes the negated direction: together they clamp the gate to [0, 1]
    assert torch.allclose(directions[0], -directions[1])
    assert [s.kind for s in result.static.strategies] == ["additive"]
    assert torch.equal(result.static.tensors[f"layers.{result.chosen_layer}.additive.direction"][0],
                       result.program.strategies[0].direction)
    assert len(result.program.strategies) == 1 and result.preset == "single" and result.search is None
    assert adapter.provenance["samples_hash"] == result.samples.content_hash


def test_evaluation_covers_every_recipe_group_for_every_arm(compiled):
    _, result, evaluation, _ = compiled
    assert evaluation.teacher_forced == {} and evaluation.gates == []   # the cheap preset: the table only
    evaluation = evaluation.refusal
    assert evaluation.arms == ["base", "static", "adaptive"]
    groups = {g.group: g for g in evaluation.groups}
    assert set(groups) == set(result.recipe.evaluation.groups)
    for g in groups.values():
        assert g.n == len(result.samples.select(split="test", group=g.group)) > 0
        assert set(g.rates) == {"base", "static", "adaptive"}
        assert all(0.0 <= r <= 1.0 for r in g.rates.values())
    assert evaluation.settings["max_new_tokens"] == 3
    table = summary_markdown(result, compiled[2])
    assert "| held-out group |" in table and "single preset" in table
    timing = table.splitlines()[-1]   # where the time went, last: every stage of the compile and the evaluation
    assert timing.startswith("Time per stage (s): load ") and "program" in timing and "refusal table" in timing
    assert set(compiled[2].timings) == {"refusal_table"} and set(result.timings) == {"load", "capture", "fit", "program"}
    pooled = evaluation.pooled("same", "adaptive")
    same = [g for g in groups.values() if g.direction == "same"]
    assert pooled == pytest.approx(sum(g.rates["adaptive"] * g.n for g in same) / sum(g.n for g in same))
    assert len(same) == 3 and f"| all: benign-rho + benign-edgy + benign-truthfulqa | {sum(g.n for g in same)} | same |" \
        in table


def test_saved_folder_holds_adapter_samples_and_report(compiled, tmp_path):
    loaded, result, evaluation, _ = compiled
    out = save_program(result, evaluation, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", "README.md", SAMPLES_NAME, REPORT_NAME])
    again = SteeringAdapter.load(out)
    for key, tensor in result.adapter.tensors.items():
        assert torch.equal(again.tensors[key], tensor)
    assert SampleSet.load(out / SAMPLES_NAME).content_hash == result.samples.content_hash
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["chosen_layer"] == result.chosen_layer and len(report["candidates"]) == 2
    assert report["preset"] == "single" and report["program"]["strategies"][0]["layer"] == result.chosen_layer
    assert "held-out group" in (out / "README.md").read_text()


def test_compiled_adapter_bakes_exactly(compiled, tmp_path):
    loaded, result, evaluation, _ = compiled
    tokenizer = loaded.tokenizer
    # training targets with their desired completion (where the anchor was fitted to open) and a neutral prompt
    targets = [s for s in result.samples.select(split="train", label="target") if s.positive][:2]
    texts = [s.prompt + " " + s.positive for s in targets] + ["Write a poem about the sea and the sky"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        base = loaded.model(**batch).logits
    steered = SteeredModel(loaded.model, result.adapter)
    try:
        with torch.no_grad():
            expected = steered(**batch).logits
    finally:
        steered.detach()
    mask = batch["attention_mask"].bool()
    # the adapter must do something on these tokens, or equality below would hold with nothing steered
    assert (expected[mask] - base[mask]).abs().max() > 1e-3
    model_copy = type(loaded.model)(loaded.model.config)
    model_copy.load_state_dict(loaded.model.state_dict())
    folder = bake(model_copy.eval(), result.adapter, tmp_path / "baked", tokenizer=tokenizer)
    from transformers import AutoModelForCausalLM
    baked = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        got = baked(**batch).logits
    assert (got[mask] - expected[mask]).abs().max() <= 1e-4


def test_overlapping_splits_are_refused_by_name(small_samples, tmp_path):
    samples = SampleSet.load(small_samples)
    test_sample = samples.select(split="test")[0]
    leaked = samples.select(split="train")[0]
    samples.samples.append(type(leaked)(**{**leaked.__dict__, "id": "leak", "prompt": test_sample.prompt.upper()}))
    with pytest.raises(MasteerError, match=r"'leak' \(train\) repeats a prompt of the test split"):
        check_disjoint(samples)


def test_bad_options_fail_before_any_work(small_samples):
    loaded = LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny")
    with pytest.raises(MasteerError, match=r"candidate layers \[7\] are outside the model's 0\.\.2"):
        compile_program(CompileOptions(layers=(0, 7), samples_path=str(small_samples), progress=False),
                        SingleStrategy(), loaded=loaded, log=lambda _: None)
    with pytest.raises(MasteerError, match="strength must be a positive finite number"):
        compile_program(CompileOptions(strength=-1.0, samples_path=str(small_samples), progress=False),
                        SingleStrategy(), loaded=loaded, log=lambda _: None)
    with pytest.raises(MasteerError, match="sample file .* does not exist"):
        compile_program(CompileOptions(samples_path="/nonexistent/samples.jsonl", progress=False),
                        SingleStrategy(), loaded=loaded, log=lambda _: None)
    with pytest.raises(MasteerError, match="unknown algorithm 'mean_diff'"):
        SingleStrategy(algorithm="mean_diff")


def test_a_second_evaluation_reads_the_stored_base_arm_and_gives_the_same_table(compiled, monkeypatch):
    """The base arm's answers are stored per model: the next compile on it generates only the steered arms,
    and its table is the same."""
    from masteer.compiler.capture import generations
    shared, result, evaluation, lines = compiled
    # the same weights afresh (another test bakes the shared model in place)
    loaded = LoadedModel(tiny_chat_model(shared.name.removeprefix("tiny-")), byte_tokenizer(), shared.name)
    options = CompileOptions(recipe="refusal", layers=(0, 2), strength=1.0, max_new_tokens=3, progress=False)
    real, arms = generations.generate, []
    monkeypatch.setattr(generations, "generate", lambda model, *a, **k: arms.append(type(model).__name__)
                        or real(model, *a, **k))
    said: list[str] = []
    again = evaluate_program(result, loaded, options, suites=False, log=said.append)
    assert any(line.startswith("base results: reusing") for line in said)
    assert arms and "SteeredModel" in set(arms) and set(arms) == {"SteeredModel"}   # no base-model generation
    assert again.refusal.to_dict() == evaluation.refusal.to_dict()
    fresh = evaluate_program(result, loaded, CompileOptions(recipe="refusal", layers=(0, 2), strength=1.0,
                                                            max_new_tokens=3, progress=False,
                                                            store_base_results=False), suites=False, log=said.append)
    assert set(arms) > {"SteeredModel"}                                              # --no-cache: the base again
    assert fresh.refusal.to_dict() == evaluation.refusal.to_dict()
    assert result.report()["selection_precision"] == "exact"                        # the default
