"""The sample set: the first typed stage output (JSONL), editable by hand before compiling.

Each sample is a prompt with, where it has them, a desired (``positive``) and an undesired
(``negative``) completion, a label saying whether the issue applies (``target``) or steering must
stay silent (``neutral``), and the split it belongs to. Splits are fixed when the set is built, so
evaluation prompts are never seen by any fitting step: ``train`` fits directions and gates,
``val`` chooses layers, ``test`` is only ever generated from for the before/after table.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from masteer.runtime.atomic import atomic_write_text
from masteer.runtime.errors import MasteerError

TARGET = "target"
NEUTRAL = "neutral"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    id: str
    prompt: str
    label: str                    # TARGET or NEUTRAL
    split: str                    # train | val | test
    positive: str | None = None   # the desired completion (e.g. a refusal)
    negative: str | None = None   # the undesired completion (e.g. compliance)
    source: str = ""              # where the prompt came from (dataset and item id)
    group: str = ""               # evaluation group, e.g. "harmful", "benign-edgy"
    # Added for the AutoTester; left at their defaults they are not written and not hashed, so sample
    # sets saved before these fields existed load unchanged and keep their content hash.
    scenario: str = ""            # the issue scenario the sample exercises (AutoTester balances over these)
    provenance: dict | None = field(default=None, hash=False)  # agent, backend, model, seed item, method
    # Added for rewrite families and harm categories (``rewrites``, ``harm_categories``); same rule as above.
    family: str = ""              # the surface form: "direct" or a rewrite family ("past", "roleplay", ...)
    category: str = ""            # the harm category of a harmful request ("cyber", "self-harm", ...)

    @property
    def has_pair(self) -> bool:
        return self.positive is not None and self.negative is not None

    @property
    def source_id(self) -> str:
        """The source item this sample was written from (its rewrites share it); the sample's own id in sets
        built before rewrite families, where every sample is its own source."""
        return str((self.provenance or {}).get("source_id") or self.id)


@dataclass
class SampleSet:
    issue: str
    recipe: str
    samples: list[Sample] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def select(self, split: str | None = None, label: str | None = None, group: str | None = None,
               paired: bool | None = None) -> list[Sample]:
        return [s for s in self.samples
                if (split is None or s.split == split) and (label is None or s.label == label)
                and (group is None or s.group == group) and (paired is None or s.has_pair == paired)]

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for s in self.samples:
            digest.update(json.dumps(sample_dict(s), sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.samples:
            key = f"{s.split}/{s.label}/{s.group or '-'}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def to_jsonl(self) -> str:
        """A header line with issue/recipe/meta, then one line per sample."""
        header = json.dumps({"masteer_samples": 1, "issue": self.issue, "recipe": self.recipe, "meta": self.meta})
        return "".join([header + "\n"] + [json.dumps(sample_dict(s)) + "\n" for s in self.samples])

    def save(self, path: str | os.PathLike) -> Path:
        """Written atomically: a reader never sees half a sample set."""
        return atomic_write_text(path, self.to_jsonl())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SampleSet":
        path = Path(path)
        if not path.is_file():
            raise MasteerError(f"sample file {path} does not exist")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise MasteerError(f"{path}: not UTF-8 text ({exc}); sample files are UTF-8 JSONL") from None
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError as exc:
            raise MasteerError(f"{path}:1: not JSON: {exc}") from None
        if not isinstance(header, dict) or "masteer_samples" not in header:
            raise MasteerError(f"{path}:1: missing the masteer_samples header line (a JSON object)")
        if not isinstance(header.get("meta", {}), dict):
            raise MasteerError(f"{path}:1: header field 'meta' must be an object")
        samples = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                samples.append(_sample_from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, ValueError) as exc:
                raise MasteerError(f"{path}:{number}: bad sample: {exc}") from None
        return cls(issue=header.get("issue", ""), recipe=header.get("recipe", ""), samples=samples,
                   meta=header.get("meta", {}))


_NEW_FIELDS = {"scenario": "", "provenance": None, "family": "", "category": ""}  # written only when set (Sample)
_OPTIONAL_TEXT = ("positive", "negative")
_TEXT = ("id", "source", "group", "scenario", "family", "category")


def sample_dict(sample: Sample) -> dict:
    """The JSON form of a sample: every original field, the AutoTester fields only when set."""
    data = asdict(sample)
    for key, default in _NEW_FIELDS.items():
        if data[key] == default:
            del data[key]
    return data


def _sample_from_dict(data: dict) -> Sample:
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    sample = Sample(**data)
    for name in _TEXT:
        if not isinstance(getattr(sample, name), str):
            raise ValueError(f"field {name!r} must be a string, got {type(getattr(sample, name)).__name__}")
    for name in _OPTIONAL_TEXT:
        value = getattr(sample, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"field {name!r} must be a string or null, got {type(value).__name__}")
    if sample.provenance is not None and not isinstance(sample.provenance, dict):
        raise ValueError(f"field 'provenance' must be an object or null, got {type(sample.provenance).__name__}")
    if sample.label not in (TARGET, NEUTRAL):
        raise ValueError(f"label must be {TARGET!r} or {NEUTRAL!r}, got {sample.label!r}")
    if sample.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {sample.split!r}")
    if not isinstance(sample.prompt, str) or not sample.prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    return sample


def as_written(samples: Iterable[Sample]) -> list[Sample]:
    """The samples in their source item's own words: rewrite family ``direct``, or every sample of a set built
    before rewrite families. Where an evaluation runs on one form per source item to save time."""
    return [s for s in samples if s.family in ("direct", "")]


def prompt_key(prompt: str) -> str:
    """The identity of a prompt for duplicates and split overlap: case and all whitespace runs ignored.

    ``pipeline.check_disjoint`` compares prompts the same way; the two must agree, or a set that
    ``dedupe`` let through could be rejected by the compile for sharing a prompt across splits.
    """
    return " ".join(prompt.lower().split())


def dedupe(samples: Iterable[Sample]) -> list[Sample]:
    seen, out = set(), []
    for s in samples:
        key = prompt_key(s.prompt)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out
