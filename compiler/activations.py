"""Activation capture: one batched, padding-aware pass over (prompt, completion) sequences.

Everything later stages need is recorded in the same pass, at every candidate layer:
- the residual stream after the layer, averaged over completion tokens (directions, CAA-style);
- the MLP input (what a steering neuron's gate sees) at the last prompt token;
- the MLP input at every *gate position*: the last few prompt tokens (the chat template's
  assistant header) and every completion token, so that gates are fitted per token, the way they
  run during generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from masteer.runtime.hosts import mlp_module

PROMPT_TAIL = 0
COMPLETION = 1


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a user turn plus the assistant header, in the model's own chat format."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        return list(ids)
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_completion(tokenizer, completion: str | None) -> list[int]:
    if not completion:
        return []
    return tokenizer(completion, add_special_tokens=False)["input_ids"]


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask for rows padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, as ``generate`` computes them (absolute-position hosts need it)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class Activations:
    """Captured activations, indexed by sequence and by candidate layer (``layers`` order)."""
    layers: tuple[int, ...]
    resid_completion_mean: torch.Tensor  # [N, L, H]; zeros where a sequence has no completion
    mlp_in_last_prompt: torch.Tensor     # [N, L, H]
    mlp_in_tokens: torch.Tensor          # [T, L, H] at gate positions
    token_sequence: torch.Tensor         # [T] index of the sequence each gate position belongs to
    token_kind: torch.Tensor             # [T] PROMPT_TAIL or COMPLETION
    meta: dict = field(default_factory=dict)

    def layer_index(self, layer: int) -> int:
        return self.layers.index(layer)

    def tokens_of(self, sequences: Sequence[int], layer: int, kinds: tuple[int, ...] = (PROMPT_TAIL, COMPLETION)):
        keep = torch.isin(self.token_sequence, torch.as_tensor(list(sequences), dtype=torch.long))
        keep &= torch.isin(self.token_kind, torch.as_tensor(kinds, dtype=torch.long))
        return self.mlp_in_tokens[keep, self.layer_index(layer)]


@torch.no_grad()
def capture(model, tokenizer, items: Sequence[tuple[str, str | None]], layers: Sequence[int],
            batch_size: int = 16, tail_tokens: int = 4, max_completion_tokens: int = 48,
            progress: bool = True) -> Activations:
    layers = tuple(layers)
    device = next(model.parameters()).device
    encoded = [(encode_prompt(tokenizer, p), encode_completion(tokenizer, c)[:max_completion_tokens])
               for p, c in items]
    resid_mean, last_prompt, tokens, owners, kinds = [], [], [], [], []
    mlp_inputs: dict[int, torch.Tensor] = {}
    hooks = [mlp_module(model, layer).register_forward_pre_hook(
        lambda module, args, layer=layer: mlp_inputs.__setitem__(layer, args[0].detach()))
        for layer in layers]
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="capturing activations", disable=not progress,
                          leave=False):
            batch = order[start:start + batch_size]
            rows = [encoded[i][0] + encoded[i][1] for i in batch]
            ids, mask = left_pad(rows, tokenizer.pad_token_id)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                        position_ids=position_ids(mask).to(device), output_hidden_states=True)
            resid = torch.stack([out.hidden_states[l + 1] for l in layers], dim=2).float().cpu()  # [B, S, L, H]
            mlp_in = torch.stack([mlp_inputs[l] for l in layers], dim=2).float().cpu()
            width = ids.shape[1]
            for row, i in enumerate(batch):
                n_prompt, n_completion = len(encoded[i][0]), len(encoded[i][1])
                pad = width - n_prompt - n_completion
                end_prompt = pad + n_prompt
                if n_completion:
                    resid_mean.append((i, resid[row, end_prompt:].mean(0)))
                last_prompt.append((i, mlp_in[row, end_prompt - 1]))
                tail = mlp_in[row, max(pad, end_prompt - tail_tokens):end_prompt]
                tokens.extend([tail, mlp_in[row, end_prompt:]])
                owners.extend([torch.full((len(tail),), i), torch.full((n_completion,), i)])
                kinds.extend([torch.full((len(tail),), PROMPT_TAIL), torch.full((n_completion,), COMPLETION)])
    finally:
        for hook in hooks:
            hook.remove()
    n, hidden = len(encoded), model.config.hidden_size
    resid_completion = torch.zeros(n, len(layers), hidden)
    for i, value in resid_mean:
        resid_completion[i] = value
    last = torch.zeros(n, len(layers), hidden)
    for i, value in last_prompt:
        last[i] = value
    return Activations(layers=layers, resid_completion_mean=resid_completion, mlp_in_last_prompt=last,
                       mlp_in_tokens=torch.cat(tokens), token_sequence=torch.cat(owners).long(),
                       token_kind=torch.cat(kinds).long(), meta={"tail_tokens": tail_tokens})
