"""Share the prompt prefill below the first steered layer between greedy generations of the same batch.

A compile generates answers to the same prompts again and again: the program search judges a dozen candidate
programs on the val prompts, the static matching several strengths, the evaluation every arm on the test
prompts. Each generation starts with a prefill of the whole prompt through every layer, about half of the
work of a 12-24 token answer on a CPU. Below the first layer the steering touches, that prefill is the base
model's, identical for every arm.

Inside :func:`sharing_prefill`, :func:`~.generation.generate` hands each batch to :meth:`PrefillStore.around`:
the first generation of a batch records, from its prefill, the hidden states entering the store's layers and
the KV cache of the blocks below them; a later generation of the same batch (same token rows) whose steering
starts at one of those layers skips the blocks below it in its prefill (pass-through blocks, the recorded
hidden state handed to the first steered block) and gets the recorded KV cache for them before decoding.
Every block at or above the start runs on bit-identical inputs, so the answers are the same tokens
(tests/compiler/capture/test_prefill_sharing.py checks token equality on Llama, Qwen2 and Gemma-3 hosts).

What counts as "steered" is read off the model, not trusted from a caller: the first decoder block holding a
module with a forward hook (an adapter's MLP hook, a rotation hook) ends the shareable prefix, and any hook on
the embeddings means nothing is shared (directional ablation edits them).
"""

from __future__ import annotations

import copy
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from weakref import WeakKeyDictionary

import torch
from torch import nn

from masteer.runtime import SteeredModel
from masteer.runtime.hosts import decoder_layers

from ..common.forward_arguments import output_cache
from ..common.prefix_replay import PassThroughBlock, decoder_module, unhooked_prefix

DEFAULT_MAX_BYTES = 2 * 2**30   # recorded hidden states and KV caches kept at most (then nothing new is recorded)
_ACTIVE: "WeakKeyDictionary[nn.Module, PrefillStore]" = WeakKeyDictionary()


def _copy_layer(layer):
    """A cache layer detached from later updates of the original (tensors cloned)."""
    out = copy.copy(layer)
    for name in ("keys", "values"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            setattr(out, name, value.clone())
    return out


def _layer_bytes(layer) -> int:
    return sum(v.numel() * v.element_size() for v in (getattr(layer, "keys", None), getattr(layer, "values", None))
               if isinstance(v, torch.Tensor))


def batch_key(ids: torch.Tensor, mask: torch.Tensor) -> str:
    """The identity of a generation batch: its padded token rows and mask."""
    digest = hashlib.sha256(str(tuple(ids.shape)).encode())
    digest.update(ids.cpu().numpy().tobytes())
    digest.update(mask.cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class _Recorded:
    valid_upto: int                                   # blocks below this ran as the base model
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)   # layer -> hidden states entering it
    cache_layers: list = field(default_factory=list)  # copies of the KV cache layers below max(hidden)


class PrefillStore:
    """Recorded prefills of one base model, by batch (module docstring)."""

    def __init__(self, model: nn.Module, layers: Iterable[int], max_bytes: int = DEFAULT_MAX_BYTES):
        self.model = model
        self.layers = sorted({int(x) for x in layers if int(x) > 0})
        self.max_bytes = max_bytes
        self.records: dict[str, _Recorded] = {}
        self.bytes = 0
        self.replayed = self.recorded = 0
        self.usable = bool(self.layers)

    def can_replay(self, key: str, prefix: int) -> bool:
        """Whether a pass of batch ``key`` whose first ``prefix`` blocks are the base model's would be replayed."""
        record = self.records.get(key)
        return self.usable and record is not None and prefix in record.hidden and prefix <= record.valid_upto

    @contextmanager
    def around(self, key: str, prefix: int, forced: bool = False, rows: list[int] | None = None) -> Iterator[str]:
        """Wrap one ``generate`` call of batch ``key`` whose first ``prefix`` blocks are the base model's:
        replay a recorded prefill if one serves, else record one if it can; yields what it did. ``forced``: a
        single teacher-forced pass (no KV cache), which records and replays the hidden states alone; its
        records are kept apart from generations' (``forced_key``). ``rows`` (forced passes only): the pass runs
        those rows of the recorded batch, left padded to its own width; it is replayed or it fails."""
        if rows is not None and not forced:
            raise ValueError("only a teacher-forced pass can replay a subset of a recorded batch's rows")
        if self.can_replay(key, prefix):
            with self._replaying(self.records[key], prefix, with_cache=not forced, rows=rows):
                yield "replayed"
            self.replayed += 1
            return
        if rows is not None:
            raise RuntimeError("prefill sharing: a subset of rows asked for a batch that was not recorded")
        record = self.records.get(key)
        keep = [layer for layer in self.layers if layer <= prefix]
        if (self.usable and keep and self.bytes < self.max_bytes
                and (record is None or max(record.hidden, default=0) < max(keep))):
            with self._recording(key, prefix, keep, with_cache=not forced):
                yield "recorded"
            return
        yield "full"

    @contextmanager
    def _recording(self, key: str, prefix: int, keep: list[int], with_cache: bool = True) -> Iterator[None]:
        blocks, decoder = decoder_layers(self.model), decoder_module(self.model)
        new = _Recorded(valid_upto=prefix)
        handles = []

        def keep_hidden(layer):
            def hook(module, args, kwargs):
                hidden = args[0] if args else kwargs.get("hidden_states")
                if layer not in new.hidden and isinstance(hidden, torch.Tensor):
                    new.hidden[layer] = hidden.detach().clone()
            return hook

        tensor_blocks = [True]

        def check_output(module, args, output):
            tensor_blocks[0] = tensor_blocks[0] and isinstance(output, torch.Tensor)

        def after_prefill(module, args, kwargs, output):
            for h in handles:
                h.remove()
            if not with_cache:
                return
            cache = output_cache(output)
            top = max(new.hidden, default=0)
            if cache is None or len(cache.layers) < top or not tensor_blocks[0]:
                self.usable = False   # a cache or block form this module does not know: generate in full from now on
                return
            new.cache_layers = [_copy_layer(cache.layers[i]) for i in range(top)]

        handles += [blocks[layer].register_forward_pre_hook(keep_hidden(layer), with_kwargs=True) for layer in keep]
        handles.append(blocks[0].register_forward_hook(check_output))
        handles.append(decoder.register_forward_hook(after_prefill, with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        if not tensor_blocks[0]:
            self.usable = False
        if self.usable and new.hidden and (not with_cache or len(new.cache_layers) == max(new.hidden)):
            self.records[key] = new
            self.bytes += sum(h.numel() * h.element_size() for h in new.hidden.values())
            self.bytes += sum(_layer_bytes(layer) for layer in new.cache_layers)
            self.recorded += 1

    @contextmanager
    def _replaying(self, record: _Recorded, start: int, with_cache: bool = True,
                   rows: list[int] | None = None) -> Iterator[None]:
        blocks, decoder = decoder_layers(self.model), decoder_module(self.model)
        originals = [blocks[i] for i in range(start)]
        hidden = record.hidden[start]
        if rows is not None:
            hidden = hidden[torch.as_tensor(rows, device=hidden.device)]
        handles: list = []
        swapped = [False]

        def restore():
            if swapped[0]:
                for i, block in enumerate(originals):
                    blocks[i] = block
                swapped[0] = False
            for h in handles:
                h.remove()

        def inject(module, args, kwargs):
            width = (args[0] if args else kwargs["hidden_states"]).shape[1]   # the pass's own width
            recorded = hidden[:, hidden.shape[1] - width:]   # left padded: the rows' tokens end every row
            if args:
                return (recorded,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": recorded}

        def before_prefill(module, args, kwargs):
            skip = PassThroughBlock()
            for i in range(start):
                blocks[i] = skip
            swapped[0] = True
            handles.append(blocks[start].register_forward_pre_hook(inject, with_kwargs=True))

        def after_prefill(module, args, kwargs, output):
            restore()
            if not with_cache:
                return
            cache = output_cache(output)
            if cache is None or len(cache.layers) < start:   # the recording saw this cache form: it cannot change
                raise RuntimeError("prefill sharing: the generation's KV cache has no room for the recorded layers")
            for i in range(start):
                cache.layers[i] = _copy_layer(record.cache_layers[i])

        handles.append(decoder.register_forward_pre_hook(before_prefill, with_kwargs=True))
        handles.append(decoder.register_forward_hook(after_prefill, with_kwargs=True))
        try:
            yield
        finally:
            restore()


def active_store(model: nn.Module) -> PrefillStore | None:
    """The store :func:`sharing_prefill` opened for this base model, if any."""
    return _ACTIVE.get(model)


def forced_key(ids: torch.Tensor, mask: torch.Tensor) -> str:
    """The identity of a teacher-forced batch, apart from a generation of the same rows (whose record needs
    its KV cache)."""
    return "forced:" + batch_key(ids, mask)


def _base_model(model: nn.Module) -> nn.Module:
    return model.base_model if isinstance(model, SteeredModel) else model


def can_share_forced_pass(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether :func:`sharing_forced_pass` over this batch would replay a recorded one."""
    base = _base_model(model)
    store = active_store(base)
    return store is not None and store.can_replay(forced_key(ids, mask), unhooked_prefix(base))


@contextmanager
def sharing_forced_pass(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                        rows: list[int] | None = None) -> Iterator[str]:
    """Around one teacher-forced pass of ``model`` (plain or steered) over ``ids``: inside
    :func:`sharing_prefill`, the evaluation's steered arms share the blocks below their first steered layer
    (MMLU, perplexity and KL passes of the second steered arm start there); elsewhere nothing happens.
    ``rows``: the pass runs only those rows of the batch ``ids`` and ``mask`` (which name the record), replayed
    (:func:`can_share_forced_pass` must hold)."""
    base = _base_model(model)
    store = active_store(base)
    if store is None:
        if rows is not None:
            raise RuntimeError("prefill sharing: a subset of rows asked for outside sharing_prefill")
        yield "full"
        return
    with store.around(forced_key(ids, mask), unhooked_prefix(base), forced=True, rows=rows) as what:
        yield what


@contextmanager
def sharing_prefill(model: nn.Module, layers: Iterable[int], max_bytes: int = DEFAULT_MAX_BYTES
                    ) -> Iterator[PrefillStore]:
    """Within the block, greedy generations on ``model`` (plain or steered) share recorded prefills below
    ``layers`` (the layers candidate strategies steer); the records are dropped at the end."""
    previous = _ACTIVE.get(model)
    store = PrefillStore(model, layers, max_bytes)
    _ACTIVE[model] = store
    try:
        yield store
    finally:
        if previous is None:
            _ACTIVE.pop(model, None)
        else:
            _ACTIVE[model] = previous
