"""Replay the base model's hidden states below the first steered layer instead of recomputing them.

A compile scores dozens of adapters on the same fixed batches (calibration, applicability, the program search,
the teacher-forced table). Every adapter the library proposes steers at some layer ``L`` (an MLP neuron or
vector at ``L``, a rotation at the output of ``L``): what enters decoder layer ``L`` is the base model's, the
same for every adapter. On SmolLM2-135M the candidate layers are 10-14 of 30, so a third to a half of every
scoring pass recomputed numbers the base pass already had.

``PrefixReplay`` records, during the base pass of each batch, the hidden states entering each layer it was
told to keep; a steered pass of the same batch then swaps the decoder blocks below ``L`` for pass-throughs and
hands layer ``L`` the recorded tensor. Layer ``L`` and everything above it run on bit-identical inputs, so the
result is bit-identical to the full pass (tests/compiler/common/test_prefix_replay.py), only cheaper.
Directional ablation edits the embeddings and every writer below ``L``: an adapter with one never replays
(:func:`first_steered_layer` is None). Nor does a host whose decoder blocks return anything but a tensor
(checked during recording): the pass then simply runs in full.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Hashable, Iterable, Iterator

import torch
from torch import nn

from masteer.runtime import SteeringAdapter
from masteer.runtime.hosts import decoder_layers, host_layout


def first_steered_layer(adapter: SteeringAdapter | None) -> int | None:
    """The lowest decoder layer the adapter steers (what enters it is the base model's); None when nothing
    may be replayed: no adapter, no strategy, or an adapter-wide one (ablation) that edits the embeddings."""
    if adapter is None or any(s.layer is None for s in adapter.strategies) or not adapter.strategies:
        return None
    return min(s.layer for s in adapter.strategies)


def _hooked(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def unhooked_prefix(model: nn.Module) -> int:
    """How many decoder blocks from the bottom run as the plain base model: the index of the first block with a
    hooked module in it (all blocks if none); 0 when the decoder itself or anything beside its blocks (the
    embeddings: ablation hooks them) is hooked."""
    blocks, decoder = decoder_layers(model), decoder_module(model)
    if decoder._forward_hooks or decoder._forward_pre_hooks or any(
            _hooked(child) for child in decoder.children() if child is not blocks):
        return 0
    for i, block in enumerate(blocks):
        if _hooked(block):
            return i
    return len(blocks)


def decoder_module(model: nn.Module) -> nn.Module:
    """The module whose forward loops over the decoder blocks (the parent of the block list)."""
    path = host_layout(model).layers_path.split(".")[:-1]
    module = model
    for part in path:
        module = getattr(module, part)
    return module


class PassThroughBlock(nn.Module):
    """A decoder block that returns its input: the blocks below the replayed layer."""

    def forward(self, hidden_states=None, *args, **kwargs):
        return hidden_states


class PrefixReplay:
    """Base hidden states entering ``layers``, recorded per batch key, replayed into steered passes."""

    def __init__(self, model: nn.Module, layers: Iterable[int]):
        self.model = model
        self.layers = sorted({int(layer) for layer in layers if int(layer) > 0})
        self.stored: dict[Hashable, dict[int, torch.Tensor]] = {}
        self.usable = bool(self.layers)

    @contextmanager
    def recording(self, key: Hashable) -> Iterator[None]:
        """Keep what enters each layer in ``self.layers`` during this (base) pass, under ``key``."""
        if not self.usable:
            yield
            return
        blocks = decoder_layers(self.model)
        kept: dict[int, torch.Tensor] = {}
        base_below = unhooked_prefix(self.model)   # only what enters an unsteered block is the base model's

        def keep(layer):
            def hook(module, args, kwargs):
                hidden = args[0] if args else kwargs.get("hidden_states")
                if isinstance(hidden, torch.Tensor):
                    kept[layer] = hidden.detach()
            return hook

        def check_output(module, args, output):
            if not isinstance(output, torch.Tensor):   # a block returning a tuple: pass-throughs would not fit
                self.usable = False

        hooks = [blocks[layer].register_forward_pre_hook(keep(layer), with_kwargs=True)
                 for layer in self.layers if layer < len(blocks) and layer <= base_below]
        hooks.append(blocks[0].register_forward_hook(check_output))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
        if self.usable:
            self.stored[key] = kept

    def can_replay(self, key: Hashable, start: int | None) -> bool:
        return self.usable and start is not None and start in self.stored.get(key, {})

    @contextmanager
    def replaying(self, key: Hashable, start: int | None, rows: list[int] | None = None) -> Iterator[bool]:
        """Run this pass from layer ``start`` on the base hidden states recorded under ``key``; yields whether
        it does (else the pass runs in full, e.g. nothing recorded there). A caller's ``start`` above a block the
        model has hooks in (steering the caller did not declare) is not trusted: the pass runs in full. ``rows``:
        this pass runs only those rows of the recorded batch, left padded to its own (narrower or equal) width."""
        if start is not None and start > unhooked_prefix(self.model):
            start = None
        if not self.can_replay(key, start):
            yield False
            return
        blocks = decoder_layers(self.model)
        hidden = self.stored[key][start]
        if rows is not None:
            hidden = hidden[torch.as_tensor(rows, device=hidden.device)]
        originals = [blocks[i] for i in range(start)]

        def inject(module, args, kwargs):
            width = (args[0] if args else kwargs["hidden_states"]).shape[1]   # the pass's own width
            recorded = hidden[:, hidden.shape[1] - width:]   # left padded: the rows' tokens end every row
            if args:
                return (recorded,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": recorded}

        skip = PassThroughBlock()
        for i in range(start):
            blocks[i] = skip
        hook = blocks[start].register_forward_pre_hook(inject, with_kwargs=True)
        try:
            yield True
        finally:
            hook.remove()
            for i, block in enumerate(originals):
                blocks[i] = block
