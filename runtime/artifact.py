"""The masteer adapter: a PEFT-style folder, its typed in-memory form, and its validation.

Folder layout (PEFT conventions, no pickle anywhere)::

    adapter_config.json         format version, base model, fingerprint, host form,
                                per-layer strategies, provenance, headline metrics
    adapter_model.safetensors   tensors named ``layers.{L}.{kind}.{part}``
    README.md                   Hub model card with front matter

Strategies of one layer and one kind share a tensor block; a strategy's row in that block is its
position among the layer's strategies of the same kind, so the config alone says which row is whose.
Loading validates everything a reader would otherwise trip over later: an unknown format version,
missing or extra tensors, wrong shapes, NaN, a truncated weights file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_directory
from .errors import AdapterFormatError
from .fingerprint import Fingerprint
from .hosts import GATED, PLAIN

FORMAT_NAME = "masteer-adapter"
FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"

NEURON = "neuron"      # a gated steering neuron: fires where its anchor says, bakes by concatenation
ADDITIVE = "additive"  # an always-on vector added to the MLP output (static steering)
KINDS = (NEURON, ADDITIVE)


@dataclass
class StrategySpec:
    """One compiled strategy: what it is for and how it is lowered; its tensors live in the block."""
    name: str
    layer: int
    kind: str
    strength: float
    issue: str = ""
    algorithm: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "strength": self.strength, "issue": self.issue,
                "algorithm": self.algorithm, "metadata": self.metadata}


def tensor_name(layer: int, kind: str, part: str) -> str:
    return f"layers.{layer}.{kind}.{part}"


def _parts(kind: str, host_form: str) -> tuple[str, ...]:
    if kind == ADDITIVE:
        return ("direction",)
    return ("gate", "up" if host_form == GATED else "bias", "direction")


@dataclass
class SteeringAdapter:
    base_model_name_or_path: str
    fingerprint: Fingerprint
    host_form: str
    activation: str
    strategies: list[StrategySpec] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # ----------------------------------------------------------------- building
    def add_neuron(self, layer: int, name: str, *, gate: torch.Tensor, direction: torch.Tensor,
                   strength: float, up: torch.Tensor | None = None, bias: float | torch.Tensor | None = None,
                   issue: str = "", algorithm: str = "", metadata: dict | None = None) -> StrategySpec:
        """Append a steering neuron ``z = act(g.x) * (u.x)`` (gated) or ``act(g.x + b)`` (plain)."""
        if self.host_form == GATED:
            if up is None or bias is not None:
                raise AdapterFormatError(f"strategy {name!r}: a gated host needs `up` and no `bias`")
            rows = {"gate": gate, "up": up, "direction": direction}
        else:
            if bias is None or up is not None:
                raise AdapterFormatError(f"strategy {name!r}: a plain host needs `bias` and no `up`")
            rows = {"gate": gate, "bias": torch.as_tensor(bias, dtype=torch.float32).reshape(()),
                    "direction": direction}
        return self._append(layer, NEURON, name, rows, strength, issue, algorithm, metadata)

    def add_additive(self, layer: int, name: str, *, direction: torch.Tensor, strength: float,
                     issue: str = "", algorithm: str = "", metadata: dict | None = None) -> StrategySpec:
        """Append an always-on vector ``strength * direction`` added at the layer's MLP output."""
        return self._append(layer, ADDITIVE, name, {"direction": direction}, strength, issue, algorithm,
                            metadata)

    def _append(self, layer, kind, name, rows, strength, issue, algorithm, metadata) -> StrategySpec:
        if any(s.name == name for s in self.strategies):
            raise AdapterFormatError(f"a strategy named {name!r} already exists in this adapter")
        for part, row in rows.items():
            row = row.detach().to(torch.float32).cpu()
            key = tensor_name(layer, kind, part)
            block = self.tensors.get(key)
            self.tensors[key] = row[None] if block is None else torch.cat([block, row[None]])
        spec = StrategySpec(name=name, layer=int(layer), kind=kind, strength=float(strength), issue=issue,
                            algorithm=algorithm, metadata=dict(metadata or {}))
        self.strategies.append(spec)
        return spec

    # ----------------------------------------------------------------- views
    @property
    def layers(self) -> list[int]:
        return sorted({s.layer for s in self.strategies})

    def layer_strategies(self, layer: int, kind: str) -> list[StrategySpec]:
        return [s for s in self.strategies if s.layer == layer and s.kind == kind]

    def block(self, layer: int, kind: str) -> dict[str, torch.Tensor] | None:
        if not self.layer_strategies(layer, kind):
            return None
        return {part: self.tensors[tensor_name(layer, kind, part)] for part in _parts(kind, self.host_form)}

    def strengths(self, layer: int, kind: str) -> torch.Tensor:
        return torch.tensor([s.strength for s in self.layer_strategies(layer, kind)], dtype=torch.float32)

    def strategy(self, name: str) -> StrategySpec:
        for spec in self.strategies:
            if spec.name == name:
                return spec
        raise KeyError(f"no strategy named {name!r}; have {[s.name for s in self.strategies]}")

    # ----------------------------------------------------------------- config
    def config_dict(self) -> dict:
        from . import __version__
        layers: dict[str, list] = {}
        for spec in sorted(self.strategies, key=lambda s: s.layer):
            layers.setdefault(str(spec.layer), []).append(spec.to_dict())
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "peft_type": "MASTEER",
            "masteer_version": __version__,
            "base_model_name_or_path": self.base_model_name_or_path,
            "fingerprint": self.fingerprint.to_dict(),
            "host": {"form": self.host_form, "activation": self.activation,
                     "model_type": self.fingerprint.model_type},
            "layers": layers,
            "provenance": self.provenance,
            "metrics": self.metrics,
        }

    def validate(self, where: str = "adapter") -> None:
        """Raise AdapterFormatError naming the first inconsistency between config and tensors."""
        if self.host_form not in (GATED, PLAIN):
            raise AdapterFormatError(f"{where}: host form {self.host_form!r} is neither 'gated' nor 'plain'")
        hidden = self.fingerprint.hidden_size
        expected: set[str] = set()
        for spec in self.strategies:
            if spec.kind not in KINDS:
                raise AdapterFormatError(f"{where}: strategy {spec.name!r} has unknown kind {spec.kind!r}; "
                                         f"known: {', '.join(KINDS)}")
            if not 0 <= spec.layer < self.fingerprint.num_layers:
                raise AdapterFormatError(f"{where}: strategy {spec.name!r} is on layer {spec.layer}, but the "
                                         f"base model has {self.fingerprint.num_layers} layers")
            if not math.isfinite(spec.strength):
                raise AdapterFormatError(f"{where}: strategy {spec.name!r} has strength {spec.strength}")
        for layer in self.layers:
            for kind in KINDS:
                count = len(self.layer_strategies(layer, kind))
                if not count:
                    continue
                for part in _parts(kind, self.host_form):
                    key = tensor_name(layer, kind, part)
                    expected.add(key)
                    if key not in self.tensors:
                        raise AdapterFormatError(f"{where}: tensor {key!r} is missing (layer {layer} has "
                                                 f"{count} {kind} strateg{'y' if count == 1 else 'ies'})")
                    shape = (count,) if part == "bias" else (count, hidden)
                    tensor = self.tensors[key]
                    if tuple(tensor.shape) != shape:
                        raise AdapterFormatError(f"{where}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                                                 f"expected {shape}")
                    if not torch.isfinite(tensor).all():
                        bad = int((~torch.isfinite(tensor)).sum())
                        raise AdapterFormatError(f"{where}: tensor {key!r} holds {bad} NaN/Inf value(s)")
        extra = sorted(set(self.tensors) - expected)
        if extra:
            raise AdapterFormatError(f"{where}: tensors {extra} belong to no strategy in the config")

    # ----------------------------------------------------------------- disk
    def save(self, path: str | os.PathLike, card: str | None = None,
             extra_files: dict[str, str] | None = None) -> Path:
        """Write the folder atomically; an interrupted save leaves nothing behind.

        ``extra_files`` (name -> text) go into the same folder in the same rename, so a compile's
        samples and report can never disagree with the adapter beside them.
        """
        from .modelcard import adapter_card
        self.validate()
        path = Path(path)
        with atomic_directory(path) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp / WEIGHTS_NAME),
                      metadata={"format": "pt", "masteer_format_version": str(self.format_version)})
            (tmp / CARD_NAME).write_text(card if card is not None else adapter_card(self))
            for name, text in (extra_files or {}).items():
                if name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) or Path(name).name != name:
                    raise AdapterFormatError(f"extra file name {name!r} is reserved or not a plain file name")
                (tmp / name).write_text(text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SteeringAdapter":
        path = Path(path)
        if not path.is_dir():
            raise AdapterFormatError(f"adapter folder {path} does not exist" if not path.exists()
                                     else f"{path} is not a folder (an adapter is a folder)")
        config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        for needed in (config_file, weights_file):
            if not needed.is_file():
                raise AdapterFormatError(f"{needed} is missing: {path} is not a complete masteer adapter")
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AdapterFormatError(f"{config_file} is not valid JSON: {exc}") from None
        adapter = cls._from_config(config, str(config_file))
        try:
            adapter.tensors = load_file(str(weights_file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdapterFormatError(f"{weights_file} cannot be read (truncated or corrupt?): {exc}") from None
        adapter.validate(where=str(path))
        return adapter

    @classmethod
    def _from_config(cls, config: Any, where: str) -> "SteeringAdapter":
        if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
            raise AdapterFormatError(f"{where}: not a masteer adapter config (field 'format' must be "
                                     f"{FORMAT_NAME!r})")
        version = config.get("format_version")
        if not isinstance(version, int):
            raise AdapterFormatError(f"{where}: field 'format_version' must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise AdapterFormatError(f"{where}: format_version {version} was written by a newer masteer; "
                                     f"this one reads up to {FORMAT_VERSION}. Upgrade masteer.")
        try:
            fingerprint = Fingerprint.from_dict(config["fingerprint"])
            host = config["host"]
            strategies = [
                StrategySpec(name=s["name"], layer=int(layer), kind=s["kind"], strength=float(s["strength"]),
                             issue=s.get("issue", ""), algorithm=s.get("algorithm", ""),
                             metadata=s.get("metadata", {}))
                for layer, specs in config["layers"].items() for s in specs
            ]
            return cls(base_model_name_or_path=config.get("base_model_name_or_path", ""),
                       fingerprint=fingerprint, host_form=host["form"], activation=host.get("activation", ""),
                       strategies=strategies, provenance=config.get("provenance", {}),
                       metrics=config.get("metrics", {}), format_version=version)
        except KeyError as exc:
            raise AdapterFormatError(f"{where}: required field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise AdapterFormatError(f"{where}: malformed field: {exc}") from None
