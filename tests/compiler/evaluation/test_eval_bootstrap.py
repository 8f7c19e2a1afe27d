"""Bootstrap intervals: they contain the estimate, repeat with a seed, and the statistics match hand sums."""

from __future__ import annotations

import math

import numpy as np
import pytest

from masteer.compiler.evaluation.bootstrap import AUC, EXP_MEAN, ItemValues, bootstrap, paired_difference, statistic
from masteer.runtime.errors import MasteerError

RATE = ItemValues([1, 0, 0, 1, 1, 0, 1, 1, 0, 1] * 4)   # 24 of 40


def test_interval_contains_the_point_estimate_and_is_deterministic():
    first = bootstrap(RATE, n_boot=500, seed=7)
    assert first.value == pytest.approx(0.6)
    assert first.low < 0.6 < first.high
    assert first.n == 40 and first.n_boot == 500
    assert bootstrap(RATE, n_boot=500, seed=7) == first           # same seed, same interval
    continuous = ItemValues(list(np.random.default_rng(0).normal(size=30)))
    assert bootstrap(continuous, seed=1) == bootstrap(continuous, seed=1)
    assert bootstrap(continuous, seed=1).low != bootstrap(continuous, seed=2).low   # the seed matters
    # a binomial 95% interval at n=40, p=0.6 is about +-0.15; the bootstrap agrees within a few points
    assert first.high - first.low == pytest.approx(2 * 1.96 * math.sqrt(0.24 / 40), abs=0.06)


def test_constant_values_give_a_point_interval():
    e = bootstrap(ItemValues([1.0] * 12), n_boot=200)
    assert (e.value, e.low, e.high) == (1.0, 1.0, 1.0)


def test_weighted_and_exp_statistics_match_hand_computation():
    # perplexity: token-weighted mean NLL, then exp; items of 2 and 6 tokens with NLL sums 2 and 3
    ppl = ItemValues([2.0, 3.0], weights=[2, 6], statistic=EXP_MEAN)
    assert statistic(ppl) == pytest.approx(math.exp(5 / 8))
    assert statistic(ppl, np.array([0, 0])) == pytest.approx(math.exp(1.0))
    kl = ItemValues([0.3, 0.1, 0.2], weights=[3, 1, 4])
    assert statistic(kl) == pytest.approx(0.6 / 8)


def test_auc_counts_ties_half():
    # positives score 3, 2; negatives 2, 1: pairs (3>2, 3>1, 2=2, 2>1) -> (1 + 1 + 0.5 + 1) / 4
    auc = ItemValues([3.0, 2.0, 2.0, 1.0], statistic=AUC, labels=[True, True, False, False])
    assert statistic(auc) == pytest.approx(0.875)
    e = bootstrap(auc, n_boot=300, seed=1)
    assert e.low <= 0.875 <= e.high
    single_class = np.array([0, 1, 0, 1])        # a resample with only positives has no AUC
    assert math.isnan(statistic(auc, single_class))


def test_paired_difference_of_identical_arms_is_exactly_zero():
    d = paired_difference(RATE, RATE, n_boot=300)
    assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)


def test_paired_difference_is_narrower_than_unpaired_intervals_suggest():
    rng = np.random.default_rng(0)
    base = rng.normal(size=60)
    arm = ItemValues(list(base + 0.3 + rng.normal(scale=0.05, size=60)))
    d = paired_difference(arm, ItemValues(list(base)), n_boot=500)
    assert d.value == pytest.approx(0.3, abs=0.03)
    assert d.low > 0.25 and d.high < 0.35                       # items vary a lot, their change does not
    single = bootstrap(ItemValues(list(base)), n_boot=500)
    assert single.high - single.low > 5 * (d.high - d.low)


@pytest.mark.parametrize("kwargs, message", [
    ({"values": []}, "at least one item"),
    ({"values": [1.0], "statistic": "median"}, "unknown statistic"),
    ({"values": [1.0, 2.0], "weights": [1.0]}, "1 weights for 2 values"),
    ({"values": [1.0], "statistic": AUC}, "one label per item"),
])
def test_bad_metric_input_is_named(kwargs, message):
    with pytest.raises(MasteerError, match=message):
        ItemValues(**kwargs)


def test_paired_difference_needs_the_same_items():
    with pytest.raises(MasteerError, match="same items"):
        paired_difference(ItemValues([1.0, 0.0]), ItemValues([1.0]))
