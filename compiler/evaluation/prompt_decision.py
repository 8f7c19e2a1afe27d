"""The per-prompt alternative to the runtime's per-token gates, so the two can be measured side by side.

The compiled adapter decides per token: every token, of the prompt and of the answer, re-reads each
anchor. That keeps the forward pass stateless and bakeable, but it is not what the first
measurements on this project did (DESIGN.md): there the anchor was read once, at the prompt's last
token, and the vector was then applied as a static vector is, to every token of the prompt and the
answer, or not at all. This module builds that arm from the same program, so the compile's table
shows what deciding per token costs or saves.

The two differ in two ways, and the table measures both together: per token, a strategy steers only
where its anchor is open (the prompt's tail and some answer tokens, not the prompt's body), and an
anchor may close part way through an answer or open late in a benign one.

Each strategy decides for itself: a prompt is answered with the always-on vectors (``strength *
direction``, what a fully open gate writes) of exactly the strategies whose anchors are open (at least
``gate_report.OPEN``) at its last token, and by the base model when none is."""

from __future__ import annotations

from typing import Sequence

from masteer.runtime import SteeringAdapter

from .refusal_table import Routed
from .gate_report import OPEN, prompt_openings
from ..program.steering_program import Program

BASE_ROUTE = "none open"


def always_on(program: Program, names: Sequence[str], like: SteeringAdapter) -> SteeringAdapter:
    """The named strategies of ``program`` as always-on vectors at their strengths, in an adapter for the
    same base model as ``like`` (an open gate writes at most ``strength * direction``, anchors.py)."""
    adapter = SteeringAdapter(like.base_model_name_or_path, like.fingerprint, like.host_form, like.activation,
                              provenance=dict(like.provenance))
    chosen = set(names)
    for s in program.strategies:
        if s.name in chosen:
            adapter.add_additive(s.layer, s.name, direction=s.direction, strength=s.strength, issue=s.issue,
                                 algorithm=s.algorithm, metadata={"decided": "per prompt"})
    return adapter


def open_at_prompt_end(model, tokenizer, gated: SteeringAdapter, prompts: Sequence[str],
                       batch_size: int = 16) -> list[tuple[str, ...]]:
    """Per prompt, the strategies whose anchors are open at its last token (in the adapter's order)."""
    last = prompt_openings(model, tokenizer, gated, prompts, batch_size)
    return [tuple(name for name, values in last.items() if values[i] >= OPEN) for i in range(len(prompts))]


def decided_per_prompt(model, tokenizer, program: Program, gated: SteeringAdapter, prompts: Sequence[str],
                       batch_size: int = 16) -> Routed:
    """The program as an arm that decides once per prompt (module docstring): one route per distinct set of
    open strategies, the base model where none is open."""
    decisions = open_at_prompt_end(model, tokenizer, gated, prompts, batch_size)
    adapters: dict[str, SteeringAdapter | None] = {BASE_ROUTE: None}
    route: dict[str, str] = {}
    for prompt, names in zip(prompts, decisions):
        key = " + ".join(names) if names else BASE_ROUTE
        if key not in adapters:
            adapters[key] = always_on(program, names, gated)
        route[prompt] = key
    return Routed(adapters=adapters, route=route)
