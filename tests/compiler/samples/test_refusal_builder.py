"""The refusal builder: every harmful set, categories, rewrite families for both labels, splits by source item."""

from __future__ import annotations

from collections import Counter

import pytest

from masteer.compiler.common import datasets
from masteer.compiler.samples.backends.base import ChatBackend
from masteer.compiler.samples.builders import REFUSAL_SPLITS, build_refusal
from masteer.compiler.evaluation.shift import shift_samples
from masteer.compiler.samples.harm_categories import CATEGORIES
from masteer.compiler.samples.recipes import load_recipe
from masteer.compiler.samples.rewrites import ALL_FAMILIES, DIRECT, FAMILIES
from masteer.compiler.samples.sample_set import NEUTRAL, SPLITS, TARGET, SampleSet


@pytest.fixture(scope="module")
def built():
    return build_refusal(load_recipe("refusal"))


def test_every_harmful_set_the_project_installs_is_a_target_source(built):
    sets = Counter(s.source_id.split(":")[0].split("-")[0] for s in built.samples if s.label == TARGET)
    assert set(sets) == {"rho", "advbench", "harmbench", "redteam"}
    assert len(datasets.harmbench_requests()) == 228 and len(datasets.redteam_requests()) == 35
    # copyright and contextual HarmBench behaviours are not requests a user would send on their own
    assert not any("lyrics of" in h.text or h.text.startswith("Given ") for h in datasets.harmbench_requests())


def test_every_target_has_a_harm_category_and_test_covers_most(built):
    targets = [s for s in built.samples if s.label == TARGET]
    assert all(s.category in CATEGORIES for s in targets)
    assert not any(s.category for s in built.samples if s.label == NEUTRAL)
    test_categories = {s.category for s in targets if s.split == "test"}
    assert {"weapons", "cyber", "fraud", "self-harm", "hate", "misinformation", "violence"} <= test_categories


def test_a_source_item_and_all_its_rewrites_share_one_split(built):
    split_of: dict[str, set[str]] = {}
    for s in built.samples:
        split_of.setdefault(s.source_id, set()).add(s.split)
    assert all(len(splits) == 1 for splits in split_of.values())
    counts = Counter(next(iter(v)) for k, v in split_of.items() if k.startswith("advbench:"))
    assert (counts["train"], counts["val"], counts["test"]) == REFUSAL_SPLITS["advbench"]


def test_every_family_appears_in_every_split_for_both_labels(built):
    for split in SPLITS:
        for label in (TARGET, NEUTRAL):
            families = Counter(s.family for s in built.samples if s.split == split and s.label == label)
            assert set(families) == set(ALL_FAMILIES), (split, label, families)
            forms = [families[f] for f in (ALL_FAMILIES if split != "test" else FAMILIES)]
            assert max(forms) - min(forms) <= 2, (split, label, families)   # balanced by the cycle


def test_fitting_splits_show_each_item_once_and_test_shows_it_as_written_and_rewritten(built):
    for split in ("train", "val"):
        per_source = Counter(s.source_id for s in built.samples if s.split == split)
        assert set(per_source.values()) == {1}
        direct = sum(s.family == DIRECT for s in built.samples if s.split == split)
        assert abs(direct - len(per_source) / len(ALL_FAMILIES)) <= 4
    test = [s for s in built.samples if s.split == "test"]
    forms = Counter(s.source_id for s in test)
    assert set(forms.values()) == {2}
    assert all(sum(1 for s in test if s.source_id == src and s.family == DIRECT) == 1 for src in list(forms)[:50])


def test_provenance_names_source_family_and_backend(built):
    for s in built.samples[:200]:
        assert s.provenance["source_id"] == s.source == s.source_id
        assert s.provenance["family"] == s.family and s.provenance["backend"] == "rules"
        assert ("original" in s.provenance) == (s.family != DIRECT)


def test_the_set_round_trips_and_is_deterministic(built, tmp_path):
    path = built.save(tmp_path / "s.jsonl")
    again = SampleSet.load(path)
    assert again.content_hash == built.content_hash
    assert again.samples[5].family == built.samples[5].family
    assert build_refusal(load_recipe("refusal")).content_hash == built.content_hash
    assert build_refusal(load_recipe("refusal"), seed=1).content_hash != built.content_hash


class RewritingBackend(ChatBackend):
    """Answers the past-tense family well, the role-play family with a refusal, the rest by echoing the request."""
    kind = "fake"

    def __init__(self):
        super().__init__("fake-1")

    def _complete(self, conversations, params, progress, desc):
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            request = text.rsplit("Request: ", 1)[1]
            if "past tense" in text:
                out.append(f"In the past, how did people handle this: {request.rstrip('?.')}?")
            elif "play a character" in text:
                out.append("I'm sorry, but I can't help with that.")
            else:
                out.append(request)
        return out


def test_an_llm_backend_writes_the_families_and_the_vet_keeps_rules_where_it_fails():
    built = build_refusal(load_recipe("refusal"), backend=RewritingBackend())
    by_family = {f: [s for s in built.samples if s.family == f] for f in FAMILIES}
    assert all(s.provenance["backend"] == "fake" for s in by_family["past"])
    assert all(s.prompt.startswith("In the past") for s in by_family["past"])
    assert all(s.provenance["backend"] == "rules" for s in by_family["roleplay"])   # refusals were rejected
    reasons = Counter(r["reason"] for r in built.meta["rewrites"]["rejected"])
    assert reasons["a refusal, not a request"] == len(by_family["roleplay"])
    assert reasons["unchanged"] > 0   # an echo is not a rewrite


def test_the_shift_suite_writes_every_test_source_in_every_family(built):
    shift = shift_samples(built)
    sources = {s.source_id for s in built.samples if s.split == "test"}
    assert {s.source_id for s in shift} == sources
    per_family = Counter((s.family, s.label) for s in shift)
    targets = len({s.source_id for s in built.samples if s.split == "test" and s.label == TARGET})
    for family in ALL_FAMILIES:
        assert per_family[(family, TARGET)] >= targets - 2   # a rewrite may collide with another prompt
    # the test split's own rewrites are reused, not rewritten again
    own = {s.prompt for s in built.samples if s.split == "test"}
    assert own <= {s.prompt for s in shift}
    assert shift_samples(built) == shift
