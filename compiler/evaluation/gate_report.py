"""Per-strategy gate report: does each anchor open where it should, per token, during generation?

The runtime decides per token (stateless, bakeable); the simplest alternative decides once per prompt
at its last token and keeps that decision for the whole answer. This report measures both on
held-out prompts, with the adapter attached as it is shipped:

- **per-prompt decision**: the strategy's opening at the last prompt token. Recall = share of target
  prompts where it is open, false-positive rate = share of neutral prompts where it is open, precision
  = share of open prompts that are targets;
- **per-token firing during generation**: the share of generated tokens (greedy answers) at which the
  strategy is open, on target and on neutral prompts, and its mean opening there.

"Open" means an opening of at least ``OPEN`` (half the strategy's strength). With several strategies
a last row, ``PROGRAM``, counts a prompt or token as open when any strategy is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from masteer.runtime import SteeredModel, SteeringAdapter

from ..capture.activations import encode_completion, encode_prompt, position_ids
from ..capture.shared_prefix import batch_inputs
from ..common.batching import left_pad

OPEN = 0.5
PROGRAM = "(any strategy)"   # the row for the program as a whole (layer -1)


@dataclass
class GateReport:
    strategy: str
    layer: int
    targets: int
    neutrals: int
    prompt_recall: float
    prompt_fpr: float
    prompt_precision: float
    generated_firing_target: float    # share of generated tokens open, target prompts
    generated_firing_neutral: float   # the same, neutral prompts
    generated_mean_opening_target: float
    generated_mean_opening_neutral: float

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@torch.no_grad()
def _openings(steered: SteeredModel, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
              progress: bool, desc: str, answers: Mapping[str, str] | None = None
              ) -> tuple[dict[str, list[float]], dict[str, list[torch.Tensor]]]:
    """Per strategy: the opening at each prompt's last token, and the openings at its generated tokens."""
    if answers is not None:
        return _answer_openings(steered, tokenizer, prompts, answers, batch_size, progress, desc)
    last: dict[str, list[float]] = {}
    generated: dict[str, list[torch.Tensor]] = {}
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    device = next(steered.parameters()).device
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        rows = encoded[start:start + batch_size]
        inputs = batch_inputs(steered, rows, tokenizer.pad_token_id, max_new_tokens)   # chat header prefilled once
        ids, mask = inputs.ids, inputs.mask
        out = steered.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **inputs.cache_kwargs,
                               max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        width = ids.shape[1]
        answered = (out[:, width:] != tokenizer.pad_token_id).cpu()   # a finished answer is padded after its end
        full_mask = torch.cat([mask, answered.to(mask.dtype)], 1)
        openings = steered.openings(input_ids=out, attention_mask=full_mask.to(device),
                                    position_ids=position_ids(full_mask).to(device))
        for name, values in openings.items():
            values = values.cpu()
            last.setdefault(name, []).extend(values[:, width - 1].tolist())
            generated.setdefault(name, []).extend(values[row, width:][answered[row]] for row in range(len(rows)))
    return last, generated


@torch.no_grad()
def _answer_openings(steered: SteeredModel, tokenizer, prompts: Sequence[str], answers: Mapping[str, str],
                     batch_size: int, progress: bool, desc: str
                     ) -> tuple[dict[str, list[float]], dict[str, list[torch.Tensor]]]:
    """:func:`_openings` over answers the adapter already gave (the refusal table's greedy answers of the same
    arm): one pass over prompt and answer instead of generating them again. An opening depends only on the tokens
    before it, so these are the openings the generation saw, up to the answer's text being tokenized anew."""
    missing = [p for p in prompts if p not in answers]
    if missing:
        raise ValueError(f"gate report: no answer for {len(missing)} prompts, e.g. {missing[0][:60]!r}")
    last: dict[str, list[float]] = {}
    generated: dict[str, list[torch.Tensor]] = {}
    rows = [(encode_prompt(tokenizer, p), encode_completion(tokenizer, answers[p])) for p in prompts]
    device = next(steered.parameters()).device
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress, leave=False):
        batch = rows[start:start + batch_size]
        ids, mask = left_pad([prompt + answer for prompt, answer in batch], tokenizer.pad_token_id)
        openings = steered.openings(input_ids=ids.to(device), attention_mask=mask.to(device),
                                    position_ids=position_ids(mask).to(device))
        for name, values in openings.items():
            values = values.cpu()
            last.setdefault(name, []).extend(values[row, -len(answer) - 1].item() for row, (_, answer) in enumerate(batch))
            generated.setdefault(name, []).extend(values[row, ids.shape[1] - len(answer):]
                                                  for row, (_, answer) in enumerate(batch))
    return last, generated


@torch.no_grad()
def prompt_openings(model, tokenizer, adapter: SteeringAdapter, prompts: Sequence[str],
                    batch_size: int = 16) -> dict[str, list[float]]:
    """Each gated strategy's opening at each prompt's last token: one forward pass, no generation (cheap
    enough to check every step of a program search)."""
    steered = SteeredModel(model, adapter, check_fingerprint=False)
    last: dict[str, list[float]] = {}
    try:
        encoded = [encode_prompt(tokenizer, p) for p in prompts]
        device = next(steered.parameters()).device
        for start in range(0, len(prompts), batch_size):
            ids, mask = left_pad(encoded[start:start + batch_size], tokenizer.pad_token_id)
            openings = steered.openings(input_ids=ids.to(device), attention_mask=mask.to(device),
                                        position_ids=position_ids(mask).to(device))
            for name, values in openings.items():
                last.setdefault(name, []).extend(values[:, -1].cpu().tolist())   # left padded: last is the tail
    finally:
        steered.detach()
    return last


def program_opening(per_strategy: dict[str, list]) -> list:
    """The program's opening per prompt (floats) or per generated token (tensors): the largest of its strategies'."""
    values = list(per_strategy.values())
    if values and isinstance(values[0][0] if values[0] else None, torch.Tensor):
        return [torch.stack(v).max(0).values for v in zip(*values)]
    return [max(v) for v in zip(*values)]


def open_share(last: dict[str, list[float]]) -> float:
    """The share of prompts on which any strategy is open (at least ``OPEN``) at the last prompt token."""
    per_prompt = program_opening(last) if last else []
    return sum(v >= OPEN for v in per_prompt) / len(per_prompt) if per_prompt else 0.0


def gate_reports(model, tokenizer, adapter: SteeringAdapter, targets: Sequence[str], neutrals: Sequence[str],
                 max_new_tokens: int = 24, batch_size: int = 16, progress: bool = True,
                 answers: Mapping[str, str] | None = None) -> list[GateReport]:
    """One report per gated strategy of ``adapter`` on held-out ``targets`` and ``neutrals``; ``answers``: the
    adapter's greedy answers to every one of them when they were generated already (prompt -> answer)."""
    if not targets or not neutrals:
        raise ValueError("a gate report needs held-out target and neutral prompts")
    steered = SteeredModel(model, adapter, check_fingerprint=False)
    try:
        t_last, t_gen = _openings(steered, tokenizer, targets, max_new_tokens, batch_size, progress, "gates (targets)",
                                  answers)
        n_last, n_gen = _openings(steered, tokenizer, neutrals, max_new_tokens, batch_size, progress, "gates (neutral)",
                                  answers)
    finally:
        steered.detach()
    layers = {s.strategy: s.layer for s in adapter.strategies}
    if len(t_last) > 1:  # the program as a whole: open where any of its strategies is
        for table in (t_last, n_last, t_gen, n_gen):
            table[PROGRAM] = program_opening(table)
        layers[PROGRAM] = -1
    reports = []
    for name in t_last:
        tp = sum(v >= OPEN for v in t_last[name])
        fp = sum(v >= OPEN for v in n_last[name])
        t_tokens, n_tokens = torch.cat(t_gen[name]), torch.cat(n_gen[name])
        reports.append(GateReport(
            strategy=name, layer=layers[name], targets=len(targets), neutrals=len(neutrals),
            prompt_recall=tp / len(targets), prompt_fpr=fp / len(neutrals),
            prompt_precision=tp / (tp + fp) if tp + fp else 0.0,
            generated_firing_target=float((t_tokens >= OPEN).double().mean()),
            generated_firing_neutral=float((n_tokens >= OPEN).double().mean()),
            generated_mean_opening_target=float(t_tokens.mean()),
            generated_mean_opening_neutral=float(n_tokens.mean())))
    return reports


def format_gate_reports(reports: Sequence[GateReport]) -> str:
    lines = ["| strategy | layer | last prompt token: recall | FPR | precision | generated tokens open: target "
             "| neutral | mean opening: target | neutral |", "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(f"| {r.strategy} | {r.layer} | {r.prompt_recall:.2f} | {r.prompt_fpr:.2f} | "
                     f"{r.prompt_precision:.2f} | {r.generated_firing_target:.2f} | {r.generated_firing_neutral:.2f} | "
                     f"{r.generated_mean_opening_target:.2f} | {r.generated_mean_opening_neutral:.2f} |")
    return "\n".join(lines)
