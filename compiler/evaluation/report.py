"""The evaluation's typed result, its markdown tables, its JSON file, and the model card's headline.

Everything an evaluation measured and every setting it ran with is in :class:`EvalReport`, which
round-trips through JSON (no pickle): per suite and arm the point estimate with its bootstrap
interval, the paired change from the base model with its interval, the per-item values (so an
interval can be recomputed), and a few example responses. The markdown is rendered from it, so
what a reader sees is exactly what was saved.

Verdicts, per arm and suite, from the paired 95% interval of the change from base:
- a *target* suite (the repair should move it): "moved" (interval excludes 0 the right way),
  "no change" (contains 0), "wrong way";
- any other suite must *hold*: "held" (contains 0), "worse" or "better" (excludes 0).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from masteer.runtime.atomic import atomic_write_text
from masteer.runtime.errors import MasteerError

from ..common.judge import JudgeValidation
from .bootstrap import Estimate, ItemValues

REPORT_JSON, REPORT_MD = "eval_report.json", "eval_report.md"
FORMAT = 1
MOVED, NO_CHANGE, WRONG_WAY, HELD, WORSE, BETTER = "moved", "no change", "wrong way", "held", "worse", "better"


@dataclass
class ArmResult:
    """One arm on one suite."""
    estimate: Estimate
    values: ItemValues
    delta: Estimate | None = None                     # change from the base arm, paired bootstrap
    secondary: dict[str, Estimate] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"estimate": self.estimate.to_dict(), "delta": self.delta.to_dict() if self.delta else None,
                "secondary": {k: v.to_dict() for k, v in self.secondary.items()},
                "values": asdict(self.values), "examples": self.examples}

    @classmethod
    def from_dict(cls, data: dict) -> "ArmResult":
        return cls(estimate=Estimate.from_dict(data["estimate"]), values=ItemValues(**data["values"]),
                   delta=Estimate.from_dict(data["delta"]) if data.get("delta") else None,
                   secondary={k: Estimate.from_dict(v) for k, v in data.get("secondary", {}).items()},
                   examples=data.get("examples", []))


@dataclass
class SuiteResult:
    suite: dict           # Suite.describe(): name, kind, metric, better, split, n, items_hash, ...
    role: str             # "target" | "hold"
    arms: dict[str, ArmResult]
    # item tag ("family", "category") -> value -> {"n": items, arm: mean of the per-item values}; for suites whose
    # items carry tags (the shift suites): one row per rewrite family and per harm category
    breakdowns: dict[str, dict[str, dict]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.suite["name"]

    @property
    def expected(self) -> str:
        if self.role != "target":
            return "same"
        return "up" if self.suite["better"] == "higher" else "down"

    def verdict(self, arm: str) -> str | None:
        delta = self.arms[arm].delta
        if delta is None or any(math.isnan(x) for x in (delta.low, delta.high)):
            return None
        good = 1 if self.suite["better"] == "higher" else -1
        if delta.low <= 0 <= delta.high:
            return NO_CHANGE if self.role == "target" else HELD
        improved = (delta.value * good) > 0
        if self.role == "target":
            return MOVED if improved else WRONG_WAY
        return BETTER if improved else WORSE

    def to_dict(self) -> dict:
        return {"suite": self.suite, "role": self.role, "expected": self.expected,
                "arms": {name: r.to_dict() for name, r in self.arms.items()},
                "verdicts": {name: self.verdict(name) for name in self.arms}, "breakdowns": self.breakdowns}

    @classmethod
    def from_dict(cls, data: dict) -> "SuiteResult":
        return cls(suite=data["suite"], role=data["role"],
                   arms={name: ArmResult.from_dict(r) for name, r in data["arms"].items()},
                   breakdowns=data.get("breakdowns", {}))


@dataclass
class EvalReport:
    arms: list[str]
    arm_info: dict[str, dict]
    suites: list[SuiteResult]
    settings: dict
    judge: JudgeValidation | None = None
    overlap: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    base_arm: str | None = "base"

    def suite(self, name: str) -> SuiteResult:
        for s in self.suites:
            if s.name == name:
                return s
        raise KeyError(f"no suite {name!r} in this report; have {[s.name for s in self.suites]}")

    def value(self, suite: str, arm: str) -> float:
        return self.suite(suite).arms[arm].estimate.value

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {"masteer_eval_report": FORMAT, "arms": self.arms, "arm_info": self.arm_info, "base_arm": self.base_arm,
                "settings": self.settings, "judge": self.judge.to_dict() if self.judge else None,
                "overlap": self.overlap, "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
                "suites": [s.to_dict() for s in self.suites]}

    @classmethod
    def from_dict(cls, data: dict) -> "EvalReport":
        if data.get("masteer_eval_report") != FORMAT:
            raise MasteerError(f"not a masteer evaluation report (format {FORMAT}): missing 'masteer_eval_report'")
        return cls(arms=data["arms"], arm_info=data.get("arm_info", {}),
                   suites=[SuiteResult.from_dict(s) for s in data["suites"]], settings=data.get("settings", {}),
                   judge=JudgeValidation.from_dict(data["judge"]) if data.get("judge") else None,
                   overlap=data.get("overlap", {}), timings=data.get("timings_s", {}),
                   base_arm=data.get("base_arm"))

    def save_json(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "EvalReport":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MasteerError(f"cannot read evaluation report {path}: {exc}") from None
        if isinstance(data, dict) and "masteer_eval_report" not in data:
            data = (data.get("evaluation") or {}).get("suites") or data  # a compile_report.json holds one
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError) as exc:
            raise MasteerError(f"{path}: not a masteer evaluation report ({exc})") from None

    # ------------------------------------------------------------------ markdown
    def markdown(self) -> str:
        return "\n\n".join(part for part in (self.values_table(), self.change_table(), self.breakdown_tables(),
                                             self.notes()) if part)

    def breakdown_tables(self) -> str:
        """Per suite with tagged items, one table per tag: a row per value (family, category), a column per arm."""
        parts = []
        for s in self.suites:
            for tag, rows in s.breakdowns.items():
                header = [tag, "n", *self.arms]
                lines = [f"{s.name} by {tag} ({s.suite['metric']}):", "", _row(header), "|" + "---|" * len(header)]
                for value, row in rows.items():
                    lines.append(_row([value, str(row["n"])] + [_fmt_plain(row.get(a), s.suite) for a in self.arms]))
                parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def values_table(self) -> str:
        header = ["suite", "metric", "should", "n", *self.arms]
        lines = [_row(header), "|" + "---|" * len(header)]
        for s in self.suites:
            cells = [s.name, s.suite["metric"] + (" ↑" if s.suite["better"] == "higher" else " ↓"), s.expected,
                     str(s.suite["n"])]
            cells += [_fmt(s.arms[a].estimate, s.suite) if a in s.arms else "–" for a in self.arms]
            lines.append(_row(cells))
        return "\n".join(lines)

    def change_table(self) -> str:
        others = [a for a in self.arms if a != self.base_arm]
        if self.base_arm is None or not others:
            return ""
        header = ["suite", "should", *[f"{a} − {self.base_arm}" for a in others]]
        lines = [_row(header), "|" + "---|" * len(header)]
        for s in self.suites:
            cells = [s.name, s.expected]
            for a in others:
                r = s.arms.get(a)
                cells.append("–" if r is None or r.delta is None else
                             f"{_fmt(r.delta, s.suite, signed=True)} {s.verdict(a) or ''}".strip())
            lines.append(_row(cells))
        return "\n".join(lines)

    def notes(self) -> str:
        parts = []
        g = self.settings.get("generation")
        if g:
            parts.append(f"Generation: {g.get('decoding')} decoding, {g.get('max_new_tokens')} new tokens, "
                         f"chat template {'on' if g.get('chat_template') else 'off'}, batch {g.get('batch_size')}.")
        if self.judge is not None:
            parts.append(f"Refusal judge: {self.judge.line()}.")
        boot = self.settings.get("bootstrap")
        if boot:
            parts.append(f"Intervals: {int(100 * boot['level'])}% percentile bootstrap over items, "
                         f"{boot['n_boot']} resamples, seed {boot['seed']}; changes use a paired bootstrap.")
        if self.overlap:
            parts.append("Overlap with compile samples: " + (
                f"checked, none (sample set {self.overlap.get('samples_hash')}, splits "
                f"{'/'.join(self.overlap.get('splits', []))})" if self.overlap.get("checked")
                else self.overlap.get("reason", "not checked")) + ".")
        return "\n".join(f"- {p}" for p in parts)

    def headline(self) -> dict:
        """The few numbers a model card shows: every suite's value per arm, with its interval."""
        rows = []
        for s in self.suites:
            row = {"suite": s.name, "metric": s.suite["metric"], "should": s.expected, "n": str(s.suite["n"])}
            row.update({a: _fmt(s.arms[a].estimate, s.suite) for a in self.arms if a in s.arms})
            rows.append(row)
        return {"table": rows}


def _fmt_plain(value, suite: dict) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if "rate" in suite.get("metric", "") else f"{value:.3g}"


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _is_rate(suite: dict) -> bool:
    return suite["metric"].endswith("rate") or suite["metric"] in ("accuracy", "true-statement preference")


def _fmt(e: Estimate, suite: dict, signed: bool = False) -> str:
    """Rates as percentages, other metrics with 3 significant digits, each with its interval."""
    if _is_rate(suite):
        scale, unit, spec = 100.0, "%" if not signed else " pts", ".1f"
    else:
        scale, unit, spec = 1.0, "", ".3g"
    sign = "+" if signed else ""
    value = format(e.value * scale, sign + spec)
    return f"{value}{unit} [{format(e.low * scale, spec)}, {format(e.high * scale, spec)}]"
