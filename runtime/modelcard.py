"""Hub model cards for adapters and baked checkpoints (YAML front matter + a readable body)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from .hosts import intermediate_size
from .kinds import ABLATION, ADDITIVE, KINDS, NEURON, ROTATION

if TYPE_CHECKING:   # the artifact writes cards, so the card module must not import it at run time
    from .artifact import SteeringAdapter


def _front_matter(fields: dict) -> str:
    # JSON scalars and lists are valid YAML, so no YAML writer is needed.
    lines = ["---"] + [f"{key}: {json.dumps(value)}" for key, value in fields.items() if value not in (None, [], {})]
    return "\n".join(lines + ["---", ""])


KIND_NOTES = {
    NEURON: "an extra MLP neuron of the host's own form that fires where its anchor says",
    ADDITIVE: "an always-on vector added to the MLP output",
    ROTATION: "an angle-preserving rotation of the layer's output toward a direction, strength in radians "
              "(adapter only: no exact lowering to a checkpoint)",
    ABLATION: "directional ablation: directions projected out of every write into the residual stream "
              "(bakes by weight orthogonalisation)",
}


def _strength(s) -> str:
    if s.kind == ROTATION:
        return f"{s.strength:g} rad ({math.degrees(s.strength):.3g} deg)"
    return f"{s.strength:g}"


def _strategy_table(adapter: SteeringAdapter) -> str:
    rows = ["| layer | strategy | issue | algorithm | lowering | strength |", "|---|---|---|---|---|---|"]
    for s in sorted(adapter.strategies, key=lambda s: (-1 if s.layer is None else s.layer, s.name)):
        layer = "all" if s.layer is None else s.layer
        rows.append(f"| {layer} | {s.name} | {s.issue} | {s.algorithm} | {s.kind} | {_strength(s)} |")
    return "\n".join(rows)


def _summary(adapter: SteeringAdapter) -> str:
    count = len(adapter.strategies)
    where = [f"on layer(s) {', '.join(map(str, adapter.layers))}"] if adapter.layers else []
    if adapter.ablation_strategy is not None:
        where.append("one adapter-wide ablation")
    kinds = "".join(f"- `{k}`: {KIND_NOTES[k]}\n" for k in KINDS if adapter.strategies_of_kind(k))
    return f"{count} strateg{'y' if count == 1 else 'ies'}{''.join(' ' + w for w in where[:1])}" \
        f"{''.join(' and ' + w for w in where[1:])}.\n\n{kinds}"


def _metrics_table(metrics: dict) -> str:
    table = metrics.get("table")
    if not table:
        return ""
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        lines.append("| " + " | ".join(str(row[c]) for c in columns) + " |")
    note = metrics.get("note", "")
    return "## Measured\n\n" + "\n".join(lines) + (f"\n\n{note}" if note else "") + "\n\n"


def adapter_card(adapter: SteeringAdapter) -> str:
    issues = sorted({s.issue for s in adapter.strategies if s.issue})
    front = _front_matter({
        "base_model": adapter.base_model_name_or_path,
        "library_name": "masteer",
        "tags": ["masteer", "steering", "representation-engineering", *issues],
    })
    return (f"{front}\n# masteer steering adapter\n\n"
            f"A gating steering adapter for `{adapter.base_model_name_or_path}` compiled by masteer: "
            f"{_summary(adapter)}\n{_strategy_table(adapter)}\n\n"
            f"{_metrics_table(adapter.metrics)}"
            "## Use\n\n```python\nfrom transformers import AutoModelForCausalLM\n"
            "from masteer.runtime import SteeredModel\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({adapter.base_model_name_or_path!r})\n"
            "steered = SteeredModel.from_pretrained(model, 'path/to/this/adapter')\n```\n\n"
            f"Provenance: `{json.dumps(adapter.provenance)}`\n")


def _scale_note(scale: float) -> str:
    if scale == 1.0:
        return ""
    reversed_ = " A negative scale reverses every strategy's direction." if scale < 0 else ""
    return (f"Baked at scale {scale:g}: every strength in the table below was multiplied by {scale:g} before "
            f"merging (`baked_scale` in `masteer_program.json`).{reversed_}\n\n")


def _width_note(model, adapter: SteeringAdapter | None) -> str:
    """What the widened MLP holds, so a reader of the config's odd-looking width knows it is on purpose."""
    if adapter is None or not adapter.strategies_of_kind(NEURON):
        return ""
    return (f"Its MLPs are {intermediate_size(model)} wide: the base model's neurons, the steering neurons, and "
            "zero neurons that compute exactly nothing (on layers with fewer steering neurons, and padding the "
            "width to a multiple of 64, which GPUs run much faster; `masteer bake --pad-to 0` leaves it out). ")


def baked_card(model, adapter: SteeringAdapter | None, scale: float = 1.0) -> str:
    base = adapter.base_model_name_or_path if adapter else getattr(model.config, "_name_or_path", "")
    front = _front_matter({"base_model": base, "library_name": "transformers",
                           "tags": ["masteer", "steering", "baked"]})
    body = (f"{front}\n# Baked masteer checkpoint\n\nThe base model `{base}` with a masteer steering program "
            "merged into its weights (widened MLPs; orthogonalised residual writers for an ablation). "
            + _width_note(model, adapter) + "It loads with plain `transformers` "
            "(`AutoModelForCausalLM.from_pretrained`), and so with vLLM and other engines: no masteer code "
            "is needed. The program it holds is in `masteer_program.json`.\n\n")
    body += _scale_note(scale)
    if adapter is not None:
        body += _strategy_table(adapter) + "\n\n" + _metrics_table(adapter.metrics)
    return body
