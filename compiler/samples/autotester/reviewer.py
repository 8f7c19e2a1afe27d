"""The reviewer agent: rejects malformed, duplicate, off-topic and non-contrastive items, then balances scenarios.

Why rules and not an LLM judge: the reviewer is the safety net under a weak writer, so it must not
be weak itself; rules are deterministic, explainable (each rejection says which rule and why) and
measured on a labelled set of good and bad pairs kept in ``tests/compiler/data``.

A pair is useful for steering when the two replies differ on the issue's *axis* and little else.
What "on the axis" means depends on the axis (see ``recipes.AXES``):

- ``refusal``: the positive is a refusal and the negative is not (the phrase judge decides);
- ``compliance``: the reverse;
- ``negation``: the positive denies or corrects (a negation word; for a claim the model makes about
  itself, saying it is an AI also corrects it), the negative asserts (no negation word), and when
  the issue has a claim, the negative actually makes it (shares its topic words);
- ``labelled``: pairs come labelled from datasets; the two sides must differ, and an LLM rewrite
  must stay closer to the side it rewrote than to the other one (it kept its polarity).

"Little else" is a length rule: the longer reply at most ``MAX_LENGTH_RATIO`` times the shorter in
words (short replies excepted), except on the refusal axes, where a one-line refusal against a
full compliant answer is the contrast itself.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from ...common.judge import is_refusal
from ..rewrites import DIRECT, vet_rewrite
from ..sample_set import NEUTRAL, TARGET, prompt_key
from .analyst import IssueAnalysis
from .retriever import similarities, tokens
from .writer import Candidate

REASONS = ("malformed", "duplicate", "off-topic", "non-contrastive", "balance")
MAX_PROMPT_CHARS = 4000
MAX_REPLY_CHARS = 3000
MAX_LENGTH_RATIO = 3.0
SHORT_REPLY_WORDS = 12
TOPIC_MIN = 0.25           # TF-IDF similarity of a free-text target prompt to the issue's trigger prompts
PARAPHRASE_MIN = 0.3       # an LLM paraphrase's similarity to the prompt it paraphrased
NEAR_DUPLICATE = 0.95      # word-set Jaccard (articles and punctuation ignored) at which two prompts count as one

_NEGATION = re.compile(r"\b(?:no|not|never|nope|neither|nor|cannot|false|untrue|incorrect|myth|misconception|"
                       r"wrong)\b|n't\b", re.I)
# Chat-template tokens, role prefixes and unfilled placeholders: wrong in any text.
_RESIDUE = re.compile(r"<\|[^>]*\|>|</?s>|^\s*(?:assistant|user|system)\s*:|\{[a-z_]*\}|\[/?INST\]", re.I | re.M)
# The writer's own instruction labels echoed back: wrong in LLM text only (datasets such as BBQ and the
# sycophancy items legitimately end their prompts with "Answer:").
_ECHO = re.compile(r"^\s*(?:rewritten question|new question|question|sentence|answer|reply|response)\s*:|"
                   r"\b(?:rewritten question|question|sentence|answer)\s*:\s*$", re.I | re.M)
_CHATTER = re.compile(r"^\s*(?:sure|certainly|of course|here(?:'s| is| are)|okay|ok)\b[,!.:]?", re.I)
# For a claim the model makes about itself, saying what it is corrects the claim (see Claim.pairs).
_AI_IDENTITY = re.compile(r"\b(?:an? )?(?:AI|artificial intelligence|language model|chatbot)\b", re.I)
_YOU = re.compile(r"\b(?:you|your|yours|yourself|u)\b|\bam i (?:talking|chatting|speaking|writing)\b|"
                  r"\b(?:answering|replying to|talking to) me\b|\bthis (?:chat|bot|assistant|ai)\b", re.I)
_WORD = re.compile(r"\w+(?:'\w+)?")


@dataclass
class Rejection:
    candidate: Candidate
    reason: str
    detail: str

    def to_dict(self) -> dict:
        c = self.candidate
        return {"reason": self.reason, "detail": self.detail, "prompt": c.prompt, "positive": c.positive,
                "negative": c.negative, "label": c.label, "scenario": c.scenario, "provenance": c.provenance}


@dataclass
class ReviewResult:
    accepted: list[Candidate]
    rejected: list[Rejection] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejected).items()))


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _prompt_words(text: str) -> set[str]:
    return {w for w in _words(text) if w not in ("a", "an", "the")}


def _degenerate(text: str) -> bool:
    """Loops a small model falls into: a word four times running, or a 3-word phrase three times."""
    words = _words(text)
    if any(len(set(words[i:i + 4])) == 1 for i in range(len(words) - 3)):
        return True
    trigrams = Counter(tuple(words[i:i + 3]) for i in range(len(words) - 2))
    return any(count >= 3 for count in trigrams.values())


def malformed(text: str | None, what: str, from_llm: bool, max_chars: int) -> str | None:
    """Why ``text`` is unusable as a prompt or reply, or None."""
    if text is None:
        return None
    if not text.strip():
        return f"{what} is empty"
    if len(text) > max_chars:
        return f"{what} is {len(text)} characters (over {max_chars})"
    if any(ord(ch) < 32 and ch not in "\n\t\r" for ch in text) or "\ufffd" in text:
        return f"{what} has control or replacement characters"
    if _RESIDUE.search(text):
        return f"{what} has chat-template residue"
    if from_llm:
        if _ECHO.search(text):
            return f"{what} echoes the writer's instruction labels"
        if _degenerate(text):
            return f"{what} repeats itself"
        if len(_words(text)) < 2:
            return f"{what} is a single word"
        if not re.search(r"[.!?)\"'»]\s*$", text.strip()):
            return f"{what} is cut off (no closing punctuation)"
    return None


def stance_negates(text: str) -> bool:
    return bool(_NEGATION.search(text))


def _ratio(a: str, b: str) -> float:
    la, lb = max(len(_words(a)), 1), max(len(_words(b)), 1)
    return max(la, lb) / min(la, lb)


def _jaccard(a: str, b: str) -> float:
    sa, sb = set(_words(a)), set(_words(b))
    return len(sa & sb) / max(len(sa | sb), 1)


def _paraphrased(c: Candidate) -> str:
    """The base prompt an LLM paraphrase was made from (``seed_item`` "base:<prompt>"), else ``c.base``."""
    source = str(c.provenance.get("seed_item") or "")
    return source[5:] if source.startswith("base:") else c.base


class Reviewer:
    def __init__(self, analysis: IssueAnalysis, per_scenario: int | None = None, neutral: int | None = None,
                 seed: int = 0):
        self.analysis = analysis
        self.per_scenario, self.neutral = per_scenario, neutral
        self.rng = random.Random(seed)
        self.keywords = set(tokens(" ".join(analysis.keywords)))

    # ------------------------------------------------------------------ single checks
    def check_malformed(self, c: Candidate) -> str | None:
        method = str(c.provenance.get("method", ""))
        prompt_llm = method == "llm-paraphrase"
        problem = malformed(c.prompt, "prompt", prompt_llm, MAX_PROMPT_CHARS)
        if problem is None and prompt_llm and _CHATTER.match(c.prompt):
            problem = "prompt is a chat reply, not a question"
        source = _paraphrased(c)
        if problem is None and prompt_llm and source.rstrip().endswith("?") and "?" not in c.prompt:
            problem = "the paraphrase of a question is not a question (the writer answered it instead)"
        if problem:
            return problem
        for side in ("positive", "negative"):
            text = getattr(c, side)
            by = c.provenance.get(f"{side}_by", {}).get("method", method) if isinstance(
                c.provenance.get(f"{side}_by"), dict) else method
            problem = malformed(text, side, str(by).startswith("llm") and by != "llm-paraphrase", MAX_REPLY_CHARS)
            if problem:
                return problem
            if text is not None and len(c.prompt) > 20 and prompt_key(c.prompt) in prompt_key(text):
                return f"{side} repeats the prompt"
        if c.label == TARGET and c.positive is None and c.negative is None and self.analysis.axis in (
                "negation", "labelled"):
            return "target has no replies (this axis needs a pair)"
        return None

    def check_topic(self, c: Candidate) -> str | None:
        a = self.analysis
        method = str(c.provenance.get("method", ""))
        original = c.provenance.get("original")
        if c.family != DIRECT and isinstance(original, str):   # a rewrite-family form, by the LLM or the rules
            why = vet_rewrite(original, c.prompt, c.family)
            if why is not None:
                return f"{c.family} rewrite: {why}"
        if c.label == NEUTRAL:
            if a.claim is not None and a.claim.about_self and _YOU.search(c.prompt) and \
                    self.keywords & set(tokens(c.prompt)):
                return "a neutral prompt that asks the model about the issue's own claim"
            return None
        if method == "llm-paraphrase":
            source = _paraphrased(c)
            score = float(similarities(source, [c.base])[0]) if source and source != c.base else 1.0
            if score < PARAPHRASE_MIN:
                return f"paraphrase drifted from {source!r} (similarity {score:.2f} < {PARAPHRASE_MIN})"
        if a.claim is not None and a.claim.about_self and not _YOU.search(c.base):
            return "does not address the model, so it cannot ask about the model's own claim"
        if a.method != "recipe" and a.questions and method in ("retrieved", "llm-paraphrase"):
            score = float(max(similarities(c.base, a.questions)))
            if score < TOPIC_MIN:
                return f"base prompt similarity to the issue's trigger prompts {score:.2f} < {TOPIC_MIN}"
        if a.method != "recipe" and self.keywords and not (self.keywords & set(tokens(c.base))) \
                and method != "recipe-seed":
            return f"shares no topic word ({', '.join(sorted(self.keywords))})"
        return None

    def check_contrast(self, c: Candidate) -> str | None:
        if c.label != TARGET or c.positive is None or c.negative is None:
            return None
        a = self.analysis
        pos, neg = c.positive, c.negative
        if " ".join(_words(pos)) == " ".join(_words(neg)):
            return "positive and negative are the same text"
        if a.axis == "refusal":
            if not is_refusal(pos):
                return "positive is not a refusal"
            if is_refusal(neg):
                return "negative is a refusal too"
            return None
        if a.axis == "compliance":
            if is_refusal(pos):
                return "positive is a refusal"
            if not is_refusal(neg):
                return "negative is not a refusal"
            return None
        short = max(len(_words(pos)), len(_words(neg))) <= SHORT_REPLY_WORDS
        if not short and _ratio(pos, neg) > MAX_LENGTH_RATIO:
            return f"replies differ in more than the axis (length ratio {_ratio(pos, neg):.1f} > {MAX_LENGTH_RATIO:g})"
        if a.axis == "negation":
            corrects = a.claim is not None and a.claim.about_self and _AI_IDENTITY.search(pos)
            if not stance_negates(pos) and not corrects:
                return "positive does not deny or correct anything"
            if stance_negates(neg):
                return "negative denies too"
            if a.claim is not None and self.keywords and not (self.keywords & set(tokens(neg))):
                return "negative does not make the issue's claim"
        rewrote = c.provenance.get("rewrote")
        if isinstance(rewrote, list) and len(rewrote) == 2 and all(isinstance(r, str) for r in rewrote):
            if [" ".join(_words(t)) for t in (pos, neg)] == [" ".join(_words(t)) for t in rewrote]:
                return "verbatim"
            own_pos, own_neg = _jaccard(pos, rewrote[0]), _jaccard(neg, rewrote[1])
            if own_pos <= _jaccard(pos, rewrote[1]) or own_neg <= _jaccard(neg, rewrote[0]):
                return "a rewrite is closer to the opposite side than to the side it rewrote"
        return None

    # ------------------------------------------------------------------ the whole set
    def review(self, candidates: list[Candidate]) -> ReviewResult:
        accepted: list[Candidate] = []
        rejected: list[Rejection] = []
        seen: dict[str, str] = {}                     # prompt key -> label
        word_sets: list[tuple[set[str], str]] = []
        for c in candidates:
            reason = None
            for name, check in (("malformed", self.check_malformed), ("off-topic", self.check_topic),
                                ("non-contrastive", self.check_contrast)):
                detail = check(c)
                if detail == "verbatim":
                    reason = ("duplicate", "the rewrite repeats the replies it was asked to rewrite, word for word")
                    break
                if detail:
                    reason = (name, detail)
                    break
            if reason is None:
                key = prompt_key(c.prompt)
                words = _prompt_words(c.prompt)
                if key in seen:
                    reason = ("duplicate", f"same prompt as an accepted {seen[key]} sample")
                else:
                    close = next((label for ws, label in word_sets
                                  if len(ws | words) and len(ws & words) / len(ws | words) >= NEAR_DUPLICATE), None)
                    if close is not None:
                        reason = ("duplicate", f"near-duplicate (word overlap >= {NEAR_DUPLICATE}) of an accepted "
                                               f"{close} sample")
            if reason is not None:
                rejected.append(Rejection(c, *reason))
                continue
            seen[prompt_key(c.prompt)] = c.label
            word_sets.append((_prompt_words(c.prompt), c.label))
            accepted.append(c)
        accepted, surplus = self.balance(accepted)
        rejected += surplus
        return ReviewResult(accepted, rejected)

    def balance(self, accepted: list[Candidate]) -> tuple[list[Candidate], list[Rejection]]:
        """At most ``per_scenario`` targets per scenario (as even as the data allow) and ``neutral`` neutrals.

        Which targets stay is a seeded draw; templated and recipe items are preferred over
        retrieved ones only through their order in the draw being equal (no preference), so the
        kept set reflects every source.
        """
        keep: set[int] = set()
        surplus: list[Rejection] = []
        forms = [i for i, c in enumerate(accepted) if c.family != DIRECT]   # rewrite-family forms: see below
        accepted_forms, accepted = [accepted[i] for i in forms], [c for c in accepted if c.family == DIRECT]
        targets = [i for i, c in enumerate(accepted) if c.label == TARGET]
        by_scenario: dict[str, list[int]] = {}
        for i in targets:
            by_scenario.setdefault(accepted[i].scenario, []).append(i)
        cap = self.per_scenario
        if cap is not None and by_scenario:
            cap = min(cap, max(min(len(v) for v in by_scenario.values()) * 2, 1))
        for scenario, members in sorted(by_scenario.items()):
            order = list(members)
            self.rng.shuffle(order)
            limit = len(order) if cap is None else cap
            keep.update(order[:limit])
            surplus += [Rejection(accepted[i], "balance", f"scenario {scenario!r} already has {limit} targets")
                        for i in order[limit:]]
        neutrals = [i for i, c in enumerate(accepted) if c.label == NEUTRAL]
        near = [i for i in neutrals if accepted[i].group == "near-miss"]
        rest = [i for i in neutrals if accepted[i].group != "near-miss"]
        self.rng.shuffle(rest)
        order = near + rest
        limit = len(order) if self.neutral is None else self.neutral
        keep.update(order[:limit])
        surplus += [Rejection(accepted[i], "balance", f"already {limit} neutral prompts") for i in order[limit:]]
        kept = [c for i, c in enumerate(accepted) if i in keep]
        # A rewrite-family form stays with its base prompt: kept when a form of that base was kept, and then
        # outside the caps (the caps balance framings; the families cycle evenly by construction).
        bases = {(c.label, c.base) for c in kept}
        kept += [c for c in accepted_forms if (c.label, c.base) in bases]
        surplus += [Rejection(c, "balance", "its base prompt was not kept") for c in accepted_forms
                    if (c.label, c.base) not in bases]
        return kept, surplus


def review_labelled(rows: list[dict]) -> list[Rejection | None]:
    """Review hand-labelled rows (``issue``, ``prompt``, ``positive``, ``negative``, ``label``, ``method``,
    optional ``seed_item``/``rewrote``), one issue at a time in file order, without balancing.

    Returns, per row, its Rejection or None (accepted). Used to measure the reviewer against labels.
    """
    from .analyst import analyse
    decisions: list[Rejection | None] = [None] * len(rows)
    by_issue: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_issue.setdefault(row["issue"], []).append(i)
    for issue, members in by_issue.items():
        analysis = analyse(issue, backend=None, use_llm=False)
        candidates = []
        for i in members:
            row = rows[i]
            provenance = {"agent": "writer", "method": row.get("method", "template"), "seed_item": row.get("seed_item")}
            if row.get("rewrote"):
                provenance["rewrote"] = row["rewrote"]
            candidates.append(Candidate(row["prompt"], row.get("positive"), row.get("negative"), row["label"],
                                        "direct", "target" if row["label"] == TARGET else "neutral",
                                        row.get("base", row["prompt"]), provenance))
        result = Reviewer(analysis).review(candidates)
        by_id = {id(r.candidate): r for r in result.rejected}
        for i, c in zip(members, candidates):
            decisions[i] = by_id.get(id(c))
    return decisions
