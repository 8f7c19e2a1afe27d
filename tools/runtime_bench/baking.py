"""The baked arms: the adapter lowered into a plain checkpoint, and that checkpoint with an aligned MLP width."""

from __future__ import annotations

import copy
import tempfile

import torch


def baked_checkpoint(model, adapter, in_memory: bool) -> torch.nn.Module:
    """The adapter baked into a copy of ``model``: saved with ``masteer.runtime.bake`` and loaded back with plain
    transformers (or merged in memory: the same weights without the disk round trip)."""
    from masteer.runtime import bake, merge_into_model
    clone = copy.deepcopy(model)
    if in_memory:
        return merge_into_model(clone, adapter).eval()
    from transformers import AutoModelForCausalLM
    param = next(model.parameters())
    with tempfile.TemporaryDirectory(prefix="bench-runtime-baked-") as folder:
        bake(clone, adapter, folder)
        del clone
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=param.dtype, device_map=str(param.device))
    loaded.generation_config.eos_token_id = None
    loaded.generation_config.pad_token_id = 0
    return loaded.eval()


def padded_copy(baked, multiple: int) -> torch.nn.Module:
    """A copy of a baked model whose MLP width is rounded up to ``multiple`` with zero neurons.

    The zero neurons are baked the same way steering neurons are (a runtime merge of an adapter whose neurons
    have zero gate, up and direction rows), so this needs no bake option: it computes exactly what ``baked``
    does, only with an aligned width."""
    from masteer.runtime import SteeringAdapter, host_layout, merge_into_model, model_fingerprint
    from masteer.runtime.hosts import activation_name, intermediate_size
    width = intermediate_size(baked)
    extra = -width % multiple
    padded = copy.deepcopy(baked)
    if extra == 0:
        return padded
    zeros = SteeringAdapter(base_model_name_or_path="padding", fingerprint=model_fingerprint(baked),
                            host_form=host_layout(baked).form, activation=activation_name(baked))
    hidden = baked.config.hidden_size
    for k in range(extra):
        zeros.add_neuron(0, f"pad{k}", gate=torch.zeros(hidden), up=torch.zeros(hidden), direction=torch.zeros(hidden),
                         strength=0.0)
    return merge_into_model(padded, zeros).eval()
