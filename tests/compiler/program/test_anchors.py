"""Anchors on synthetic RMS-normalised activations: constant direction, probe, gate fit, and -- most
important -- that the host-form neurons really compute the ramp clamp(a(x), 0, 1).

Synthetic points mimic normalised hidden states: ``x = sqrt(H) * v / |v| * gain`` with a fixed
per-dimension gain and one "massive" dimension (a large constant in ``v``, as real residual streams
have), so a linear read-out ``c.x`` is nearly constant. Target points are shifted along a random unit
direction before normalising.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from masteer.compiler.program.anchors import (DEFAULT_FPR_BUDGET, RAMP_QUANTILE, Gate, GateNeuron, anchor_scores,
                                              constant_direction, fit_gate, logistic_probe)
from masteer.runtime.hosts import GATED, PLAIN

H = 16
N_TRAIN = 400
MASSIVE = 20.0     # the constant in dimension 0 of v
SHIFT = 4.0        # how far target points move along the target direction (before normalising)
ACTIVATIONS = {GATED: F.silu, PLAIN: F.gelu}
SILU_MIN, GELU_MIN = 0.2785, 0.1700  # -min of silu and gelu: the worst gap to relu, at slope 1


def _distribution():
    g = torch.Generator().manual_seed(1234)
    gain = 0.5 + torch.rand(H, generator=g)
    direction = torch.randn(H, generator=g)
    direction[0] = 0.0
    direction /= direction.norm()
    mean = torch.zeros(H)
    mean[0] = MASSIVE
    return gain, direction, mean


def _points(n: int, target: bool, seed: int, shift: float = SHIFT) -> torch.Tensor:
    gain, direction, mean = _distribution()
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, H, generator=g) + mean + (shift * direction if target else 0.0)
    return math.sqrt(H) * v / v.norm(dim=1, keepdim=True) * gain


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These fits are tiny; on a shared machine intra-op threads cost ~15x more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def train():
    return _points(N_TRAIN, True, seed=0), _points(N_TRAIN, False, seed=1)


@pytest.fixture(scope="module")
def heldout():
    return _points(N_TRAIN, True, seed=10), _points(N_TRAIN, False, seed=11)


@pytest.fixture(scope="module")
def gates(train) -> dict[tuple[str, float], Gate]:
    positive, negative = train
    return {(form, kappa): fit_gate(positive, negative, form, kappa=kappa)
            for form in (GATED, PLAIN) for kappa in (8.0, 50.0)}


def _rel_std(values: torch.Tensor) -> float:
    return float(values.std() / values.mean())


def _host_output(gate: Gate, x: torch.Tensor) -> torch.Tensor:
    """What the host MLP computes from the gate's rows: sum_k sign_k * z_k, times output_scale."""
    x = x.double()
    act = ACTIVATIONS[gate.host_form]
    total = torch.zeros(len(x), dtype=torch.float64)
    for n in gate.neurons:
        if gate.host_form == GATED:
            z = act(x @ n.gate.double()) * (x @ n.up.double())
        else:
            z = act(x @ n.gate.double() + n.bias)
        total += n.sign * z
    return total * gate.output_scale


# ------------------------------------------------------------------------------ constant direction


def test_synthetic_points_are_rms_normalised(train):
    gain, _, _ = _distribution()
    for x in train:
        assert torch.allclose((x / gain).pow(2).mean(1), torch.ones(len(x)), atol=1e-5)


def test_constant_direction_reads_one_on_every_token(train, heldout):
    x = torch.cat(train).double()
    c = constant_direction(x)
    assert c.shape == (H,) and c.dtype == torch.float64
    values = x @ c
    assert abs(float(values.mean()) - 1.0) < 1e-9          # the constraint, exactly
    assert _rel_std(values) < 0.02
    held = torch.cat(heldout).double() @ c
    assert abs(float(held.mean()) - 1.0) < 0.01 and _rel_std(held) < 0.02
    assert float((held - 1).abs().max()) < 0.06


def test_constant_direction_has_less_variance_than_the_naive_read_out(train):
    x = torch.cat(train).double()
    c = constant_direction(x)
    mean = x.mean(0)
    naive = mean / (mean @ mean)                               # also reads 1 on average
    assert abs(float((x @ naive).mean()) - 1.0) < 1e-9
    assert float((x @ c).var()) < 0.5 * float((x @ naive).var())


def test_constant_direction_finds_an_exactly_constant_feature():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    x[:, 0] = 2.0
    c = constant_direction(x)
    # the ridge (1e-3) leaves ~1e-5 on the noisy features, whose sample means are ~0.06
    assert abs(float(c[0]) - 0.5) < 1e-5
    assert float(c[1:].abs().max()) < 1e-4
    assert float((x @ c - 1).abs().max()) < 1e-4


# ------------------------------------------------------------------------------------ logistic probe


def test_logistic_probe_separates_without_intercept(train, heldout):
    positive, negative = train
    x = torch.cat([positive, negative]).double()
    y = torch.cat([torch.ones(N_TRAIN), torch.zeros(N_TRAIN)]).double()
    w = logistic_probe(x, y)
    assert w.shape == (H,)
    hp, hn = heldout
    assert float((hp.double() @ w > 0).double().mean()) > 0.9
    assert float((hn.double() @ w <= 0).double().mean()) > 0.9


def test_logistic_probe_is_scale_equivariant(train):
    positive, negative = train
    x = torch.cat([positive, negative]).double()
    y = torch.cat([torch.ones(N_TRAIN), torch.zeros(N_TRAIN)]).double()
    w = logistic_probe(x, y)
    w10 = logistic_probe(10 * x, y)
    assert torch.allclose(10 * w10, w, rtol=1e-5, atol=1e-8)


def test_logistic_probe_rebalances_rare_positives(train):
    positive, negative = train
    few = positive[:40]
    x = torch.cat([few, negative]).double()
    y = torch.cat([torch.ones(len(few)), torch.zeros(N_TRAIN)]).double()
    w = logistic_probe(x, y)
    recall = float((few.double() @ w > 0).double().mean())
    specificity = float((negative.double() @ w <= 0).double().mean())
    assert recall > 0.85 and specificity > 0.85


def test_anchor_scores_formula():
    g = torch.Generator().manual_seed(2)
    x, w, c = (torch.randn(5, 4, generator=g), torch.randn(4, generator=g), torch.randn(4, generator=g))
    t, m = 0.7, 1.9
    assert torch.allclose(anchor_scores(x, w, c, t, m, PLAIN), (x @ w - t) / m, atol=1e-6)
    assert torch.allclose(anchor_scores(x, w, c, t, m, GATED), (x @ w - t * (x @ c)) / m, atol=1e-6)


# ------------------------------------------------------------------------------------------ fit_gate


@pytest.mark.parametrize("form", [GATED, PLAIN])
def test_fit_gate_training_stats(gates, train, form):
    gate = gates[(form, 50.0)]
    positive, negative = train
    stats = gate.stats
    assert stats["train_positive"] == N_TRAIN and stats["train_negative"] == N_TRAIN
    assert stats["train_fpr"] <= DEFAULT_FPR_BUDGET + 0.01
    assert stats["train_recall"] >= 0.9
    # the unit puts the RAMP_QUANTILE of target scores at a = 1: three quarters fully open
    assert abs(stats["train_full_open"] - (1 - RAMP_QUANTILE)) < (0.01 if form == PLAIN else 0.03)
    assert stats["constant_rel_std"] < 0.02
    # the stats are what the fitted gate computes
    assert stats["train_recall"] == pytest.approx(float((gate.anchor(positive) > 0).double().mean()), abs=1e-3)
    assert stats["train_fpr"] == pytest.approx(float((gate.anchor(negative) > 0).double().mean()), abs=1e-3)
    assert gate.unit > 0 and gate.kappa == 50.0 and gate.host_form == form


@pytest.mark.parametrize("form", [GATED, PLAIN])
def test_anchor_generalises_to_heldout_points(gates, heldout, form):
    gate = gates[(form, 50.0)]
    positive, negative = heldout
    assert float((gate.anchor(positive) > 0).double().mean()) >= 0.9
    assert float((gate.anchor(negative) <= 0).double().mean()) >= 0.95


@pytest.mark.parametrize("form", [GATED, PLAIN])
def test_opening_is_the_clamped_anchor(gates, heldout, form):
    gate = gates[(form, 8.0)]
    x = torch.cat(heldout)
    opening = gate.opening(x)
    assert float(opening.min()) == 0.0 and float(opening.max()) == 1.0   # both ends are reached
    assert torch.equal(opening, gate.anchor(x).clamp(0, 1))
    assert float(opening[:N_TRAIN].mean()) > 0.7 and float(opening[N_TRAIN:].mean()) < 0.05


def test_fpr_budget_sets_the_threshold_quantile(train):
    positive, negative = train
    strict = fit_gate(positive, negative, PLAIN, fpr_budget=0.02)
    # the threshold is the (1 - budget) quantile of the negatives' probe scores, for every budget
    for gate, budget in ((strict, 0.02), (fit_gate(positive, negative, PLAIN, fpr_budget=0.1), 0.1)):
        scores = negative.double() @ gate.probe.double()
        assert gate.threshold == pytest.approx(float(torch.quantile(scores, 1.0 - budget)), rel=1e-4, abs=1e-4)
        assert abs(gate.stats["train_fpr"] - budget) < 0.01
    loose = fit_gate(positive, negative, PLAIN, fpr_budget=0.2)
    assert loose.threshold < strict.threshold
    assert abs(loose.stats["train_fpr"] - 0.2) < 0.01
    assert loose.stats["train_recall"] >= strict.stats["train_recall"]


def test_a_gate_refitted_at_another_budget_from_the_same_read_out_is_the_fresh_fit(train):
    positive, negative = train
    readout = fit_gate(positive, negative, GATED).readout
    for budget in (0.01, 0.1):
        fresh = fit_gate(positive, negative, GATED, fpr_budget=budget)
        reused = fit_gate(positive, negative, GATED, fpr_budget=budget, readout=readout)
        assert (reused.threshold, reused.unit, reused.stats) == (fresh.threshold, fresh.unit, fresh.stats)
        assert torch.equal(reused.probe, fresh.probe) and torch.equal(reused.constant, fresh.constant)
        for a, b in zip(reused.neurons, fresh.neurons):
            assert torch.equal(a.gate, b.gate) and torch.equal(a.up, b.up)
    # and the read-out is what the gate uses: another one gives another gate
    other = fit_gate(negative, positive, GATED).readout
    assert fit_gate(positive, negative, GATED, readout=other).threshold != fit_gate(positive, negative, GATED).threshold


@pytest.mark.parametrize("form", [GATED, PLAIN])
def test_gate_neurons_have_the_host_form(gates, form):
    kappa = 8.0
    gate = gates[(form, kappa)]
    assert [n.role for n in gate.neurons] == ["open", "cap"]
    assert [n.sign for n in gate.neurons] == [1.0, -1.0]
    assert all(isinstance(n, GateNeuron) for n in gate.neurons)
    for n in gate.neurons:
        assert n.gate.shape == (H,) and n.gate.dtype == torch.float32
        if form == GATED:
            assert n.bias is None and n.up.shape == (H,) and n.up.dtype == torch.float32
        else:
            assert n.up is None and isinstance(n.bias, float)
    assert gate.output_scale == (1.0 if form == GATED else 1.0 / kappa)
    assert gate.probe.dtype == torch.float32 and gate.constant.dtype == torch.float32


@pytest.mark.parametrize("form", [GATED, PLAIN])
def test_neuron_pre_activations_are_the_shifted_anchor(gates, heldout, form):
    """open: kappa * a(x); cap: kappa * (a(x) - 1) -- with 1 read as c.x on gated hosts (no bias there)."""
    kappa = 50.0
    gate = gates[(form, kappa)]
    x = torch.cat(heldout).double()
    a = gate.anchor(x).double()
    cx = x @ gate.constant.double()
    for n, shift in zip(gate.neurons, (0.0, 1.0)):
        if form == GATED:
            pre = x @ n.gate.double()
            assert torch.allclose(pre, kappa * (a - shift * cx), atol=2e-3 * kappa)
            assert torch.allclose(x @ n.up.double(), cx / kappa, atol=1e-6)
        else:
            pre = x @ n.gate.double() + n.bias
            assert torch.allclose(pre, kappa * (a - shift), atol=2e-3 * kappa)


@pytest.mark.parametrize("kappa", [8.0, 50.0])
@pytest.mark.parametrize("form", [GATED, PLAIN])
def test_host_neurons_compute_the_ramp(gates, heldout, train, form, kappa):
    """sum_k sign_k * z_k * output_scale ~ clamp(a(x), 0, 1) on every token, with the act-vs-relu gap only."""
    gate = gates[(form, kappa)]
    x = torch.cat(heldout + train)
    a = gate.anchor(x).double()
    out = _host_output(gate, x)
    cx = x.double() @ gate.constant.double()
    assert float((a < -0.5).double().mean()) > 0.3 and float((a > 1.5).double().mean()) > 0.2  # both tails present

    if form == GATED:
        # exact relu limit: (c.x) * clamp(a, 0, c.x); silu's gap to relu is at most 0.28 / kappa per neuron
        exact = cx * torch.minimum(a.clamp_min(0), cx)
        assert float((out - exact).abs().max()) <= SILU_MIN / kappa * float(cx.max()) + 1e-4
        spread = float((cx - 1).abs().max())
        assert spread < 0.05
        # and that is clamp(a, 0, 1) up to the constant direction's spread
        assert float((out - a.clamp(0, 1)).abs().max()) <= SILU_MIN / kappa + 3 * spread
    else:
        assert float((out - a.clamp(0, 1)).abs().max()) <= GELU_MIN / kappa + 1e-4

    low, high = a < -10 / kappa, a > 1.1 + 10 / kappa
    assert int(low.sum()) > 100 and int(high.sum()) > 100
    assert float(out[low].abs().max()) < 1e-3 / kappa + 1e-6           # silent well below the threshold
    tol_high = 1e-5 if form == PLAIN else 3 * float((cx - 1).abs().max())
    assert float((out[high] - 1).abs().max()) < tol_high + 1e-3 / kappa  # capped at 1 far above it


def test_ramp_never_exceeds_full_strength_far_out_on_the_target_axis(gates):
    """Normalised tokens much further along the target direction than any training token (anchor 5-15).

    Plain hosts stay at exactly 1. Gated hosts compute (c.x) * clamp(a, 0, c.x), i.e. (c.x)^2 once open:
    out of distribution c.x falls below 1, so such tokens get *less* than full strength, never more.
    """
    far = _points(200, True, seed=99, shift=5 * SHIFT)
    plain, gated = gates[(PLAIN, 50.0)], gates[(GATED, 50.0)]
    assert float(plain.anchor(far).min()) > 5 and float(gated.anchor(far).min()) > 5
    assert float((_host_output(plain, far) - 1).abs().max()) < 1e-6
    cx = far.double() @ gated.constant.double()
    out = _host_output(gated, far)
    assert float((out - cx * cx).abs().max()) < 1e-4
    assert float(out.max()) <= 1.0 and float(out.min()) > 0.3


# -------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("form", [GATED, PLAIN])
def test_same_seed_gives_identical_tensors_and_inputs_are_untouched(gates, train, form):
    positive, negative = train
    first = gates[(form, 8.0)]                               # fitted with the default seed 0
    p, n = positive.clone(), negative.clone()
    second = fit_gate(p, n, form, kappa=8.0, seed=0)
    assert torch.equal(p, positive) and torch.equal(n, negative)
    assert torch.equal(first.probe, second.probe) and torch.equal(first.constant, second.constant)
    assert first.threshold == second.threshold and first.unit == second.unit and first.stats == second.stats
    assert len(first.neurons) == len(second.neurons) == 2
    for a, b in zip(first.neurons, second.neurons):
        assert torch.equal(a.gate, b.gate) and a.bias == b.bias and a.sign == b.sign
        assert (a.up is None and b.up is None) or torch.equal(a.up, b.up)
    assert torch.equal(_points(50, True, seed=0), _points(50, True, seed=0))
