"""The exact PEFT LoRA lowering of the strategies a LoRA can carry.

A LoRA adds ``B A x (+ b)`` to a linear layer, the same for every token; it can carry what masteer computes
the same for every token:

- an always-on (``additive``) vector ``v`` at layer ``l``'s MLP output: ``lora_bias`` on that MLP's output
  projection, with ``A = 0``, ``B = 0`` and the bias ``v`` (PEFT's ``lora_bias=True``);
- directional ablation ``x <- x - c (x R^T) R`` on every residual writer: rank ``K`` updates of each
  attention and MLP output projection, ``B = -c R^T`` and ``A = R W`` (so ``W + B A = (I - c R^T R) W``),
  their biases ``-c R^T R b`` in ``lora_bias``; the embeddings, which PEFT's LoRA cannot give a bias-free
  exact update without also moving a tied LM head when merged, are stored whole as ``modules_to_save``
  (``E - c (E R^T) R``). The LM head keeps the original embedding, as in the runtime and in ``masteer bake``.
  On an MLP with an always-on vector the projection applies to the vector too, as in the runtime.

``lora_alpha = r``, so PEFT's scaling is 1 and the stored tensors are the update itself. Gated neurons fire
per token where their anchors say, which no fixed low-rank update computes: the lowering refuses them (and
rotations, which have no linear form) in one line that points to ``masteer bake``.

``merge_and_unload()`` of the loaded LoRA equals ``masteer bake`` where the model has the biases the merge
needs; PEFT refuses to merge a ``lora_bias`` into a layer without a bias (Llama's and Qwen2's MLPs), so an
always-on vector on those hosts loads and runs exactly but does not merge (``masteer bake`` switches on
Llama's ``mlp_bias`` instead).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from masteer.runtime.ablation import ablation_sites
from masteer.runtime.artifact import ADDITIVE, NEURON, ROTATION, SteeringAdapter
from masteer.runtime.atomic import atomic_directory
from masteer.runtime.attach import check_compatible
from masteer.runtime.bake import check_lowerable
from masteer.runtime.errors import LoweringError
from masteer.runtime.hosts import host_layout, mlp_module

from .card import PROGRAM_NAME, shipment_card



@dataclass
class LoraUpdate:
    """One targeted linear layer: ``A`` [r, in], ``B`` [out, r] and the bias update [out] (or None), all in
    nn.Linear orientation (out x in) whatever the layer's storage."""
    a: torch.Tensor
    b: torch.Tensor
    bias: torch.Tensor | None = None


@dataclass
class LoraLowering:
    """What the PEFT adapter holds: the rank, the LoRA updates and the modules saved whole, by module name."""
    rank: int
    updates: dict[str, LoraUpdate] = field(default_factory=dict)
    replaced: dict[str, torch.Tensor] = field(default_factory=dict)   # module name -> its new weight
    fan_in_fan_out: bool = False                                      # GPT-2's Conv1D stores weight [in, out]

    @property
    def lora_bias(self) -> bool:
        return any(u.bias is not None for u in self.updates.values())


def check_lora_lowerable(adapter: SteeringAdapter) -> None:
    """Raise LoweringError (one line) unless every strategy of ``adapter`` has an exact LoRA form."""
    gated = [s.name for s in adapter.strategies_of_kind(NEURON)]
    if gated:
        raise LoweringError(
            f"gated strategies {gated} fire per token where their anchors say, which no LoRA (one fixed low-rank "
            f"update for every token) computes; lower this adapter with `masteer bake` (a plain checkpoint) instead")
    rotations = [s.name for s in adapter.strategies_of_kind(ROTATION)]
    if rotations:
        raise LoweringError(f"rotation strategies {rotations} have no linear form, so no LoRA expresses them; "
                            f"keep them as a masteer adapter")
    if not adapter.strategies:
        raise LoweringError("the adapter holds no strategy: there is nothing to lower")


def _names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def _linear_weight(module: nn.Module, conv1d: bool) -> torch.Tensor:
    """The weight as [out, in] in float64."""
    weight = module.weight.detach().double()
    return weight.T if conv1d else weight


def _bias(module: nn.Module, size: int) -> torch.Tensor:
    bias = getattr(module, "bias", None)
    return bias.detach().double() if isinstance(bias, torch.Tensor) else torch.zeros(size, dtype=torch.float64)


@torch.no_grad()
def plan_lora(model: nn.Module, adapter: SteeringAdapter, scale: float = 1.0) -> LoraLowering:
    """The LoRA that computes ``adapter`` (at ``scale``) on ``model``; raises LoweringError if none does."""
    check_lora_lowerable(adapter)
    check_compatible(model, adapter)
    check_lowerable(model, adapter)
    layout = host_layout(model)
    names = _names(model)
    vectors: dict[str, torch.Tensor] = {}
    for layer in adapter.layers:
        block = adapter.block(layer, ADDITIVE)
        if block is not None:
            v = (block["direction"].double() * adapter.strengths(layer, ADDITIVE)[:, None].double()).sum(0) * scale
            vectors[names[id(getattr(mlp_module(model, layer), layout.out_proj))]] = v
    ablation = adapter.ablation_strategy
    rank = int(adapter.ablation_directions.shape[0]) if ablation is not None else 1
    plan = LoraLowering(rank=rank, fan_in_fan_out=layout.conv1d)
    hidden = model.config.hidden_size
    if ablation is not None:
        r = adapter.ablation_directions.double()
        c = float(ablation.strength) * scale
        for site in ablation_sites(model):
            name = names[id(site.weight_module)]
            if site.role == "embedding":
                e = site.weight_module.weight.detach().double()
                plan.replaced[name] = (e - c * (e @ r.T) @ r).to(site.weight_module.weight.dtype)
                continue
            w = _linear_weight(site.weight_module, layout.conv1d)                  # [H, in]
            base_bias = getattr(site.weight_module, "bias", None)
            vector = vectors.pop(name, None)
            before = _bias(site.weight_module, hidden)
            after = before + (vector if vector is not None else 0.0)
            after = after - c * (after @ r.T) @ r
            bias = (after - before).float() if isinstance(base_bias, torch.Tensor) or vector is not None else None
            plan.updates[name] = LoraUpdate(a=(r @ w).float(), b=(-c * r.T).float(), bias=bias)
    for name, v in vectors.items():   # always-on vectors on MLPs without ablation
        module = model.get_submodule(name)
        w = _linear_weight(module, layout.conv1d)
        plan.updates[name] = LoraUpdate(a=torch.zeros(rank, w.shape[1]), b=torch.zeros(w.shape[0], rank),
                                        bias=v.float())
    if plan.lora_bias:   # PEFT's lora_bias is one switch for every target: a target without an update gets zeros
        for update in plan.updates.values():
            if update.bias is None:
                update.bias = torch.zeros(update.b.shape[0])
    return plan


def lora_config(plan: LoraLowering, base_model: str):
    """The PEFT ``LoraConfig`` of ``plan`` (imported here: only a lowering needs peft)."""
    from peft import LoraConfig
    return LoraConfig(r=plan.rank, lora_alpha=plan.rank, lora_dropout=0.0, bias="none",
                      target_modules=sorted(plan.updates), modules_to_save=sorted(plan.replaced) or None,
                      lora_bias=plan.lora_bias, fan_in_fan_out=plan.fan_in_fan_out, task_type="CAUSAL_LM",
                      base_model_name_or_path=base_model, init_lora_weights=True)


@torch.no_grad()
def _fill(peft_model, plan: LoraLowering) -> None:
    """Copy the planned tensors into the LoRA layers PEFT made."""
    for name, update in plan.updates.items():
        layer = peft_model.base_model.model.get_submodule(name)
        a, b = layer.lora_A["default"], layer.lora_B["default"]
        a.weight.copy_(update.a.to(a.weight))
        b.weight.copy_(update.b.to(b.weight))
        if update.bias is not None:
            b.bias.copy_(update.bias.to(b.bias))
    for name, weight in plan.replaced.items():
        wrapper = peft_model.base_model.model.get_submodule(name)
        wrapper.modules_to_save["default"].weight.copy_(weight.to(wrapper.modules_to_save["default"].weight))


def save_lora(model: nn.Module, adapter: SteeringAdapter, out: str | os.PathLike, scale: float = 1.0,
              card: str | None = None) -> Path:
    """Write the PEFT LoRA folder of ``adapter`` (at ``scale``) for ``model``, atomically.

    ``model`` is the base model the adapter was compiled for; it is wrapped by PEFT for the save and unwrapped
    after it, unchanged. The folder holds PEFT's ``adapter_config.json`` and ``adapter_model.safetensors``, the
    masteer program it came from (``masteer_program.json``) and a model card."""
    from peft import get_peft_model
    plan = plan_lora(model, adapter, scale)
    config = lora_config(plan, adapter.base_model_name_or_path)
    out = Path(out)
    originals = {name: model.get_submodule(name) for name in plan.replaced}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(tie_word_embeddings|lora_bias|fan_in_fan_out).*")
        peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = adapter.base_model_name_or_path  # PEFT set the model's
    try:
        _fill(peft_model, plan)
        with atomic_directory(out) as tmp:
            peft_model.save_pretrained(tmp)
            (tmp / PROGRAM_NAME).write_text(json.dumps(adapter.config_dict(), indent=2) + "\n")
            (tmp / "README.md").write_text(card if card is not None else shipment_card(tmp, out.name))
    finally:
        peft_model.unload()
        for name, module in originals.items():   # PEFT's unload keeps the saved copy; the caller's model is restored
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, module)
    return out
