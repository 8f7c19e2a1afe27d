"""Percentile bootstrap confidence intervals over evaluation items, seeded and paired.

Why the bootstrap: evaluation sets are small (40-200 items) and the metrics are of several kinds
(rates, likelihood accuracies, a perplexity that is a ratio of sums, an AUC), so one resampling
recipe that treats them alike is easier to trust than a formula per metric. Items are resampled
with replacement ``n_boot`` times; the interval is the 2.5th and 97.5th percentile of the
statistic. The generator is seeded, so the same numbers give the same interval every run.

Paired differences: an arm and the base answered the *same* items, so the change is bootstrapped
with the same resampled indices for both (a paired bootstrap): the interval of the difference is
much narrower than what two independent intervals suggest.

A metric is described by :class:`ItemValues`: per-item ``values`` and ``weights`` (the statistic
is ``sum(values) / sum(weights)``: a rate or mean with unit weights, a per-token mean with token
counts), an optional ``transform`` (``exp`` turns a mean negative log-likelihood into perplexity),
or ``auc`` with per-item binary ``labels`` (the probability that a positive item scores above a
negative one, ties counted half).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from masteer.runtime.errors import MasteerError

N_BOOT = 1000
LEVEL = 0.95
MEAN, EXP_MEAN, AUC = "mean", "exp_mean", "auc"


@dataclass
class ItemValues:
    """Per-item numbers of one (suite, arm), from which the suite's statistic is computed."""
    values: list[float]
    weights: list[float] | None = None   # None: every item weighs 1
    statistic: str = MEAN                # MEAN | EXP_MEAN | AUC
    labels: list[bool] | None = None     # AUC only: which items are positives

    def __post_init__(self):
        n = len(self.values)
        if n == 0:
            raise MasteerError("a metric needs at least one item")
        if self.statistic not in (MEAN, EXP_MEAN, AUC):
            raise MasteerError(f"unknown statistic {self.statistic!r}; known: {MEAN}, {EXP_MEAN}, {AUC}")
        if self.weights is not None and len(self.weights) != n:
            raise MasteerError(f"{len(self.weights)} weights for {n} values")
        if self.statistic == AUC and (self.labels is None or len(self.labels) != n):
            raise MasteerError("an AUC needs one label per item")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        values = np.asarray(self.values, dtype=np.float64)
        weights = np.ones_like(values) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        labels = None if self.labels is None else np.asarray(self.labels, dtype=bool)
        return values, weights, labels


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / n1 n0)."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def statistic(item: ItemValues, index: np.ndarray | None = None) -> float:
    """The metric on the items at ``index`` (all items when None)."""
    values, weights, labels = item.arrays()
    if index is not None:
        values, weights = values[index], weights[index]
        labels = None if labels is None else labels[index]
    if item.statistic == AUC:
        return _auc(values, labels)
    total = weights.sum()
    mean = float(values.sum() / total) if total > 0 else float("nan")
    return math.exp(mean) if item.statistic == EXP_MEAN else mean


@dataclass
class Estimate:
    """A point estimate with its bootstrap interval."""
    value: float
    low: float
    high: float
    n: int
    level: float = LEVEL
    n_boot: int = N_BOOT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Estimate":
        return cls(**data)

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _boot(item: ItemValues, index: np.ndarray) -> np.ndarray:
    if item.statistic == AUC:
        return np.array([statistic(item, row) for row in index])
    values, weights, _ = item.arrays()
    means = values[index].sum(1) / weights[index].sum(1)
    return np.exp(means) if item.statistic == EXP_MEAN else means


def bootstrap(item: ItemValues, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """The statistic and its percentile interval; deterministic for a given ``seed``."""
    n = len(item.values)
    point = statistic(item)
    low, high = _interval(_boot(item, _indices(n, n_boot, seed)), level)
    # a percentile interval can miss the point estimate of a skewed ratio by float noise only
    return Estimate(value=point, low=min(low, point), high=max(high, point), n=n, level=level, n_boot=n_boot)


def paired_difference(arm: ItemValues, base: ItemValues, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> Estimate:
    """``statistic(arm) - statistic(base)`` over the same items, resampled together."""
    n = len(arm.values)
    if len(base.values) != n:
        raise MasteerError(f"a paired difference needs the same items: {n} vs {len(base.values)}")
    index = _indices(n, n_boot, seed)
    point = statistic(arm) - statistic(base)
    low, high = _interval(_boot(arm, index) - _boot(base, index), level)
    return Estimate(value=point, low=min(low, point), high=max(high, point), n=n, level=level, n_boot=n_boot)
