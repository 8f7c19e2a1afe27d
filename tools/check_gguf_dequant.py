"""Check a named model's cached checkpoint against its GGUF, by a path independent of transformers' loader.

masteer de-quantises packaged GGUFs through ``transformers`` (``from_pretrained(..., gguf_file=...)``), which
maps GGUF tensor names to its own, undoes llama.cpp's conversions (Gemma's norms are stored as ``1 + w``)
and calls the ``gguf`` package's ``dequantize``. This script redoes that without transformers' loader:

1. every GGUF tensor is de-quantised with ``gguf.dequantize`` and mapped to the checkpoint's name by the
   table below (written from llama.cpp's tensor names), then compared with the cached safetensors;
2. the Q4_K, Q5_0 and Q8_0 tensors are also decoded by a small numpy decoder written from ggml's block
   layouts (``dequantize_row_q4_K`` etc.), and compared with ``gguf.dequantize`` (Q6_K is not re-implemented);
3. the tokenizer saved with the checkpoint is compared with the GGUF's metadata: chat template, special ids,
   BOS rule, and that every id of a sample text names the GGUF's own token string.

Usage: .venv/bin/python tools/check_gguf_dequant.py qwen2.5-coder-0.5b-instruct gemma-3-270m
(needs the packages of tools/setup_models.sh; prints one line per check and exits 1 on a mismatch).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, dequantize
from safetensors.numpy import load_file

from masteer.compiler.common.models import named_checkpoint
from masteer.compiler.common.packaged_models import PACKAGED_MODELS, chunk_files, join_chunks

BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str, arch: str) -> str:
    """llama.cpp's tensor name -> transformers' (``ffn_norm`` is Gemma's pre-MLP norm, Qwen's only one)."""
    stem, kind = gguf_name.rsplit(".", 1)
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if match is None:
        return f"{TOP_NAMES[stem]}.{kind}"
    layer, part = match.groups()
    if part == "ffn_norm":
        module = "pre_feedforward_layernorm" if arch == "gemma3" else "post_attention_layernorm"
    else:
        module = BLOCK_NAMES[part]
    return f"model.layers.{layer}.{module}.{kind}"


# ----------------------------------------------------------------------------- ggml block decoders
def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.copy().view(np.float16).astype(np.float32)


def decode_q8_0(data: np.ndarray) -> np.ndarray:
    blocks = data.reshape(-1, 34)
    d = _f16(blocks[:, :2])
    return (d * blocks[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(-1)


def decode_q5_0(data: np.ndarray) -> np.ndarray:
    blocks = data.reshape(-1, 22)
    d = _f16(blocks[:, :2])
    qh = blocks[:, 2:6].copy().view(np.uint32)[:, 0]
    qs = blocks[:, 6:22].astype(np.int32)
    bits = (qh[:, None] >> np.arange(32, dtype=np.uint32)[None, :]) & 1
    low = np.concatenate([qs & 0xF, qs >> 4], axis=1)
    return (d * ((low | (bits.astype(np.int32) << 4)) - 16).astype(np.float32)).reshape(-1)


def _scale_min_k4(scales: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    if j < 4:
        return scales[:, j] & 63, scales[:, j + 4] & 63
    return ((scales[:, j + 4] & 0xF) | ((scales[:, j - 4] >> 6) << 4),
            (scales[:, j + 4] >> 4) | ((scales[:, j] >> 6) << 4))


def decode_q4_k(data: np.ndarray) -> np.ndarray:
    blocks = data.reshape(-1, 144)
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    scales, qs = blocks[:, 4:16].astype(np.int32), blocks[:, 16:144].astype(np.int32)
    out = []
    for chunk in range(4):                       # 64 weights each: low nibbles, then high nibbles
        q = qs[:, 32 * chunk:32 * chunk + 32]
        for half, nibble in ((0, q & 0xF), (1, q >> 4)):
            sc, m = _scale_min_k4(scales, 2 * chunk + half)
            out.append(d * sc[:, None] * nibble - dmin * m[:, None])
    return np.concatenate(out, axis=1).reshape(-1)


DECODERS = {Q.Q8_0: decode_q8_0, Q.Q5_0: decode_q5_0, Q.Q4_K: decode_q4_k}


# ----------------------------------------------------------------------------- checks
def check_weights(reader: GGUFReader, arch: str, checkpoint: Path) -> list[str]:
    saved = load_file(str(checkpoint / "model.safetensors"))
    problems, worst, decoded, counts = [], 0.0, 0, {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name, arch)
        ref = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        if tensor.tensor_type in DECODERS:
            mine = DECODERS[tensor.tensor_type](np.asarray(tensor.data).reshape(-1))
            if not np.array_equal(mine, ref.reshape(-1)):
                problems.append(f"{tensor.name} ({tensor.tensor_type.name}): numpy decoder differs from gguf.dequantize "
                                f"by {np.abs(mine - ref.reshape(-1)).max():.3e}")
            decoded += 1
        if arch == "gemma3" and name.endswith("norm.weight"):
            ref = ref - 1.0                       # llama.cpp stores Gemma's RMSNorm scale as 1 + w
        if name not in saved:
            if name == "lm_head.weight":
                continue
            problems.append(f"{tensor.name} -> {name}: not in the checkpoint")
            continue
        have = saved[name]
        if have.shape != ref.reshape(have.shape).shape:
            problems.append(f"{name}: shape {have.shape} vs {ref.shape}")
            continue
        diff = float(np.abs(have - ref.reshape(have.shape)).max())
        worst = max(worst, diff)
        if diff > 0:
            problems.append(f"{name}: differs from gguf.dequantize by {diff:.3e}")
    print(f"  weights: {len(reader.tensors)} GGUF tensors {counts}; max |checkpoint - gguf.dequantize| = {worst:.3e}; "
          f"{decoded} Q4_K/Q5_0/Q8_0 tensors re-decoded by numpy: "
          f"{'all equal' if not any('numpy' in p for p in problems) else 'MISMATCH'}")
    return problems


def _field(reader: GGUFReader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def check_tokenizer(reader: GGUFReader, checkpoint: Path) -> list[str]:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(checkpoint)
    problems = []
    template = _field(reader, "tokenizer.chat_template")
    if (template or None) != (getattr(tok, "chat_template", None) or None):
        problems.append("chat template differs from the GGUF's tokenizer.chat_template")
    for role in ("bos", "eos", "padding"):
        gguf_id = _field(reader, f"tokenizer.ggml.{role}_token_id")
        have = getattr(tok, f"{'pad' if role == 'padding' else role}_token_id")
        if gguf_id is not None and gguf_id != have:
            problems.append(f"{role} id {have} vs GGUF {gguf_id}")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    text = "Grüße, naïve café: def f(x): return x[::-1]  # 3.14"
    ids = tok(text)["input_ids"]
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token"))
    if (ids[0] == tok.bos_token_id) != add_bos:
        problems.append(f"BOS rule: first id {ids[0]}, GGUF add_bos_token {add_bos}")
    # llama.cpp keeps SentencePiece whitespace tokens with real spaces ("  "); transformers shows them as "▁▁"
    if tok.convert_ids_to_tokens(ids) != [tokens[i].replace(" ", "\u2581") for i in ids]:
        problems.append("token strings differ from the GGUF vocabulary")
    if tok.decode(ids, skip_special_tokens=True) != text:
        problems.append("decode(encode(text)) != text")
    print(f"  tokenizer: chat template {'present, equal to the GGUF' if template else 'absent in both'}; "
          f"bos/eos/pad {tok.bos_token_id}/{tok.eos_token_id}/{tok.pad_token_id}; add_bos {add_bos}; "
          f"{len(ids)} ids of a sample text match the GGUF vocabulary: {'yes' if not problems else 'see below'}")
    return problems


def main(names: list[str]) -> int:
    failed = False
    for name in names or [n for n in PACKAGED_MODELS if n != "smollm2-135m-instruct"]:
        model = PACKAGED_MODELS[name]
        checkpoint = named_checkpoint(name)
        print(f"{name}: checkpoint {checkpoint}")
        with tempfile.TemporaryDirectory() as scratch:
            files = chunk_files(model)
            gguf_path = files[0] if len(files) == 1 else join_chunks(model, files, Path(scratch) / model.gguf_name)
            reader = GGUFReader(gguf_path)
            arch = _field(reader, "general.architecture")
            problems = check_weights(reader, arch, checkpoint) + check_tokenizer(reader, checkpoint)
        for line in problems[:20]:
            print(f"  MISMATCH {line}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
