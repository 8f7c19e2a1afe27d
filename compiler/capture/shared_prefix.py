"""Prefill a generation batch's common prompt prefix once, not once per row.

Chat prompts start with the same tokens: the template's header and, for many instruct models, a default
system prompt. SmolLM2-Instruct's is 24 tokens ("<|im_start|>system\\nYou are a helpful AI assistant named
SmolLM, trained by Hugging Face<|im_end|>\\n<|im_start|>user\\n") of the refusal recipe's test prompts'
51 on average, and a prefill is about half of a 24-token greedy answer's time on a CPU. Here the shared prefix
runs once as a one-row pass (with whatever steering the model carries: its hooks see those tokens as they
would in the batch); its KV cache is repeated over the rows, and each row's own tokens follow it, padded on
their left, so the padding sits between the prefix and the row. ``generate`` takes positions from the
attention mask, so every real token keeps the position it had with plain left padding.

Not bit-identical to the plain batch (a one-row pass multiplies other matrix shapes), so it is checked the way
that counts: on the refusal recipe's 350 test prompts, SmolLM2-135M-Instruct, 64-row batches, 24 tokens, the
same answers to the token (88.0 -> 71.4 s on 2 cores; ``tests/compiler/capture/test_shared_prefix.py`` checks
token equality on tiny float64 hosts). Left alone, and generated as before: batches whose rows share fewer than
``MIN_SHARED`` tokens, models with a sliding attention window shorter than the batch (padding inside the
window would crowd real tokens out of it), and caches that cannot be repeated over a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..common.batching import left_pad
from ..common.forward_arguments import cache_argument, forward_takes, output_cache

MIN_SHARED = 4   # tokens: below this the one-row pass costs about what it saves


@dataclass
class BatchInputs:
    """What ``generate`` is called with for one batch: the rows (prefix included) and, when the prefix was
    prefilled apart, its KV cache under the keyword the model takes it by."""
    ids: torch.Tensor
    mask: torch.Tensor
    cache_kwargs: dict

    @property
    def shared(self) -> bool:
        return bool(self.cache_kwargs)


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one of its own (the prefill must end on it)."""
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    for row in rows[1:]:
        n = 0
        while n < limit and row[n] == first[n]:
            n += 1
        limit = n
    return max(limit, 0)


def _sliding_window(model) -> int | None:
    config = getattr(getattr(model, "base_model", model), "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


@torch.no_grad()
def batch_inputs(model, rows: Sequence[list[int]], pad_id: int, max_new_tokens: int) -> BatchInputs:
    """The batch's inputs for ``generate``, with the common prefix prefilled once where that is safe."""
    shared = common_prefix_length(rows)
    width = max(len(r) for r in rows)
    window = _sliding_window(model)
    if shared < MIN_SHARED or len(rows) < 2 or (window is not None and width + max_new_tokens > window):
        return BatchInputs(*left_pad(rows, pad_id), {})
    device = next(model.parameters()).device
    prefix = torch.tensor([list(rows[0][:shared])], dtype=torch.long)
    output = model(input_ids=prefix.to(device), attention_mask=torch.ones_like(prefix).to(device), use_cache=True,
                   **({"logits_to_keep": 1} if forward_takes(model, "logits_to_keep") else {}))
    cache = output_cache(output)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):   # a cache form not known here
        return BatchInputs(*left_pad(rows, pad_id), {})
    cache.batch_repeat_interleave(len(rows))
    tails, tail_mask = left_pad([list(r[shared:]) for r in rows], pad_id)
    ids = torch.cat([prefix.expand(len(rows), -1), tails], dim=1)
    mask = torch.cat([torch.ones(len(rows), shared, dtype=tail_mask.dtype), tail_mask], dim=1)
    return BatchInputs(ids, mask, {cache_argument(model): cache})

