"""Teacher-forced measures: option likelihoods, perplexity, next-token KL from the base model.

Everything here reuses :mod:`masteer.compiler.strategies.scoring` (chat-formatted prompts, left padding,
position ids that ignore padding, the prompts' shared chat header run once as a one-row prefix pass), so a suite
scores text exactly the way calibration does.

- **Options by likelihood**: an option's score is the mean log-probability of its tokens as the
  assistant's answer to the prompt. When every option is a single token (the letters "A".."D"),
  one forward pass of the prompt gives them all: the next-token log-probabilities at the last
  prompt position (:func:`last_token_logprobs`); that is the same number
  ``completion_logprobs(..., max_tokens=1)`` computes with one pass per option, at a quarter of
  the cost for MMLU. Mean, not sum, so options of different length compete fairly.
- **Perplexity**: ``exp`` of the mean negative log-likelihood per token of a reference answer
  given its prompt, the first ``max_tokens`` tokens of each.
- **KL**: per prompt, the sum over its positions of KL(base || arm) of the next-token
  distributions; the suite's statistic divides by the number of positions (the same mean as
  :func:`masteer.compiler.strategies.scoring.mean_kl`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..capture.activations import encode_completion, encode_prompt
from ..capture.shared_prefix import call_prefix
from ..common.forward_arguments import forward_takes
from ..strategies.scoring import batch_order, completion_logprobs, forward_rows, mean_kl

OPTION_TOKENS = 32   # an option longer than this is scored on its first 32 tokens


def by_length(items: Sequence, lengths: Sequence[int], compute):
    """``compute(items)`` run on the items sorted by length, results returned in the original order.

    Batches pad to their longest row, so one long item among short ones makes the whole batch
    long: sorting first keeps similar lengths together (a 3000-character MMLU passage otherwise
    slows its batch tenfold).
    """
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    results = compute([items[i] for i in order])
    out = [None] * len(items)
    for position, i in enumerate(order):
        out[i] = results[position]
    return out


def single_token_ids(tokenizer, options: Sequence[str]) -> list[int] | None:
    """Each option's token id if every option is exactly one token and they differ, else None."""
    ids = [encode_completion(tokenizer, o) for o in options]
    if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(ids):
        return [i[0] for i in ids]
    return None


@torch.no_grad()
def last_token_logprobs(model, tokenizer, prompts: Sequence[str], token_ids: Sequence[Sequence[int]],
                        batch_size: int = 16) -> list[list[float]]:
    """Log-probability of each of ``token_ids[i]`` as the first answer token to ``prompts[i]``. The prompts' shared
    chat header runs once (``capture.shared_prefix``: 24 of an MMLU prompt's ~117 tokens on SmolLM2)."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    prefix = call_prefix(model, encoded, 1)
    keeps_last = forward_takes(model, "logits_to_keep")
    out: list[list[float]] = [[] for _ in prompts]
    for rows in batch_order([len(e) for e in encoded], batch_size, by_length=True):   # see by_length
        # only the last position's logits: the vocabulary projection of every position of a long MMLU prompt was
        # a fifth of the pass (the same numbers bit for bit on SmolLM2, whose rows do not depend on the others);
        # outside a compile's evaluation ``replay`` is None and the arms share the blocks below their steering
        logits, _, _ = forward_rows(model, [encoded[i] for i in rows], tokenizer.pad_token_id, None, None, None,
                                    prefix, **({"logits_to_keep": 1} if keeps_last else {}))
        logp = torch.log_softmax(logits[:, -1].float(), -1).cpu()
        for row, i in enumerate(rows):
            out[i] = [float(logp[row, t]) for t in token_ids[i]]
    return out


def option_logprobs(model, tokenizer, prompts: Sequence[str], options: Sequence[Sequence[str]],
                    batch_size: int = 16) -> list[list[float]]:
    """Mean token log-probability of every option of every prompt, ``[item][option]``."""
    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
    single = [single_token_ids(tokenizer, o) for o in options]
    out: list[list[float] | None] = [None] * len(prompts)
    fast = [i for i, ids in enumerate(single) if ids is not None]
    if fast:
        scores = last_token_logprobs(model, tokenizer, [prompts[i] for i in fast], [single[i] for i in fast],
                                     batch_size)
        for i, s in zip(fast, scores):
            out[i] = s
    slow = [i for i, ids in enumerate(single) if ids is None]
    if slow:
        pairs = [(prompts[i], o) for i in slow for o in options[i]]
        flat = by_length(pairs, [len(p) + len(o) for p, o in pairs], lambda chunk: completion_logprobs(
            model, tokenizer, chunk, max_tokens=OPTION_TOKENS, batch_size=batch_size, share_prefix=True).tolist())
        k = 0
        for i in slow:
            out[i] = flat[k:k + len(options[i])]
            k += len(options[i])
    return out  # type: ignore[return-value]


def completion_nll(model, tokenizer, pairs: Sequence[tuple[str, str]], max_tokens: int,
                   batch_size: int = 16) -> list[tuple[float, int]]:
    """Per (prompt, text): (sum of negative log-likelihoods, token count) over the text's first tokens."""
    counts = [min(len(encode_completion(tokenizer, text)), max_tokens) for _, text in pairs]
    means = by_length(list(pairs), [len(p) + min(len(t), 8 * max_tokens) for p, t in pairs],
                      lambda chunk: completion_logprobs(model, tokenizer, chunk, max_tokens=max_tokens,
                                                        batch_size=batch_size, share_prefix=True).tolist())
    return [(-float(m) * n, n) for m, n in zip(means, counts)]


def kl_sums(base: Sequence[torch.Tensor], steered: Sequence[torch.Tensor]) -> list[tuple[float, int]]:
    """Per prompt: (sum over positions of KL(base || steered), number of positions).

    The inputs are :func:`~masteer.compiler.strategies.scoring.next_token_logprobs` outputs for the same
    prompts, the first taken with the steering off.
    """
    return [(mean_kl([p], [q]) * p.shape[0], int(p.shape[0])) for p, q in zip(base, steered)]
