"""Several completions of one prompt scored in one row: the prompt runs once, each completion sees only it.

A target sample is scored by its positive and its negative completion's opening given the same prompt. As two
rows, the prompt (after the shared chat header: ~29 tokens of the refusal recipe's val targets, against 8 per
completion) runs twice in every scoring of the selection: library calibration, applicability, the program
search, the teacher-forced table. Here one row holds ``prompt + c_1 + ... + c_m``; an attention mask of the
forward pass's own shape ``[rows, 1, queries, keys]`` lets each completion's tokens attend to the prompt and to
their own earlier tokens, never to another completion's, and their positions continue from the prompt's end as
if each completion followed the prompt alone. Every completion's first token is predicted at the prompt's last
position, which the completions share.

The same quantities as separate rows, rounded differently (other matrix shapes; float64 hosts agree to 1e-9,
``tests/compiler/strategies/test_branched_rows.py``). Only for attention that takes an arbitrary mask (PyTorch's
scaled-dot-product and the eager path; flash kernels take none), and only where the rows fit a sliding attention
window (the mask replaces the window's own): elsewhere completions are scored as separate rows.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..capture.shared_prefix import fits_window

MASKABLE_ATTENTION = ("sdpa", "eager")


def branches_supported(model, width: int) -> bool:
    """Whether rows ``width`` tokens wide (shared prefix included) may be branched on ``model``."""
    base = getattr(model, "base_model", model)
    config = getattr(base, "config", None)
    return getattr(config, "_attn_implementation", None) in MASKABLE_ATTENTION and fits_window(model, width)


def branch_units(model, encoded: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[int]] | None:
    """The indices of ``encoded`` (prompt, completion) token pairs grouped by prompt, in order of first appearance:
    one row each. None where branching would not pay (no prompt has two completions) or is not allowed."""
    units: dict[tuple[int, ...], list[int]] = {}
    for i, (prompt, _) in enumerate(encoded):
        units.setdefault(tuple(prompt), []).append(i)
    if len(units) == len(encoded):
        return None
    width = max(len(encoded[unit[0]][0]) + sum(len(encoded[i][1]) for i in unit) for unit in units.values())
    return list(units.values()) if branches_supported(model, width) else None


def branch_inputs(mask: torch.Tensor, positions: torch.Tensor, branches: Sequence[Sequence[int]], dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions and the additive attention mask ``[rows, 1, queries, keys]`` of left-padded rows that end with
    completions of ``branches[row]`` tokens each, in order. ``mask`` is the 2-d padding mask over every key (a
    shared prefix's columns first, then the queries'), ``positions`` the queries' positions under plain left
    padding."""
    rows, keys = mask.shape
    queries = positions.shape[1]
    first = keys - queries   # key columns before the queries: a shared prefix's cache
    segment = torch.zeros(rows, keys, dtype=torch.long)   # 0: prefix, padding or prompt; j: completion j
    shift = torch.zeros(rows, queries, dtype=positions.dtype)
    for row, lengths in enumerate(branches):
        column, before = keys - sum(lengths), 0
        if column < first or any(n <= 0 for n in lengths):
            raise ValueError(f"row {row}: completions of {list(lengths)} tokens do not fit its {queries} tokens")
        for j, n in enumerate(lengths, start=1):
            segment[row, column:column + n] = j
            shift[row, column - first:column - first + n] = before   # restart where the prompt ends
            column, before = column + n, before + n
    query_at = first + torch.arange(queries)
    causal = torch.arange(keys)[None, :] <= query_at[:, None]                        # [queries, keys]
    query_segment = segment[:, first:]
    same = (segment[:, None, :] == 0) | (segment[:, None, :] == query_segment[:, :, None])
    allowed = causal[None] & mask.bool()[:, None, :] & same
    allowed[:, torch.arange(queries), query_at] = True   # a padding query attends to itself: no empty softmax
    additive = torch.zeros(rows, 1, queries, keys, dtype=dtype)
    return positions - shift, additive.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def branch_means(logp: torch.Tensor, ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Each completion's mean token log-probability, [len(lengths)], from one row's log-softmax over its last
    positions ``logp`` [kept, V] (at least ``sum(lengths) + 1``) and the row's token ids [queries]."""
    total = sum(lengths)
    if logp.shape[0] < total + 1:
        raise ValueError(f"{logp.shape[0]} positions kept, the completions need {total + 1}")
    kept, width = logp.shape[0], ids.shape[0]
    last_prompt = kept - total - 1
    out, start = [], 0
    for n in lengths:
        at = kept - total + start   # the completion's first token's position in ``logp``
        predictors = torch.tensor([last_prompt] + list(range(at, at + n - 1)))
        targets = ids[width - total + start:width - total + start + n].to(logp.device)
        out.append(logp[predictors.to(logp.device), targets].mean())
        start += n
    return torch.stack(out)
