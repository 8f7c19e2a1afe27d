"""The GGUF files in llama.cpp itself (runs when ``llama_cpp`` is installed: ``bash tools/llama_cpp_setup.sh``).

A baked tiny checkpoint written as a GGUF model gives, in llama.cpp, the logits transformers gives the baked
checkpoint (and so the masteer runtime); a control vector applied through llama.cpp's own control-vector API gives
the runtime's logits of the always-on program."""

from __future__ import annotations

import ctypes
import warnings

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from masteer.compiler.lowering.control_vector import read_control_vector, write_control_vector  # noqa: E402
from masteer.compiler.lowering.gguf_model import write_gguf_model  # noqa: E402
from masteer.runtime import attach, bake  # noqa: E402
from tiny_models import BYTE_SPECIALS, CHAT_TEMPLATE, HIDDEN, LAYERS, random_adapter, tiny_chat_model  # noqa: E402

ATOL = 2e-3   # llama.cpp's float32 kernels sum in another order than torch's


def merging_tokenizer():
    """tiny_models' byte tokenizer plus one merge ("a" "b" -> "ab"): llama.cpp's BPE vocabulary needs merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(BYTE_SPECIALS)}
    vocab.update({ch: len(BYTE_SPECIALS) + i for i, ch in enumerate(alphabet)})
    vocab["ab"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def llama_cpp_logits(path, ids) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)]), llm


IDS = [5, 40, 77, 120, 9, 200, 33, 61]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_a_baked_checkpoint_in_llama_cpp_gives_the_runtime_logits(kind, tmp_path):
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = tiny_chat_model(kind)
    adapter = random_adapter(model)
    with torch.no_grad():
        base = model(input_ids=torch.tensor([IDS])).logits[0].numpy()
        steered = attach(model, adapter)
        expected = model(input_ids=torch.tensor([IDS])).logits[0].numpy()
        steered.detach()
    assert np.abs(expected - base).max() > 1e-2
    folder = bake(tiny_chat_model(kind), adapter, tmp_path / "baked", tokenizer=merging_tokenizer())
    got, _ = llama_cpp_logits(write_gguf_model(folder, tmp_path / "m.gguf", "f32"), IDS)
    print(f"max |logit difference| llama.cpp vs runtime: {np.abs(got - expected).max():.2e}")
    assert np.abs(got - expected).max() <= ATOL


def test_a_control_vector_in_llama_cpp_gives_the_runtime_logits(tmp_path):
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = tiny_chat_model("llama")
    adapter = random_adapter(model, counts={}, additive_layer=1)
    adapter.add_additive(2, "late", direction=torch.nn.functional.normalize(torch.randn(HIDDEN), dim=0), strength=3.0)
    with torch.no_grad():
        steered = attach(model, adapter)
        expected = model(input_ids=torch.tensor([IDS])).logits[0].numpy()
        steered.detach()
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    merging_tokenizer().save_pretrained(folder)
    path = write_gguf_model(folder, tmp_path / "base.gguf", "f32")
    vectors = read_control_vector(write_control_vector(adapter, tmp_path / "cv.gguf"))
    # llama.cpp's loader lays direction.N at row N-1 of one buffer; the API gives row il-1 to block il
    buffer = np.concatenate([vectors[n].numpy() for n in sorted(vectors)]).astype(np.float32)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1)
    apply = getattr(llama_cpp, "llama_apply_adapter_cvec", None) or llama_cpp.llama_set_adapter_cvec
    rc = apply(llm._ctx.ctx, buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buffer.size, HIDDEN, 1,
               LAYERS - 1)   # blocks il_start..il_end, inclusive: every steerable block
    assert rc == 0
    llm.eval(IDS)
    got = np.array(llm.scores[: len(IDS)])
    print(f"max |logit difference| llama.cpp vs runtime: {np.abs(got - expected).max():.2e}")
    assert np.abs(got - expected).max() <= ATOL


def test_a_q8_0_model_runs_in_llama_cpp_close_to_f32(tmp_path, monkeypatch):
    """Q8_0 matrices (rows of 64 values) in llama.cpp, with its extra CPU buffer types off: on a CPU with AMX in a
    sandbox llama.cpp segfaults in them on Q8_0 (tools/llama_cpp_check.py, docs/shipping.md)."""
    import llama_cpp.llama as module
    from transformers import AutoModelForCausalLM, LlamaConfig
    warnings.simplefilter("ignore")
    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p
    monkeypatch.setattr(module.llama_cpp, "llama_model_default_params", params)
    config = LlamaConfig(vocab_size=264, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    folder = bake(model, random_adapter(model, counts={0: 5}), tmp_path / "baked", tokenizer=merging_tokenizer())
    f32, _ = llama_cpp_logits(write_gguf_model(folder, tmp_path / "f32.gguf", "f32"), IDS)
    q8, _ = llama_cpp_logits(write_gguf_model(folder, tmp_path / "q8.gguf", "q8_0"), IDS)
    spread = f32.max() - f32.min()
    print(f"Q8_0 vs f32 in llama.cpp: max |logit difference| {np.abs(q8 - f32).max():.2e} (logit range {spread:.2f})")
    assert 0 < np.abs(q8 - f32).max() <= 0.05 * spread   # measured 2.2% (Q8_0 weights and activations)
