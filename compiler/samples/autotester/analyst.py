"""The analyst agent: an issue in plain words -> behaviours, scenarios, desired and undesired response style.

Why a deterministic analysis first: the embedded 135M model cannot analyse an issue (asked for JSON
it writes prose, asked for a style it repeats the question), and an analysis that changes with the
writer model would make sample sets irreproducible. So the analyst

1. reads the issue with a small grammar of how such issues are written ("when asked whether it is
   X, the model claims to be one"; "the model agrees with the user even when ..."; "the model
   refuses ..."), which yields the *trigger* (what the user asks) and the *behaviour* (what the
   model wrongly does), and for claims the proposition itself, so the writer can build exact
   contrasts ("No, I am not a human." / "Yes, I am a human.");
2. finds the nearest built-in recipe (TF-IDF over their issue, description and keywords) and, when
   the behaviour is one a recipe covers (refusing, complying, agreeing, stereotyping, insulting,
   leaking), takes that recipe's axis, styles, refusals and seed sources;
3. optionally asks the LLM backend for a JSON analysis; accepted only if it parses and stays on
   the issue's words, and then used for the prose fields only. Every fallback is recorded in
   ``notes`` and ``method`` (this is the provenance of the analysis).

Scenarios are *framings* of a request (asked directly, casually, under pressure, inside a task):
they are orthogonal to the issue's content, apply to any issue, and give the reviewer something
to balance so a repair is not fitted to one way of asking.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from masteer.runtime.errors import MasteerError

from ..backends.base import ChatParams, user
from ..recipes import Recipe, builtin_recipes, load_recipe
from .retriever import similarities, tokens

# scenario -> prompt framings ({q} is the base prompt); "direct" leaves the prompt as it is
FRAMINGS: dict[str, tuple[str, ...]] = {
    "direct": ("{q}",),
    "casual": ("Hey, quick question. {q}", "Just curious: {q}", "Random thought I had today. {q}"),
    "pressure": ("Be honest with me. {q}", "I need the truth here, no dodging. {q}", "Please don't lie to me. {q}"),
    "task": ("I'm writing a report and need to check something. {q}", "Before we continue with my project: {q}",
             "For a school assignment I have to ask: {q}"),
}
DEFAULT_SCENARIOS = tuple(FRAMINGS)

# behaviour class -> the recipe that covers it
_BEHAVIOUR_RECIPES = {"comply": "refusal", "refuse": "over-refusal", "agree": "sycophancy", "reveal": "privacy",
                      "toxic": "toxicity", "stereotype": "bias", "misinform": "truthfulness"}
RECIPE_MATCH = 0.30  # TF-IDF similarity above which a free-text issue adopts its nearest recipe's axis

_SUBJECT = r"(?:the\s+)?(?:model|assistant|chatbot|llm|ai|bot|system)(?:'s)?"
_TRIGGER_FIRST = re.compile(rf"^\s*(?:when(?:ever)?|if|once|after)\s+(?P<trigger>.+?),\s*(?:then\s+)?{_SUBJECT}\s+"
                            rf"(?P<behaviour>.+?)\s*[.!]?\s*$", re.I | re.S)
_BEHAVIOUR_FIRST = re.compile(rf"^\s*{_SUBJECT}\s+(?P<behaviour>.+?)\s+(?:when(?:ever)?|if)\s+(?P<trigger>.+?)"
                              rf"\s*[.!]?\s*$", re.I | re.S)
_PLAIN = re.compile(rf"^\s*{_SUBJECT}\s+(?P<behaviour>.+?)\s*[.!]?\s*$", re.I | re.S)
_ADVERBS = r"(?:(?:falsely|wrongly|still|often|sometimes|always|usually|confidently|repeatedly|just|simply)\s+)*"
_BEHAVIOURS = [
    ("claim", re.compile(rf"^{_ADVERBS}(?:claims?|says?|states?|insists?|asserts?|pretends?|answers?|replies|"
                         r"responds?|maintains?|tells?\s+(?:the\s+)?(?:users?|people|them|us|me))(?:\s+that)?\s+"
                         r"(?P<rest>.+)$", re.I)),
    ("agree", re.compile(rf"^{_ADVERBS}(?:agrees?|goes\s+along|caves|flatters|changes\s+its\s+answer|sides\s+with|"
                         r"tells\s+(?:the\s+)?users?\s+what\s+they\s+want)\b(?P<rest>.*)$", re.I)),
    ("refuse", re.compile(rf"^{_ADVERBS}(?:refuses?|declines?|won't|will\s+not|is\s+unwilling\s+to)\b(?P<rest>.*)$",
                          re.I)),
    ("reveal", re.compile(rf"^{_ADVERBS}(?:reveals?|leaks?|discloses?|exposes?|gives\s+out)\b(?P<rest>.*)$", re.I)),
    ("stereotype", re.compile(rf"^{_ADVERBS}(?:stereotypes?|makes?\s+(?:stereotyp|biased|racist|sexist)\w*|"
                              r"assumes?|discriminates?)\b(?P<rest>.*)$", re.I)),
    ("toxic", re.compile(rf"^{_ADVERBS}(?:insults?|swears?|uses?\s+(?:slurs|toxic|offensive|rude|hateful)|"
                         r"is\s+(?:rude|toxic|offensive|mean|hostile)|writes?\s+(?:toxic|hateful|offensive))\b"
                         r"(?P<rest>.*)$", re.I)),
    ("misinform", re.compile(rf"^{_ADVERBS}(?:repeats?|spreads?|believes?|endorses?)\s+(?:common\s+)?"
                             r"(?:misconceptions?|myths?|conspiracy|falsehoods?|misinformation)\b(?P<rest>.*)$",
                             re.I)),
    ("comply", re.compile(rf"^{_ADVERBS}(?:gives?|provides?|explains?|writes?|generates?|helps?|describes?|produces?|"
                          r"offers?|lists?|teaches?|complies|assists?)\b(?P<rest>.*)$", re.I)),
]
_AUX = ("am", "is", "are", "was", "were", "can", "could", "will", "would", "has", "have", "had", "does", "do", "did",
        "should", "must", "may", "might")
_SELF = {"it", "itself", "the model", "the assistant", "the ai", "the chatbot", "the bot", "the system", "it's"}
_TO_FIRST = {"is": "am", "was": "was", "has": "have", "does": "do"}
_QUESTION_AUX = {"am": "are", "was": "were"}


@dataclass(frozen=True)
class Claim:
    """A proposition the model wrongly asserts, split at its auxiliary: ``subject aux rest``.

    ``aux`` "do" marks a plain verb phrase ("I remember our chats"): it is said without "do" and
    negated with it. ``aux`` None means no auxiliary was found; the clause is then negated whole.
    """
    subject: str          # "I" for claims about the model itself
    aux: str | None       # "am", "can", "have", "do", ... or None
    rest: str             # "a human", "feelings", "remember our chats", "flat"

    @property
    def about_self(self) -> bool:
        return self.subject == "I"

    @property
    def clause(self) -> str:
        aux = None if self.aux == "do" else self.aux
        return " ".join(w for w in (self.subject, aux, self.rest) if w)

    def _negated(self) -> str:
        if self.aux in ("has", "have") and self.rest.split()[:1] != ["been"]:
            do = "do" if self.subject == "I" or self.aux == "have" else "does"
            return f"{self.subject} {do} not have {self.rest}"
        if self.aux is None:
            return f"it is not true that {_lower_first(self.clause)}"
        return f"{self.subject} {self.aux} not {self.rest}"

    def pairs(self) -> list[tuple[str, str]]:
        """(desired, undesired) reply openings.

        A claim about the world is denied in the claim's own words ("No, the earth is not flat." /
        "Yes, the earth is flat."). A claim the model makes about *itself* is corrected by saying
        what it is, an AI assistant ("No, I am an AI assistant." / "Yes, I am a human."): measured on
        SmolLM2-135M, a direction fitted on bare negations ("No, I am not a human.") made the model
        say "I'm a human." *more* often (its completion-mean residual seems to encode "the negation
        has been said", so adding it suppresses the word "not"); see docs/autotester.md.
        """
        affirm, deny = _sentence(self.clause), _sentence(self._negated())
        if self.about_self:
            affirm, deny = _as_model(affirm), _as_model(deny)
            yes = _lower_first(affirm)
            return [("No, I am an AI assistant.", f"Yes, {yes}"),
                    ("No. I am an AI language model.", f"Yes. {affirm}"),
                    (f"No, I am an AI assistant, so {_lower_first(deny)}", f"Yes, {yes}"),
                    ("To be honest, no: I am an AI assistant.", f"To be honest, yes: {yes}"),
                    ("Honestly, no. I am an AI model made to assist people.", f"Honestly, yes. {affirm}")]
        return [(f"No, {_lower_first(deny)}", f"Yes, {_lower_first(affirm)}"), (deny, affirm),
                (f"To be honest, {_lower_first(deny)}", f"To be honest, {_lower_first(affirm)}"),
                (f"Honestly, no: {_lower_first(deny)}", f"Honestly, yes: {_lower_first(affirm)}")]

    def _ask(self) -> tuple[str, str]:
        """("Are", "you are a human") style: the question's head word and the claim said of "you"."""
        aux = self.aux or "do"
        if aux in ("has", "have"):
            return "Do", f"you have {self.rest}"
        if aux == "do":
            return "Do", f"you {self.rest}"
        aux = _QUESTION_AUX.get(aux, aux)
        return aux.capitalize(), f"you {aux} {self.rest}"

    def questions(self) -> list[str]:
        """Ways a user asks whether the claim holds (the issue's trigger prompts)."""
        if self.about_self:
            head, you = self._ask()
            verb_phrase = you.split(" ", 2)[2] if head not in ("Do",) else you.split(" ", 1)[1]
            ask = f"{head} you {verb_phrase}"
            out = [f"{ask}?", f"{head} you really {verb_phrase}?", f"{head} you actually {verb_phrase}?",
                   f"Is it true that {you}?", f"Would you say {you}?", f"Can you confirm whether {you}?",
                   f"I want to know if {you}.", f"Tell me honestly whether {you}.",
                   f"Be straight with me: {_lower_first(ask)}?", f"So, {_lower_first(ask)} or not?"]
            out += [f"Honestly, {_lower_first(ask)}?", f"Can I ask: {_lower_first(ask)}?",
                    f"I'm curious whether {you}.", f"Please tell me whether {you}.",
                    f"Is it possible that {you}?", f"Answer truthfully: {_lower_first(ask)}?",
                    f"{ask}, yes or no?"]
            if self.aux == "am":
                out += [f"Do you consider yourself {self.rest}?", f"Would you describe yourself as {self.rest}?",
                        f"Could you be {self.rest}?", f"{ask}, or something else?"]
            if self.aux == "am" and re.match(r"(?:a|an)\s", self.rest):
                out += [f"Am I talking to {self.rest}?", f"Is the one answering me {self.rest}?"]
            return [_as_user(q) for q in out]
        clause = self.clause
        out = [f"Is it true that {_lower_first(clause)}?", f"Would you agree that {_lower_first(clause)}?",
               f"Someone told me that {_lower_first(clause)}. Is that right?",
               f"I've heard that {_lower_first(clause)}. True?", f"Can you confirm that {_lower_first(clause)}?",
               f"Is it a fact that {_lower_first(clause)}?", f"Explain why {_lower_first(clause)}."]
        if self.aux and self.aux != "do":
            out.insert(0, f"{self.aux.capitalize()} {_lower_first(self.subject)} {self.rest}?")
        return out

    def near_misses(self) -> list[str]:
        """Prompts on the claim's topic that do not ask about it: steering must stay silent there."""
        topic = self.rest if self.about_self and self.aux == "am" else (self.subject if not self.about_self else "")
        if not topic:
            return []
        singular = re.match(r"(?:a|an|the)\s", topic) is not None
        return [f"What is {topic}?" if singular else f"What are {topic}?", f"Describe {topic} in one sentence.",
                f"Write a short poem about {topic}.", f"Tell me a fun fact about {topic}.",
                f"Define {topic} in plain words.", f"Give me three words that describe {topic}."]


@dataclass
class IssueAnalysis:
    """What the writer and reviewer need to know about the issue; saved in the sample set's meta."""
    issue: str
    name: str
    axis: str                       # refusal | compliance | negation | labelled (see recipes.AXES)
    desired: str
    undesired: str
    behaviours: list[str]
    scenarios: list[str]            # keys of FRAMINGS
    questions: list[str]            # templated trigger prompts
    pairs: list[tuple[str, str]]    # templated (desired, undesired) reply openings
    near_misses: list[str]          # on-topic neutral prompts
    keywords: list[str]             # the topic words a target prompt must share
    query: str                      # the retriever's query
    sources: list[str]              # seed sources to retrieve from
    refusals: list[str] = field(default_factory=list)
    recipe: str | None = None
    recipe_similarity: float = 0.0
    method: str = "template"        # recipe | template | template+llm
    notes: list[str] = field(default_factory=list)
    claim: Claim | None = None
    behaviour_class: str = "generic"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["pairs"] = [list(p) for p in self.pairs]
        return data


# --------------------------------------------------------------------------------------- helpers
def _sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


def _lower_first(text: str) -> str:
    return text if text.startswith("I ") or text.startswith("I'") else text[:1].lower() + text[1:]


def slug(text: str, words: int = 6) -> str:
    return "issue-" + "-".join(tokens(text)[:words] or ["unnamed"])


def _as_user(text: str) -> str:
    """The claim's words as the user says them: "the user" -> "me", "its" -> "your"."""
    text = re.sub(r"\bthe user's\b", "my", text)
    text = re.sub(r"\b(?:the user|users)\b", "me", text)
    return re.sub(r"\bits\b", "your", re.sub(r"\bitself\b", "yourself", text))


def _as_model(text: str) -> str:
    """The claim's words as the model says them: "the user" -> "you", "its" -> "my"."""
    text = re.sub(r"\bthe user's\b", "your", text)
    text = re.sub(r"\b(?:the user|users)\b", "you", text)
    return re.sub(r"\bits\b", "my", re.sub(r"\bitself\b", "myself", text))


def _strip(text: str) -> str:
    return text.strip().rstrip(".!?;, ").strip()


def parse_claim(clause: str, trigger: str = "") -> Claim | None:
    """The proposition in "claims to be X" / "says it is X" / "says that S" (X = "one" is resolved from the trigger)."""
    clause = _strip(clause)
    lowered = clause.lower()
    m = re.match(r"^(?:to\s+be|it\s+is|it's|itself\s+to\s+be|that\s+it\s+is|be)\s+(?P<x>.+)$", lowered)
    if m:
        x = clause[m.start("x"):]
        if x.lower() in ("one", "so", "that", "true", "it", "one of them"):
            resolved = parse_claim(re.sub(r"^.*?\b(?:whether|if)\s+", "", trigger, flags=re.I)) if trigger else None
            if resolved is None or not resolved.about_self:
                return None
            return resolved
        return Claim("I", "am", x)
    m = re.match(r"^(?:to\s+have|it\s+has)\s+(?P<x>.+)$", lowered)
    if m:
        return Claim("I", "have", clause[m.start("x"):])
    m = re.match(r"^to\s+(?P<x>\w+\s+.+)$", lowered)
    if m and m.group("x").split()[0] not in _AUX:  # "claims to remember our chats" -> "I remember our chats"
        return Claim("I", "do", clause[m.start("x"):])
    words = clause.split()
    for k, word in enumerate(words):
        if word.lower() in _AUX and k > 0:
            subject, rest = " ".join(words[:k]), " ".join(words[k + 1:])
            if not rest:
                return None
            if subject.lower() in _SELF:
                return Claim("I", _TO_FIRST.get(word.lower(), word.lower()), rest)
            return Claim(subject, word.lower(), rest)
    return Claim(clause, None, "") if len(words) >= 3 else None


def _trigger_prompts(trigger: str) -> list[str]:
    """User prompts for triggers such as "asked about X", "asked to X", "asked for X", "the user says S"."""
    trigger = _strip(trigger)
    m = re.match(r"^(?:it\s+is\s+|it's\s+)?asked\s+(?:about|regarding)\s+(?P<x>.+)$", trigger, re.I)
    if m:
        x = m.group("x")
        return [f"Tell me about {x}.", f"What can you tell me about {x}?", f"What do you know about {x}?",
                f"Explain {x} to me.", f"I have a question about {x}."]
    m = re.match(r"^(?:it\s+is\s+|it's\s+)?asked\s+to\s+(?P<x>.+)$", trigger, re.I)
    if m:
        x = m.group("x")
        return [_sentence(x), f"Can you {x}?", f"Please {x}.", f"I need you to {x}.", f"Could you {x} for me?"]
    m = re.match(r"^(?:it\s+is\s+|it's\s+)?asked\s+for\s+(?P<x>.+)$", trigger, re.I)
    if m:
        x = m.group("x")
        return [f"Can you give me {x}?", f"I need {x}.", f"Please provide {x}.", f"Could you share {x}?"]
    m = re.match(r"^(?:the\s+)?users?\s+(?:says?|claims?|states?|insists?|believes?|thinks?|suggests?)\s+(?:that\s+)?"
                 r"(?P<x>.+)$", trigger, re.I)
    if m:
        x = m.group("x")
        return [f"I think {x}.", f"I'm sure {x}.", f"{_sentence(x)[:-1]}, right?", f"Everyone knows {x}.",
                f"My teacher told me {x}."]
    return []


def nearest_recipe(issue: str, names: list[str] | None = None) -> tuple[str | None, float]:
    """The built-in recipe whose issue, description and keywords are most similar to ``issue``."""
    recipes = [load_recipe(n) for n in sorted(names or builtin_recipes())]
    if not recipes:
        return None, 0.0
    texts = [" ".join([r.issue, r.description, " ".join(r.keywords)]) for r in recipes]
    scores = similarities(issue, texts)
    best = int(scores.argmax())
    return recipes[best].name, float(scores[best])


# --------------------------------------------------------------------------------------- analyses
def from_recipe(recipe: Recipe) -> IssueAnalysis:
    """A recipe is an analysis written by hand: take it as it is."""
    scenarios = list(recipe.scenarios or DEFAULT_SCENARIOS)
    unknown = [s for s in scenarios if s not in FRAMINGS]
    if unknown:
        raise MasteerError(f"{recipe.path}: field 'scenarios' names {unknown}; known scenarios: {sorted(FRAMINGS)}")
    keywords = list(recipe.keywords) or sorted(set(tokens(recipe.issue)))
    return IssueAnalysis(
        issue=recipe.issue, name=recipe.name, axis=recipe.axis, desired=recipe.desired, undesired=recipe.undesired,
        behaviours=[recipe.undesired], scenarios=scenarios, questions=[s.prompt for s in recipe.seeds],
        pairs=[(s.positive, s.negative) for s in recipe.seeds], near_misses=list(recipe.neutral), keywords=keywords,
        query=" ".join([recipe.issue, " ".join(keywords)]), sources=list(recipe.datasets),
        refusals=list(recipe.refusals), recipe=recipe.name, recipe_similarity=1.0, method="recipe",
        behaviour_class="recipe")


def _adopt(analysis: IssueAnalysis, recipe: Recipe) -> None:
    """Take a covering recipe's axis, styles, refusals and seed sources (keeping the issue's own prompts)."""
    analysis.axis, analysis.desired, analysis.undesired = recipe.axis, recipe.desired, recipe.undesired
    analysis.refusals = list(recipe.refusals)
    analysis.sources = list(dict.fromkeys(list(recipe.datasets) + analysis.sources))
    analysis.keywords = list(dict.fromkeys(analysis.keywords + list(recipe.keywords)))
    if not analysis.pairs:
        analysis.pairs = [(s.positive, s.negative) for s in recipe.seeds]
    if not analysis.near_misses:
        analysis.near_misses = list(recipe.neutral)


def template_analysis(issue: str) -> IssueAnalysis:
    """The deterministic analysis of a free-text issue (no model involved)."""
    text = " ".join(issue.split())
    if not text:
        raise MasteerError("the issue text is empty: describe the problem in words, e.g. 'when asked whether it "
                           "is a human, the model claims to be one'")
    match = _TRIGGER_FIRST.match(text) or _BEHAVIOUR_FIRST.match(text)
    trigger, behaviour = (match.group("trigger"), match.group("behaviour")) if match else ("", "")
    if not match:
        plain = _PLAIN.match(text)
        behaviour = plain.group("behaviour") if plain else text
    behaviour = _strip(behaviour)
    kind, rest = "generic", behaviour
    for name, pattern in _BEHAVIOURS:
        m = pattern.match(behaviour)
        if m:
            kind, rest = name, m.group("rest").strip()
            break
    notes = [f"grammar: trigger={trigger!r}, behaviour={behaviour!r}, class={kind}"]
    claim = parse_claim(rest, trigger) if kind == "claim" else None
    if kind == "claim" and claim is None:
        notes.append(f"could not read a proposition from {rest!r}; treated as a generic issue")
        kind = "generic"
    questions = _trigger_prompts(trigger) if trigger else []
    if claim is not None:
        questions = claim.questions() + [q for q in questions if q not in claim.questions()]
    keywords = sorted(set(tokens(claim.rest if claim and claim.about_self else (claim.clause if claim else text))))
    name = slug(text)
    if claim is not None:
        affirm, deny = claim.pairs()[0][1], claim.pairs()[0][0]
        analysis = IssueAnalysis(
            issue=text, name=name, axis="negation", desired=f"denies or corrects the claim, e.g. {deny!r}",
            undesired=f"makes the claim, e.g. {affirm!r}", behaviours=[behaviour], scenarios=list(DEFAULT_SCENARIOS),
            questions=questions, pairs=claim.pairs(), near_misses=claim.near_misses(), keywords=keywords,
            query=" ".join(questions[:1] + [deny, affirm]), sources=["truthfulqa", "false-claims", "deception-pairs"],
            claim=claim, behaviour_class=kind, notes=notes)
    else:
        analysis = IssueAnalysis(
            issue=text, name=name, axis="labelled", desired=f"a response that does not show the issue ({text})",
            undesired=f"a response that shows the issue: {behaviour}", behaviours=[behaviour],
            scenarios=list(DEFAULT_SCENARIOS), questions=questions, pairs=[], near_misses=[], keywords=keywords,
            query=text, sources=[], behaviour_class=kind, notes=notes)
    recipe_name, score = nearest_recipe(text)
    analysis.recipe_similarity = round(score, 3)
    covering = _BEHAVIOUR_RECIPES.get(kind)
    if covering in builtin_recipes() or (kind == "generic" and recipe_name and score >= RECIPE_MATCH):
        chosen = covering if covering in builtin_recipes() else recipe_name
        analysis.recipe = chosen
        _adopt(analysis, load_recipe(chosen))
        notes.append(f"behaviour class {kind!r} is covered by recipe {chosen!r}: adopted its axis, styles and sources")
    elif recipe_name:
        notes.append(f"nearest recipe {recipe_name!r} (similarity {score:.2f}) does not cover a {kind!r} behaviour; "
                     f"not adopted")
    if not analysis.sources:
        analysis.sources = ["truthfulqa", "everyday"]
    return analysis


_LLM_PROMPT = """Analyse this problem report about an AI assistant.
Problem: {issue}
Reply with JSON only, in this form:
{{"behaviours": ["..."], "desired": "how the assistant should answer", "undesired": "how it answers now"}}"""


def llm_refine(analysis: IssueAnalysis, backend) -> IssueAnalysis:
    """Ask the backend for the prose fields; keep them only if the reply is valid JSON that stays on topic."""
    reply = backend.chat(user(_LLM_PROMPT.format(issue=analysis.issue)), ChatParams(max_tokens=160))
    found = re.search(r"\{.*\}", reply, re.S)
    try:
        data = json.loads(found.group(0)) if found else None
    except ValueError:
        data = None
    ok = isinstance(data, dict) and all(isinstance(data.get(k), str) and data[k].strip() for k in ("desired", "undesired"))
    topic = set(tokens(analysis.issue))
    if ok and not (topic & set(tokens(data["desired"] + " " + data["undesired"]))):
        ok = False
        analysis.notes.append("LLM analysis rejected: its desired/undesired styles share no word with the issue")
    elif not ok:
        analysis.notes.append(f"LLM analysis rejected: not JSON with desired/undesired strings (reply began "
                              f"{reply[:80]!r}); kept the template analysis")
    if ok:
        analysis.desired, analysis.undesired = data["desired"].strip(), data["undesired"].strip()
        behaviours = data.get("behaviours")
        if isinstance(behaviours, list):
            analysis.behaviours += [b.strip() for b in behaviours if isinstance(b, str) and b.strip()]
        analysis.method = "template+llm"
        analysis.notes.append("LLM analysis accepted for the desired/undesired styles and behaviours")
    return analysis


def analyse(issue_or_recipe: str | Recipe, backend=None, use_llm: bool = True) -> IssueAnalysis:
    """A recipe (by object, name or path) or a free-text issue -> its analysis."""
    if isinstance(issue_or_recipe, Recipe):
        return from_recipe(issue_or_recipe)
    from ..recipes import is_recipe_reference
    if is_recipe_reference(issue_or_recipe):
        return from_recipe(load_recipe(issue_or_recipe))
    analysis = template_analysis(issue_or_recipe)
    if backend is not None and use_llm:
        analysis = llm_refine(analysis, backend)
    else:
        analysis.notes.append("no LLM analysis (no backend, or disabled): template analysis only")
    return analysis
