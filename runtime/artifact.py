"""The masteer adapter: a PEFT-style folder, its typed in-memory form, and its validation.

Folder layout (PEFT conventions, no pickle anywhere)::

    adapter_config.json         format version, base model, fingerprint, host form,
                                per-layer strategies ("layers"), adapter-wide strategies ("global"),
                                provenance, headline metrics
    adapter_model.safetensors   tensors named ``layers.{L}.{kind}.{part}``, plus ``ablation.direction``
    README.md                   Hub model card with front matter

Strategies of one layer and one kind share a tensor block; a strategy's row in that block is its
position among the layer's strategies of the same kind, so the config alone says which row is whose.
Loading validates everything a reader would otherwise trip over later: an unknown format version,
missing or extra tensors, wrong shapes, NaN, non-unit directions, a truncated weights file.

Strategy kinds, and what ``strength`` means for each (``SteeredModel.set_scale`` multiplies it):

- ``neuron``   (per layer) a gated steering neuron; strength scales its direction. Bakes by concatenation.
- ``additive`` (per layer) ``strength * direction`` added to the MLP output. Bakes to an MLP output bias.
- ``rotation`` (per layer) angle-preserving steering at the decoder layer's output: each token's hidden
  state is turned toward the unit direction by ``strength`` radians, its norm kept. No exact linear
  lowering: adapter only. Tensor ``layers.{L}.rotation.direction`` [K, H], unit rows, applied in row order.
- ``ablation`` (adapter-wide, at most one per adapter) directional ablation: the K orthonormal rows of
  ``ablation.direction`` [K, H] are projected out of every write into the residual stream,
  ``x <- x - strength * (x R^T) R`` (strength 1 removes the component, 0 keeps it). It lives in the
  config's ``"global"`` list, not under a layer. Bakes by weight orthogonalisation.

Neurons that work together (the two neurons of a ramp gate) share a ``group``, the strategy they
implement; each neuron's ``opening`` weight says how its output counts toward that strategy's
*opening*: ``sum_n opening_n * z_n``, 0 when silent and 1 at full strength. The runtime reports
openings per token (``SteeredModel.openings``), and uses them for ``selection``:

- ``"independent"`` (default): every neuron computes on its own; bakes by concatenation.
- ``"exclusive"``: per token and layer only the group with the highest anchor score fires (the sum
  of its positively weighted neurons' ``opening * z``); the other groups' neurons are silenced. An
  argmax has no expression in a widened MLP, so such an adapter is adapter-only.

Format version 2 added ``rotation``, ``ablation`` and the ``"global"`` list; version 3 added
``group``/``opening`` and ``selection``. Older folders still load; a folder is written with the
lowest version that can express it.
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
from safetensors.torch import load_file, save

from .atomic import atomic_directory
from .bounds import strength_problem
from .errors import AdapterFormatError
from .fingerprint import Fingerprint
from .hosts import GATED, PLAIN
from .kinds import ABLATION, ADDITIVE, GLOBAL_KINDS, KINDS, LAYER_KINDS, NEURON, ROTATION  # noqa: F401
from .modelcard import adapter_card
from .version import __version__

FORMAT_NAME = "masteer-adapter"
FORMAT_VERSION = 3  # the newest version this runtime reads, and the one it writes
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
PROGRAM_NAME = "masteer_program.json"   # what a baked checkpoint holds beside its weights (bake.py)
# PEFT and transformers read ``peft_type`` to pick a PEFT config class; an unknown one stops them with a KeyError
# that prints this value, so the value is the one line a user pointing them at this folder needs.
PEFT_TYPE = ("MASTEER: this folder is a masteer steering adapter, not a PEFT one. Attach it with "
             "masteer.runtime.SteeredModel.from_pretrained(model, folder), or lower it for plain transformers with "
             "`masteer bake` (or, for always-on and ablation programs, to PEFT LoRA with `masteer export lora`)")

ABLATION_TENSOR = "ablation.direction"
UNIT_TOL = 1e-4  # how far a stored direction may be from unit length (or orthogonality), float32 rounding
INDEPENDENT = "independent"  # every gate decides on its own (bakeable)
EXCLUSIVE = "exclusive"      # at most one strategy group per layer fires per token (adapter only)
SELECTIONS = (INDEPENDENT, EXCLUSIVE)


@dataclass
class StrategySpec:
    """One compiled strategy: what it is for and how it is lowered; its tensors live in the block."""
    name: str
    layer: int | None  # None for adapter-wide kinds (ablation)
    kind: str
    strength: float
    issue: str = ""
    algorithm: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    group: str = ""        # the strategy this neuron implements (neurons of one gate share it); "" = its name
    opening: float = 1.0   # weight of this neuron's output in its group's opening (see the module docstring)

    @property
    def strategy(self) -> str:
        return self.group or self.name

    def to_dict(self) -> dict:
        data = {"name": self.name, "kind": self.kind, "strength": self.strength, "issue": self.issue,
                "algorithm": self.algorithm, "metadata": self.metadata}
        if self.group:
            data["group"] = self.group
        if self.opening != 1.0:
            data["opening"] = self.opening
        return data


def tensor_name(layer: int, kind: str, part: str) -> str:
    return f"layers.{layer}.{kind}.{part}"


def _parts(kind: str, host_form: str) -> tuple[str, ...]:
    if kind in (ADDITIVE, ROTATION):
        return ("direction",)
    return ("gate", "up" if host_form == GATED else "bias", "direction")


def stable_safetensors(data: bytes) -> bytes:
    """A safetensors file's bytes with its metadata keys in sorted order. safetensors writes its metadata map in
    no fixed order (a hash map: two saves of one adapter in one process came out in either order), so the same
    adapter saved twice differed byte for byte, and a content hash (the Hub's, a user's checksum) with it. The
    header keeps its length (the same keys and values; safetensors pads it with spaces), the tensors their bytes."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    metadata = header.get("__metadata__")
    if not metadata:
        return data
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) > length:   # not the compact form this was written in: leave it as it is
        return data
    return data[:8] + text.ljust(length, b" ") + data[8 + length:]


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with the same bytes for the same tensors and metadata
    (:func:`stable_safetensors`)."""
    Path(path).write_bytes(stable_safetensors(save(tensors, metadata=metadata)))


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
    format_version: int = 1  # the version read from disk; a save writes max(this, the lowest that expresses it)
    selection: str = INDEPENDENT

    # ----------------------------------------------------------------- building
    def add_neuron(self, layer: int, name: str, *, gate: torch.Tensor, direction: torch.Tensor,
                   strength: float, up: torch.Tensor | None = None, bias: float | torch.Tensor | None = None,
                   issue: str = "", algorithm: str = "", metadata: dict | None = None, group: str = "",
                   opening: float = 1.0) -> StrategySpec:
        """Append a steering neuron ``z = act(g.x) * (u.x)`` (gated) or ``act(g.x + b)`` (plain).

        ``group`` names the strategy the neuron belongs to (several neurons may implement one gate) and
        ``opening`` its weight in that strategy's opening (module docstring)."""
        if not math.isfinite(opening):
            raise AdapterFormatError(f"strategy {name!r}: opening weight must be finite, got {opening}")
        if self.host_form == GATED:
            if up is None or bias is not None:
                raise AdapterFormatError(f"strategy {name!r}: a gated host needs `up` and no `bias`")
            rows = {"gate": gate, "up": up, "direction": direction}
        else:
            if bias is None or up is not None:
                raise AdapterFormatError(f"strategy {name!r}: a plain host needs `bias` and no `up`")
            rows = {"gate": gate, "bias": torch.as_tensor(bias, dtype=torch.float32).reshape(()),
                    "direction": direction}
        spec = self._append(layer, NEURON, name, rows, strength, issue, algorithm, metadata)
        spec.group, spec.opening = group, float(opening)
        return spec

    def add_additive(self, layer: int, name: str, *, direction: torch.Tensor, strength: float,
                     issue: str = "", algorithm: str = "", metadata: dict | None = None) -> StrategySpec:
        """Append an always-on vector ``strength * direction`` added at the layer's MLP output."""
        return self._append(layer, ADDITIVE, name, {"direction": direction}, strength, issue, algorithm,
                            metadata)

    def add_rotation(self, layer: int, name: str, *, direction: torch.Tensor, angle: float | None = None,
                     degrees: float | None = None, normalize: bool = False, issue: str = "", algorithm: str = "",
                     metadata: dict | None = None) -> StrategySpec:
        """Append an angle-preserving rotation at the output of decoder layer ``layer``.

        Each token's hidden state ``h`` is turned by ``angle`` radians (or ``degrees``; give exactly one)
        toward the unit ``direction`` ``d`` inside the plane spanned by ``d`` and ``h``'s component
        orthogonal to ``d``; ``|h|`` is kept. A token already closer to ``d`` than the angle ends exactly
        on ``d`` (no overshoot); a negative angle turns away from ``d``, at most to ``-d``. The stored
        strength is the angle in radians. ``normalize=True`` rescales ``direction`` to unit length;
        otherwise a non-unit direction is an error. Rotations have no exact linear lowering: an adapter
        holding one cannot be baked.
        """
        if (angle is None) == (degrees is None):
            raise AdapterFormatError(f"strategy {name!r}: give exactly one of `angle` (radians) and `degrees`")
        radians = float(angle) if angle is not None else math.radians(float(degrees))
        row = self._direction_rows(direction, name, normalize, orthonormal=False)
        if row.shape[0] != 1:
            raise AdapterFormatError(f"strategy {name!r}: a rotation has one direction of shape "
                                     f"[{self.fingerprint.hidden_size}], got {tuple(direction.shape)}")
        return self._append(layer, ROTATION, name, {"direction": row[0]}, radians, issue, algorithm, metadata)

    def add_ablation(self, name: str, *, direction: torch.Tensor, strength: float = 1.0, normalize: bool = False,
                     issue: str = "", algorithm: str = "", metadata: dict | None = None) -> StrategySpec:
        """Set the adapter's directional ablation: ``direction`` [H] or [K, H] orthonormal rows ``R``.

        At every write into the residual stream (embeddings, attention outputs, MLP outputs, the MLP's
        steering deltas included) the runtime computes ``x <- x - strength * (x R^T) R``; strength 1 (the
        default) removes the directions completely. It is adapter-wide, so an adapter holds at most one
        ablation strategy; put several directions into one [K, H] tensor. ``normalize=True``
        orthonormalises the rows (QR, each row keeps its orientation); otherwise rows that are not
        orthonormal are an error.
        """
        current = self.ablation_strategy
        if current is not None:
            raise AdapterFormatError(f"strategy {name!r}: this adapter already has the ablation strategy "
                                     f"{current.name!r}; an adapter holds at most one ablation direction set "
                                     f"(put all K directions into one [K, H] tensor)")
        if any(s.name == name for s in self.strategies):
            raise AdapterFormatError(f"a strategy named {name!r} already exists in this adapter")
        rows = self._direction_rows(direction, name, normalize, orthonormal=True)
        self.tensors[ABLATION_TENSOR] = rows
        spec = StrategySpec(name=name, layer=None, kind=ABLATION, strength=float(strength), issue=issue,
                            algorithm=algorithm, metadata=dict(metadata or {}))
        self.strategies.append(spec)
        return spec

    def _direction_rows(self, direction: torch.Tensor, name: str, normalize: bool, orthonormal: bool) -> torch.Tensor:
        rows = torch.as_tensor(direction).detach().to(torch.float32).cpu()
        rows = rows[None] if rows.ndim == 1 else rows
        hidden = self.fingerprint.hidden_size
        if rows.ndim != 2 or rows.shape[1] != hidden or rows.shape[0] < 1:
            raise AdapterFormatError(f"strategy {name!r}: direction has shape {tuple(direction.shape)}, expected "
                                     f"[{hidden}]" + (f" or [K, {hidden}]" if orthonormal else ""))
        if not torch.isfinite(rows).all():
            raise AdapterFormatError(f"strategy {name!r}: direction holds NaN/Inf values")
        if normalize:
            if (rows.norm(dim=-1) == 0).any():
                raise AdapterFormatError(f"strategy {name!r}: a zero direction has no orientation to normalise")
            rows = orthonormal_rows(rows, name) if orthonormal else rows / rows.norm(dim=-1, keepdim=True)
        problem = direction_problem(rows, orthonormal)
        if problem:
            raise AdapterFormatError(f"strategy {name!r}: {problem} (pass normalize=True to fix it)")
        return rows

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
        """Layers with per-layer strategies (neuron, additive, rotation); ablation is on no single layer."""
        return sorted({s.layer for s in self.strategies if s.layer is not None})

    @property
    def ablation_strategy(self) -> StrategySpec | None:
        found = [s for s in self.strategies if s.kind == ABLATION]
        return found[0] if found else None

    @property
    def ablation_directions(self) -> torch.Tensor | None:
        """The orthonormal rows [K, H] projected out of the residual stream, or None."""
        return self.tensors[ABLATION_TENSOR] if self.ablation_strategy is not None else None

    def strategies_of_kind(self, kind: str) -> list[StrategySpec]:
        return [s for s in self.strategies if s.kind == kind]

    def layer_strategies(self, layer: int, kind: str) -> list[StrategySpec]:
        return [s for s in self.strategies if s.layer == layer and s.kind == kind]

    def block(self, layer: int, kind: str) -> dict[str, torch.Tensor] | None:
        if not self.layer_strategies(layer, kind):
            return None
        return {part: self.tensors[tensor_name(layer, kind, part)] for part in _parts(kind, self.host_form)}

    def strengths(self, layer: int, kind: str) -> torch.Tensor:
        return torch.tensor([s.strength for s in self.layer_strategies(layer, kind)], dtype=torch.float32)

    def neuron_groups(self, layer: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """(strategy names, group index [K], opening weight [K]) of the layer's neurons, in row order."""
        specs = self.layer_strategies(layer, NEURON)
        names = list(dict.fromkeys(s.strategy for s in specs))
        index = torch.tensor([names.index(s.strategy) for s in specs], dtype=torch.long)
        return names, index, torch.tensor([s.opening for s in specs], dtype=torch.float32)

    def strategy(self, name: str) -> StrategySpec:
        for spec in self.strategies:
            if spec.name == name:
                return spec
        raise KeyError(f"no strategy named {name!r}; have {[s.name for s in self.strategies]}")

    # ----------------------------------------------------------------- config
    def config_dict(self) -> dict:
        layers: dict[str, list] = {}
        for spec in sorted((s for s in self.strategies if s.layer is not None), key=lambda s: s.layer):
            layers.setdefault(str(spec.layer), []).append(spec.to_dict())
        extra = {}
        global_specs = [s.to_dict() for s in self.strategies if s.layer is None]
        if global_specs:
            extra["global"] = global_specs
        # Newer features need a newer reader, even in an adapter first loaded from an older folder.
        needed = 1
        if bool(global_specs) or any(s.kind not in (NEURON, ADDITIVE) for s in self.strategies):
            needed = 2
        if self.selection != INDEPENDENT or any(s.group or s.opening != 1.0 for s in self.strategies):
            needed = 3
            extra["selection"] = self.selection
        return {
            "format": FORMAT_NAME,
            "format_version": max(self.format_version, needed),
            "peft_type": PEFT_TYPE,
            "masteer_version": __version__,
            "base_model_name_or_path": self.base_model_name_or_path,
            "fingerprint": self.fingerprint.to_dict(),
            "host": {"form": self.host_form, "activation": self.activation,
                     "model_type": self.fingerprint.model_type},
            "layers": layers,
            **extra,
            "provenance": self.provenance,
            "metrics": self.metrics,
        }

    def validate(self, where: str = "adapter") -> None:
        """Raise AdapterFormatError naming the first inconsistency between config and tensors."""
        if self.host_form not in (GATED, PLAIN):
            raise AdapterFormatError(f"{where}: host form {self.host_form!r} is neither 'gated' nor 'plain'")
        if self.selection not in SELECTIONS:
            raise AdapterFormatError(f"{where}: selection {self.selection!r} is not one of {', '.join(SELECTIONS)}")
        hidden = self.fingerprint.hidden_size
        expected: set[str] = set()
        names = [s.name for s in self.strategies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise AdapterFormatError(f"{where}: strategy names {dupes} occur more than once")
        for spec in self.strategies:
            if spec.kind not in KINDS:
                raise AdapterFormatError(f"{where}: strategy {spec.name!r} has unknown kind {spec.kind!r}; "
                                         f"known: {', '.join(KINDS)}")
            if spec.kind in GLOBAL_KINDS:
                if spec.layer is not None:
                    raise AdapterFormatError(f"{where}: strategy {spec.name!r} of kind {spec.kind!r} is "
                                             f"adapter-wide: it belongs in the config's \"global\" list, "
                                             f"not on layer {spec.layer}")
            elif spec.layer is None:
                raise AdapterFormatError(f"{where}: strategy {spec.name!r} of kind {spec.kind!r} needs a layer "
                                         f"(only {', '.join(GLOBAL_KINDS)} go in the \"global\" list)")
            elif not 0 <= spec.layer < self.fingerprint.num_layers:
                raise AdapterFormatError(f"{where}: strategy {spec.name!r} is on layer {spec.layer}, but the "
                                         f"base model has {self.fingerprint.num_layers} layers")
            problem = strength_problem(spec.strength)
            if problem:
                raise AdapterFormatError(f"{where}: strategy {spec.name!r}: {problem}")
            if (spec.group or spec.opening != 1.0) and spec.kind != NEURON:
                raise AdapterFormatError(f"{where}: strategy {spec.name!r} of kind {spec.kind!r} has a group or "
                                         f"opening weight; only neurons have them")
            if not math.isfinite(spec.opening):
                raise AdapterFormatError(f"{where}: strategy {spec.name!r} has opening weight {spec.opening}")
        ablations = self.strategies_of_kind(ABLATION)
        if len(ablations) > 1:
            raise AdapterFormatError(f"{where}: ablation strategies {[s.name for s in ablations]}: an adapter "
                                     f"holds at most one ablation direction set")
        if ablations:
            expected.add(ABLATION_TENSOR)
            tensor = self.tensors.get(ABLATION_TENSOR)
            if tensor is None:
                raise AdapterFormatError(f"{where}: tensor {ABLATION_TENSOR!r} is missing (ablation strategy "
                                         f"{ablations[0].name!r})")
            if tensor.ndim != 2 or tensor.shape[1] != hidden or not 1 <= tensor.shape[0] <= hidden:
                raise AdapterFormatError(f"{where}: tensor {ABLATION_TENSOR!r} has shape {tuple(tensor.shape)}, "
                                         f"expected (K, {hidden}) with 1 <= K <= {hidden}")
            _check_finite(tensor, ABLATION_TENSOR, where)
            problem = direction_problem(tensor, orthonormal=True)
            if problem:
                raise AdapterFormatError(f"{where}: tensor {ABLATION_TENSOR!r}: {problem}")
        for layer in self.layers:
            for kind in LAYER_KINDS:
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
                    _check_finite(tensor, key, where)
                    if kind == ROTATION:
                        problem = direction_problem(tensor, orthonormal=False)
                        if problem:
                            raise AdapterFormatError(f"{where}: tensor {key!r}: {problem}")
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
        self.validate()
        path = Path(path)
        with atomic_directory(path) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
            write_safetensors({k: v.contiguous() for k, v in self.tensors.items()}, tmp / WEIGHTS_NAME,
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
        if not config_file.is_file() and (path / PROGRAM_NAME).is_file():
            raise AdapterFormatError(f"{path} is a baked checkpoint, not an adapter: load it as a model "
                                     f"(--model or --checkpoint)")
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
            placed = [(int(layer), s) for layer, specs in config["layers"].items() for s in specs]
            placed += [(None, s) for s in config.get("global", [])]
            strategies = [
                StrategySpec(name=s["name"], layer=layer, kind=s["kind"], strength=float(s["strength"]),
                             issue=s.get("issue", ""), algorithm=s.get("algorithm", ""),
                             metadata=s.get("metadata", {}), group=str(s.get("group", "")),
                             opening=float(s.get("opening", 1.0)))
                for layer, s in placed
            ]
            return cls(base_model_name_or_path=config.get("base_model_name_or_path", ""),
                       fingerprint=fingerprint, host_form=host["form"], activation=host.get("activation", ""),
                       strategies=strategies, provenance=config.get("provenance", {}),
                       metrics=config.get("metrics", {}), format_version=version,
                       selection=config.get("selection", INDEPENDENT))
        except KeyError as exc:
            raise AdapterFormatError(f"{where}: required field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise AdapterFormatError(f"{where}: malformed field: {exc}") from None


# --------------------------------------------------------------------------- direction checks
def _check_finite(tensor: torch.Tensor, key: str, where: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise AdapterFormatError(f"{where}: tensor {key!r} holds {bad} NaN/Inf value(s)")


def direction_problem(rows: torch.Tensor, orthonormal: bool, tol: float = UNIT_TOL) -> str | None:
    """Why ``rows`` [K, H] are not unit (and, if ``orthonormal``, mutually orthogonal) directions, or None."""
    rows = rows.double()
    if not torch.isfinite(rows).all():
        return "directions hold NaN/Inf values"
    norms = rows.norm(dim=-1)
    worst = int((norms - 1).abs().argmax())
    if not abs(float(norms[worst]) - 1) <= tol:
        return (f"direction row {worst} has norm {float(norms[worst]):.6g}, expected a unit vector "
                f"(tolerance {tol:g})")
    if orthonormal and rows.shape[0] > 1:
        gram = rows @ rows.T - torch.eye(rows.shape[0], dtype=rows.dtype)
        i, j = divmod(int(gram.abs().argmax()), rows.shape[0])
        if not abs(float(gram[i, j])) <= tol:
            return (f"direction rows {i} and {j} are not orthogonal (dot product {float(gram[i, j] + (i == j)):.6g}); "
                    f"ablation directions must be orthonormal")
    return None


def orthonormal_rows(rows: torch.Tensor, name: str = "") -> torch.Tensor:
    """Gram-Schmidt (via QR, in float64) of ``rows`` [K, H]; row k keeps its orientation in span(rows[:k+1])."""
    q, r = torch.linalg.qr(rows.double().T)  # q [H, K]
    diag = torch.diagonal(r)
    if (diag.abs() <= 1e-8 * rows.double().norm(dim=-1).max()).any():
        raise AdapterFormatError(f"strategy {name!r}: the {rows.shape[0]} direction rows are linearly dependent; "
                                 f"they cannot be orthonormalised")
    return (q * torch.sign(diag)).T.contiguous().to(torch.float32)
