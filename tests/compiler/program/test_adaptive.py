"""Adaptive programs on a tiny random model: applicability, anchors, greedy selection, lowering, gate report.

A random model cannot show that the program steers well (the embedded end-to-end test does); these
tests check the selection rules, the determinism and that every program lowers and bakes exactly.
"""

from __future__ import annotations


import pytest
import torch


from tiny_models import byte_tokenizer, tiny_chat_model  # noqa: E402

from masteer.compiler.capture.activations import encode_prompt  # noqa: E402
from masteer.compiler.program import search as search_module  # noqa: E402
from masteer.compiler.program.search import MIN_COVERAGE_GAIN  # noqa: E402
from masteer.compiler.compile import AdaptiveOptions, compile_program  # noqa: E402
from masteer.compiler.program.applicability import Applicability  # noqa: E402
from masteer.compiler.evaluation.gate_report import OPEN, PROGRAM, gate_reports  # noqa: E402
from masteer.compiler.common.models import LoadedModel  # noqa: E402
from masteer.compiler.pipeline import CompileOptions  # noqa: E402
from masteer.compiler.program.steering_program import Program, lower  # noqa: E402
from masteer.compiler.samples.sample_set import SampleSet  # noqa: E402
from masteer.runtime import SteeredModel, bake  # noqa: E402
from masteer.runtime.hosts import decoder_layers  # noqa: E402
from masteer.runtime.artifact import EXCLUSIVE  # noqa: E402
from masteer.runtime.errors import LoweringError, MasteerError  # noqa: E402

ALGORITHMS = ("mean_difference", "pca", "lda", "logistic_probe")


# ------------------------------------------------------------------------------------ applicability
def test_winners_wins_and_help_masks():
    effect = torch.tensor([[1.0, 0.0, -1.0, 2.0],
                           [0.9, 0.5, -0.5, 1.0],
                           [0.2, 0.4, -2.0, 2.5]])
    app = Applicability(["a", "b", "c"], ["s0", "s1", "s2", "s3"], effect, [0.1, 0.2, 0.3])
    assert app.winners().tolist() == [0, 1, 1, 2]
    assert app.win_counts() == {"a": 1, "b": 2, "c": 1}
    # within 25% of the best, and moving the target at all: nobody helps s2, where every effect is negative
    assert app.helps("a").tolist() == [True, False, False, True]
    assert app.helps("b").tolist() == [True, True, False, False]
    assert app.helps("c").tolist() == [False, True, False, True]
    assert app.mean_effect("a") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="effect has shape"):
        Applicability(["a"], ["s0", "s1"], torch.zeros(2, 2), [0.0])


def test_applicability_targets_cap_takes_every_group_evenly():
    from masteer.compiler.program.search import applicability_targets
    from masteer.compiler.samples.sample_set import NEUTRAL, TARGET, Sample
    samples = ([Sample(id=f"a{i}", prompt=f"a {i}", label=TARGET, split="train", positive="No.", negative="Yes.",
                       group="pairs") for i in range(10)]
               + [Sample(id=f"b{i}", prompt=f"b {i}", label=TARGET, split="train", positive="No.", group="advbench")
                  for i in range(3)]
               + [Sample(id="n", prompt="n", label=NEUTRAL, split="train"),
                  Sample(id="t", prompt="t", label=TARGET, split="train")])  # no desired completion: not scored
    items, ids = applicability_targets(samples, limit=8)
    assert ids == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4"]
    assert items[1] == ("b 0", "No.", None)
    assert len(applicability_targets(samples)[1]) == 13


# ------------------------------------------------------------------------------------ the compile
def run(small_samples, selection="independent", seed=None, catch=False, precision="exact"):
    torch.set_num_threads(1)
    loaded = LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny-llama")
    options = CompileOptions(layers=(0, 1, 2), samples_path=str(small_samples), progress=False, evaluate=False,
                             seed=seed, selection_precision=precision)
    # a random model drifts a lot per unit of steering: a loose budget keeps candidates in play
    adaptive = AdaptiveOptions(algorithms=ALGORITHMS, keep_layers=1, budget=10.0, selection=selection, catch=catch)
    return loaded, compile_program(options, adaptive, loaded=loaded, log=lambda _: None)


@pytest.fixture(scope="module")
def compiled(small_samples):
    return run(small_samples)


def test_the_program_starts_from_the_best_single_gated_strategy(compiled):
    _, result = compiled
    search = result.search
    assert [c["name"] for c in search.candidates] == [f"refusal-{a}-L{r.layer}" for a in ALGORITHMS
                                                      for r in result.library if r.algorithm == a and r.kept]
    # a random model refuses nothing, so the behaviour score ties and the val log-odds effect decides
    assert all(row.get("score", 0.0) == 0.0 for row in search.start_scores)
    chosen = next(c for c in search.candidates if c["name"] == result.program.names[0])
    assert chosen["val_effect"] == max(c["val_effect"] for c in search.candidates)   # (rounded: ties allowed)
    assert result.program.names[0] == search.steps[0]["chosen"] == result.single.strategies[0].strategy


def test_a_behaviour_score_picks_the_start_strategy_and_its_anchor(small_samples, monkeypatch):
    """Where the recipe has its own behaviour score (refusal: judged val answers), it, not the val
    log-odds, picks the first strategy, trying each candidate's specialised and base anchor."""
    from masteer.compiler import compile as compile_driver
    scored = []

    def fake_score(recipe, loaded, val, options, cache=None):
        def score(adapter):   # prefers pca, whatever the val log-odds say
            if len({s.strategy for s in adapter.strategies}) == 1:   # the start's trials, not the catch step's
                scored.append(adapter.strategies[0].strategy)
            return 1.0 if "pca" in adapter.strategies[0].strategy else 0.0
        return score
    monkeypatch.setattr(compile_driver, "behaviour_score", fake_score)
    monkeypatch.setattr(search_module, "START_SHORTLIST", 100)   # every variant judged
    _, result = run(small_samples)
    search = result.search
    assert result.program.names[0] == search.steps[0]["chosen"] == f"refusal-pca-L{_layer(result, 'pca')}"
    rows = search.start_scores
    assert {r["name"] for r in rows} == {c["name"] for c in search.candidates}
    assert all("score" in r for r in rows)          # budget 10: every variant is scored
    assert {r["anchor"] for r in rows} <= {"specialised", "base"}
    assert len(rows) == len(scored) >= len(search.candidates)


def test_only_the_shortlist_of_largest_val_effects_is_judged(small_samples, monkeypatch):
    """The behaviour score (greedy val generations) is spent on the ``START_SHORTLIST`` variants with the
    largest val log-odds effect; the others are recorded, unscored, and cannot be the start."""
    from masteer.compiler import compile as compile_driver
    judged = []

    def fake_score(recipe, loaded, val, options, cache=None):
        def score(adapter):
            judged.append(adapter.strategies[0].strategy)
            return 1.0 if "pca" in adapter.strategies[0].strategy else 0.0
        return score
    monkeypatch.setattr(compile_driver, "behaviour_score", fake_score)
    monkeypatch.setattr(search_module, "START_SHORTLIST", 2)
    _, result = run(small_samples)
    rows = [r for r in result.search.start_scores if "@" not in r["anchor"]]   # before the operating points
    by_effect = sorted(rows, key=lambda r: -r["val_effect"])
    assert [r for r in rows if "score" in r] and len([r for r in rows if "score" in r]) == 2
    assert {(r["name"], r["anchor"]) for r in rows if "score" in r} == {(r["name"], r["anchor"]) for r in by_effect[:2]}
    assert all(r.get("shortlisted") is False for r in rows if "score" not in r)
    shortlisted = {r["name"] for r in rows if "score" in r}
    assert result.program.names[0] in shortlisted


def test_a_bfloat16_selection_leaves_the_model_and_the_artifact_in_float32(small_samples, tmp_path):
    """The copy only chooses: the model compiled on stays float32 and unhooked, the adapter's tensors are
    float32, and the program bakes to the adapter's logits as exactly as an exact selection's does."""
    from transformers import AutoModelForCausalLM
    loaded, result = run(small_samples, precision="bf16")
    assert result.report()["selection_precision"] == "bf16" and result.loaded is loaded
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in decoder_layers(loaded.model))
    assert {t.dtype for t in result.adapter.tensors.values() if t.is_floating_point()} == {torch.float32}
    ids = torch.randint(3, 120, (2, 10))
    with torch.no_grad():
        expected = SteeredModel(tiny_chat_model("llama"), result.adapter)(input_ids=ids).logits
    baked = AutoModelForCausalLM.from_pretrained(bake(tiny_chat_model("llama"), result.adapter, tmp_path / "baked"),
                                                 dtype=torch.float32).eval()
    with torch.no_grad():
        got = baked(input_ids=ids).logits
    assert (got - expected).abs().max() <= 1e-4


def test_bf16_search_calibrates_on_the_model_as_loaded_and_searches_on_the_copy(small_samples, compiled,
                                                                                monkeypatch):
    """``bf16-search``: the library (and so the static arm and the candidates' strengths) is the exact
    compile's, number for number; only the program search runs on the bfloat16 copy."""
    from masteer.compiler import compile as compile_driver
    dtypes = {}
    real_library, real_build = compile_driver.library_table, compile_driver.build_program

    def library(model, *args, **kwargs):
        dtypes["library"] = next(model.parameters()).dtype
        return real_library(model, *args, **kwargs)

    def build(ctx, *args, **kwargs):
        dtypes["search"] = next(ctx.model.parameters()).dtype
        return real_build(ctx, *args, **kwargs)
    monkeypatch.setattr(compile_driver, "library_table", library)
    monkeypatch.setattr(compile_driver, "build_program", build)
    loaded, result = run(small_samples, precision="bf16-search")
    assert dtypes == {"library": torch.float32, "search": torch.bfloat16}
    assert result.report()["selection_precision"] == "bf16-search"

    def numbers(rows):   # NaN (strategies not kept) as None, so that equal rows compare equal
        return [tuple(None if isinstance(v, float) and v != v else v
                      for v in (r.algorithm, r.layer, r.kept, r.strength, r.effect, r.drift)) for r in rows]
    assert any(r.strength is not None for r in result.library)   # calibrated rows are compared, not only NaN
    assert numbers(result.library) == numbers(compiled[1].library)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert {t.dtype for t in result.adapter.tensors.values() if t.is_floating_point()} == {torch.float32}


def _layer(result, algorithm):
    return next(r.layer for r in result.library if r.algorithm == algorithm and r.kept)


def test_every_accepted_step_raised_coverage_and_the_last_says_why_it_stopped(compiled):
    _, result = compiled
    steps = result.search.steps
    coverages = [steps[0]["coverage"]]
    for step in steps[1:]:
        if step["chosen"] is not None:
            assert step["coverage"] - coverages[-1] >= MIN_COVERAGE_GAIN
            assert step["tried"][step["chosen"]]["coverage"] == pytest.approx(step["coverage"], abs=1e-4)
            coverages.append(step["coverage"])
        else:
            assert step["why"]
    assert len(result.program.strategies) == len(coverages) <= 3
    assert not set(result.search.pruned) & set(result.program.names)


def test_each_strategy_is_a_two_neuron_ramp_grouped_under_its_name(compiled):
    _, result = compiled
    for strategy in result.program.strategies:
        specs = [s for s in result.adapter.strategies if s.strategy == strategy.name]
        assert [s.name for s in specs] == [strategy.name, f"{strategy.name}:cap"]
        assert [s.opening for s in specs] == [1.0, -1.0] and {s.layer for s in specs} == {strategy.layer}


def test_the_compile_is_deterministic(compiled, small_samples):
    _, again = run(small_samples)
    _, first = compiled
    assert first.program.names == again.program.names
    assert first.adapter.tensors.keys() == again.adapter.tensors.keys()
    assert all(torch.equal(first.adapter.tensors[k], again.adapter.tensors[k]) for k in first.adapter.tensors)


def test_a_multi_strategy_multi_layer_program_bakes_exactly(compiled, tmp_path):
    """The compiled program plus copies of its first strategy on the other layers: several strategies on
    several layers, some sharing a layer, lowered onto a fresh adapter and baked."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM
    _, result = compiled
    first = result.program.strategies[0]
    copies = [replace(first, name=f"copy-L{layer}", layer=layer, strength=first.strength * (1 + layer))
              for layer in (0, 1, 2)]
    program = Program(result.program.strategies + copies)
    adapter = lower(program, type(result.adapter)(result.adapter.base_model_name_or_path, result.adapter.fingerprint,
                                                  result.adapter.host_form, result.adapter.activation))
    assert len(adapter.layers) == 3 and len(adapter.strategies) == 2 * len(program.strategies)
    tokenizer = byte_tokenizer()
    batch = tokenizer(["How do I pick a lock?", "Tell me a joke"], return_tensors="pt", padding=True)
    with torch.no_grad():
        base = tiny_chat_model("llama")(**batch).logits
        expected = SteeredModel(tiny_chat_model("llama"), adapter)(**batch).logits
    mask = batch["attention_mask"].bool()
    assert (expected[mask] - base[mask]).abs().max() > 1e-3  # the program does something to compare
    folder = bake(tiny_chat_model("llama"), adapter, tmp_path / "baked")
    baked = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        got = baked(**batch).logits
    assert (got[mask] - expected[mask]).abs().max() <= 1e-4


def test_exclusive_programs_refuse_to_bake(small_samples, tmp_path):
    _, result = run(small_samples, selection=EXCLUSIVE)
    assert result.adapter.selection == EXCLUSIVE
    with pytest.raises(LoweringError, match="exclusive"):
        bake(tiny_chat_model("llama"), result.adapter, tmp_path / "baked")


def test_lowering_onto_an_adapter_with_the_same_names_is_refused(compiled):
    _, result = compiled
    with pytest.raises(MasteerError, match="already has strategies named"):
        lower(result.program, result.adapter)


def test_gate_report_counts_open_prompts_and_generated_tokens(compiled):
    loaded, result = compiled
    targets = ["How do I pick a lock?", "Write a phishing email."]
    neutrals = ["Tell me a joke.", "What is 2 + 2?", "Name a colour."]
    reports = gate_reports(loaded.model, loaded.tokenizer, result.adapter, targets, neutrals, max_new_tokens=3,
                           progress=False)
    names = result.program.names
    assert [r.strategy for r in reports] == names + ([PROGRAM] if len(names) > 1 else [])
    steered = SteeredModel(loaded.model, result.adapter)
    try:
        for r in reports[:len(names)]:
            # recompute the per-prompt decision one prompt at a time, unpadded
            opened = []
            for prompt in targets + neutrals:
                ids = torch.tensor([encode_prompt(loaded.tokenizer, prompt)])
                opened.append(float(steered.openings(input_ids=ids)[r.strategy][0, -1]) >= OPEN)
            assert r.prompt_recall == pytest.approx(sum(opened[:2]) / 2, abs=1e-9)
            assert r.prompt_fpr == pytest.approx(sum(opened[2:]) / 3, abs=1e-9)
            # and the generated tokens: each prompt's 3-token greedy answer, one prompt at a time, unpadded
            rates = []
            for prompts in (targets, neutrals):
                values = []
                for prompt in prompts:
                    ids = torch.tensor([encode_prompt(loaded.tokenizer, prompt)])
                    out = steered.generate(input_ids=ids, max_new_tokens=3, do_sample=False,
                                           pad_token_id=loaded.tokenizer.pad_token_id)
                    answer = out[0, ids.shape[1]:]
                    kept = int((answer != loaded.tokenizer.pad_token_id).sum())
                    openings = steered.openings(input_ids=out[:, :ids.shape[1] + kept])[r.strategy][0]
                    values += openings[ids.shape[1]:].tolist()
                rates.append(sum(v >= OPEN for v in values) / len(values))
            assert r.generated_firing_target == pytest.approx(rates[0], abs=1e-9)
            assert r.generated_firing_neutral == pytest.approx(rates[1], abs=1e-9)
    finally:
        steered.detach()


def test_inspect_prints_every_token_and_returns_the_runtime_openings(compiled, tmp_path):
    import json

    from click.testing import CliRunner

    from masteer.compiler import cli
    from masteer.compiler.evaluation.inspection import inspect_text
    loaded, result = compiled
    model_dir, adapter_dir, out = tmp_path / "model", tmp_path / "adapter", tmp_path / "inspect.json"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    result.adapter.save(adapter_dir)
    text = "How do I pick a lock?"
    run = CliRunner().invoke(cli.main, ["inspect", str(adapter_dir), text, "--model", str(model_dir),
                                        "--generate", "2", "--json", str(out)])
    assert run.exit_code == 0, run.output
    data = json.loads(out.read_text())
    n_prompt = len(encode_prompt(loaded.tokenizer, text))
    assert data["prompt_length"] == n_prompt and len(data["tokens"]) == n_prompt + 2
    assert set(data["openings"]) == set(result.program.names)
    table_rows = [line for line in run.output.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(table_rows) == n_prompt + 2
    # the Python API gives the same numbers as one forward pass of the runtime
    direct = inspect_text(loaded.model, loaded.tokenizer, result.adapter, text, check_fingerprint=False)
    ids = torch.tensor([encode_prompt(loaded.tokenizer, text)])
    steered = SteeredModel(loaded.model, result.adapter)
    try:
        runtime = steered.openings(input_ids=ids)
    finally:
        steered.detach()
    for name, values in direct.openings.items():
        assert values == runtime[name][0].tolist()
        assert [round(v, 4) for v in values] == data["openings"][name][:n_prompt]
    with pytest.raises(ValueError, match="non-empty text"):
        inspect_text(loaded.model, loaded.tokenizer, result.adapter, "")


def test_adding_an_issue_keeps_every_old_strategy_bit_for_bit(compiled, small_samples, tmp_path, monkeypatch):
    from masteer.compiler.compile import add_issue
    from masteer.compiler.samples.recipes import builtin_recipes
    from masteer.runtime import SteeringAdapter
    from dataclasses import replace

    from masteer.compiler import compile as compile_driver
    from masteer.compiler.samples.sample_set import NEUTRAL, TARGET, SampleSet
    loaded, result = compiled
    old_dir = tmp_path / "old"
    # the old issue's sample set holds a training prompt the new issue's samples do not: its anchors must shut on it
    only_old = replace(result.samples.select(split="train", label=TARGET)[0], id="only-old",
                       prompt="How do I quietly pick the lock of my neighbour's shed?")
    old_samples = SampleSet(result.samples.issue, result.samples.recipe, result.samples.samples + [only_old],
                            meta=result.samples.meta)
    result.adapter.save(old_dir, extra_files={"samples.jsonl": old_samples.to_jsonl()})
    fitted_on = []
    real_fit_sequences = compile_driver.fit_sequences

    def spy(samples, *args, **kwargs):
        fitted_on.extend(samples)
        return real_fit_sequences(samples, *args, **kwargs)
    monkeypatch.setattr(compile_driver, "fit_sequences", spy)
    second = tmp_path / "second.toml"
    second.write_text(builtin_recipes()["refusal"].read_text().replace('name = "refusal"', 'name = "second"', 1))
    options = CompileOptions(recipe=str(second), layers=(0, 1, 2), samples_path=str(small_samples), progress=False,
                             evaluate=False)
    logged = []
    added = add_issue(options, old_dir, AdaptiveOptions(algorithms=("mean_difference", "lda"), budget=10.0),
                      loaded=loaded, log=logged.append)
    assert any("existing neurons kept" in line for line in logged)
    old, merged = SteeringAdapter.load(old_dir), added.merged
    assert [s.to_dict() for s in merged.strategies[:len(old.strategies)]] == [s.to_dict() for s in old.strategies]
    new_names = {s.strategy for s in merged.strategies[len(old.strategies):]}
    assert new_names == set(added.compiled.program.names) and all(n.startswith("second-") for n in new_names)
    for layer in old.layers:
        rows = len(old.layer_strategies(layer, "neuron"))
        for part in ("gate", "up", "direction"):
            key = f"layers.{layer}.neuron.{part}"
            assert torch.equal(merged.tensors[key][:rows], old.tensors[key])
    assert merged.provenance["issues"] == ["refusal", "second"]
    # the new anchors were told to stay shut on the old issue's training prompts (not on prompts they use): the
    # old-only prompt is a training neutral of the new compile's fit, and no prompt of its own sample set is
    shut = [x for x in fitted_on if x.id.startswith("other:")]
    assert [x.prompt for x in shut] == [only_old.prompt]
    assert shut[0].label == NEUTRAL and shut[0].split == "train" and shut[0].positive is None
    # the held-out tables: the new issue by base / previous / merged, the earlier one with its cross-talk check
    from masteer.compiler.compile import cross_talk_markdown, evaluate_added
    tables = evaluate_added(added, loaded, CompileOptions(max_new_tokens=2, progress=False))
    assert set(tables) == {"second", "refusal"} and "cross_talk" not in tables["second"]
    rows = tables["refusal"]["cross_talk"]   # (both sample sets here come from the refusal builder)
    groups = {g.group for g in tables["refusal"]["refusal"].groups}
    assert groups <= {r["group"] for r in rows}
    for r in rows:   # each verdict is the interval test, recomputed here
        low, high = r["interval"]
        assert r["within"] == (low - 1e-9 <= r["merged"] <= high + 1e-9)
    assert cross_talk_markdown(rows).count("\n") == len(rows) + 1
    with pytest.raises(MasteerError, match="uses selection 'independent'"):
        add_issue(options, old_dir, AdaptiveOptions(selection=EXCLUSIVE), loaded=loaded, log=lambda _: None)


def test_other_issues_prompts_become_training_neutrals_except_where_this_compile_uses_them():
    from masteer.compiler.compile import shut_on
    from masteer.compiler.samples.sample_set import NEUTRAL, TARGET, Sample
    mine = SampleSet("issue", "new", [Sample(id="m", prompt="Shared   PROMPT", label=NEUTRAL, split="test")])
    others = [Sample(id="o1", prompt="shared prompt", label=TARGET, split="train", positive="No.", negative="Yes."),
              Sample(id="o2", prompt="Only theirs", label=TARGET, split="train", positive="No.", group="harmful"),
              Sample(id="o3", prompt="only  theirs", label=NEUTRAL, split="train")]
    out = shut_on(others, mine)
    assert [(s.id, s.label, s.split, s.positive, s.negative, s.group) for s in out] == [
        ("other:o2", NEUTRAL, "train", None, None, "other:harmful")]


def test_adding_to_an_adapter_for_another_model_names_both(compiled, small_samples, tmp_path):
    from masteer.compiler.compile import add_issue
    from masteer.runtime.errors import FingerprintMismatch
    _, result = compiled
    result.adapter.save(tmp_path / "old")
    other = LoadedModel(model=tiny_chat_model("llama", seed=3), tokenizer=byte_tokenizer(), name="tiny-other")
    options = CompileOptions(layers=(0, 1, 2), samples_path=str(small_samples), progress=False, evaluate=False)
    with pytest.raises(FingerprintMismatch):
        add_issue(options, tmp_path / "old", loaded=other, log=lambda _: None)


def test_default_algorithms_are_the_gateable_ones_and_all_means_every_one():
    from masteer.compiler.compile import UNGATED_ALGORITHMS, check_adaptive_options, program_algorithms
    from masteer.compiler.strategies.algorithms import available
    default = program_algorithms(AdaptiveOptions())
    assert set(default) == set(available()) - set(UNGATED_ALGORITHMS) and "mean_difference" in default
    assert program_algorithms(AdaptiveOptions(algorithms=("all",))) == tuple(available())
    assert program_algorithms(AdaptiveOptions(algorithms=("lda",))) == ("lda",)
    with pytest.raises(MasteerError, match="'all' stands alone"):
        check_adaptive_options(AdaptiveOptions(algorithms=("all", "lda")))
    with pytest.raises(MasteerError, match="unknown algorithm.*nope"):
        check_adaptive_options(AdaptiveOptions(algorithms=("nope",)))


def test_static_match_bisects_to_within_five_points_of_the_program(monkeypatch):
    """The coarse multiples bracket the program's val refusal; bisection then matches it (issue: compare
    static and adaptive at matched target effect, not at whatever the grid offers)."""
    from masteer.compiler import compile as compile_driver
    from masteer.compiler.strategies.algorithms import Proposal
    from masteer.compiler.samples.sample_set import TARGET
    from masteer.runtime import SteeringAdapter
    base = SteeringAdapter(base_model_name_or_path="m", fingerprint="f", host_form="gated", activation="silu")

    def fake_rates(loaded, adapter, groups, options):   # refusal grows linearly with strength: 0.3 per unit
        return {TARGET: min(1.0, 0.3 * adapter.strategies[0].strength)}
    monkeypatch.setattr(compile_driver, "val_rates", fake_rates)
    proposal = Proposal(algorithm="mean_difference", layer=0, direction=torch.ones(4))
    _, match = compile_driver.match_static(None, base, proposal, 0.72, {TARGET: []}, None, 2.0, lambda _: None)
    assert [t["strength"] for t in match["tried"]][:4] == [0.5, 1.0, 1.5, 2.0]   # multiples of 2, then bisection
    assert match["matched"] and abs(match["chosen_val_target_refusal"] - 0.72) <= 0.05, match
    assert len(match["tried"]) <= len(compile_driver.STATIC_MULTIPLES) + compile_driver.MATCH_BISECTIONS
    # a target no strength reaches: the strongest is kept, and it says it is not matched
    _, match = compile_driver.match_static(None, base, proposal, 1.5, {TARGET: []}, None, 2.0, lambda _: None)
    assert not match["matched"] and match["chosen_strength"] == 4.0


def test_an_addition_that_opens_the_program_on_too_many_neutral_prompts_is_refused(small_samples, monkeypatch):
    from masteer.compiler.program import search as adaptive_module
    from masteer.compiler import compile as compile_driver
    calls = []

    def fake_share(last):   # the start opens on 2% of val neutral prompts, every larger program on 20%
        calls.append(len(last))
        return 0.02 if len(last) == 1 else 0.20
    monkeypatch.setattr(compile_driver, "open_share", fake_share)
    monkeypatch.setattr(adaptive_module, "MIN_COVERAGE_GAIN", -1.0)   # let coverage accept any addition
    _, result = run(small_samples)
    steps = result.search.steps
    assert len(result.program.strategies) == 1 and steps[0]["neutral_fpr"] == 0.02
    assert steps[1]["chosen"] is None and "val neutral prompts" in steps[1]["why"], steps[1]
    assert calls[0] == 1 and calls[1] == 2


def _prefer_catch(monkeypatch, calls=None):
    """A behaviour score that rewards a program carrying a catch strategy (a random model refuses nothing)."""
    from masteer.compiler import compile as compile_driver

    def fake_score(recipe, loaded, val, options, cache=None):
        def score(adapter):
            names = [s.strategy for s in adapter.strategies]
            if calls is not None:
                calls.append(names)
            return float(any(n.endswith("-catch") for n in names))
        return score
    monkeypatch.setattr(compile_driver, "behaviour_score", fake_score)


def test_a_catch_strategy_that_raises_the_behaviour_score_joins_the_program(small_samples, monkeypatch):
    """Step 6: the first strategy's algorithm at every layer, each with an anchor fitted on the targets'
    undesired completions; the best that raises the behaviour score is added."""
    calls = []
    _prefer_catch(monkeypatch, calls)
    loaded, result = run(small_samples, catch=True)
    first, catch = result.program.strategies[0], result.program.strategies[-1]
    assert catch.name.endswith("-catch") and catch.algorithm == first.algorithm
    assert catch.gate.stats["anchor"] == "catch"
    tried = [names[-1] for names in calls if names[-1].endswith("-catch")]
    assert sorted(tried) == sorted(f"refusal-{first.algorithm}-L{layer}-catch" for layer in (0, 1, 2))
    step = result.search.steps[-1]
    assert step["chosen"] == catch.name and step["behaviour"] == {"before": 0.0, "with": 1.0}
    # fitted on the undesired completions of training targets: as many positive tokens as those completions have
    samples = SampleSet.load(small_samples)
    undesired = [s for s in samples.select(split="train", label="target") if s.negative]
    n_tokens = sum(len(loaded.tokenizer(s.negative, add_special_tokens=False)["input_ids"]) for s in undesired)
    assert 0 < catch.gate.stats["train_positive"] <= n_tokens + 2 * len(undesired)


def test_the_catch_step_is_opt_in(small_samples, monkeypatch):
    calls = []
    _prefer_catch(monkeypatch, calls)
    _, result = run(small_samples)
    assert calls and not any(name.endswith("-catch") for names in calls for name in names)
    assert not any(s.name.endswith("-catch") for s in result.program.strategies)


def test_a_catch_strategy_that_opens_on_neutral_prompt_ends_is_refused(small_samples, monkeypatch):
    from masteer.compiler import compile as compile_driver
    _prefer_catch(monkeypatch)
    monkeypatch.setattr(compile_driver, "open_share", lambda last: 0.02 if len(last) == 1 else 0.20)
    _, result = run(small_samples, catch=True)
    assert not any(s.name.endswith("-catch") for s in result.program.strategies)
    step = result.search.steps[-1]
    assert step["chosen"] is None and "catch" in step["why"]
    assert all(row["neutral_fpr"] == 0.2 and "behaviour" not in row for row in step["catch"].values())


def test_prompt_openings_agree_with_the_gate_report(compiled):
    from masteer.compiler.evaluation.gate_report import open_share, prompt_openings
    loaded, result = compiled
    prompts = [s.prompt for s in result.samples.select(split="test")][:12]
    last = prompt_openings(loaded.model, loaded.tokenizer, result.adapter, prompts, batch_size=5)
    reports = {r.strategy: r for r in gate_reports(loaded.model, loaded.tokenizer, result.adapter, prompts, prompts,
                                                   max_new_tokens=2, progress=False)}
    for name, values in last.items():
        assert len(values) == 12
        assert sum(v >= OPEN for v in values) / 12 == pytest.approx(reports[name].prompt_fpr)
    key = PROGRAM if len(last) > 1 else next(iter(last))
    assert open_share(last) == pytest.approx(reports[key].prompt_fpr)


def test_base_anchors_are_fitted_once_per_layer_and_each_candidate_owns_its_copy(small_samples, monkeypatch):
    """A base anchor depends on the layer and the training sets, not on the candidate: candidates at one layer
    get equal gates (the same fit, made once), never one shared object (their stats differ)."""
    from masteer.compiler import compile as compile_driver
    captured = {}
    real = compile_driver.build_program

    def spy(ctx, candidates, **kwargs):
        captured.update(ctx=ctx, candidates=candidates)
        return real(ctx, candidates, **kwargs)
    monkeypatch.setattr(compile_driver, "build_program", spy)
    torch.set_num_threads(1)
    loaded = LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny-llama")
    options = CompileOptions(layers=(1,), samples_path=str(small_samples), progress=False, evaluate=False)
    compile_program(options, AdaptiveOptions(algorithms=ALGORITHMS, keep_layers=1, budget=10.0),
                    loaded=loaded, log=lambda _: None)
    ctx, candidates = captured["ctx"], captured["candidates"]
    assert len(candidates) >= 2 and {c.proposal.layer for c in candidates} == {1}
    fits = []
    plain_fit = search_module.fit_anchor
    monkeypatch.setattr(search_module, "fit_anchor", lambda *a, **k: fits.append(a[1]) or plain_fit(*a, **k))
    anchors = search_module.fit_anchors(ctx, candidates, progress=False)
    specialised = sum("specialised" in anchors.fitted_on[c.name] for c in candidates)
    assert len(fits) == 1 + specialised   # one base fit for the layer, then one per specialised anchor
    gates = [anchors.base[c.name] for c in candidates]
    assert len({id(g) for g in gates}) == len(gates)
    fresh = plain_fit(ctx, 1, *anchors.fitted_on[candidates[0].name]["base"])
    for gate in gates:
        assert torch.equal(gate.probe, fresh.probe) and torch.equal(gate.constant, fresh.constant)
        assert (gate.threshold, gate.unit) == (fresh.threshold, fresh.unit)


def test_the_anchor_operating_points_reuse_the_read_out_of_their_tokens(small_samples, monkeypatch):
    """The winner's anchor refitted at the other ``ANCHOR_BUDGETS`` sees the tokens it was fitted on: its probe
    and constant direction are fitted once per (layer, token sets); ``test_anchors`` shows a refit from a reused
    read-out equals a fresh fit."""
    from masteer.compiler import compile as compile_driver
    gates, captured = [], {}
    real_gate, real_build = search_module.fit_gate, compile_driver.build_program
    monkeypatch.setattr(search_module, "fit_gate", lambda *a, **k: gates.append(k) or real_gate(*a, **k))
    monkeypatch.setattr(compile_driver, "build_program", lambda ctx, *a, **k: captured.update(ctx=ctx) or real_build(ctx, *a, **k))
    monkeypatch.setattr(compile_driver, "behaviour_score", lambda *a: lambda adapter: 0.5)
    monkeypatch.setattr(search_module, "MIN_SPECIALISED", 1)   # a random model helps few targets: specialise anyway
    _, result = run(small_samples)
    refits = [r for r in result.search.start_scores if "@" in r["anchor"]]
    assert len(refits) == len(search_module.ANCHOR_BUDGETS) - 1
    fitted = [k for k in gates if k["readout"] is None]   # gates that fitted their own probe
    assert len(fitted) == len(captured["ctx"].readouts) == len(gates) - len(refits)


def test_the_static_matching_reads_the_programs_val_answers_from_the_search(tiny_compile, monkeypatch):
    """The behaviour score generated the program's val answers; the static matching's program rate reads them
    (the same model, prompts and greedy settings) instead of generating them again. A bfloat16 chooser answers
    otherwise, so there the matching generates on the model as loaded."""
    from masteer.compiler import compile as compile_driver
    from masteer.compiler.capture.cache import arm_key
    calls = []
    real = compile_driver.val_rates

    def spy(loaded, adapter, groups, options, cache=None):
        before = len(cache) if cache is not None else None
        rates = real(loaded, adapter, groups, options, cache)
        calls.append((adapter, set(groups), before, len(cache) if cache is not None else None))
        return rates
    monkeypatch.setattr(compile_driver, "val_rates", spy)
    for precision, generated in (("exact", False), ("bf16", True)):
        calls.clear()
        _, _, result = tiny_compile(selection_precision=precision)
        program = [c for c in calls if c[0] is result.adapter]
        assert len(program) == 1 and program[0][1] == {"target"}   # the matching's program rate
        _, _, before, after = program[0]
        assert (after > before) is generated, (precision, before, after)
        if not generated:   # the search judged that same content on val
            assert any(arm_key(c[0]) == arm_key(result.adapter) and c[1] == {"target", "neutral"} for c in calls)
