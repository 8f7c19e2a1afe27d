"""The rows a gated adapter leaves untouched: which they are, and the evaluation's passes that skip them.

A program whose strategies are all gated neurons computes most benign rows exactly as the base model does: with
the default refusal program on SmolLM2-135M, 162 of the 200 MMLU prompts and 34 of the 40 perplexity and KL
prompts keep the steering below ``scoring.UNTOUCHED`` at every position (scratch measurement, 2026-12-04). The
program search's drift already skips such rows (``scoring.NeutralDrift``). The evaluation's suites had run them
through every block above the gate, although the compile's evaluation holds the base arm's number for every
item (computed just before, or stored).

Inside :func:`skipping_untouched`, a teacher-forced pass of that steered model over a batch another arm recorded
(``capture.prefill_sharing``: the evaluation's static arm records what enters the candidate layers)
(``scoring.forward_rows``):

1. reads the steering's size at every position, replayed from the record (``SteeredModel.delta_sizes``: the
   blocks from the first steered one to the last gated one, one block for the default program);
2. runs only the rows above the threshold, as a narrower batch replayed from the same record;
3. returns NaN logits for the other rows. The caller (``evaluation.harness``) takes those items' values from the
   base arm: a NaN it did not cause cannot reach it, because a pass whose rows that ran are not finite marks the
   skipping ``unsafe`` and the caller then computes the chunk again without skipping.

Every row also reads the shared prefix (``capture.shared_prefix``), run once under the steering: when its own
tokens are touched, nothing is skipped. The skipped rows' numbers are the base arm's, the same as the full pass
to float32 (a closed gate adds about 1e-20); the rows that run do so in a narrower batch, so they round
differently in the last digits.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping
from weakref import WeakKeyDictionary

import torch
from torch import nn

_ACTIVE: "WeakKeyDictionary[nn.Module, RowSkipping]" = WeakKeyDictionary()


def touched_rows(sizes: Mapping[int, torch.Tensor], ran: torch.Tensor, threshold: float) -> list[int]:
    """The rows where the steering's size (``SteeredModel.delta_sizes``, [batch, seq] per layer) is above
    ``threshold`` at some position that ran (``ran``: [batch, seq], 1 for a real token); every row when nothing
    was read."""
    if not sizes:
        return list(range(ran.shape[0]))
    largest = torch.stack(list(sizes.values())).amax(0).cpu().masked_fill(~ran.cpu().bool(), 0).amax(-1)
    return [row for row, size in enumerate(largest.tolist()) if size > threshold]


class RowSkipping:
    """One :func:`skipping_untouched` block: what it skipped, and whether a pass in it saw non-finite numbers."""

    def __init__(self, steered: nn.Module):
        self.steered = steered
        self.rows = self.skipped = 0
        self.unsafe = False
        self._prefixes: dict[tuple[int, ...], bool] = {}

    @torch.no_grad()
    def prefix_untouched(self, tokens: list[int] | None, threshold: float) -> bool:
        """Whether the shared prefix's own tokens leave the steering at most ``threshold`` (checked once each)."""
        if not tokens:
            return True
        key = tuple(tokens)
        if key not in self._prefixes:
            device = next(self.steered.parameters()).device
            sizes = self.steered.delta_sizes(input_ids=torch.tensor([list(tokens)], device=device))
            self._prefixes[key] = bool(sizes) and max(float(v.max()) for v in sizes.values()) <= threshold
        return self._prefixes[key]

    def check_finite(self, logits: torch.Tensor) -> None:
        """Mark the block unsafe when rows that ran gave a non-finite number (NaN then means more than skipped)."""
        if not bool(torch.isfinite(logits).all()):
            self.unsafe = True


def active_skipping(model: nn.Module) -> RowSkipping | None:
    """The open :func:`skipping_untouched` block of this steered model, if any."""
    return _ACTIVE.get(model)


@contextmanager
def skipping_untouched(steered: nn.Module) -> Iterator[RowSkipping]:
    """Within the block, teacher-forced passes of ``steered`` (a ``SteeredModel`` whose only steering is gated
    neurons: the caller's promise) over recorded batches skip the rows it leaves untouched (module docstring)."""
    if steered in _ACTIVE:
        raise RuntimeError("skipping_untouched is already open for this model")
    skipping = RowSkipping(steered)
    _ACTIVE[steered] = skipping
    try:
        yield skipping
    finally:
        _ACTIVE.pop(steered, None)


def take_base(values: list, base: list) -> list:
    """``values`` of one item with every NaN entry (a skipped row's) replaced by the base arm's entry there."""
    if len(values) != len(base):
        raise ValueError(f"an item has {len(values)} values but its base arm {len(base)}")
    return [b if isinstance(v, float) and v != v else v for v, b in zip(values, base)]
