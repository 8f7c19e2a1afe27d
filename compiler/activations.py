"""Activation capture: one batched, padding-aware pass over (prompt, completion) sequences.

Everything later stages need is recorded in the same pass, at every candidate layer:
- the residual stream after the layer at three positions: averaged over completion tokens
  (CAA-style directions), at the last prompt token, and at the last token of the sequence (what
  repeng and steering-vectors read by default);
- the MLP input (what a steering neuron's gate sees) at the last prompt token;
- the MLP input at every token, tagged by kind: prompt body (system prompt and user text), prompt
  tail (the last few prompt tokens: the chat template's assistant header) and completion. Gates run
  on every token of the forward pass, so they must be fitted per token, and a gate must learn to
  stay silent on the body of a neutral prompt too, not only on its last tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from masteer.runtime.hosts import mlp_module

PROMPT_TAIL = 0
COMPLETION = 1
PROMPT_BODY = 2
RESIDUAL_POSITIONS = ("completion_mean", "last_prompt", "last_token")


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
    resid_last_prompt: torch.Tensor      # [N, L, H] at the last prompt token
    resid_last_token: torch.Tensor       # [N, L, H] at the last token of prompt + completion
    mlp_in_last_prompt: torch.Tensor     # [N, L, H]
    mlp_in_tokens: torch.Tensor          # [T, L, H] at every non-padding token
    token_sequence: torch.Tensor         # [T] index of the sequence each token belongs to
    token_kind: torch.Tensor             # [T] PROMPT_BODY, PROMPT_TAIL or COMPLETION
    meta: dict = field(default_factory=dict)

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not captured; captured layers: {list(self.layers)}")
        return self.layers.index(layer)

    def residual(self, position: str, sequences: Sequence[int], layer: int) -> torch.Tensor:
        """Residual-stream vectors [len(sequences), H] at ``position`` (one of ``RESIDUAL_POSITIONS``)."""
        if position not in RESIDUAL_POSITIONS:
            raise KeyError(f"unknown residual position {position!r}; known: {', '.join(RESIDUAL_POSITIONS)}")
        table = {"completion_mean": self.resid_completion_mean, "last_prompt": self.resid_last_prompt,
                 "last_token": self.resid_last_token}[position]
        return table[list(sequences), self.layer_index(layer)]

    def tokens_of(self, sequences: Sequence[int], layer: int,
                  kinds: tuple[int, ...] = (PROMPT_BODY, PROMPT_TAIL, COMPLETION)) -> torch.Tensor:
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
    resid_mean, last_prompt, resid_prompt, resid_last, tokens, owners, kinds = [], [], [], [], [], [], []
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
                resid_prompt.append((i, resid[row, end_prompt - 1]))
                resid_last.append((i, resid[row, -1]))
                start_tail = max(pad, end_prompt - tail_tokens)
                for begin, end, kind in ((pad, start_tail, PROMPT_BODY), (start_tail, end_prompt, PROMPT_TAIL),
                                         (end_prompt, width, COMPLETION)):
                    tokens.append(mlp_in[row, begin:end])
                    owners.append(torch.full((end - begin,), i))
                    kinds.append(torch.full((end - begin,), kind))
    finally:
        for hook in hooks:
            hook.remove()
    n, hidden = len(encoded), model.config.hidden_size

    def table(rows):
        out = torch.zeros(n, len(layers), hidden)
        for i, value in rows:
            out[i] = value
        return out

    return Activations(layers=layers, resid_completion_mean=table(resid_mean), resid_last_prompt=table(resid_prompt),
                       resid_last_token=table(resid_last), mlp_in_last_prompt=table(last_prompt),
                       mlp_in_tokens=torch.cat(tokens), token_sequence=torch.cat(owners).long(),
                       token_kind=torch.cat(kinds).long(), meta={"tail_tokens": tail_tokens})
