"""Bake an adapter into the base model's own weights: a plain checkpoint, no masteer needed.

Steering neurons are rows of the host MLP's form, so baking is concatenation: their gate/up (or
fc) rows are appended to the input projections and their scaled directions to the output
projection's columns. ``intermediate_size`` is global in a transformers config, so every layer
grows by the same K; layers with fewer neurons get zero neurons, which contribute exactly zero
(act(0) * 0 = 0 for gated hosts, act(0 + 0) = 0 for plain ones). Always-on vectors become the MLP
output bias where the host has (or can switch on) one; elsewhere baking refuses and says why.

The widened MLP is padded with more zero neurons to a multiple of ``MLP_ALIGNMENT`` (64): on a GPU an
unaligned width is far slower (Llama-3.1-8B's shape in bfloat16 on an H200, prefill of 16 x 512 tokens: 14338
wide took 1.87x the base model's time, 14400 wide 0.99x; docs/benchmarks/runtime.md), while on a CPU the padding
costs the arithmetic of its zero neurons (SmolLM2-135M: 1538 -> 1600, about 4% at batch 16). ``pad_to=0`` keeps
the exact width.

Directional ablation is lowered last, by weight orthogonalisation of every residual writer (see
``ablation.py``): after the MLPs are widened and their biases hold the always-on vectors, so the
steering columns and vectors are projected too, exactly as the runtime projects the MLP's output
after adding the steering delta. A tied LM head is untied first (``tie_word_embeddings`` becomes
false and the head keeps the original embedding), because the runtime never projects the LM head.

Rotations have no exact linear lowering, and neither has exclusive selection (an argmax over
strategies): baking such an adapter raises LoweringError, naming why, before any weight is touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .ablation import check_ablation_host, orthogonalise_model
from .artifact import ADDITIVE, EXCLUSIVE, NEURON, PROGRAM_NAME, ROTATION, SteeringAdapter
from .atomic import atomic_directory
from .bounds import check_finite_weights
from .errors import LoweringError
from .hosts import GATED, HostLayout, decoder_layers, host_layout, intermediate_size, mlp_module
from .modelcard import baked_card

MLP_ALIGNMENT = 64  # the bake rounds a widened MLP up to a multiple of this (module docstring: why)


def check_pad_to(pad_to) -> int:
    """``pad_to`` as given, or ValueError naming it: a whole number, 0 (or 1) for no padding."""
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 0:
        raise ValueError(f"pad_to must be a whole number >= 0 (0: no padding), got {pad_to!r}")
    return pad_to


def padded_width(neurons: int, base_width: int, pad_to: int) -> int:
    """The neuron rows a bake appends: ``neurons``, plus zero ones so the MLP's width is a multiple of
    ``pad_to`` (0 or 1: none). A program without neurons leaves the width as it is."""
    if neurons == 0 or pad_to <= 1:
        return neurons
    return neurons + (-(base_width + neurons) % pad_to)


def check_lowerable(model: nn.Module, adapter: SteeringAdapter) -> None:
    """Raise LoweringError (or HostNotSupported) if ``adapter`` cannot be baked exactly into ``model``."""
    if adapter.selection == EXCLUSIVE:
        raise LoweringError(
            f"this adapter uses selection {EXCLUSIVE!r}: per token only the strategy with the highest anchor "
            f"score fires, an argmax that no widened MLP computes, so no checkpoint expresses it exactly. Keep "
            f"it as a masteer adapter, or compile with selection 'independent' (bakeable) to bake.")
    rotations = [s.name for s in adapter.strategies_of_kind(ROTATION)]
    if rotations:
        raise LoweringError(
            f"rotation strategies {rotations} (angle-preserving steering) have no exact linear lowering: "
            f"a baked checkpoint cannot express them. Keep them as a masteer adapter, or leave them out of "
            f"the program to bake the rest.")
    if adapter.ablation_strategy is not None:
        check_ablation_host(model)


def _neuron_rows(adapter: SteeringAdapter, layer: int, width: int, hidden: int, scale: float):
    """Rows for one layer, zero-padded to ``width`` neurons: (gate, up_or_bias, down [H, width])."""
    gate = torch.zeros(width, hidden)
    second = torch.zeros(width, hidden) if adapter.host_form == GATED else torch.zeros(width)
    down = torch.zeros(hidden, width)
    block = adapter.block(layer, NEURON)
    if block is not None:
        k = block["gate"].shape[0]
        gate[:k] = block["gate"]
        second[:k] = block["up" if adapter.host_form == GATED else "bias"]
        down[:, :k] = (block["direction"] * adapter.strengths(layer, NEURON)[:, None] * scale).T
    return gate, second, down


def _grow_linear(old: nn.Linear, extra_weight: torch.Tensor, dim: int, extra_bias: torch.Tensor | None = None):
    """A new nn.Linear with ``extra_weight`` appended along ``dim`` (0: more outputs, 1: more inputs)."""
    weight = torch.cat([old.weight.data, extra_weight.to(old.weight)], dim=dim)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if old.bias is not None:
        bias = old.bias.data if dim == 1 else torch.cat([old.bias.data, (extra_bias if extra_bias is not None
                                                         else torch.zeros(extra_weight.shape[0])).to(old.bias)])
        new.bias.data.copy_(bias)
    return new


def _grow_conv1d(old: nn.Module, extra_weight: torch.Tensor, dim: int, extra_bias: torch.Tensor | None = None):
    """GPT-2's Conv1D stores weight as [in, out]; ``dim`` here is in that orientation."""
    from transformers.pytorch_utils import Conv1D
    weight = torch.cat([old.weight.data, extra_weight.to(old.weight)], dim=dim)
    new = Conv1D(weight.shape[1], weight.shape[0]).to(device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    bias = old.bias.data if dim == 0 else torch.cat([old.bias.data, extra_bias.to(old.bias)])
    new.bias.data.copy_(bias)
    return new


def _additive_vector(adapter: SteeringAdapter, layer: int, scale: float) -> torch.Tensor | None:
    block = adapter.block(layer, ADDITIVE)
    if block is None:
        return None
    return (block["direction"] * adapter.strengths(layer, ADDITIVE)[:, None]).sum(0) * scale


def _enable_mlp_bias(model: nn.Module, layout: HostLayout, additive_layers: list[int], adapter) -> None:
    """Switch on the host's MLP biases (all zero) so always-on vectors have a bias to live in."""
    if not additive_layers:
        return
    out_proj = getattr(mlp_module(model, 0), layout.out_proj)
    if out_proj.bias is not None:
        return
    if layout.output_bias_config is None:
        names = [s.name for s in adapter.strategies if s.kind == ADDITIVE]
        raise LoweringError(
            f"always-on strategies {names} cannot be baked exactly into a {model.config.model_type} "
            f"checkpoint: its MLP has no output bias and its config has no switch for one. "
            f"Keep them as a masteer adapter.")
    for block in decoder_layers(model):
        mlp = getattr(block, layout.mlp_attr)
        for proj_name in (*layout.in_projs, layout.out_proj):
            proj = getattr(mlp, proj_name)
            proj.bias = nn.Parameter(torch.zeros(proj.weight.shape[0], dtype=proj.weight.dtype,
                                                 device=proj.weight.device))
    setattr(model.config, layout.output_bias_config, True)


@torch.no_grad()
def merge_into_model(model: nn.Module, adapter: SteeringAdapter, scale: float = 1.0,
                     pad_to: int = MLP_ALIGNMENT) -> nn.Module:
    """Widen the model's MLPs (and orthogonalise its residual writers) in place so its plain forward
    computes base + steering; the width is rounded up to a multiple of ``pad_to`` with zero neurons."""
    check_pad_to(pad_to)
    check_lowerable(model, adapter)
    layout = host_layout(model)
    hidden = model.config.hidden_size
    width = max((len(adapter.layer_strategies(l, NEURON)) for l in adapter.layers), default=0)
    width = padded_width(width, intermediate_size(model), pad_to)
    additive_layers = [l for l in adapter.layers if adapter.block(l, ADDITIVE) is not None]
    _enable_mlp_bias(model, layout, additive_layers, adapter)
    for layer, block in enumerate(decoder_layers(model)):
        mlp = getattr(block, layout.mlp_attr)
        if width:
            gate, second, down = _neuron_rows(adapter, layer, width, hidden, scale)
            if layout.form == GATED:
                gate_name, up_name = layout.in_projs
                setattr(mlp, gate_name, _grow_linear(getattr(mlp, gate_name), gate, dim=0))
                setattr(mlp, up_name, _grow_linear(getattr(mlp, up_name), second, dim=0))
            elif layout.conv1d:
                setattr(mlp, layout.in_projs[0], _grow_conv1d(getattr(mlp, layout.in_projs[0]), gate.T, 1, second))
            else:
                setattr(mlp, layout.in_projs[0], _grow_linear(getattr(mlp, layout.in_projs[0]), gate, 0, second))
            grow = _grow_conv1d if layout.conv1d else _grow_linear
            setattr(mlp, layout.out_proj, grow(getattr(mlp, layout.out_proj),
                                               down.T if layout.conv1d else down, 0 if layout.conv1d else 1))
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = int(mlp.intermediate_size) + width
        vector = _additive_vector(adapter, layer, scale)
        if vector is not None:
            getattr(mlp, layout.out_proj).bias.data += vector.to(getattr(mlp, layout.out_proj).bias)
    if width:
        setattr(model.config, layout.intermediate_attr, intermediate_size(model) + width)
    ablation = adapter.ablation_strategy
    if ablation is not None:
        orthogonalise_model(model, adapter.ablation_directions, ablation.strength * scale)
    return model


def save_baked(model: nn.Module, path: str | os.PathLike, tokenizer=None, adapter: SteeringAdapter | None = None,
               card: str | None = None, scale: float = 1.0) -> Path:
    """Write a merged model as an ordinary transformers checkpoint folder, atomically. Weights holding
    NaN/Inf are refused before anything is written; ``scale`` (the multiple of every strength that was
    merged) is recorded in ``masteer_program.json`` and the card."""
    path = Path(path)
    check_finite_weights(model, f"baked checkpoint for {path}")
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if adapter is not None:
            program = {**adapter.config_dict(), "baked_scale": scale, "baked_mlp_width": intermediate_size(model)}
            (tmp / PROGRAM_NAME).write_text(json.dumps(program, indent=2) + "\n")
        (tmp / "README.md").write_text(card if card is not None else baked_card(model, adapter, scale=scale))
    return path
