"""Run the prompt prefix every row shares once, not once per row: in greedy generation and in scoring passes.

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

Teacher-forced scoring (``strategies.scoring``: the selection's effects and drift, the fluency of answers) does the
same with :class:`PrefixPass`: one one-row pass of the prefix per scoring (under the steering being scored), and
each batch's rows run only their own tokens after a repeated copy of its cache. On the refusal recipe's val scorer
(77 targets, 64 neutral prompts, 24 of ~61 tokens per row shared) two steered scorings took 30.0 -> 19.3 s and the
base passes 23.4 -> 15.8 s; effects moved by at most 1e-5 (float32 rounding), drift by 3e-7 relative.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch

from ..common.batching import left_pad
from ..common.forward_arguments import cache_argument, forward_takes, output_cache
from .activations import position_ids

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


def fits_window(model, width: int) -> bool:
    """Whether rows ``width`` tokens wide (prefix, padding and row) fit the model's sliding attention window, if it
    has one: padding inside the window would crowd real tokens out of it."""
    window = _sliding_window(model)
    return window is None or width <= window


@dataclass
class PrefixPass:
    """A token prefix run once as a one-row pass under the model's steering at that moment: its KV cache (kept
    one row wide; :meth:`inputs` hands each batch a repeated copy) and, when asked for, its next-token
    log-probabilities at every prefix position."""
    tokens: list[int]
    cache: object
    logprobs: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return len(self.tokens)

    def repeated(self, rows: int):
        """A copy of the cache repeated over ``rows`` rows; the one-row cache is left as it is (a pass appends
        its rows' keys and values to the copy it is given)."""
        out = copy.copy(self.cache)
        out.layers = [copy.copy(layer) for layer in self.cache.layers]
        out.batch_repeat_interleave(rows)
        return out

    def inputs(self, model, tails: Sequence[list[int]], pad_id: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """A teacher-forced pass's inputs for rows that are this prefix followed by ``tails``: the tails left
        padded, the attention mask over prefix, padding and tail, the tails' positions (those of plain left
        padding) and the repeated cache under the model's keyword for it."""
        ids, tail_mask = left_pad(tails, pad_id)
        mask = torch.cat([torch.ones(len(tails), self.length, dtype=tail_mask.dtype), tail_mask], dim=1)
        positions = position_ids(mask)[:, self.length:]
        return ids, mask, positions, {cache_argument(model): self.repeated(len(tails))}


@torch.no_grad()
def run_prefix(model, tokens: Sequence[int], logprobs: bool = False) -> PrefixPass | None:
    """The one-row pass over ``tokens``; None when its cache is not a form this module knows how to repeat."""
    device = next(model.parameters()).device
    prefix = torch.tensor([list(tokens)], dtype=torch.long)
    keep = {} if logprobs or not forward_takes(model, "logits_to_keep") else {"logits_to_keep": 1}
    output = model(input_ids=prefix.to(device), attention_mask=torch.ones_like(prefix).to(device), use_cache=True,
                   **keep)
    cache = output_cache(output)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    scores = torch.log_softmax(output.logits[0].float(), -1) if logprobs else None
    return PrefixPass(list(tokens), cache, scores)


def shared_tokens(model, prompts: Sequence[Sequence[int]], extra: int) -> list[int]:
    """The tokens all of ``prompts`` start with, where a pass of their own pays and is safe: at least
    ``MIN_SHARED`` of them, two prompts or more, and rows that fit the attention window with ``extra`` tokens
    after the longest prompt (answers generated or completions scored)."""
    if len(prompts) < 2:
        return []
    shared = common_prefix_length(prompts)
    if shared < MIN_SHARED or not fits_window(model, max(len(p) for p in prompts) + extra):
        return []
    return list(prompts[0][:shared])


def call_prefix(model, prompts: Sequence[Sequence[int]], extra: int, logprobs: bool = False) -> PrefixPass | None:
    """One call's shared prefix, run: :func:`shared_tokens` of its prompts through :func:`run_prefix`; None when
    nothing is shared."""
    tokens = shared_tokens(model, prompts, extra)
    return run_prefix(model, tokens, logprobs) if tokens else None


@torch.no_grad()
def batch_inputs(model, rows: Sequence[list[int]], pad_id: int, max_new_tokens: int) -> BatchInputs:
    """The batch's inputs for ``generate``, with the common prefix prefilled once where that is safe."""
    prefix = call_prefix(model, rows, max_new_tokens)
    if prefix is None:
        return BatchInputs(*left_pad(rows, pad_id), {})
    tails, mask, _, cache_kwargs = prefix.inputs(model, [list(r[prefix.length:]) for r in rows], pad_id)
    ids = torch.cat([torch.tensor([prefix.tokens]).expand(len(rows), -1), tails], dim=1)
    return BatchInputs(ids, mask, cache_kwargs)
