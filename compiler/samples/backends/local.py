"""A local ``transformers`` chat model as a backend: the embedded default or any model id or path.

Why local by default: the AutoTester must work offline on a laptop CPU, so the writer falls back
to the same embedded SmolLM2-135M-Instruct the compiler steers. It is weak, which is why the
writer leans on templates and the reviewer filters; a stronger model is one ``--model`` away.
Greedy decoding is batched with left padding (as every other stage generates); sampling
(``temperature > 0``) runs one conversation at a time with a seed derived from its cache key, so
the answer does not depend on which other conversations shared its batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ...common.batching import left_pad
from ...common.models import EMBEDDED_NAME, LoadedModel, load_model
from .base import ChatBackend, ChatParams, Message


def encode_messages(tokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of a conversation plus the assistant header, in the model's own chat format."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        return list(ids)
    text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
    return tokenizer(text, add_special_tokens=True)["input_ids"]


@torch.no_grad()
def generate_ids(model, tokenizer, rows: list[list[int]], params: ChatParams, seed: int | None = None) -> list[list[int]]:
    """New token ids for each prompt row (one batch), greedy or seeded sampling."""
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    kwargs = {"do_sample": False}
    if params.temperature > 0:
        torch.manual_seed(params.seed if seed is None else seed)
        kwargs = {"do_sample": True, "temperature": params.temperature, "top_k": 0, "top_p": 1.0}
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=params.max_tokens,
                         pad_token_id=tokenizer.pad_token_id, **kwargs)
    new = out[:, ids.shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return [row[:row.index(eos)] if eos is not None and eos in row else row for row in new]


class LocalBackend(ChatBackend):
    kind = "local"

    def __init__(self, model: str | LoadedModel = EMBEDDED_NAME, cache=None, batch_size: int = 16,
                 loaded: LoadedModel | None = None):
        """``model``: a name to load on first use, or a LoadedModel; ``loaded`` lends an already loaded
        copy of the named model (same name, so the same cache entries)."""
        self._loaded = model if isinstance(model, LoadedModel) else loaded
        self._name = model if isinstance(model, str) else model.name
        super().__init__(self._name, cache=cache)
        self.batch_size = batch_size

    @property
    def loaded(self) -> LoadedModel:
        """Loaded on first use, so a run answered entirely from the cache never loads the model."""
        if self._loaded is None:
            self._loaded = load_model(self._name)
        return self._loaded

    def _complete(self, conversations: list[list[Message]], params: ChatParams, progress: bool,
                  desc: str) -> list[str]:
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        encoded = [encode_messages(tokenizer, c) for c in conversations]
        outputs = [""] * len(encoded)
        if params.temperature > 0:
            for i in tqdm(range(len(encoded)), desc=desc, disable=not progress, leave=False):
                seed = int(self.cache_key(conversations[i], params)[:8], 16)
                outputs[i] = tokenizer.decode(generate_ids(model, tokenizer, [encoded[i]], params, seed)[0],
                                              skip_special_tokens=True).strip()
            return outputs
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        for start in tqdm(range(0, len(order), self.batch_size), desc=desc, disable=not progress, leave=False):
            batch = order[start:start + self.batch_size]
            new = generate_ids(model, tokenizer, [encoded[i] for i in batch], params)
            for i, row in zip(batch, new):
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        return outputs
