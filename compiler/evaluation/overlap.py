"""Samples used to compile are never evaluated on: checked by content hash, an overlap is an error.

A test item that the compile fitted a direction or a gate on, or chose a layer with, flatters the
table. Every text of every suite item (its prompt; the reference text and the statements where a
suite scores them) is hashed in normalised form (lower case, whitespace collapsed) and compared
with every text of the compile's samples in the fitting splits (prompts and both completions).
One shared hash is an error that names the suite, the item, the sample, its split and the text.
"""

from __future__ import annotations

from typing import Sequence

from masteer.runtime.errors import MasteerError

from ..samples.sample_set import SampleSet
from .suites import CHOICE, PERPLEXITY, TEXT_OPTION_KINDS, Suite, content_hash

COMPILE_SPLITS = ("train", "val")   # the splits a compile fits and selects on; "test" is held out
SHOWN = 5


class SplitOverlapError(MasteerError):
    """An evaluation item is a sample the adapter was compiled from."""

    def __init__(self, message: str, overlaps: list[dict]):
        super().__init__(message)
        self.overlaps = overlaps


def item_texts(suite: Suite, item) -> list[str]:
    """The texts of an item a model is shown or scored on (option letters such as "A" are not texts)."""
    texts = [item.prompt] + ([item.origin] if getattr(item, "origin", "") else [])
    if suite.kind in TEXT_OPTION_KINDS or (suite.kind == CHOICE and any(len(o) > 3 for o in item.options)):
        texts += list(item.options)
    if suite.kind == PERPLEXITY:
        texts += list(item.references)
    return texts


def compile_hashes(samples: SampleSet, splits: Sequence[str] = COMPILE_SPLITS) -> dict[str, tuple]:
    """content hash -> (sample id, split, field, text) for every text of the fitting splits."""
    out: dict[str, tuple] = {}
    for s in samples.samples:
        if s.split not in splits:
            continue
        for name in ("prompt", "positive", "negative"):
            text = getattr(s, name)
            if text:
                out.setdefault(content_hash(text), (s.id, s.split, name, text))
    return out


def find_overlaps(suites: Sequence[Suite], samples: SampleSet, splits: Sequence[str] = COMPILE_SPLITS) -> list[dict]:
    seen = compile_hashes(samples, splits)
    overlaps = []
    for suite in suites:
        for item in suite.items:
            for text in item_texts(suite, item):
                hit = seen.get(content_hash(text))
                if hit is not None:
                    overlaps.append({"suite": suite.name, "item": item.id, "sample": hit[0], "split": hit[1],
                                     "field": hit[2], "text": text})
    return overlaps


def check_overlap(suites: Sequence[Suite], samples: SampleSet | None,
                  splits: Sequence[str] = COMPILE_SPLITS) -> dict:
    """Raise :class:`SplitOverlapError` when a suite item was used to compile; else say what was checked."""
    if samples is None:
        return {"checked": False, "reason": "no compile sample set given (an adapter folder's samples.jsonl or "
                                            "--samples): overlap with compile data could not be checked"}
    overlaps = find_overlaps(suites, samples, splits)
    if overlaps:
        lines = [f"suite {o['suite']!r} item {o['item']!r} is compile sample {o['sample']!r} ({o['split']} split, "
                 f"{o['field']}): {o['text'][:70]!r}" for o in overlaps[:SHOWN]]
        more = f"\n  ... and {len(overlaps) - SHOWN} more" if len(overlaps) > SHOWN else ""
        suites_hit = sorted({o["suite"] for o in overlaps})
        raise SplitOverlapError(
            f"{len(overlaps)} evaluation item(s) of suite(s) {', '.join(suites_hit)} were used to compile "
            f"(sample set {samples.content_hash}); evaluating on them would flatter the result:\n  "
            + "\n  ".join(lines) + more, overlaps)
    return {"checked": True, "samples_hash": samples.content_hash, "splits": list(splits),
            "compile_texts": len(compile_hashes(samples, splits)), "overlaps": 0}
