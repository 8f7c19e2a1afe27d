"""Anchors: fit the gate neuron that decides, per token, whether a strategy fires.

The gate is fitted on MLP-input activations (what the neuron sees at run time) at every gate
position: the last prompt tokens and the completion tokens, because the forward pass is stateless
and decides per token, during generation too.

1. A logistic probe without intercept separates target-prompt tokens from neutral-prompt tokens
   (score ``w.x``). Gated hosts have no MLP bias, so nothing downstream may rely on one.
2. A *constant direction* ``c`` is the minimum-variance linear read-out with ``c.x ~ 1`` on every
   token. Normalised hidden states make this nearly exact (about 2% relative spread measured on
   SmolLM2-135M), so ``t * (c.x)`` stands in for the bias a gated host lacks.
3. The threshold ``t`` is the (1 - budget) quantile of neutral training scores, and the unit ``m``
   is the median target score above it, giving the anchor ``a(x) = (w.x - t c.x) / m``: at most
   ``budget`` of neutral training tokens above 0, the median target token at 1.
4. The neuron is the host's own form with a sharp slope ``kappa``:
   gated ``z = act(kappa a) * (c.x) / kappa`` and plain ``z = act(kappa a) / kappa`` (the bias is real
   there), so ``z ~ max(a, 0)``: silent on neutral tokens, proportional to confidence on targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from masteer.runtime.hosts import GATED

DEFAULT_FPR_BUDGET = 0.02
DEFAULT_KAPPA = 8.0


@dataclass
class Gate:
    """A fitted gate in host form, plus what is needed to report on it."""
    gate: torch.Tensor               # g [H]
    up: torch.Tensor | None          # u [H] (gated hosts)
    bias: float | None               # b (plain hosts)
    output_scale: float              # multiply the strategy direction by this (1/kappa on plain hosts)
    probe: torch.Tensor              # w [H]
    constant: torch.Tensor           # c [H]
    threshold: float                 # t
    unit: float                      # m
    kappa: float
    stats: dict = field(default_factory=dict)

    def anchor(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised anchor score a(x): > 0 where the strategy should fire."""
        return (x @ self.probe - self.threshold * (x @ self.constant)) / self.unit


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
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xs @ w, y, pos_weight=pos_weight) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach() / scale


def fit_gate(positive: torch.Tensor, negative: torch.Tensor, host_form: str,
             fpr_budget: float = DEFAULT_FPR_BUDGET, kappa: float = DEFAULT_KAPPA, seed: int = 0) -> Gate:
    """Fit a gate that fires on ``positive`` tokens and stays silent on ``negative`` ones."""
    torch.manual_seed(seed)
    x = torch.cat([positive, negative]).double()
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).double()
    w = logistic_probe(x, y).double()
    c = constant_direction(x)
    pos_scores, neg_scores = positive.double() @ w, negative.double() @ w
    threshold = float(torch.quantile(neg_scores, 1.0 - fpr_budget))
    unit = float(torch.median(pos_scores) - threshold)
    if unit <= 0:
        unit = float(pos_scores.std().clamp_min(1e-6))
    spread = (x @ c)
    stats = {"train_positive": len(positive), "train_negative": len(negative),
             "constant_rel_std": float(spread.std() / spread.mean()),
             "train_recall": float(((pos_scores - threshold * (positive.double() @ c)) > 0).double().mean()),
             "train_fpr": float(((neg_scores - threshold * (negative.double() @ c)) > 0).double().mean())}
    if host_form == GATED:
        gate = kappa * (w - threshold * c) / unit
        return Gate(gate=gate.float(), up=(c / kappa).float(), bias=None, output_scale=1.0, probe=w.float(),
                    constant=c.float(), threshold=threshold, unit=unit, kappa=kappa, stats=stats)
    gate = kappa * w / unit
    return Gate(gate=gate.float(), up=None, bias=-kappa * threshold / unit, output_scale=1.0 / kappa,
                probe=w.float(), constant=c.float(), threshold=threshold, unit=unit, kappa=kappa, stats=stats)
