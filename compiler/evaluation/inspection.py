"""Transparency: which strategies fire on which tokens of a text, and how strongly.

``masteer inspect ADAPTER "text"`` prints this table; :func:`inspect_text` returns the same numbers.
The text is run through the steered model once (so a strategy on a later layer sees the steering of
earlier ones, as in generation). With ``chat=True`` it is formatted as a user turn followed by the
assistant header, as prompts are during a compile; with ``generate=N`` the model also answers it
(greedy, adapter attached) and the answer's tokens are shown too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from masteer.runtime import SteeredModel, SteeringAdapter

from masteer.runtime.errors import MasteerError

from ..capture.activations import encode_prompt
from ..common.model_checks import check_text, context_length


@dataclass
class Inspection:
    tokens: list[str]                          # decoded token by token
    prompt_length: int                         # tokens before the generated answer
    openings: dict[str, list[float]] = field(default_factory=dict)   # strategy -> opening per token
    layers: dict[str, int] = field(default_factory=dict)

    def fired(self, threshold: float = 0.5) -> dict[str, int]:
        """How many tokens each strategy is open on (opening >= threshold)."""
        return {name: sum(v >= threshold for v in values) for name, values in self.openings.items()}

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "prompt_length": self.prompt_length, "layers": self.layers,
                "openings": {k: [round(v, 4) for v in vals] for k, vals in self.openings.items()}}

    def table(self, threshold: float = 0.5) -> str:
        names = list(self.openings)
        short = [n if len(n) <= 24 else n[:11] + ".." + n[-11:] for n in names]
        lines = ["| # | token | " + " | ".join(f"{s} (L{self.layers[n]})" for s, n in zip(short, names)) + " |",
                 "|---|---|" + "---|" * len(names)]
        for i, token in enumerate(self.tokens):
            cells = []
            for n in names:
                v = self.openings[n][i]
                cells.append(f"**{v:.2f}**" if v >= threshold else (f"{v:.2f}" if abs(v) >= 0.005 else "."))
            marker = "→" if i == self.prompt_length else ""
            lines.append(f"| {marker}{i} | {token!r} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


@torch.no_grad()
def inspect_text(model, tokenizer, adapter: SteeringAdapter, text: str, chat: bool = True, generate: int = 0,
                 check_fingerprint: bool = True) -> Inspection:
    """Per-token openings of every gated strategy of ``adapter`` on ``text`` (module docstring)."""
    check_text(text, "the text to inspect")
    ids = encode_prompt(tokenizer, text) if chat else tokenizer(text, add_special_tokens=True)["input_ids"]
    limit = context_length(model)
    if limit is not None and len(ids) + generate > limit:
        raise MasteerError(f"the text to inspect is {len(ids)} tokens{f' plus {generate} to generate' if generate else ''}; "
                           f"the model reads at most {limit}: shorten it")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    steered = SteeredModel(model, adapter, check_fingerprint=check_fingerprint)
    try:
        if generate > 0:
            input_ids = steered.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         max_new_tokens=generate, do_sample=False,
                                         pad_token_id=tokenizer.pad_token_id)
        openings = steered.openings(input_ids=input_ids)
    finally:
        steered.detach()
    row = input_ids[0].tolist()
    return Inspection(tokens=[tokenizer.decode([t]) for t in row], prompt_length=len(ids),
                      openings={name: values[0].tolist() for name, values in openings.items()},
                      layers={s.strategy: s.layer for s in adapter.strategies if s.layer is not None})
