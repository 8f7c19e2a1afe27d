"""Anchors: fit the gate neuron that decides, per token, whether a strategy fires.

The gate is fitted on MLP-input activations (what the neuron sees at run time) at every gate
position: the last prompt tokens and the completion tokens, because the forward pass is stateless
and decides per token, during generation too.

1. A logistic probe without intercept separates target tokens from neutral tokens (score ``w.x``);
   the neutral side must include answer tokens (``neutral_answers``), or the probe learns "the
   assistant is writing" and opens on every generated token. Gated hosts have no MLP bias, so nothing downstream may rely on one.
2. A *constant direction* ``c`` is the minimum-variance linear read-out with ``c.x ~ 1`` on every
   token. Normalised hidden states make this nearly exact (about 2% relative spread measured on
   SmolLM2-135M), so ``t * (c.x)`` stands in for the bias a gated host lacks.
3. The threshold ``t`` is the (1 - budget) quantile of neutral training scores, and the unit ``m``
   is the distance from it to the lower quartile of target scores, giving the anchor
   ``a(x) = (w.x - t c.x) / m``: at most ``budget`` of neutral training tokens above 0, three
   quarters of target tokens at 1 or more.
4. Each neuron is the host's own form with a sharp slope ``kappa``:
   gated ``z = act(kappa a) * (c.x) / kappa`` and plain ``z = act(kappa a) / kappa`` (the bias is real
   there), so ``z ~ max(a, 0)``: silent on neutral tokens.
5. One such neuron grows without bound with the anchor score, and a few tokens far out on the
   probe's axis (measured: up to 10x the median on SmolLM2) would then get ten times the strength
   and break the text. So a strategy is a *ramp* of two neurons, ``max(a, 0) - max(a - 1, 0)``,
   i.e. ``clamp(a, 0, 1)``: the second neuron has the anchor shifted by one unit and the negated
   direction. The strategy's delta is then at most ``strength * direction`` on any token, and
   baking is still concatenation (two rows instead of one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from masteer.runtime.hosts import GATED

DEFAULT_FPR_BUDGET = 0.02
DEFAULT_KAPPA = 8.0
RAMP_QUANTILE = 0.25  # target tokens above this quantile of the probe score get the full strength


@dataclass(frozen=True)
class GateNeuron:
    """One host-form neuron of a gate; ``sign`` multiplies the strategy direction it writes."""
    role: str                        # "open" or "cap"
    gate: torch.Tensor               # g [H]
    up: torch.Tensor | None          # u [H] (gated hosts)
    bias: float | None               # b (plain hosts)
    sign: float


@dataclass(frozen=True)
class Readout:
    """Steps 1-2 of the module docstring: the probe ``w`` and the constant direction ``c`` (float64). They depend
    on the tokens alone; the threshold and unit also depend on the budget, so a gate refitted at another
    false-positive budget on the same tokens reuses them (the search's anchor operating points)."""
    probe: torch.Tensor
    constant: torch.Tensor


@dataclass
class Gate:
    """A fitted gate in host form (a two-neuron ramp), plus what is needed to report on it."""
    neurons: tuple[GateNeuron, ...]
    host_form: str
    output_scale: float              # multiply the strategy direction by this (1/kappa on plain hosts)
    probe: torch.Tensor              # w [H]
    constant: torch.Tensor           # c [H]
    threshold: float                 # t
    unit: float                      # m
    kappa: float
    stats: dict = field(default_factory=dict)
    readout: Readout | None = field(default=None, repr=False, compare=False)   # w and c in float64, for refits

    def anchor(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised anchor score a(x) as the host computes it: > 0 where the strategy fires, 1 = full."""
        return anchor_scores(x, self.probe, self.constant, self.threshold, self.unit, self.host_form)

    def opening(self, x: torch.Tensor) -> torch.Tensor:
        """How much of the strategy's strength each token gets: clamp(a(x), 0, 1)."""
        return self.anchor(x).clamp(0.0, 1.0)


def anchor_scores(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, threshold: float, unit: float,
                  host_form: str) -> torch.Tensor:
    x = x.to(w.dtype)
    offset = threshold * (x @ c.to(w.dtype)) if host_form == GATED else threshold
    return (x @ w - offset) / unit


def constant_direction(x: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """argmin_c Var(c.x) subject to mean(c.x) = 1 (ridge-regularised)."""
    mean = x.mean(0)
    cov = torch.cov(x.T) + ridge * torch.eye(x.shape[1])
    c = torch.linalg.solve(cov, mean)
    return c / (mean @ c)


def logistic_probe(x: torch.Tensor, y: torch.Tensor, weight_decay: float = 1e-2, max_iter: int = 200) -> torch.Tensor:
    """L2-regularised logistic regression without intercept, classes re-weighted to balance."""
    scale = x.std(0).mean().clamp_min(1e-6)
    xs = x / scale
    pos_weight = (y == 0).sum().clamp_min(1) / (y == 1).sum().clamp_min(1)
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xs @ w, y, pos_weight=pos_weight) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach() / scale


def _readout(x: torch.Tensor, n_positive: int) -> Readout:
    """The read-out of ``x`` (float64), whose first ``n_positive`` rows are the tokens to fire on."""
    y = torch.cat([torch.ones(n_positive), torch.zeros(len(x) - n_positive)]).double()
    return Readout(probe=logistic_probe(x, y).double(), constant=constant_direction(x))


def fit_gate(positive: torch.Tensor, negative: torch.Tensor, host_form: str,
             fpr_budget: float = DEFAULT_FPR_BUDGET, kappa: float = DEFAULT_KAPPA, seed: int = 0,
             also_shut: tuple[torch.Tensor, ...] = (), readout: Readout | None = None) -> Gate:
    """Fit a gate that fires on ``positive`` tokens and stays silent on ``negative`` ones.

    ``also_shut``: subsets of the negatives on which the false-positive budget must hold *by itself* (the
    threshold is the largest of their quantiles and the overall one): a small subset such as the last
    tokens of neutral prompts would otherwise be swamped by thousands of easy tokens. ``readout``: the
    ``Gate.readout`` of a gate fitted on these same tokens (fitted here when None)."""
    torch.manual_seed(seed)
    x = torch.cat([positive, negative]).double()
    readout = readout or _readout(x, len(positive))
    w, c = readout.probe, readout.constant
    pos_scores, neg_scores = positive.double() @ w, negative.double() @ w
    threshold = max([float(torch.quantile(neg_scores, 1.0 - fpr_budget))]
                    + [float(torch.quantile(subset.double() @ w, 1.0 - fpr_budget)) for subset in also_shut
                       if len(subset)])
    unit = next((u for u in (float(torch.quantile(pos_scores, q)) - threshold for q in (RAMP_QUANTILE, 0.5))
                 if u > 0), float(pos_scores.std().clamp_min(1e-6)))
    spread = (x @ c)
    pos_anchor = anchor_scores(positive, w, c, threshold, unit, host_form)
    neg_anchor = anchor_scores(negative, w, c, threshold, unit, host_form)
    stats = {"train_positive": len(positive), "train_negative": len(negative),
             "constant_rel_std": float(spread.std() / spread.mean()),
             "train_recall": float((pos_anchor > 0).double().mean()),
             "train_fpr": float((neg_anchor > 0).double().mean()),
             "train_full_open": float((pos_anchor >= 1).double().mean())}
    neurons = tuple(_host_neuron(role, shift, sign, w, c, threshold, unit, kappa, host_form)
                    for role, shift, sign in (("open", 0.0, 1.0), ("cap", 1.0, -1.0)))
    return Gate(neurons=neurons, host_form=host_form, output_scale=1.0 if host_form == GATED else 1.0 / kappa, probe=w.float(),
                constant=c.float(), threshold=threshold, unit=unit, kappa=kappa, stats=stats, readout=readout)


def _host_neuron(role: str, shift: float, sign: float, w: torch.Tensor, c: torch.Tensor, threshold: float,
                 unit: float, kappa: float, host_form: str) -> GateNeuron:
    """The neuron computing ~max(a(x) - shift, 0) in the host's MLP form."""
    if host_form == GATED:
        gate = kappa * (w - (threshold + shift * unit) * c) / unit
        return GateNeuron(role=role, gate=gate.float(), up=(c / kappa).float(), bias=None, sign=sign)
    return GateNeuron(role=role, gate=(kappa * w / unit).float(), up=None,
                      bias=-kappa * (threshold / unit + shift), sign=sign)
