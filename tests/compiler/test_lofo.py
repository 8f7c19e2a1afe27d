"""Leave one family out on a tiny random model: the withheld family reaches no fitted parameter, the structure is
the shipped program's, and every row is measured on that family's held-out prompts; plus the separability helpers."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tiny_models import byte_tokenizer, tiny_chat_model

from masteer.compiler.compile import AdaptiveOptions, compile_program, save_program
from masteer.compiler.lofo import anchor_scores, leave_one_family_out
from masteer.compiler.common.models import LoadedModel
from masteer.compiler.pipeline import CompileOptions, fit_sequences
from masteer.compiler.samples.rewrites import FAMILIES
from masteer.compiler.samples.sample_set import SampleSet
from masteer.compiler.evaluation.separability import auroc, capture_prompt_ends, fit_probe, layer_aurocs, probe_scores
from masteer.runtime import SteeringAdapter
from masteer.runtime.errors import MasteerError


def test_auroc_counts_ordered_pairs_and_ties():
    assert auroc(torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([1, 1, 0, 0])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([1, 1, 0, 0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1, 0])) == 0.5
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) != auroc(torch.tensor([1.0, 2.0]),
                                                                         torch.tensor([1, 1]))   # NaN: no negatives


def test_a_probe_separates_what_is_separable_and_not_what_is_not():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, 8, generator=gen)
    y = torch.tensor([i % 2 == 0 for i in range(200)])
    x[y, 1, 0] += 3.0   # layer 1 carries the label; layers 0 and 2 are noise
    train, test = slice(0, 120), slice(120, 200)
    scores = layer_aurocs(x[train], y[train].double(), x[test], y[test])
    assert scores[1] > 0.95 and abs(scores[0] - 0.5) < 0.2 and abs(scores[2] - 0.5) < 0.2
    probe = fit_probe(x[train, 1], y[train].double())
    assert auroc(probe_scores(x[test, 1], probe), y[test]) == scores[1]


def test_prompt_end_capture_reads_the_last_prompt_token_of_every_layer():
    model, tok = tiny_chat_model("llama"), byte_tokenizer()
    ends = capture_prompt_ends(model, tok, ["hi there", "a much longer prompt than the first"], progress=False)
    assert ends.shape == (2, model.config.num_hidden_layers, model.config.hidden_size)
    alone = capture_prompt_ends(model, tok, ["hi there"], progress=False)
    assert torch.allclose(ends[0], alone[0], atol=1e-5)   # left padding does not change the last token


@pytest.fixture(scope="module")
def shipped(small_samples, tmp_path_factory):
    torch.set_num_threads(1)
    loaded = LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny-llama")
    options = CompileOptions(layers=(0, 1, 2), samples_path=str(small_samples), progress=False, evaluate=False)
    adaptive = AdaptiveOptions(algorithms=("mean_difference", "pca", "lda"), keep_layers=1, budget=10.0)
    result = compile_program(options, adaptive, loaded=loaded, log=lambda _: None)
    out = save_program(result, None, tmp_path_factory.mktemp("lofo") / "adapter")
    return loaded, out, result


def test_the_withheld_family_reaches_no_fitted_input(shipped):
    _, out, result = shipped
    samples = SampleSet.load(out / "samples.jsonl")
    train = samples.select(split="train")
    family = Counter(s.family for s in train if s.family != "direct").most_common(1)[0][0]
    seqs = fit_sequences(train)
    acts = None   # indices only: fit_inputs reads no activations until an algorithm fits
    inputs = seqs.fit_inputs(acts, withheld=frozenset({family}))
    used = inputs.paired + inputs.paired_negative + inputs.target_prompts + inputs.neutral_prompts
    assert used and not any(seqs.samples[i].family == family for i in used)
    everything = seqs.fit_inputs(acts)
    assert any(seqs.samples[i].family == family for i in everything.target_prompts + everything.neutral_prompts)


def test_leave_one_family_out_refits_the_shipped_structure(shipped):
    loaded, out, result = shipped
    samples = SampleSet.load(out / "samples.jsonl")
    present = [f for f in FAMILIES if any(s.family == f for s in samples.select(split="train"))][:2]
    so_far: list[list[str]] = []
    report = leave_one_family_out(out, families=present, loaded=loaded, progress=False, log=lambda _: None,
                                  batch_size=8, on_row=lambda r: so_far.append([row.family for row in r.rows]))
    assert [r.family for r in report.rows] == present
    assert so_far == [present[:1], present]   # saved after every family, not only at the end
    n_layers = loaded.model.config.num_hidden_layers
    for row in report.rows:
        assert row.targets > 0 and row.neutrals > 0
        assert sorted(row.ceiling) == list(range(n_layers))
        assert all(0.0 <= v <= 1.0 for v in row.ceiling.values())
        assert 0.0 <= row.anchor_recall <= 1.0 and 0.0 <= row.anchor_fpr <= 1.0
        assert set(row.refusal) == {"base", "static", "adaptive", "shipped"}
    table = report.markdown()
    assert all(f"| {f} |" in table for f in present)
    data = report.to_dict()
    assert data["families"][0]["ceiling_best"]["auroc"] == pytest.approx(report.rows[0].ceiling_best[1], abs=1e-4)


def test_anchor_scores_read_the_open_neuron_exactly(shipped):
    loaded, out, result = shipped
    adapter = SteeringAdapter.load(out)
    strategy = result.program.strategies[0]
    x = torch.randn(5, loaded.model.config.hidden_size)
    scores = anchor_scores(adapter, [strategy.name], {strategy.layer: x})
    assert torch.allclose(scores, strategy.gate.anchor(x).float(), atol=1e-4)


def test_leave_one_family_out_names_what_is_wrong(shipped, tmp_path):
    loaded, out, _ = shipped
    with pytest.raises(MasteerError, match="unknown rewrite families"):
        leave_one_family_out(out, families=("sarcastic",), loaded=loaded, progress=False)
    with pytest.raises(MasteerError, match="samples.jsonl is missing: leave-one-family-out needs an adapter folder"):
        leave_one_family_out(tmp_path, families=("past",), loaded=loaded, progress=False)


def test_a_catch_strategy_is_refitted_without_the_family(small_samples, tmp_path):
    """A program that carries a catch strategy (anchor on the targets' undesired completions) at a layer the
    library did not keep: leave-one-family-out refits its anchor without the family instead of failing."""
    from masteer.compiler import compile as compile_driver, lofo

    def prefer_catch(recipe, loaded, val, options, cache=None):
        return lambda adapter: float(any(s.strategy.endswith("-catch") for s in adapter.strategies))
    torch.set_num_threads(1)
    loaded = LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny-llama")
    options = CompileOptions(layers=(0, 1, 2), samples_path=str(small_samples), progress=False, evaluate=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compile_driver, "behaviour_score", prefer_catch)
        result = compile_program(options, AdaptiveOptions(algorithms=("mean_difference",), keep_layers=1, budget=10.0,
                                                                 catch=True),
                                 loaded=loaded, log=lambda _: None)
    catch = result.program.strategies[-1]
    assert catch.name.endswith("-catch")
    out = save_program(result, None, tmp_path / "adapter")
    samples = SampleSet.load(out / "samples.jsonl")
    family = next(f for f in FAMILIES if any(s.family == f for s in samples.select(split="train")))
    seen = []
    real_refit = lofo._refit

    def spy(*args, **kwargs):
        fitted = real_refit(*args, **kwargs)
        seen.append(fitted["program"])
        return fitted
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lofo, "_refit", spy)
        report = leave_one_family_out(out, families=(family,), loaded=loaded, progress=False, log=lambda _: None,
                                      batch_size=8)
    assert [r.family for r in report.rows] == [family]
    refitted = seen[0].strategies[-1]
    assert refitted.name == catch.name and refitted.layer == catch.layer
    assert refitted.gate.stats["anchor"] == "catch"
    assert refitted.gate.stats["train_positive"] < catch.gate.stats["train_positive"]   # the family's tokens left
