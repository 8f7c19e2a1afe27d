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
from typing import Sequence

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
    kept = [(p, a) for p, a in pairs if a.strip()]
    if not kept:
        return {"n": 0, "empty": len(pairs), "perplexity": None, "repetition": None}
    logprobs = completion_logprobs(model, tokenizer, kept, max_tokens=max_tokens, batch_size=batch_size)
    return {"n": len(kept), "empty": len(pairs) - len(kept),
            "perplexity": round(median(math.exp(-float(lp)) for lp in logprobs), 3),
            "repetition": round(sum(repetition(a) for _, a in kept) / len(kept), 4)}
