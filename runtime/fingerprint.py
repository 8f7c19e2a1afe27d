"""A base-model fingerprint, checked when an adapter is attached.

Steering directions are only meaningful in the residual basis of the model they were fitted on;
the same architecture with other weights (another fine-tune, another seed) silently produces
garbage. The fingerprint records the shape of the model and a few statistics of real weight rows.
The statistics are compared with a loose relative tolerance so that loading the same weights in
bfloat16 or float16 still matches, while any other checkpoint does not.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .hosts import decoder_layers, host_layout, intermediate_size, mlp_module

PROBE_RTOL = 2e-2


@dataclass(frozen=True)
class Fingerprint:
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    weight_probe: tuple[float, ...]

    @property
    def digest(self) -> str:
        rounded = [float(f"{v:.3g}") for v in self.weight_probe]
        return hashlib.sha256(json.dumps(rounded).encode()).hexdigest()[:12]

    def describe(self) -> str:
        return (f"{self.architecture} (model_type={self.model_type}, hidden={self.hidden_size}, "
                f"layers={self.num_layers}, mlp={self.intermediate_size}, vocab={self.vocab_size}, "
                f"weights={self.digest})")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["weight_probe"] = list(self.weight_probe)
        data["digest"] = self.digest
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Fingerprint":
        fields = {k: data[k] for k in ("architecture", "model_type", "hidden_size", "num_layers",
                                         "intermediate_size", "vocab_size")}
        return cls(**fields, weight_probe=tuple(float(v) for v in data["weight_probe"]))

    def matches(self, other: "Fingerprint") -> bool:
        same_shape = (self.model_type, self.hidden_size, self.num_layers, self.intermediate_size,
                      self.vocab_size) == (other.model_type, other.hidden_size, other.num_layers,
                                           other.intermediate_size, other.vocab_size)
        if not same_shape or len(self.weight_probe) != len(other.weight_probe):
            return False
        return all(math.isclose(a, b, rel_tol=PROBE_RTOL, abs_tol=1e-3)
                   for a, b in zip(self.weight_probe, other.weight_probe))


def _row_stats(weight: torch.Tensor, rows: int = 4) -> list[float]:
    block = weight.detach()[:rows].float().cpu()
    return [float(v) for pair in zip(block.norm(dim=-1), block.abs().max(dim=-1).values) for v in pair]


def _mlp_out_weight(model: nn.Module, layer: int) -> torch.Tensor:
    layout = host_layout(model)
    weight = getattr(mlp_module(model, layer), layout.out_proj).weight
    return weight if layout.conv1d else weight.T  # rows indexed by the MLP's hidden units


def model_fingerprint(model: nn.Module) -> Fingerprint:
    cfg = model.config
    architecture = (getattr(cfg, "architectures", None) or [type(model).__name__])[0]
    last = len(decoder_layers(model)) - 1
    probe = (_row_stats(model.get_input_embeddings().weight)
             + _row_stats(_mlp_out_weight(model, 0)) + _row_stats(_mlp_out_weight(model, last)))
    return Fingerprint(
        architecture=str(architecture),
        model_type=str(cfg.model_type),
        hidden_size=int(cfg.hidden_size),
        num_layers=len(decoder_layers(model)),
        intermediate_size=intermediate_size(model),
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),
        weight_probe=tuple(probe),
    )
