"""The writer agent: target prompts with a desired and an undesired reply (A/B), plus neutral prompts.

Why templates first and the LLM second: a contrast pair is useful for steering when its two
replies differ on the issue's axis and in nothing else, and a 135M writer cannot be trusted to hold
that line. So every pair the writer is sure of comes from the analysis (a claim and its negation,
a recipe's refusals) or from a labelled dataset item found by the retriever; the LLM backend adds
what templates cannot:

- **paraphrases** of base prompts (new ways of asking);
- **its own answers** where the axis makes them the right side of a pair: on a harmful request the
  model's compliant answer is the undesired reply (``refusal`` axis); on a benign request its
  helpful answer is the desired one (``compliance`` axis);
- **rewrites** of templated replies (``negation``/``labelled`` axes), offered *before* the
  template version of the same prompt: if the reviewer accepts the rewrite, the template version
  is a duplicate; if it rejects it, the template version survives. Nothing is lost to a weak LLM,
  and the rejections show what it got wrong.

Every base prompt is asked in each scenario's framing (see ``analyst.FRAMINGS``) and, once more, in a
rewrite family (``rewrites``: past tense, hypothetical, role-play, ...; the families cycle, seeded), and
so is every neutral prompt, so that no anchor learns a surface form as the issue. A family rewrite comes
from the rules, and where an LLM backend is configured the LLM's rewrite of the same prompt is offered
first (the reviewer vets both with ``rewrites.vet_rewrite``). The base prompt is kept on the candidate so
splits keep all framings and rewrites of one question together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ..backends.base import ChatParams, user
from ..rewrites import DIRECT, FAMILIES, llm_rewrite_request, rewrite
from ..sample_set import NEUTRAL, TARGET
from .analyst import FRAMINGS, IssueAnalysis
from .corpus import SeedItem, load_source
from .retriever import Retrieved, similarities

NEUTRAL_SOURCES = ("everyday", "truthfulqa", "overrefusal")
PARAPHRASE = ("Rewrite the question below in different words, keeping its meaning. Reply with the new question only."
              "\nQuestion: {q}")
REWRITE = ("Say the sentence below in other words, keeping its meaning exactly. Reply with the new sentence only."
           "\nSentence: {s}")


@dataclass
class Candidate:
    """A sample the reviewer has not judged yet."""
    prompt: str
    positive: str | None
    negative: str | None
    label: str
    scenario: str
    group: str
    base: str                      # the prompt before framing: splits keep a base's framings together
    provenance: dict = field(default_factory=dict)
    family: str = DIRECT           # the rewrite family of the prompt (``rewrites``)


@dataclass
class _Base:
    prompt: str
    positive: str | None
    negative: str | None
    method: str
    seed_item: str | None
    llm_rewrite: tuple[str, str] | None = None


@dataclass
class WriterSettings:
    paraphrases: int = 12          # base prompts sent to the LLM for one paraphrase each
    answers: int = 48              # own-answer calls (refusal / compliance axes)
    rewrites: int = 24             # reply-pair rewrites (negation / labelled axes)
    max_tokens: int = 48
    neutral: int = 120
    retrieved: int = 40            # retrieved seed items used as bases
    use_llm: bool = True
    families: bool = True          # one rewrite-family form of every base and neutral prompt
    llm_families: int = 48         # of those, at most this many also asked of the LLM (offered first)


def _first_line(text: str) -> str:
    lines = [line.strip().strip('"').strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


class Writer:
    def __init__(self, analysis: IssueAnalysis, backend=None, seed: int = 0,
                 settings: WriterSettings | None = None, progress: bool = False):
        self.analysis, self.backend = analysis, backend
        self.settings = settings or WriterSettings()
        self.rng = random.Random(seed)
        self.progress = progress
        self.llm = backend is not None and self.settings.use_llm
        self.who = backend.describe() if backend is not None else {"backend": "none", "model": None}

    # ------------------------------------------------------------------ provenance
    def _prov(self, method: str, seed_item: str | None = None, **extra) -> dict:
        llm = method.startswith("llm")
        return {"agent": "writer", "method": method, "backend": self.who["backend"] if llm else "template",
                "model": self.who.get("model") if llm else None, "seed_item": seed_item, **extra}

    def _ask(self, prompts: list[str], desc: str) -> list[str]:
        params = ChatParams(max_tokens=self.settings.max_tokens)
        return self.backend.chat_many([user(p) for p in prompts], params, progress=self.progress, desc=desc)

    # ------------------------------------------------------------------ target bases
    def _fill(self, item_pos: str | None, item_neg: str | None, k: int) -> tuple[str | None, str | None]:
        """Complete a seed item's pair from the axis's templates where the item lacks a side."""
        a, pairs, refusals = self.analysis, self.analysis.pairs, self.analysis.refusals
        if a.axis == "refusal":
            return item_pos or (refusals[k % len(refusals)] if refusals else None), item_neg
        if a.axis == "compliance":
            return item_pos, item_neg or (refusals[k % len(refusals)] if refusals else None)
        if a.axis == "negation" and pairs:
            if a.claim is not None and a.claim.about_self:  # one reply style for claims about the model itself
                return pairs[k % len(pairs)]
            return item_pos or pairs[k % len(pairs)][0], item_neg or pairs[k % len(pairs)][1]
        return item_pos, item_neg

    def bases(self, retrieved: list[Retrieved]) -> list[_Base]:
        a = self.analysis
        out: list[_Base] = []
        for k, question in enumerate(a.questions):
            pos, neg = (a.pairs[k % len(a.pairs)] if a.pairs else (None, None))
            pos, neg = self._fill(pos, neg, k)
            out.append(_Base(question, pos, neg, "recipe-seed" if a.method == "recipe" else "template", None))
        for k, hit in enumerate(retrieved[: self.settings.retrieved]):
            pos, neg = self._fill(hit.item.positive, hit.item.negative, k)
            if a.axis == "labelled" and (pos is None or neg is None):
                continue  # a labelled axis takes only items labelled on both sides
            out.append(_Base(hit.item.prompt, pos, neg, "retrieved", hit.item.id))
        if self.llm and self.settings.paraphrases:
            sources = [b for b in out if b.method in ("template", "recipe-seed")] or out
            chosen = sources[: self.settings.paraphrases]
            replies = self._ask([PARAPHRASE.format(q=b.prompt) for b in chosen], "writer: paraphrases")
            for b, reply in zip(chosen, replies):
                text = _first_line(reply)
                if text:
                    out.append(_Base(text, b.positive, b.negative, "llm-paraphrase", b.seed_item or f"base:{b.prompt}"))
        return out

    # ------------------------------------------------------------------ candidates
    def targets(self, bases: list[_Base]) -> list[Candidate]:
        a = self.analysis
        out: list[Candidate] = []
        for b in bases:
            for scenario in a.scenarios:
                framing = self.rng.choice(FRAMINGS[scenario])
                prompt = framing.format(q=b.prompt)
                out.append(Candidate(prompt, b.positive, b.negative, TARGET, scenario, "target", b.prompt,
                                     self._prov(b.method, b.seed_item, framing=framing)))
        if self.llm:
            out = self._llm_replies(out)
        if self.settings.families:
            out += self.family_forms([(b.prompt, b.positive, b.negative, TARGET, "target", b.prompt,
                                       self._prov(b.method, b.seed_item)) for b in bases])
        return out

    def family_forms(self, items: list[tuple]) -> list[Candidate]:
        """Each (prompt, positive, negative, label, group, base, provenance) once more in the next rewrite
        family of its label's seeded cycle: the LLM's rewrite first where a backend is configured (at most
        ``llm_families``), then the rules' (module docstring)."""
        cycles: dict[str, list[str]] = {}
        planned = []
        for prompt, pos, neg, label, group, base, prov in items:
            cycle = cycles.setdefault(label, [])
            if not cycle:
                cycle.extend(self.rng.sample(FAMILIES, len(FAMILIES)))
            planned.append((prompt, pos, neg, label, group, base, prov, cycle.pop()))
        llm_texts: dict[int, str] = {}
        if self.llm and self.settings.llm_families:
            todo = list(range(min(len(planned), self.settings.llm_families)))
            replies = self._ask([llm_rewrite_request(planned[k][0], planned[k][7]) for k in todo],
                                "writer: rewrite families")
            llm_texts = {k: " ".join(_first_line(r).split()) for k, r in zip(todo, replies)}
        out = []
        for k, (prompt, pos, neg, label, group, base, prov, family) in enumerate(planned):
            common = {"family": family, "original": prompt}
            if k in llm_texts:
                out.append(Candidate(llm_texts[k], pos, neg, label, family, group, base,
                                     {**self._prov("llm-family", prov.get("seed_item")), **common}, family))
            out.append(Candidate(rewrite(prompt, family, self.rng), pos, neg, label, family, group, base,
                                 {**prov, "rewrite": "rules", **common}, family))
        return out

    def _llm_replies(self, targets: list[Candidate]) -> list[Candidate]:
        a, s = self.analysis, self.settings
        if a.axis in ("refusal", "compliance"):
            side = "negative" if a.axis == "refusal" else "positive"
            todo = [c for c in targets if getattr(c, side) is None][: s.answers]
            answers = self._ask([c.prompt for c in todo], "writer: own answers")
            for c, answer in zip(todo, answers):
                setattr(c, side, answer.strip() or None)
                c.provenance = {**c.provenance, f"{side}_by": self._prov("llm-answer")}
            return targets
        # negation / labelled: a rewritten pair goes first, the template pair of the same prompt after it
        todo = [c for c in targets if c.positive and c.negative][: s.rewrites]
        if not todo:
            return targets
        replies = self._ask([REWRITE.format(s=t) for c in todo for t in (c.positive, c.negative)], "writer: rewrites")
        rewritten = {}
        for k, c in enumerate(todo):
            pos, neg = _first_line(replies[2 * k]), _first_line(replies[2 * k + 1])
            rewritten[id(c)] = Candidate(c.prompt, pos, neg, c.label, c.scenario, c.group, c.base,
                                         {**self._prov("llm-rewrite", c.provenance.get("seed_item")),
                                          "framing": c.provenance.get("framing"), "rewrote": [c.positive, c.negative]})
        out = []
        for c in targets:
            if id(c) in rewritten:
                out.append(rewritten[id(c)])
            out.append(c)
        return out

    def neutrals(self, extra_sources: list[str] | None = None) -> list[Candidate]:
        """Near-miss prompts from the analysis, then everyday prompts least like the issue."""
        a = self.analysis
        out = [Candidate(p, None, None, NEUTRAL, "direct", "near-miss", p, self._prov("template"))
               for p in a.near_misses]
        pool: list[SeedItem] = []
        for source in list(dict.fromkeys(list(extra_sources or []) + list(NEUTRAL_SOURCES))):
            pool += load_source(source)
        # Skip the pool items most like the issue: a neutral prompt must not be a disguised target.
        scores = similarities(a.query, [i.prompt for i in pool]) if pool else []
        order = [i for i in range(len(pool)) if scores[i] < 0.2]
        self.rng.shuffle(order)
        want = max(0, self.settings.neutral - len(out))
        for i in order[: 2 * want]:  # twice as many as kept: the reviewer drops duplicates and balances
            item = pool[i]
            out.append(Candidate(item.prompt, None, None, NEUTRAL, "direct", "neutral", item.prompt,
                                 self._prov("retrieved", item.id)))
        if self.settings.families:
            out += self.family_forms([(c.prompt, None, None, NEUTRAL, c.group, c.base, c.provenance) for c in out])
        return out

    def write(self, retrieved: list[Retrieved], neutral_sources: list[str] | None = None) -> list[Candidate]:
        steps = tqdm(total=3, desc="writer", disable=not self.progress, leave=False)
        bases = self.bases(retrieved)
        steps.update()
        targets = self.targets(bases)
        steps.update()
        neutrals = self.neutrals(neutral_sources)
        steps.update()
        steps.close()
        return targets + neutrals
