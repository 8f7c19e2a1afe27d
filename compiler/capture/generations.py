"""Greedy generation through the result cache: each (model, arm, settings, prompt) is generated once.

Both the compile's refusal table and the evaluation suites generate through here with the same
keys, so when a compile ends with both, the suites reuse the table's answers instead of generating
them again; and an interrupted evaluation resumes after its last finished batch.
"""

from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm

from .activations import encode_prompt
from .generation import generate
from .cache import ResultCache, cache_key


def generation_settings(max_new_tokens: int) -> dict:
    """What a generation depends on besides the model, the arm and the prompt (batch size does not)."""
    return {"decoding": "greedy", "max_new_tokens": max_new_tokens}


def cached_generate(model, tokenizer, prompts: Sequence[str], cache: ResultCache, model_key: str, arm_key: str,
                    max_new_tokens: int, batch_size: int, progress: bool = True,
                    desc: str = "generating") -> dict[str, str]:
    """prompt -> greedy completion for every distinct prompt; new ones cached batch by batch."""
    cache = cache.for_arm(arm_key)
    settings = generation_settings(max_new_tokens)
    keys = {p: cache_key(model_key, arm_key, "generate", settings, p) for p in dict.fromkeys(prompts)}
    done = {p: v for p, v in ((p, cache.get(k)) for p, k in keys.items()) if v is not None}
    todo = sorted((p for p in keys if p not in done), key=lambda p: len(encode_prompt(tokenizer, p)))
    bar = tqdm(total=len(keys), initial=len(done), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        texts = generate(model, tokenizer, chunk, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         progress=False)
        cache.put_many((keys[p], t) for p, t in zip(chunk, texts))
        done.update(zip(chunk, texts))
        bar.update(len(chunk))
    bar.close()
    return done
