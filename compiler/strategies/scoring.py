"""Teacher-forced measures for selection steps: effect on the issue's axis, and drift elsewhere.

Generating and judging text is the honest end measure, but it is slow on a CPU and gives one bit
per prompt. Calibrating many (algorithm, layer, strength) candidates needs smooth, cheap numbers:

- **effect**: per target pair, the change (steered minus base) in the log-odds of the positive
  over the negative completion, each the mean token log-probability over its first
  ``EFFECT_TOKENS`` tokens. Only the opening counts because that is where behaviours such as a
  refusal are decided; scoring whole completions let late tokens dominate and ranked layers
  unlike generation did (measured on SmolLM2-135M during the first compile's development).
- **drift**: the mean next-token KL divergence KL(base || steered) over every position of the
  neutral prompts (chat-formatted, prompt tokens only): how much steering changes what the model
  would say where it should change nothing.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterator, Sequence

import torch

from ..capture.activations import encode_completion, encode_prompt, position_ids
from ..common.batching import left_pad
from ..common.prefix_replay import PrefixReplay

EFFECT_TOKENS = 8


def _batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


RECORD = "record"   # ``start`` of a pass that records the base hidden states for later replays


def _forward(model, ids: torch.Tensor, mask: torch.Tensor, replay: PrefixReplay | None, key, start, **extra):
    """One scoring pass (no KV cache: nothing is generated), recording or replaying the base prefix when asked
    (``common.prefix_replay``): ``start`` is ``RECORD`` for the base pass, else the adapter's first layer."""
    device = next(model.parameters()).device
    kwargs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids(mask).to(device),
                  **extra, **({"use_cache": False} if _takes(model, "use_cache") else {}))
    if replay is None:
        return model(**kwargs)
    with (replay.recording(key) if start == RECORD else replay.replaying(key, start)):
        return model(**kwargs)


@torch.no_grad()
def completion_logprobs(model, tokenizer, items: Sequence[tuple[str, str]], max_tokens: int = EFFECT_TOKENS,
                        batch_size: int = 16, replay: PrefixReplay | None = None, tag: str = "",
                        start: int | str | None = None) -> torch.Tensor:
    """Mean log-probability of each completion's first ``max_tokens`` tokens given its prompt, [N].
    ``replay``/``tag``/``start``: see ``_forward`` (the batches of one ``tag`` must be the same every call)."""
    encoded = [(encode_prompt(tokenizer, p), encode_completion(tokenizer, c)[:max_tokens]) for p, c in items]
    if any(not completion for _, completion in encoded):
        raise ValueError("every scored item needs a non-empty completion")
    device = next(model.parameters()).device
    out = torch.zeros(len(items))
    keeps_last = _takes(model, "logits_to_keep")
    for batch in _batches(len(items), batch_size):
        ids, mask = left_pad([encoded[i][0] + encoded[i][1] for i in batch], tokenizer.pad_token_id)
        # Left padded, so every completion ends the row: only the last positions' logits are needed
        # (the vocabulary projection and log-softmax over every prompt position were a third of the time).
        keep = max(len(encoded[i][1]) for i in batch) + 1
        logits = _forward(model, ids, mask, replay, (tag, batch.start), start,
                          **({"logits_to_keep": keep} if keeps_last else {})).logits.float()
        keep = logits.shape[1]   # every position when the model cannot keep only the last ones
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, -keep + 1:, None].to(device))[..., 0].cpu()
        for row, i in enumerate(batch):
            out[i] = logp[row, -len(encoded[i][1]):].mean()
    return out


def _takes(model, argument: str) -> bool:
    """Whether the model's forward takes ``argument`` (transformers causal LMs take ``logits_to_keep`` and
    ``use_cache``; a wrapper may not)."""
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def preference(model, tokenizer, prompts: Sequence[str], positives: Sequence[str], negatives: Sequence[str],
               batch_size: int = 16) -> torch.Tensor:
    """Per-prompt log-odds of the positive over the negative completion's opening, [N]."""
    logp = completion_logprobs(model, tokenizer, list(zip(prompts, positives)) + list(zip(prompts, negatives)),
                               batch_size=batch_size)
    return logp[:len(prompts)] - logp[len(prompts):]


@torch.no_grad()
def next_token_logprobs(model, tokenizer, prompts: Sequence[str], batch_size: int = 16,
                        replay: PrefixReplay | None = None, tag: str = "",
                        start: int | str | None = None) -> list[torch.Tensor]:
    """Log-softmax over the vocabulary at every prompt position, one [len, V] tensor per prompt."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
    for batch in _batches(len(prompts), batch_size):
        ids, mask = left_pad([encoded[i] for i in batch], tokenizer.pad_token_id)
        logits = _forward(model, ids, mask, replay, (tag, batch.start), start).logits.float()
        logp = torch.log_softmax(logits, -1).cpu()
        for row, i in enumerate(batch):
            out[i] = logp[row, -len(encoded[i]):]
    return out


def mean_kl(base: Sequence[torch.Tensor], steered: Sequence[torch.Tensor]) -> float:
    """Mean over all positions of KL(base || steered), in nats."""
    total, count = 0.0, 0
    for p, q in zip(base, steered):
        total += float((p.exp() * (p - q)).sum(-1).sum())
        count += p.shape[0]
    return total / max(count, 1)


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield


class HeldOutScorer:
    """Effect and drift of any steering, measured against base numbers computed once.

    Without neutral prompts the drift is NaN (effects only); without target items the effect is empty
    (drift only). Target items are ``(prompt, positive,
    negative)``; ``negative`` may be None (a prompt with only a
    desired completion, e.g. an AdvBench request with a refusal). A sample's effect is the change of
    its log-odds (positive over negative opening) where it has both, and the change of the positive
    opening's log-probability where it has only that.

    With ``replay_layers`` (the layers candidate strategies steer) the base pass keeps the hidden states
    entering those layers, and a steered pass told its first steered layer (``start``) starts there
    (``common.prefix_replay``: the same numbers, bit for bit, for a third to a half less work).
    """

    def __init__(self, model, tokenizer, targets: Sequence[tuple[str, str, str | None]], neutral_prompts: Sequence[str],
                 batch_size: int = 16, replay_layers: Sequence[int] = ()):
        if not targets and not neutral_prompts:
            raise ValueError("held-out scoring needs target items or neutral prompts")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.prompts, self.positives, self.negatives = (map(list, zip(*targets)) if targets else ([], [], []))
        self.paired = [i for i, n in enumerate(self.negatives) if n is not None]
        self.neutral = list(neutral_prompts)
        self.replay = PrefixReplay(model, replay_layers) if replay_layers else None
        self.base_target = self._target_logprobs(RECORD)
        self.base_next = self._next_logprobs(RECORD) if self.neutral else []

    def _target_logprobs(self, start: int | str | None = None) -> torch.Tensor:
        """Opening log-probabilities: positives [N], then the negatives that exist [len(paired)]."""
        if not self.prompts:   # drift only
            return torch.zeros(0)
        items = list(zip(self.prompts, self.positives)) + [(self.prompts[i], self.negatives[i]) for i in self.paired]
        return completion_logprobs(self.model, self.tokenizer, items, batch_size=self.batch_size,
                                   replay=self.replay, tag="targets", start=start)

    def _next_logprobs(self, start: int | str | None = None) -> list[torch.Tensor]:
        return next_token_logprobs(self.model, self.tokenizer, self.neutral, self.batch_size,
                                   replay=self.replay, tag="neutral", start=start)

    def _effects(self, start: int | None = None) -> torch.Tensor:
        change = self._target_logprobs(start) - self.base_target
        n = len(self.prompts)
        effect = change[:n].clone()
        effect[self.paired] -= change[n:]
        return effect

    def score_samples(self, steering: Callable[[], contextlib.AbstractContextManager] = nothing,
                      start: int | None = None) -> tuple[torch.Tensor, float]:
        """(per-target-item effect [N], drift) while ``steering()`` is active on ``self.model``. ``start``: the
        first layer the steering changes (``prefix_replay.first_steered_layer``), None if unknown or none."""
        with steering():
            effect = self._effects(start)
            drift = mean_kl(self.base_next, self._next_logprobs(start)) if self.neutral else float("nan")
        return effect, drift

    def score(self, steering: Callable[[], contextlib.AbstractContextManager] = nothing,
              start: int | None = None) -> tuple[float, float]:
        """(mean effect, drift) while ``steering()`` is active on ``self.model``."""
        effect, drift = self.score_samples(steering, start)
        return float(effect.mean()), drift
