"""The compile's quick refusal table: generate on held-out prompts, judge by phrases, tabulate.

Several *arms* (the base model, a static vector, the gated adapter, ...) answer the same held-out
prompts with the same greedy settings; the phrase-matching refusal judge turns each answer into one
bit and each evaluation group into a rate. The recipe says which way each group should move ("up"
for harmful requests, "same" for benign ones), so the table can say whether the repair did what it
promised. Layer selection calls it on the val split; a compile ends with it on the test split,
followed by the full suites (:func:`~.harness.evaluate`, attached as :attr:`Evaluation.suites`),
which reuse its generations through the shared :class:`~.cache.ResultCache`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from masteer.runtime import SteeredModel, SteeringAdapter
from masteer.runtime.errors import MasteerError

from ..common.judge import is_refusal
from ..samples.sample_set import Sample
from ..capture.cache import ResultCache, arm_key, model_key
from ..capture.generations import cached_generate


@dataclass
class GroupResult:
    group: str
    direction: str                      # "up" | "down" | "same"
    n: int
    rates: dict[str, float]             # arm -> refusal rate
    examples: dict[str, list[str]] = field(default_factory=dict)  # arm -> first few responses


@dataclass
class Evaluation:
    arms: list[str]
    groups: list[GroupResult]
    settings: dict
    suites: object = None   # the full suite report (an EvalReport) when the compile ran one
    # arm -> prompt -> judged a refusal; what per-family and per-category rows are counted from
    verdicts: dict[str, dict[str, bool]] = field(default_factory=dict, repr=False)
    # arm -> prompt -> the answer (greedy); not saved in reports (the examples are)
    responses: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    def breakdown(self, samples: Sequence[Sample], field_name: str) -> list[dict]:
        """Refusal rates by the value of a sample field (``family``, ``category``, ...), targets and neutral
        prompts apart: one row per (label, value) with n and each arm's rate, from the judged answers."""
        cells: dict[tuple[str, str], list[str]] = {}
        for s in samples:
            value = getattr(s, field_name, "") or "-"
            cells.setdefault((s.label, value), []).append(s.prompt)
        rows = []
        for (label, value), prompts in sorted(cells.items(), key=lambda kv: (kv[0][0] != "target", kv[0][1])):
            row = {"label": label, field_name: value, "n": len(prompts)}
            for arm in self.arms:
                if arm in self.verdicts and all(p in self.verdicts[arm] for p in prompts):
                    row[arm] = round(sum(self.verdicts[arm][p] for p in prompts) / len(prompts), 4)
            rows.append(row)
        return rows

    def rate(self, group: str, arm: str) -> float:
        for g in self.groups:
            if g.group == group:
                return g.rates[arm]
        raise KeyError(f"no evaluation group {group!r}; have {[g.group for g in self.groups]}")

    def pooled(self, direction: str, arm: str) -> float:
        """The refusal rate over every prompt of the groups that should move in ``direction``."""
        groups = [g for g in self.groups if g.direction == direction]
        if not groups:
            raise KeyError(f"no evaluation group should move {direction!r}")
        return sum(g.rates[arm] * g.n for g in groups) / sum(g.n for g in groups)

    def table_rows(self) -> list[dict[str, str]]:
        """One row per group, plus a pooled row for each direction shared by several groups."""
        rows = []
        for g in self.groups:
            row = {"held-out group": g.group, "n": str(g.n), "should": g.direction}
            row.update({f"{arm} refusal": f"{100 * g.rates[arm]:.1f}%" for arm in self.arms})
            rows.append(row)
        for direction in dict.fromkeys(g.direction for g in self.groups):
            members = [g for g in self.groups if g.direction == direction]
            if len(members) > 1:
                row = {"held-out group": "all: " + " + ".join(g.group for g in members),
                       "n": str(sum(g.n for g in members)), "should": direction}
                row.update({f"{arm} refusal": f"{100 * self.pooled(direction, arm):.1f}%" for arm in self.arms})
                rows.append(row)
        return rows

    def table_markdown(self) -> str:
        """The quick phrase-judged refusal table alone."""
        rows = self.table_rows()
        columns = list(rows[0])
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The quick table, then the suite report when the compile ran one."""
        table = self.table_markdown()
        if self.suites is not None:
            table += "\n\nEvaluation suites (validated judge, 95% bootstrap intervals):\n\n" + self.suites.markdown()
        return table

    def to_dict(self) -> dict:
        return {"arms": self.arms, "groups": [asdict(g) for g in self.groups], "settings": self.settings,
                "suites": self.suites.to_dict() if self.suites is not None else None}


def binomial_halfwidth(rate: float, n: int) -> float:
    """Half-width of a 95% normal-approximation interval; shown so small test sets are read with care."""
    return 1.96 * math.sqrt(max(rate * (1 - rate), 1e-12) / max(n, 1))


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate over ``n`` prompts: unlike the normal approximation it is not
    empty at 0% or 100% (0 of 40 refusals still allows up to 8.8%), which is where benign groups sit."""
    if n <= 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def within_interval_rows(evaluation: "Evaluation", reference: str, candidate: str) -> list[dict]:
    """Per group (and pooled per direction): is ``candidate``'s rate inside the 95% Wilson interval of
    ``reference``'s? How an added issue shows that an earlier issue's metrics did not move."""
    rows = []
    pooled = {}
    for direction in dict.fromkeys(g.direction for g in evaluation.groups):
        members = [g for g in evaluation.groups if g.direction == direction]
        if len(members) > 1:
            pooled[direction] = sum(g.n for g in members)
    items = [(g.group, g.n, g.rates[reference], g.rates[candidate]) for g in evaluation.groups]
    items += [(f"all {d}", n, evaluation.pooled(d, reference), evaluation.pooled(d, candidate))
              for d, n in pooled.items()]
    for group, n, ref, cand in items:
        low, high = wilson_interval(ref, n)
        rows.append({"group": group, "n": n, reference: round(ref, 4), "interval": [round(low, 4), round(high, 4)],
                     candidate: round(cand, 4), "within": low - 1e-9 <= cand <= high + 1e-9})
    return rows


@dataclass(frozen=True)
class Routed:
    """An arm that answers each prompt with one of several adapters, chosen per prompt before generating.

    How a decision made once per prompt (for instance at its last token, by the anchors) is compared with
    the runtime's per-token gates: ``route`` maps a prompt to a key of ``adapters`` (``None`` there is the
    base model). Prompts without a route are answered by the base model. Each adapter generates through
    the same cache keys as an ordinary arm, so a route to the base model reuses the base arm's answers."""
    adapters: Mapping[str, SteeringAdapter | None]
    route: Mapping[str, str]

    def __post_init__(self):
        unknown = sorted(set(self.route.values()) - set(self.adapters))
        if unknown:
            raise MasteerError(f"routed arm: routes to {unknown}, which are not among its adapters "
                               f"{sorted(self.adapters)}")


def _answer(model, tokenizer, adapter: SteeringAdapter | None, prompts: Sequence[str], cache: ResultCache,
            base_key: str, max_new_tokens: int, batch_size: int, progress: bool, desc: str) -> dict[str, str]:
    """prompt -> greedy answer with ``adapter`` attached for the call (None: the base model)."""
    if not prompts:
        return {}
    steered = model if adapter is None else SteeredModel(model, adapter)
    try:
        return cached_generate(steered, tokenizer, prompts, cache, base_key, arm_key(adapter), max_new_tokens,
                               batch_size, progress=progress, desc=desc)
    finally:
        if adapter is not None:
            steered.detach()


def evaluate_refusal(model, tokenizer, arms: Mapping[str, SteeringAdapter | Routed | None],
                     groups: Mapping[str, Sequence[Sample]], directions: Mapping[str, str],
                     max_new_tokens: int = 24, batch_size: int = 32, examples: int = 3,
                     progress: bool = True, cache: ResultCache | None = None) -> Evaluation:
    """Refusal rate per (group, arm); an arm is an adapter attached to ``model`` (``None``: the base).

    Arms are attached one at a time and detached after, so they never mix; every arm answers every
    prompt with the same greedy settings. A :class:`Routed` arm answers each prompt with the adapter its
    route names. Generations go through ``cache`` (in memory when None).
    """
    if not groups or any(not samples for samples in groups.values()):
        empty = [g for g, s in groups.items() if not s] or ["(none)"]
        raise MasteerError(f"evaluation groups without held-out prompts: {', '.join(empty)}")
    order = list(groups)
    prompts = [s.prompt for g in order for s in groups[g]]
    responses = {}
    cache = cache if cache is not None else ResultCache()
    base_key = model_key(model)
    for arm, adapter in arms.items():
        if isinstance(adapter, Routed):
            done = _answer(model, tokenizer, None, [p for p in prompts if p not in adapter.route], cache, base_key,
                           max_new_tokens, batch_size, progress, f"generating ({arm}: base)")
            for key, routed in adapter.adapters.items():
                done.update(_answer(model, tokenizer, routed, [p for p in prompts if adapter.route.get(p) == key],
                                    cache, base_key, max_new_tokens, batch_size, progress,
                                    f"generating ({arm}: {key})"))
        else:
            done = _answer(model, tokenizer, adapter, prompts, cache, base_key, max_new_tokens, batch_size, progress,
                           f"generating ({arm})")
        responses[arm] = [done[p] for p in prompts]
    results, start = [], 0
    for g in order:
        n = len(groups[g])
        chunks = {arm: responses[arm][start:start + n] for arm in arms}
        results.append(GroupResult(group=g, direction=directions.get(g, "same"), n=n,
                                   rates={arm: sum(map(is_refusal, c)) / n for arm, c in chunks.items()},
                                   examples={arm: c[:examples] for arm, c in chunks.items()}))
        start += n
    settings = {"decoding": "greedy", "max_new_tokens": max_new_tokens, "judge": "masteer.compiler.common.judge.is_refusal",
                "chat_template": bool(getattr(tokenizer, "chat_template", None))}
    verdicts = {arm: {p: is_refusal(r) for p, r in zip(prompts, responses[arm])} for arm in arms}
    return Evaluation(arms=list(arms), groups=results, settings=settings, verdicts=verdicts,
                      responses={arm: dict(zip(prompts, responses[arm])) for arm in arms})


def breakdown_markdown(rows: Sequence[dict], field_name: str, arms: Sequence[str]) -> str:
    """A breakdown (:meth:`Evaluation.breakdown`) as a table: one row per (label, value), a column per arm."""
    if not rows:
        return ""
    lines = [f"| label | {field_name} | n | " + " | ".join(arms) + " |", "|---" * (3 + len(arms)) + "|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r[field_name]} | {r['n']} | "
                     + " | ".join(f"{100 * r[a]:.1f}%" if a in r else "-" for a in arms) + " |")
    return "\n".join(lines)
