"""The separability ceiling: can *any* linear read-out at a layer tell a family's harmful prompts from its benign ones?

Why: when an anchor misses a rephrasing family, the cause is either the data (the model represents the
intent, our samples never showed it in that form) or the model (nothing linear separates the two at any
layer). An *oracle* probe, fitted with the family's training prompts included, bounds what an anchor
could do at each layer; the anchor fitted without the family shows what the samples taught. "Data"
when the oracle separates and the anchor does not; "model" when the oracle does not separate either.
A family is only called fixable where its ceiling says so.

Everything here reads one cheap capture: the residual stream at the last prompt token of each prompt,
at every layer (``capture_prompt_ends``), not the compile's per-token capture.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from masteer.runtime.hosts import decoder_layers

from ..capture.activations import encode_prompt, position_ids
from ..common.batching import left_pad
from ..program.anchors import logistic_probe


@torch.no_grad()
def capture_prompt_ends(model, tokenizer, prompts: Sequence[str], layers: Sequence[int] | None = None,
                        batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """The residual stream after each decoder block at the last prompt token: [len(prompts), len(layers), H]
    (every layer when ``layers`` is None), prompts in the model's chat format as the compile sees them."""
    blocks = decoder_layers(model)
    layers = list(range(len(blocks))) if layers is None else list(layers)
    return read_prompt_ends(model, tokenizer, prompts, [blocks[layer] for layer in layers], batch_size=batch_size,
                            progress=progress)


@torch.no_grad()
def read_prompt_ends(model, tokenizer, prompts: Sequence[str], modules: Sequence[torch.nn.Module],
                     inputs: bool = False, batch_size: int = 16, progress: bool = True) -> torch.Tensor:
    """What each of ``modules`` outputs (or, with ``inputs``, receives) at each prompt's last token:
    [len(prompts), len(modules), H]; one forward pass per batch, longest prompts first."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    out = torch.zeros(len(prompts), len(modules), model.config.hidden_size)
    seen: dict[int, torch.Tensor] = {}

    def keep(k: int, value) -> None:
        seen[k] = (value if isinstance(value, torch.Tensor) else value[0])[:, -1].detach().float().cpu()

    hooks = [m.register_forward_pre_hook(lambda module, args, k=k: keep(k, args[0])) if inputs else
             m.register_forward_hook(lambda module, args, output, k=k: keep(k, output))
             for k, m in enumerate(modules)]
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="prompt-end capture", disable=not progress,
                          leave=False):
            batch = order[start:start + batch_size]
            ids, mask = left_pad([encoded[i] for i in batch], tokenizer.pad_token_id)
            model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids(mask).to(device))
            out[batch] = torch.stack([seen[k] for k in range(len(modules))], dim=1)
    finally:
        for hook in hooks:
            hook.remove()
    return out


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative (ties 1/2)."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def fit_probe(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A balanced logistic probe on centred features: (weights, centre); the score is ``(x - centre) @ w``."""
    centre = x.double().mean(0)
    w = logistic_probe(x.double() - centre, y.double())
    return w, centre


def probe_scores(x: torch.Tensor, probe: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    w, centre = probe
    return (x.double() - centre) @ w


def layer_aurocs(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
                 ) -> list[float]:
    """Per layer, a probe fitted on the train prompts and its AUROC on the test prompts ([N, L, H] inputs)."""
    return [auroc(probe_scores(test_x[:, k], fit_probe(train_x[:, k], train_y)), test_y)
            for k in range(train_x.shape[1])]
