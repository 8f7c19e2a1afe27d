"""Always-on vectors as a llama.cpp control vector: the GGUF file ``llama-cli --control-vector FILE`` reads.

The format (llama.cpp's ``common`` loader and ``llama_adapter_cvec``): ``general.architecture = controlvector``,
``controlvector.model_hint`` (the model's llama.cpp architecture), ``controlvector.layer_count``, and one float32
tensor ``direction.N`` [hidden] per layer, **1-based**: ``direction.N`` is added to the output of decoder block
``N`` (0-based), i.e. to the residual stream after block N's MLP. llama.cpp never steers block 0.

A masteer ``additive`` strategy at layer ``l`` adds ``strength * direction`` to block ``l``'s MLP output, which
the block then adds to the residual: the same sum, so it is ``direction.l`` (strengths and ``scale`` folded in,
several vectors on one layer summed). What a control vector cannot carry is refused in one line: gated neurons
(per token, use ``masteer bake`` and the GGUF model), rotations and ablation (not additive), and a vector on
block 0.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from masteer.runtime.artifact import ADDITIVE, SteeringAdapter
from masteer.runtime.errors import LoweringError

from .files import finish_gguf, write_atomically

ARCHITECTURE = "controlvector"
# transformers model_type -> llama.cpp architecture name (the model hint llama.cpp users see)
LLAMA_CPP_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama", "gemma": "gemma",
                  "gemma2": "gemma2", "gpt2": "gpt2", "gpt_neox": "gptneox", "smollm3": "smollm3"}


def control_vectors(adapter: SteeringAdapter, scale: float = 1.0) -> dict[int, torch.Tensor]:
    """``{N: vector}`` for the ``direction.N`` tensors; LoweringError names what a control vector cannot hold."""
    other = [s.name for s in adapter.strategies if s.kind != ADDITIVE]
    if other:
        raise LoweringError(f"strategies {other} are not always-on vectors, and a llama.cpp control vector holds only "
                            f"those; bake the adapter with `masteer bake` (a checkpoint llama.cpp's "
                            f"convert_hf_to_gguf.py converts) instead")
    if not adapter.strategies:
        raise LoweringError("the adapter holds no strategy: there is nothing to lower")
    on_zero = [s.name for s in adapter.strategies if s.layer == 0]
    if on_zero:
        raise LoweringError(f"always-on strategies {on_zero} act on block 0, which llama.cpp's control vectors never "
                            f"steer (direction.N is 1-based); bake the adapter instead")
    out = {}
    for layer in adapter.layers:
        block = adapter.block(layer, ADDITIVE)
        out[layer] = (block["direction"].double() * adapter.strengths(layer, ADDITIVE)[:, None].double()).sum(0) * scale
    return {layer: v.float() for layer, v in out.items()}


def write_control_vector(adapter: SteeringAdapter, path: str | os.PathLike, scale: float = 1.0) -> Path:
    """Write the control-vector GGUF of ``adapter``'s always-on vectors to ``path`` (a file), atomically.

    Every steerable block 1..L-1 gets a tensor (zeros where the program has no vector), as llama.cpp's own
    ``cvector-generator`` writes them, so ``--control-vector-layer-range`` sees the whole model."""
    import gguf
    vectors = control_vectors(adapter, scale)
    layers, hidden = adapter.fingerprint.num_layers, adapter.fingerprint.hidden_size

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_string(f"{ARCHITECTURE}.model_hint",
                          LLAMA_CPP_ARCH.get(adapter.fingerprint.model_type, adapter.fingerprint.model_type))
        writer.add_int32(f"{ARCHITECTURE}.layer_count", layers - 1)
        for n in range(1, layers):
            vector = vectors.get(n, torch.zeros(hidden))
            writer.add_tensor(f"direction.{n}", vector.numpy().astype("float32"))
        finish_gguf(writer)
    return write_atomically(path, write)


def read_control_vector(path: str | os.PathLike) -> dict[int, torch.Tensor]:
    """``{N: direction.N}`` read back with the gguf package (what llama.cpp's loader reads)."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields.get("general.architecture")
    if arch is None or bytes(arch.parts[arch.data[0]]).decode() != ARCHITECTURE:
        raise LoweringError(f"{path} is not a llama.cpp control vector (general.architecture is not {ARCHITECTURE!r})")
    return {int(t.name.split(".")[1]): torch.from_numpy(t.data.copy()).float()
            for t in reader.tensors if t.name.startswith("direction.")}
