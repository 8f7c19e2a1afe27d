"""Activation capture: one batched, padding-aware pass over (prompt, completion) sequences.

Everything later stages need is recorded in the same pass, at every candidate layer, so that all
algorithms and all layers share one model pass:
- the residual stream at the output of each candidate decoder block (read with a forward hook on the
  block, not from ``hidden_states``: transformers puts the final norm's output in the last entry of
  ``hidden_states``, which is not the last block's residual) at four named positions
  (``RESIDUAL_POSITIONS``): averaged over completion tokens (CAA-style directions), at the last prompt
  token, at the first completion token (the answer token of A/B-style completions) and at the last
  token of the sequence (what repeng and steering-vectors read by default);
- the MLP input (what a steering neuron's gate sees) at the last prompt token;
- the MLP input at every token, tagged by kind: prompt body (system prompt and user text), prompt
  tail (the last few prompt tokens: the chat template's assistant header) and completion. Gates run
  on every token of the forward pass, so they must be fitted per token, and a gate must learn to
  stay silent on the body of a neutral prompt too, not only on its last tokens.

Memory stays bounded by the batch: with a ``store`` folder every table is written batch by batch
into memory-mapped ``.npy`` files there (see :mod:`.activation_store`, which also caches whole
captures on disk by content); without one the tables live in RAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from masteer.runtime.hosts import decoder_layers, mlp_module

from ..common.batching import left_pad

PROMPT_TAIL = 0
COMPLETION = 1
PROMPT_BODY = 2
RESIDUAL_POSITIONS = ("completion_mean", "last_prompt", "first_completion", "last_token")


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
    resid_first_completion: torch.Tensor | None = None  # [N, L, H] at the first completion token (zeros: none)
    meta: dict = field(default_factory=dict)

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not captured; captured layers: {list(self.layers)}")
        return self.layers.index(layer)

    def table(self, position: str) -> torch.Tensor:
        """The [N, L, H] residual table at ``position`` (one of ``RESIDUAL_POSITIONS``)."""
        if position not in RESIDUAL_POSITIONS:
            raise KeyError(f"unknown residual position {position!r}; known: {', '.join(RESIDUAL_POSITIONS)}")
        table = getattr(self, f"resid_{position}")
        if table is None:
            raise KeyError(f"residual position {position!r} was not captured")
        return table

    def residual(self, position: str, sequences: Sequence[int], layer: int) -> torch.Tensor:
        """Residual-stream vectors [len(sequences), H] at ``position`` (one of ``RESIDUAL_POSITIONS``)."""
        return self.table(position)[list(sequences), self.layer_index(layer)]

    def tokens_of(self, sequences: Sequence[int], layer: int,
                  kinds: tuple[int, ...] = (PROMPT_BODY, PROMPT_TAIL, COMPLETION)) -> torch.Tensor:
        keep = torch.isin(self.token_sequence, torch.as_tensor(list(sequences), dtype=torch.long))
        keep &= torch.isin(self.token_kind, torch.as_tensor(kinds, dtype=torch.long))
        return self.mlp_in_tokens[keep.nonzero()[:, 0], self.layer_index(layer)]


TABLES = tuple(f"resid_{p}" for p in RESIDUAL_POSITIONS) + ("mlp_in_last_prompt",)  # the [N, L, H] tables


def _layer_output(output) -> torch.Tensor:
    """A decoder block's output hidden state (transformers 5.x returns the tensor, 4.x a tuple)."""
    return output if isinstance(output, torch.Tensor) else output[0]


@torch.no_grad()
def capture(model, tokenizer, items: Sequence[tuple[str, str | None]], layers: Sequence[int],
            batch_size: int = 16, tail_tokens: int = 4, max_completion_tokens: int = 48,
            progress: bool = True, allocate: Callable[[str, tuple[int, ...], torch.dtype], torch.Tensor] | None = None
            ) -> Activations:
    """Run the model once over ``items`` and record every table at every layer in ``layers``.

    ``allocate(name, shape, dtype)`` returns the zero-filled tensor each table is written into
    (default: in RAM); :mod:`.activation_store` passes memory-mapped files so that nothing but the
    current batch is held in memory.
    """
    layers = tuple(layers)
    if not layers:
        raise ValueError("capture needs at least one layer")
    allocate = allocate or (lambda name, shape, dtype: torch.zeros(shape, dtype=dtype))
    encoded = encode_items(tokenizer, items, max_completion_tokens)
    n, hidden, n_layers = len(encoded), model.config.hidden_size, len(layers)
    total_tokens = sum(len(p) + len(c) for p, c in encoded)
    tables = {name: allocate(name, (n, n_layers, hidden), torch.float32) for name in TABLES}
    tokens = allocate("mlp_in_tokens", (total_tokens, n_layers, hidden), torch.float32)
    owners = allocate("token_sequence", (total_tokens,), torch.int64)
    kinds = allocate("token_kind", (total_tokens,), torch.int64)
    # Tokens are stored in sequence order whatever the batch order, so a token's row is fixed by its sequence.
    offsets = [0]
    for p, c in encoded:
        offsets.append(offsets[-1] + len(p) + len(c))

    device = next(model.parameters()).device
    mlp_inputs: dict[int, torch.Tensor] = {}
    residuals: dict[int, torch.Tensor] = {}
    blocks = decoder_layers(model)
    hooks = [mlp_module(model, layer).register_forward_pre_hook(
        lambda module, args, layer=layer: mlp_inputs.__setitem__(layer, args[0].detach())) for layer in layers]
    hooks += [blocks[layer].register_forward_hook(
        lambda module, args, output, layer=layer: residuals.__setitem__(layer, _layer_output(output).detach()))
        for layer in layers]
    # Nothing above the last captured layer is read: stop the pass there (registered last, so the residual hook
    # of that layer has run). The blocks above and the vocabulary projection of every position were about half
    # of the capture's time on SmolLM2 with layers 10-14 of 30.
    hooks.append(blocks[max(layers)].register_forward_hook(_stop_pass))
    order = sorted(range(n), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    try:
        for start in tqdm(range(0, n, batch_size), desc="capturing activations", disable=not progress,
                          leave=False):
            batch = order[start:start + batch_size]
            ids, mask = left_pad([encoded[i][0] + encoded[i][1] for i in batch], tokenizer.pad_token_id)
            try:
                model(input_ids=ids.to(device), attention_mask=mask.to(device),
                      position_ids=position_ids(mask).to(device), use_cache=False)
            except _PassStopped:
                pass
            resid = torch.stack([residuals[l] for l in layers], dim=2).float().cpu()  # [B, S, L, H]
            mlp_in = torch.stack([mlp_inputs[l] for l in layers], dim=2).float().cpu()
            width = ids.shape[1]
            for row, i in enumerate(batch):
                n_prompt, n_completion = len(encoded[i][0]), len(encoded[i][1])
                pad = width - n_prompt - n_completion
                end_prompt = pad + n_prompt
                if n_completion:
                    tables["resid_completion_mean"][i] = resid[row, end_prompt:].mean(0)
                    tables["resid_first_completion"][i] = resid[row, end_prompt]
                tables["resid_last_prompt"][i] = resid[row, end_prompt - 1]
                tables["resid_last_token"][i] = resid[row, -1]
                tables["mlp_in_last_prompt"][i] = mlp_in[row, end_prompt - 1]
                rows = slice(offsets[i], offsets[i + 1])
                tokens[rows] = mlp_in[row, pad:]
                owners[rows] = i
                start_tail = max(0, n_prompt - tail_tokens)
                kinds[rows] = torch.tensor([PROMPT_BODY] * start_tail + [PROMPT_TAIL] * (n_prompt - start_tail)
                                           + [COMPLETION] * n_completion)
    finally:
        for hook in hooks:
            hook.remove()
    return Activations(layers=layers, resid_completion_mean=tables["resid_completion_mean"],
                       resid_last_prompt=tables["resid_last_prompt"], resid_last_token=tables["resid_last_token"],
                       resid_first_completion=tables["resid_first_completion"],
                       mlp_in_last_prompt=tables["mlp_in_last_prompt"], mlp_in_tokens=tokens,
                       token_sequence=owners, token_kind=kinds,
                       meta={"tail_tokens": tail_tokens, "max_completion_tokens": max_completion_tokens})


class _PassStopped(Exception):
    """Raised by the last captured layer's hook: the rest of the forward pass is not needed."""


def _stop_pass(module, args, output):
    raise _PassStopped


def encode_items(tokenizer, items: Sequence[tuple[str, str | None]], max_completion_tokens: int
                 ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) per item, exactly as :func:`capture` feeds them to the model."""
    return [(encode_prompt(tokenizer, p), encode_completion(tokenizer, c)[:max_completion_tokens]) for p, c in items]
