"""Tiny random-initialised decoders and random steering adapters for the mechanics tests.

Nothing here downloads anything: every model is built from a config with a fixed seed, in float32
and eval mode, so two calls with the same arguments give bit-identical weights and two calls with
different seeds give models of the same shape but other weights (another fingerprint).
"""

from __future__ import annotations

import math

import torch

from masteer.runtime import GATED, SteeringAdapter, host_layout, model_fingerprint

MODEL_KINDS = ("llama", "qwen2", "gpt2")
# Hosts with their own tests rather than the shared ``kind`` fixture (Gemma-3 refuses ablation, has no MLP bias).
EXTRA_KINDS = ("gemma3_text",)
VOCAB = 128
HIDDEN = 48
LAYERS = 3
PAD_ID = 0

# Default program: neuron counts per layer (different per layer on purpose) and the additive layer.
NEURON_COUNTS = {0: 3, 2: 1}
ADDITIVE_LAYER = 1


def tiny_config(kind: str):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config
    if kind == "llama":
        return LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if kind == "qwen2":
        return Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=80, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    if kind == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=128,
                          pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    if kind == "gemma3_text":
        # Sliding-window layers with a window shorter than the test prompts, then a global one, as in
        # the real model (5 sliding : 1 global); tied head, scaled embeddings, sandwich norms.
        from transformers import Gemma3TextConfig
        return Gemma3TextConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=12, max_position_embeddings=128,
                                sliding_window=4, layer_types=["sliding_attention", "sliding_attention",
                                                               "full_attention"],
                                pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    raise ValueError(f"unknown tiny model kind {kind!r}; known: {MODEL_KINDS + EXTRA_KINDS}")


def tiny_model(kind: str, seed: int = 0):
    """A seeded, random-initialised CausalLM of ``kind`` in float32 and eval mode."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind), dtype=torch.float32)
    model.config.architectures = [type(model).__name__]
    if kind == "gemma3_text":  # Gemma norms start at zero gain offset (scale 1 + w): give them real ones
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.uniform_(-0.5, 0.5)
    # The base model must not stop early or depend on a generation config file: no eos.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD_ID
    return model.float().eval()


def tiny_model_random_norms(kind: str, seed: int = 0):
    """:func:`tiny_model` with random norm weights (and LayerNorm biases), the same for every call.

    Freshly initialised norms have unit weights, and a unit-weight RMSNorm maps a residual free of r to
    an output free of r: a baked tied LM head would then look right even if it had been orthogonalised
    too. Random norm weights make every ablation test sensitive to that mistake.
    """
    model = tiny_model(kind, seed)
    gen = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ("norm" in name or ".ln_" in name or name.startswith("transformer.ln_f")):
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(param.shape, generator=gen))
    return model


# ----------------------------------------------------------------------------- adapters
def _empty_adapter(model) -> SteeringAdapter:
    layout = host_layout(model)
    return SteeringAdapter(base_model_name_or_path=f"tiny-{model.config.model_type}",
                           fingerprint=model_fingerprint(model), host_form=layout.form,
                           activation=str(getattr(model.config, "hidden_act", None)
                                          or getattr(model.config, "activation_function", "")),
                           provenance={"recipe": "tiny-test", "samples_sha256": "0" * 64},
                           metrics={"note": "random"})


def random_adapter(model, seed: int = 1, counts: dict[int, int] | None = None,
                   additive_layer: int | None = None, strength: float = 2.0) -> SteeringAdapter:
    """Random neuron strategies (``counts`` per layer) and optionally one always-on vector.

    Gate rows are scaled so ``g.x`` is O(1) on normalised MLP inputs (both signs occur, so gates
    are partly open), and directions are unit vectors times ``strength``: the steering changes
    the logits clearly, which the tests check before trusting any equality.
    """
    counts = NEURON_COUNTS if counts is None else counts
    hidden = model.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    adapter = _empty_adapter(model)
    gated = adapter.host_form == GATED
    for layer, count in counts.items():
        for k in range(count):
            gate = torch.randn(hidden, generator=gen) * (2.0 / math.sqrt(hidden))
            direction = torch.randn(hidden, generator=gen)
            direction = direction / direction.norm()
            extra = ({"up": torch.randn(hidden, generator=gen) * (2.0 / math.sqrt(hidden))} if gated
                     else {"bias": float(torch.randn((), generator=gen)) * 0.5})
            adapter.add_neuron(layer, f"s{layer}_{k}", gate=gate, direction=direction,
                               strength=strength * (1.0 + 0.25 * k), issue="tiny-issue", algorithm="random",
                               metadata={"k": k}, **extra)
    if additive_layer is not None:
        direction = torch.randn(hidden, generator=gen)
        adapter.add_additive(additive_layer, "always_on", direction=direction / direction.norm(),
                             strength=0.5 * strength, issue="tiny-issue", algorithm="mean-diff")
    return adapter


def closed_adapter(model, seed: int = 1, counts: dict[int, int] | None = None,
                   strength: float = 5.0) -> SteeringAdapter:
    """Neurons whose gates are shut for every token, with large directions behind them.

    Gated hosts: gate and up rows are zero, so ``z = act(0) * 0 = 0``. Plain hosts: gate row zero and
    bias -50, so ``z = gelu(-50) = 0`` in float32.
    """
    counts = NEURON_COUNTS if counts is None else counts
    hidden = model.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    adapter = _empty_adapter(model)
    gated = adapter.host_form == GATED
    for layer, count in counts.items():
        for k in range(count):
            direction = torch.randn(hidden, generator=gen)
            extra = {"up": torch.zeros(hidden)} if gated else {"bias": -50.0}
            adapter.add_neuron(layer, f"closed{layer}_{k}", gate=torch.zeros(hidden), direction=direction,
                               strength=strength, **extra)
    return adapter


def supports_additive_bake(kind: str) -> bool:
    """Qwen2's MLP has no output bias and no config switch for one; Llama has mlp_bias, GPT-2 has biases."""
    return kind in ("llama", "gpt2")


# ----------------------------------------------------------------------------- inputs
def left_padded_batch(lengths=(7, 4, 6), seed: int = 3, vocab: int = VOCAB):
    """``input_ids``/``attention_mask`` built by hand, padded on the left with PAD_ID.

    Tokens are drawn from [3, vocab) so no real token equals the pad, bos or eos id.
    """
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, vocab, (n,), generator=gen)
        mask[row, width - n:] = 1
    return {"input_ids": ids, "attention_mask": mask}


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, as ``generate`` computes them."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


@torch.no_grad()
def logits(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits.float()


# ----------------------------------------------------------------------------- tokenizer
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BYTE_SPECIALS = ("<pad>", "<|im_start|>", "<|im_end|>")


def byte_tokenizer():
    """A byte-level tokenizer (one token per byte, no merges) with a ChatML template, built offline.

    Enough to run the whole compile on a tiny random model: every text round-trips, prompts are
    chat-formatted as with a real instruct model, and the vocabulary is 259 ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(BYTE_SPECIALS)}
    vocab.update({ch: len(BYTE_SPECIALS) + i for i, ch in enumerate(alphabet)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_chat_model(kind: str = "llama", seed: int = 0):
    """A tiny random model whose vocabulary fits :func:`byte_tokenizer`."""
    from transformers import AutoModelForCausalLM
    config = tiny_config(kind)
    config.vocab_size = 264
    config.pad_token_id, config.eos_token_id = 0, 2
    for field in ("max_position_embeddings", "n_positions"):  # byte tokens make long sequences
        if hasattr(config, field):
            setattr(config, field, 2048)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.architectures = [type(model).__name__]
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.float().eval()


def pad_left(rows, extra_pad: int = 0) -> dict:
    """Token rows padded on the left with PAD_ID, with the mask and the matching position ids."""
    width = max(len(r) for r in rows) + extra_pad
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}


def nonpad(t, mask):
    return t[mask.bool()]


def max_diff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
