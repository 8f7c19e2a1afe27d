"""The retriever agent: seed items related to the issue, ranked by TF-IDF cosine similarity.

Why TF-IDF and not sentence embeddings: it is a few lines of numpy, deterministic, offline and
instant on two CPU cores, and the issue texts and seed items share their content words ("human",
"refuse", "stereotype"), which is what TF-IDF rewards. A sentence-embedding model would find
paraphrases it misses, at the cost of a model download and a dependency; the retriever takes any
scorer with the same ``similarities(query, texts)`` shape if that trade ever changes.

The same tokenizer and vectoriser serve the analyst (nearest recipe) and the reviewer (topic
check), so "similar" means one thing throughout the AutoTester.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .corpus import SeedItem, load_source

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
STOPWORDS = frozenset("""a an the and or but if of to in on at by for with about as into from than then so that this
these those is are was were be been being am do does did doing have has had having i me my you your he she it its
we they them their our us what which who whom whose when where why how can could would should will shall may might
must not no yes very just also too any some all each every such only own same other more most much many there here
up down out over under again once s t don't doesn't isn't aren't i'm it's you're
model models user users llm ask asked asks asking even one ones whenever instead""".split())


def _fold(word: str) -> str:
    if len(word) <= 4:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is", "ous")):
        return word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """Lower-cased content words, with a light plural/verb-suffix fold ("refuses" ~ "refuse")."""
    out = []
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS or len(word) < 2:
            continue
        out.append(_fold(word))
    return out


class TfidfIndex:
    """Unit-length TF-IDF vectors (sublinear tf, smoothed idf) over a fixed list of texts."""

    def __init__(self, texts: Sequence[str]):
        docs = [Counter(tokens(t)) for t in texts]
        df = Counter(term for doc in docs for term in doc)
        self.vocab = {term: i for i, term in enumerate(sorted(df))}
        n = len(docs)
        self.idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in sorted(df)], dtype=np.float64)
        self.matrix = np.stack([self._vector(doc) for doc in docs]) if docs else np.zeros((0, len(self.vocab)))

    def _vector(self, counts: Counter) -> np.ndarray:
        vec = np.zeros(len(self.vocab))
        for term, count in counts.items():
            j = self.vocab.get(term)
            if j is not None:
                vec[j] = (1.0 + math.log(count)) * self.idf[j]
        norm = np.linalg.norm(vec)
        return vec / norm if norm > 0 else vec

    def query(self, text: str) -> np.ndarray:
        """Cosine similarity of ``text`` to every indexed text, [N]."""
        if not len(self.vocab):
            return np.zeros(len(self.matrix))
        return self.matrix @ self._vector(Counter(tokens(text)))


def similarities(query: str, texts: Sequence[str]) -> np.ndarray:
    """Cosine similarity of ``query`` to each text, with IDF fitted on the texts and the query together."""
    index = TfidfIndex(list(texts) + [query])
    return index.matrix[:-1] @ index.matrix[-1]


@dataclass(frozen=True)
class Retrieved:
    item: SeedItem
    score: float


def retrieve(query: str, items: Iterable[SeedItem], k: int = 40, min_score: float = 0.12) -> list[Retrieved]:
    """The ``k`` items most similar to ``query`` with a score of at least ``min_score``, best first.

    Ties are broken by item id, so the ranking (and everything built on it) is deterministic.
    """
    items = list(items)
    if not items:
        return []
    scores = similarities(query, [i.text for i in items])
    order = sorted(range(len(items)), key=lambda i: (-scores[i], items[i].id))
    return [Retrieved(items[i], float(scores[i])) for i in order[:k] if scores[i] >= min_score]


def retrieve_from_sources(query: str, sources: Iterable[str], k: int = 40, min_score: float = 0.12) -> list[Retrieved]:
    items = [item for source in sources for item in load_source(source)]
    return retrieve(query, items, k=k, min_score=min_score)
