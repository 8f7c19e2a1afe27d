"""A baked checkpoint as a llama.cpp GGUF model file, written with the ``gguf`` package.

A baked checkpoint is an ordinary transformers model whose MLPs are wider (``intermediate_size`` grew by the
steering neurons), so the gated program runs inside llama.cpp's own forward pass; nothing masteer-specific is
in the file. This writer covers the Llama-form hosts (``llama``: SmolLM2, Llama; ``qwen2``), the ones masteer
bakes gated neurons into, and does what llama.cpp's ``convert_hf_to_gguf.py`` does for them:

- tensor names from ``gguf``'s own name map (``blk.N.ffn_gate.weight``, ...); a tied LM head is left out
  (llama.cpp then reads ``token_embd``), an untied one (after a baked ablation) is ``output.weight``;
- Llama's q/k rows are permuted to llama.cpp's rotary layout (Qwen2 uses the NeoX layout: no permutation);
- metadata: sizes, rope base, norm epsilon, and the tokenizer (byte-level BPE tokens, types, merges, special
  ids, chat template) with ``tokenizer.ggml.pre`` naming llama.cpp's pre-tokenizer;
- types: ``f32``; ``f16`` (matrices; norms and biases stay f32); ``q8_0`` (matrices whose rows are a multiple
  of 32 values, the others f16, as llama.cpp's converter falls back).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from masteer.runtime.errors import LoweringError, MasteerError

from .files import finish_gguf, write_atomically

TYPES = ("f32", "f16", "q8_0")
ARCHS = {"llama": "LLAMA", "qwen2": "QWEN2"}   # transformers model_type -> gguf.MODEL_ARCH member


def _pre_tokenizer(config, name: str) -> str:
    lowered = f"{name} {getattr(config, '_name_or_path', '')}".lower()
    if "smollm" in lowered:
        return "smollm"
    if config.model_type == "qwen2":
        return "qwen2"
    return "default"


def permute_for_llama_cpp(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """convert_hf_to_gguf's q/k permutation: each head's rows from HF's half-split rotary layout to interleaved."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _file_type(kind: str):
    import gguf
    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]


def _encode(array: np.ndarray, kind: str):
    """(data, raw_dtype) for one tensor: 1-D tensors stay f32; q8_0 falls back to f16 where rows do not fit."""
    import gguf
    if array.ndim == 1 or kind == "f32":
        return array.astype(np.float32), None
    if kind == "q8_0" and array.shape[-1] % 32 == 0:
        return gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), \
            gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None


def _tokenizer_metadata(writer, folder: Path, config, vocab_size: int, name: str) -> None:
    import gguf
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    special = set(tokenizer.all_special_tokens)
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token in special
                         else gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(config, name))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


@torch.no_grad()
def write_gguf_model(checkpoint: str | os.PathLike, path: str | os.PathLike, kind: str = "f16") -> Path:
    """Write the checkpoint folder (a baked one, or any Llama/Qwen2 checkpoint with its tokenizer) as a GGUF file."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM
    if kind not in TYPES:
        raise MasteerError(f"GGUF type {kind!r} is not one of {', '.join(TYPES)}")
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise MasteerError(f"{checkpoint} has no config.json: give a checkpoint folder (the output of `masteer bake`)")
    config = AutoConfig.from_pretrained(checkpoint)
    if config.model_type not in ARCHS:
        raise LoweringError(f"a {config.model_type} checkpoint: this GGUF writer covers {', '.join(ARCHS)} hosts; "
                            f"convert it with llama.cpp's convert_hf_to_gguf.py (it loads the baked checkpoint as is)")
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    arch = getattr(gguf.MODEL_ARCH, ARCHS[config.model_type])
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    names = gguf.get_tensor_name_map(arch, layers)
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_name(checkpoint.name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(_file_type(kind))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _tokenizer_metadata(writer, checkpoint, config, config.vocab_size, checkpoint.name)
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise LoweringError(f"tensor {hf_name} of {checkpoint} has no GGUF name for {config.model_type}")
            if config.model_type == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
                tensor = permute_for_llama_cpp(tensor, heads if "q_proj" in hf_name else kv_heads)
            data, raw_dtype = _encode(tensor.float().numpy(), kind)
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        finish_gguf(writer)

    return write_atomically(path, write)


def read_gguf_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file, de-quantised to float32, in the file's row-major shape (what llama.cpp reads)."""
    import gguf
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type not in (
            gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else np.asarray(t.data)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
    return out
