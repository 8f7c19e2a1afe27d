"""Where a transformers decoder keeps its MLPs, and which form they take.

masteer compiles a strategy into extra neurons *of the host's own MLP form*, so that baking is
plain concatenation. This table is the only place that knows module names per architecture; a new
host is one more ``HostLayout`` row.

- gated: ``down(act(gate(x)) * up(x))`` (Llama, Qwen2, Mistral, Gemma 1-3, SmolLM);
- plain: ``down(act(fc(x) + b))`` (GPT-2, GPT-NeoX).

Directional ablation needs every module that *writes into the residual stream*: the embeddings
(token, and learned positions where the host has them), each attention output projection and each
MLP. The table names those too, and says where a host normalises a sublayer's output before adding
it to the residual (Gemma-2 and Gemma-3): there the residual cannot be kept free of a direction by
editing the writers' weights, so ablation is refused on such hosts.

On those hosts steering neurons still bake exactly: the runtime adds the steering delta to the MLP's
output, i.e. *before* the post-MLP norm, which is where widened ``down_proj`` columns write too. What
reaches the residual stream is ``norm(m + delta) - norm(m)`` (``m`` the MLP's own output), not
``delta``: each coordinate is scaled by the norm's gain, the write is divided by the RMS of
``m + delta`` (so it saturates as the strength grows, and a large one also swamps the MLP's own
output), and a direction fitted in residual space arrives bent by the gain. Measured on Gemma-3-270m
(``tools/post_norm_direction.py``): the gain ``1 + g`` runs from about -0.8 to 790 (median 13-146 at
layers 6-12) while the MLP's own output has norm 2-3; a mean-difference direction arrives with cosine
0.70-0.89 to itself, the write saturates once ``|delta|`` passes about 4 times ``|m|``, at 6 times the
size of the MLP's normal write. Pre-dividing the direction by the gain makes the cosine worse
(0.14-0.75), so the compiler does not. Strength is the catch: a mean-difference direction fitted in
residual units is 570-1700 times |m| at strength 1 (layers 6-12), so the library's whole grid
(0.25-4 times the fitted direction) lies past saturation; the compiler would need strengths in units of
the pre-norm MLP output on such hosts (issue 17's notes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import HostNotSupported

GATED = "gated"
PLAIN = "plain"


@dataclass(frozen=True)
class HostLayout:
    form: str                 # GATED or PLAIN
    layers_path: str          # dotted path from the CausalLM to the list of decoder blocks
    mlp_attr: str             # attribute of a block holding the MLP module
    act_attr: str             # attribute of the MLP holding its activation module
    in_projs: tuple[str, ...] # gated: (gate, up); plain: (fc,)
    out_proj: str             # down / proj
    intermediate_attr: str    # config field holding the MLP width
    conv1d: bool = False      # GPT-2 style Conv1D (weight stored [in, out])
    output_bias_config: str | None = None  # config flag that adds biases to the MLP (Llama's mlp_bias)
    attn_attr: str = "self_attn"          # attribute of a block holding the attention module
    attn_out_proj: str = "o_proj"         # attention output projection (same storage layout as the MLP's)
    extra_embeddings: tuple[str, ...] = ()  # dotted paths of embeddings added to the token embedding
    sublayer_output_norm: bool = False    # a norm sits between a sublayer's output and the residual add


_LLAMA_LIKE = HostLayout(GATED, "model.layers", "mlp", "act_fn", ("gate_proj", "up_proj"), "down_proj",
                         "intermediate_size")
# Gemma-2/3: the same gated MLP, but post_attention_layernorm / post_feedforward_layernorm normalise each
# sublayer's output before the residual add.
_GEMMA2_LIKE = HostLayout(GATED, "model.layers", "mlp", "act_fn", ("gate_proj", "up_proj"), "down_proj",
                          "intermediate_size", sublayer_output_norm=True)

LAYOUTS: dict[str, HostLayout] = {
    "llama": HostLayout(GATED, "model.layers", "mlp", "act_fn", ("gate_proj", "up_proj"), "down_proj",
                        "intermediate_size", output_bias_config="mlp_bias"),
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA2_LIKE,
    "gemma3_text": _GEMMA2_LIKE,   # Gemma3ForCausalLM (e.g. gemma-3-270m, 1b); same MLP and sandwich norms
    "smollm3": _LLAMA_LIKE,
    "gpt2": HostLayout(PLAIN, "transformer.h", "mlp", "act", ("c_fc",), "c_proj", "n_inner", conv1d=True,
                       attn_attr="attn", attn_out_proj="c_proj", extra_embeddings=("transformer.wpe",)),
    "gpt_neox": HostLayout(PLAIN, "gpt_neox.layers", "mlp", "act", ("dense_h_to_4h",), "dense_4h_to_h",
                           "intermediate_size", attn_attr="attention", attn_out_proj="dense"),
}


def host_layout(model: nn.Module) -> HostLayout:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        known = ", ".join(sorted(LAYOUTS))
        raise HostNotSupported(
            f"model_type {model_type!r} ({type(model).__name__}) has no known MLP layout; "
            f"supported: {known}")
    return LAYOUTS[model_type]


def _get_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _get_path(model, host_layout(model).layers_path)


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def mlp_module(model: nn.Module, layer: int) -> nn.Module:
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise HostNotSupported(f"layer {layer} is out of range: the model has {len(layers)} layers")
    return getattr(layers[layer], host_layout(model).mlp_attr)


def attention_out_proj(model: nn.Module, layer: int) -> nn.Module:
    """The projection whose output the attention block adds to the residual stream."""
    layout = host_layout(model)
    return getattr(getattr(decoder_layers(model)[layer], layout.attn_attr), layout.attn_out_proj)


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    """Every embedding whose output is summed into the residual stream before the first block."""
    layout = host_layout(model)
    return [model.get_input_embeddings(), *(_get_path(model, path) for path in layout.extra_embeddings)]


def mlp_activation(model: nn.Module, layer: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The host's own activation module, so steering neurons compute exactly what baked ones will."""
    return getattr(mlp_module(model, layer), host_layout(model).act_attr)


def activation_name(model: nn.Module) -> str:
    cfg = model.config
    for field in ("hidden_act", "activation_function", "hidden_activation"):
        value = getattr(cfg, field, None)
        if isinstance(value, str):
            return value
    return type(mlp_activation(model)).__name__


def intermediate_size(model: nn.Module) -> int:
    layout = host_layout(model)
    value = getattr(model.config, layout.intermediate_attr, None)
    if value is None and layout.intermediate_attr == "n_inner":  # GPT-2 leaves n_inner unset: 4 * width
        value = 4 * model.config.hidden_size
    return int(value)
