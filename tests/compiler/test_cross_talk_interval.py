"""The cross-talk check of an added issue: the merged adapter's rate must sit inside the previous
adapter's 95% Wilson interval, group by group and pooled."""

from __future__ import annotations

import pytest

from masteer.compiler.evaluation import Evaluation, GroupResult, wilson_interval, within_interval_rows


def test_wilson_interval_matches_known_values_and_is_not_empty_at_zero():
    assert wilson_interval(0.0, 40) == pytest.approx((0.0, 0.0876), abs=1e-4)
    assert wilson_interval(0.9, 40) == pytest.approx((0.7695, 0.9604), abs=1e-4)
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0.5, 0) == (0.0, 1.0)


def _evaluation(rates: dict[str, tuple[float, float]]) -> Evaluation:
    groups = [GroupResult(group=g, direction="up" if g == "harmful" else "same", n=40,
                          rates={"previous": p, "merged": m}) for g, (p, m) in rates.items()]
    return Evaluation(arms=["previous", "merged"], groups=groups, settings={})


def test_rates_inside_the_interval_pass_and_a_jump_fails():
    rows = within_interval_rows(_evaluation({"harmful": (0.9, 0.875), "edgy": (0.075, 0.05),
                                             "truthfulqa": (0.05, 0.30)}), "previous", "merged")
    verdict = {r["group"]: r["within"] for r in rows}
    # a jump like the 5% -> 22.5% measured before anchors saw neutral answers (here 5% -> 30%)
    assert verdict == {"harmful": True, "edgy": True, "truthfulqa": False, "all same": False}
    pooled = next(r for r in rows if r["group"] == "all same")
    assert pooled["n"] == 80 and pooled["previous"] == pytest.approx(0.0625) and pooled["merged"] == pytest.approx(0.175)
