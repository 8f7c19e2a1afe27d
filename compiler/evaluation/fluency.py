"""Fluency of generated answers: is a steered refusal still text, or broken text?

Why: a stronger push makes more refusals, and past some point it makes gibberish that a phrase judge
may still count as a refusal ("I'm sorry for any kind of help you might have with a sensitive
informa..."). So every arm's answers are scored by the *base* model, teacher-forced: the perplexity of
the answer given its prompt (how much the unsteered model would have expected that text), and the share
of repeated word trigrams (loops). Compared with the base model's own answers and with the recipe's
written refusals after the same prompts (a fluent refusal the base model did not choose), they tell
whether a strength is a repair or a lobotomy.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Hashable, Mapping, Sequence

from ..strategies.scoring import completion_logprobs

FLUENCY_TOKENS = 24   # as long as the refusal table's answers


def repetition(text: str) -> float:
    """The share of word trigrams of ``text`` that already occurred earlier in it (0 for under four words)."""
    words = text.lower().split()
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(grams)) / len(grams) if len(grams) > 1 else 0.0


def fluency(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
            max_tokens: int = FLUENCY_TOKENS) -> dict:
    """Median base-model perplexity of each answer given its prompt, mean repetition, and n, over ``pairs``
    of (prompt, answer); empty answers are left out (and counted)."""
    return fluency_by_arm(model, tokenizer, {"": pairs}, batch_size, max_tokens)[""]


def fluency_by_arm(model, tokenizer, pairs: Mapping[Hashable, Sequence[tuple[str, str]]], batch_size: int = 16,
                   max_tokens: int = FLUENCY_TOKENS) -> dict[Hashable, dict]:
    """:func:`fluency` of each arm's (prompt, answer) pairs, every distinct pair scored once, rows of similar
    length batched together: arms share most answers (a gated arm answers as the base model wherever its gates
    stay shut, and the first strategy alone is the program itself when it kept one), and scoring each arm's
    pairs apart in prompt order had made this diagnostic a sixth of an end-to-end compile's time. The prompts' shared
    chat header runs once (``share_prefix``), and a prompt's distinct answers share one row after one copy of it
    (``branch``)."""
    kept = {arm: [(p, a) for p, a in arm_pairs if a.strip()] for arm, arm_pairs in pairs.items()}
    distinct = list(dict.fromkeys(pair for arm_pairs in kept.values() for pair in arm_pairs))
    scored = (completion_logprobs(model, tokenizer, distinct, max_tokens=max_tokens, batch_size=batch_size,
                                  by_length=True, share_prefix=True, branch=True) if distinct else [])
    perplexity = {pair: math.exp(-float(lp)) for pair, lp in zip(distinct, scored)}
    out = {}
    for arm, arm_pairs in kept.items():
        empty = len(pairs[arm]) - len(arm_pairs)
        if not arm_pairs:
            out[arm] = {"n": 0, "empty": empty, "perplexity": None, "repetition": None}
            continue
        out[arm] = {"n": len(arm_pairs), "empty": empty,
                    "perplexity": round(median(perplexity[pair] for pair in arm_pairs), 3),
                    "repetition": round(sum(repetition(a) for _, a in arm_pairs) / len(arm_pairs), 4)}
    return out
