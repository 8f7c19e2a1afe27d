"""Neutral answers: what an anchor sees on neutral inputs while the model writes, so it learns to stay shut there.

An anchor decides per token, at every generated token too. Fitted on target prompts with their desired
completions against neutral *prompts* only, it can learn "this is the assistant's turn" as well as "this
is a target". Measured on SmolLM2-135M: a privacy anchor fitted that way was shut at the last token of
every TruthfulQA test prompt but open on nearly every token of the answers (opening about 0.8), and the
refusal + privacy adapter refused 22.5% of those prompts against 5% before the privacy issue was added.

So every neutral training prompt that has no completion of its own is captured twice more, and both
sequences are tokens where the anchor must stay shut:

- ``answer``: the prompt with the model's own greedy answer, the tokens the anchor actually sees there;
- ``decoy``: the prompt with a desired completion borrowed from a target sample (for refusal: "I'm
  sorry, I can't help with that" after a harmless question), so the completion's words alone do not
  open it. An anchor that opens on refusal words after any prompt feeds the refusal it started.

The answers come from the base model (an added issue's anchors also see the earlier adapter's answers,
but on neutral prompts its anchors are shut, so the two agree where it matters) and are cached on disk
beside the activation store, keyed by model and prompt, so a second compile generates nothing.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Sequence

from .cache import ResultCache
from .cache import model_key
from .generations import cached_generate
from ..samples.sample_set import NEUTRAL, TARGET, Sample

ANSWER_TOKENS = 24       # as long as the refusal table's answers: the span where a refusal is decided
ANSWER = "answer"        # role of a neutral prompt + the model's own answer
DECOY = "decoy"          # role of a neutral prompt + a borrowed target completion
ANCHOR_ONLY = (ANSWER, DECOY)   # roles only anchors fit on (algorithms never see them)
ANSWER_CACHE = "neutral-answers.jsonl"


def needs_answer(sample: Sample) -> bool:
    """Neutral prompts captured alone (no completion of their own)."""
    return sample.label == NEUTRAL and sample.positive is None and sample.negative is None


def neutral_answers(model, tokenizer, samples: Sequence[Sample], batch_size: int = 16, cache_dir: Path | None = None,
                    progress: bool = True, log: Callable[[str], None] = print) -> dict[str, str]:
    """prompt -> the model's greedy answer (``ANSWER_TOKENS``), for each sample that :func:`needs_answer`.

    ``cache_dir``: where the answers are kept between compiles (None: generated afresh, kept in memory)."""
    prompts = list(dict.fromkeys(s.prompt for s in samples if needs_answer(s)))
    if not prompts:
        return {}
    cache = ResultCache(Path(cache_dir) / ANSWER_CACHE if cache_dir is not None else None)
    # not ``batching.generation_batch``: these answers are fitted on, so their batches stay as stored captures had them
    answers = cached_generate(model, tokenizer, prompts, cache, model_key(model), "base", ANSWER_TOKENS,
                              2 * batch_size, progress=progress, desc="neutral answers (anchor negatives)")
    log(f"neutral answers: {len(prompts)} prompts ({cache.hits} from the cache)")
    return answers


def decoy_completions(samples: Sequence[Sample]) -> list[str]:
    """The desired completions of target samples, one per distinct text, in sample order."""
    return list(dict.fromkeys(s.positive for s in samples if s.label == TARGET and s.positive is not None))


def extra_neutral_items(samples: Sequence[Sample], answers: dict[str, str], decoys: Sequence[str], seed: int
                        ) -> list[tuple[Sample, str, str]]:
    """(owner sample, role, completion) for each neutral prompt without completions: its answer (when
    known) and one decoy drawn with ``seed`` (deterministic; none when there are no decoys)."""
    rng = random.Random(seed)
    out = []
    for s in samples:
        if not needs_answer(s):
            continue
        if s.prompt in answers and answers[s.prompt].strip():
            out.append((s, ANSWER, answers[s.prompt]))
        if decoys:
            out.append((s, DECOY, decoys[rng.randrange(len(decoys))]))
    return out
