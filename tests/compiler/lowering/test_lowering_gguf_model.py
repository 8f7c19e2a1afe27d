"""The baked checkpoint as a GGUF model: read back with the gguf package, every tensor is the checkpoint's (exact
at f32, to f16 rounding, within Q8_0's block error), Llama's q/k rows are in llama.cpp's rotary layout, and the
metadata carries the widened MLP and the tokenizer. (Running the file in llama.cpp: tools/llama_cpp_check.py.)"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, LlamaConfig

from masteer.compiler import cli
from masteer.compiler.lowering.gguf_model import permute_for_llama_cpp, read_gguf_tensors, write_gguf_model
from masteer.runtime import LoweringError, bake
from masteer.runtime.bake import MLP_ALIGNMENT
from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model, tiny_model

WIDTH = 3   # tiny_models' default program: at most 3 neurons on a layer


@pytest.fixture(autouse=True)
def _quiet():
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def baked(tmp_path, kind: str = "llama", model=None, pad_to: int = MLP_ALIGNMENT):
    model = model if model is not None else tiny_chat_model(kind)
    return bake(model, random_adapter(model), tmp_path / f"baked-{kind}", tokenizer=byte_tokenizer(), pad_to=pad_to)


def expected_tensors(folder) -> dict[str, np.ndarray]:
    """The checkpoint's weights under their GGUF names, q/k permuted as llama.cpp reads them."""
    import gguf
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = model.config
    arch = gguf.MODEL_ARCH.LLAMA if config.model_type == "llama" else gguf.MODEL_ARCH.QWEN2
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    out = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if config.model_type == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            tensor = permute_for_llama_cpp(tensor, heads)
        out[names.get_name(hf_name, try_suffixes=(".weight", ".bias"))] = tensor.numpy()
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_f32_and_f16_read_back_as_the_baked_checkpoint(kind, tmp_path):
    import gguf
    folder = baked(tmp_path, kind)
    expected = expected_tensors(folder)
    got = read_gguf_tensors(write_gguf_model(folder, tmp_path / "m-f32.gguf", "f32"))
    assert set(got) == set(expected) and ("output.weight" in got) == (kind == "llama")   # qwen2's head is tied
    assert all(np.array_equal(got[n], expected[n]) for n in expected)
    got16 = read_gguf_tensors(write_gguf_model(folder, tmp_path / "m-f16.gguf", "f16"))
    for name, value in expected.items():
        tol = 0 if value.ndim == 1 else np.abs(value).max() * 2 ** -10
        assert np.abs(got16[name] - value).max() <= tol, name
    reader = gguf.GGUFReader(str(tmp_path / "m-f16.gguf"))
    field = lambda key: reader.fields[key].contents()   # noqa: E731
    exact = tiny_chat_model(kind).config.intermediate_size + WIDTH
    width = exact + (-exact % MLP_ALIGNMENT)   # the steering neurons, then zero ones up to a multiple of 64
    assert field(f"{kind}.feed_forward_length") == width > exact, "the widened MLP, padded"
    assert got["blk.0.ffn_gate.weight"].shape == (width, got["token_embd.weight"].shape[1])
    assert len(field("tokenizer.ggml.tokens")) == 264 and "<|im_start|>" in field("tokenizer.chat_template")
    assert field("general.architecture") == kind


def test_the_permutation_puts_each_rotary_pair_side_by_side():
    """HF rotates row i with row i + d/2 of each head; llama.cpp's rope rotates rows 2i and 2i+1."""
    heads, d = 3, 8
    weight = torch.arange(heads * d * 2, dtype=torch.float32).reshape(heads * d, 2)
    permuted = permute_for_llama_cpp(weight, heads)
    for h in range(heads):
        for i in range(d // 2):
            assert torch.equal(permuted[h * d + 2 * i], weight[h * d + i])
            assert torch.equal(permuted[h * d + 2 * i + 1], weight[h * d + i + d // 2])


def test_q8_0_quantises_the_matrices_it_can_and_keeps_the_rest_in_f16(tmp_path):
    """An unpadded bake (``pad_to=0``) leaves ffn_down rows of 128 + 3 values, which no 32-block covers."""
    import gguf
    config = LlamaConfig(vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    folder = baked(tmp_path, model=model, pad_to=0)
    path = write_gguf_model(folder, tmp_path / "m-q8.gguf", "q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.ffn_gate.weight"] == gguf.GGMLQuantizationType.Q8_0    # rows of 64 values
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.F16     # rows of 128 + 3: no 32-blocks
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    got, expected = read_gguf_tensors(path), expected_tensors(folder)
    for name, value in expected.items():
        if types[name] == gguf.GGMLQuantizationType.Q8_0:
            blocks = value.reshape(-1, 32)
            # half a step of the block's scale d = max|x| / 127, plus d's own f16 rounding times |q| <= 127
            bound = np.abs(blocks).max(axis=1, keepdims=True) / 127 * (0.5 + 127 * 2 ** -11) + 1e-7
            assert (np.abs(got[name].reshape(-1, 32) - blocks) <= bound).all(), name
    f32 = write_gguf_model(folder, tmp_path / "m-f32.gguf", "f32")
    assert path.stat().st_size < 0.5 * f32.stat().st_size


def test_the_default_bake_pads_ffn_down_rows_to_whole_q8_0_blocks(tmp_path):
    import gguf
    path = write_gguf_model(baked(tmp_path), tmp_path / "m-q8.gguf", "q8_0")
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    down = tensors["blk.0.ffn_down.weight"]
    assert down.tensor_type == gguf.GGMLQuantizationType.Q8_0 and int(down.shape[0]) % 64 == 0   # 96 + 3 -> 128


def test_export_gguf_checkpoint_through_the_cli_and_refusals(tmp_path):
    folder = baked(tmp_path)
    out = tmp_path / "ship" / "m.gguf"
    result = CliRunner().invoke(cli.main, ["export", "gguf", "--checkpoint", str(folder), "--out", str(out),
                                           "--type", "f32"])
    assert result.exit_code == 0, result.output
    assert "llama-cli -m" in result.output
    assert set(read_gguf_tensors(out)) == set(expected_tensors(folder))
    result = CliRunner().invoke(cli.main, ["export", "gguf", "--out", str(out)])
    assert result.exit_code == 2 and "either ADAPTER" in result.output
    gpt2 = tiny_model("gpt2")
    gpt2_dir = bake(gpt2, random_adapter(gpt2), tmp_path / "gpt2")
    with pytest.raises(LoweringError, match="convert_hf_to_gguf.py"):
        write_gguf_model(gpt2_dir, tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists() and not list(tmp_path.glob(".g.gguf.tmp-*"))
