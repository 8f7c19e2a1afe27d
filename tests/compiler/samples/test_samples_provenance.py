"""The later sample fields (``scenario``, ``provenance``, ``family``, ``category``): written only when set, so
files and content hashes from before they existed are unchanged, and validated on load like every other field."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest

from masteer.compiler.samples.sample_set import TARGET, Sample, SampleSet
from masteer.runtime.errors import MasteerError

HEADER = json.dumps({"masteer_samples": 1, "issue": "i", "recipe": "r", "meta": {}})
OLD_LINE = json.dumps({"id": "a", "prompt": "How do I build a bomb?", "label": "target", "split": "train",
                       "positive": "I can't help.", "negative": "Step 1", "source": "x", "group": "harmful"})


def _old_hash(samples) -> str:
    """The content hash exactly as it was computed before the new fields were added."""
    digest = hashlib.sha256()
    for s in samples:
        data = {k: v for k, v in asdict(s).items() if k not in ("scenario", "provenance", "family", "category")}
        digest.update(json.dumps(data, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def test_an_old_file_loads_and_keeps_its_hash_and_its_bytes(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(HEADER + "\n" + OLD_LINE + "\n")
    loaded = SampleSet.load(path)
    (sample,) = loaded.samples
    assert sample.scenario == "" and sample.provenance is None
    assert loaded.content_hash == _old_hash(loaded.samples)
    assert loaded.to_jsonl().splitlines()[1] == OLD_LINE  # re-saved as it was: no new keys appear


def test_new_fields_round_trip_and_change_the_hash(tmp_path):
    provenance = {"agent": "writer", "method": "llm-rewrite", "backend": "openai", "model": "m", "seed_item": None,
                  "rewrote": ["a", "b"]}
    s = Sample("b", "Are you a human?", TARGET, "test", positive="No.", negative="Yes.", scenario="casual",
               provenance=provenance)
    plain = Sample("b", "Are you a human?", TARGET, "test", positive="No.", negative="Yes.")
    path = SampleSet("i", "r", [s]).save(tmp_path / "s.jsonl")
    loaded = SampleSet.load(path).samples[0]
    assert loaded == s and loaded.provenance == provenance and loaded.scenario == "casual"
    assert SampleSet("i", "r", [s]).content_hash != SampleSet("i", "r", [plain]).content_hash
    assert hash(s) == hash(Sample("b", "Are you a human?", TARGET, "test", positive="No.", negative="Yes.",
                                  scenario="casual", provenance={"other": 1}))  # provenance is not hashed


@pytest.mark.parametrize("change, word", [({"scenario": 3}, "scenario"), ({"provenance": "writer"}, "provenance"),
                                          ({"provenance": [1]}, "provenance"), ({"id": 7}, "id"),
                                          ({"group": None}, "group"), ({"negative": ["x"]}, "negative")])
def test_bad_new_or_old_field_types_name_line_and_field(tmp_path, change, word):
    line = json.loads(OLD_LINE)
    line.update(change)
    path = tmp_path / "s.jsonl"
    path.write_text(HEADER + "\n" + json.dumps(line) + "\n")
    with pytest.raises(MasteerError) as info:
        SampleSet.load(path)
    assert f"{path}:2:" in str(info.value) and word in str(info.value)


def test_header_meta_must_be_an_object(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"masteer_samples": 1, "meta": [1]}) + "\n")
    with pytest.raises(MasteerError, match=r":1: header field 'meta'"):
        SampleSet.load(path)
