"""The baked arms: the adapter lowered into a plain checkpoint, with the bake's aligned MLP width and without."""

from __future__ import annotations

import copy
import tempfile

import torch


def baked_checkpoint(model, adapter, in_memory: bool, pad_to: int) -> torch.nn.Module:
    """The adapter baked into a copy of ``model`` (its MLP padded to a multiple of ``pad_to``, 0: exact width):
    saved with ``masteer.runtime.bake`` and loaded back with plain transformers (or merged in memory: the same
    weights without the disk round trip).

    The loaded weights are then copied into ordinary memory (:func:`materialise`), as the other arms' are."""
    from masteer.runtime import bake, merge_into_model
    clone = copy.deepcopy(model)
    if in_memory:
        return merge_into_model(clone, adapter, pad_to=pad_to).eval()
    from transformers import AutoModelForCausalLM
    param = next(model.parameters())
    with tempfile.TemporaryDirectory(prefix="bench-runtime-baked-") as folder:
        bake(clone, adapter, folder, pad_to=pad_to)
        del clone
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=param.dtype, device_map=str(param.device))
    loaded.generation_config.eos_token_id = None
    loaded.generation_config.pad_token_id = 0
    return materialise(loaded).eval()


@torch.no_grad()
def materialise(model) -> torch.nn.Module:
    """Copy every parameter and buffer into memory of its own, in place.

    On CPU, ``from_pretrained`` leaves the weights in a private mapping of the safetensors file (page-cache
    pages, which a machine short of memory can evict and read back from disk in the middle of a forward pass).
    In a run on the shared 2-core machine that loaded arm cost 1.16x base's CPU time at batch 1, while its padded
    copy in ordinary memory, 62 neurons wider, cost 1.06x, and a later check of the loaded weights alone gave
    0.99x: a cost of where the pages live, not of the bake. The other arms hold their weights in ordinary
    memory, so the baked ones do too, and the benchmark compares computation."""
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.clone()
    return model


def zero_program(model, neurons: int, bias: bool = False):
    """An adapter that computes nothing: ``neurons`` zero neurons (zero gate, up and direction rows) on layer 0,
    and a zero always-on vector if ``bias`` (baking it switches on the host's MLP biases). Merged, it widens
    every layer's MLP (and adds the biases) while the model's logits stay exactly the same."""
    from masteer.runtime import SteeringAdapter, host_layout, model_fingerprint
    from masteer.runtime.hosts import activation_name
    hidden = model.config.hidden_size
    adapter = SteeringAdapter(base_model_name_or_path="zeros", fingerprint=model_fingerprint(model),
                              host_form=host_layout(model).form, activation=activation_name(model))
    for k in range(neurons):
        adapter.add_neuron(0, f"zero{k}", gate=torch.zeros(hidden), up=torch.zeros(hidden),
                           direction=torch.zeros(hidden), strength=0.0)
    if bias:
        axis = torch.zeros(hidden)
        axis[0] = 1.0
        adapter.add_additive(0, "zero-vector", direction=axis, strength=0.0)
    return adapter
