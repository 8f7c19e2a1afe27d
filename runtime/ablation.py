"""Directional ablation (Arditi et al. 2024): keep K orthonormal directions out of the residual stream.

With ``R`` [K, H] orthonormal rows and the coefficient ``c = strength * scale``, every write into the
residual stream is projected::

    x <- x - c * (x R^T) R          (per token; c = 1 removes the directions, c = 0 is the identity)

The writes are the *sites* listed by :func:`ablation_sites`: the embeddings (token, plus learned
positions where the host has them), each attention output projection and each MLP. The residual is
a sum of these writes, so with ``c = 1`` it never carries ``R`` at any layer. The MLP is projected as
a whole, after the layer's steering-neuron and always-on deltas are added, which is what
orthogonalising the widened ``down_proj`` and its bias computes.

Lowering (exact, for any ``c``): weight orthogonalisation, the same map applied to the weights of the
same sites, ``W <- (I - c R^T R) W`` on the residual side of each weight (and bias). The runtime
hooks and the bake walk one list of sites, so they cannot disagree about which writes are projected.
A tied LM head is untied first (it keeps the original embedding), because the runtime never
touches the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import HostNotSupported
from .hosts import attention_out_proj, decoder_layers, embedding_modules, host_layout, mlp_module


class Ablation(nn.Module):
    """The projection ``x - c (x R^T) R``; computed in float32 whatever the activations' dtype."""

    def __init__(self, directions: torch.Tensor, strength: float):
        super().__init__()
        self.register_buffer("directions", directions.detach().to(torch.float32).clone())
        self.strength = float(strength)
        self.scale = 1.0
        self.enabled = True

    @property
    def coefficient(self) -> float:
        return self.strength * self.scale

    @property
    def active(self) -> bool:
        return self.enabled and self.coefficient != 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        r = self.directions.to(device=x.device)
        y = x.float()
        y = y - self.coefficient * ((y @ r.T) @ r)
        return y.to(x.dtype)


# --------------------------------------------------------------------------- sites
@dataclass(frozen=True)
class Site:
    """A write into the residual stream: ``hook`` is the module whose output is projected at runtime,
    ``weight_module`` the one whose weight (and bias) the bake orthogonalises, ``layout`` how that weight
    is stored: "rows" (embedding [N, H], Conv1D [in, H]) or "columns" (nn.Linear [H, in]); ``role`` is
    "embedding", "attention" or "mlp"."""
    name: str
    role: str
    hook: nn.Module
    weight_module: nn.Module
    layout: str


def check_ablation_host(model: nn.Module) -> None:
    layout = host_layout(model)
    if layout.sublayer_output_norm:
        raise HostNotSupported(
            f"directional ablation is not supported on {model.config.model_type}: it normalises each "
            f"sublayer's output before adding it to the residual stream, so projecting the writes does not "
            f"keep the direction out of the residual (and weight orthogonalisation is not exact there)")


def ablation_sites(model: nn.Module) -> list[Site]:
    """Every module that writes into the residual stream, in forward order."""
    check_ablation_host(model)
    layout = host_layout(model)
    proj_layout = "rows" if layout.conv1d else "columns"
    sites = [Site(f"embedding[{i}]", "embedding", emb, emb, "rows") for i, emb in enumerate(embedding_modules(model))]
    for layer in range(len(decoder_layers(model))):
        attn = attention_out_proj(model, layer)
        sites.append(Site(f"layers.{layer}.attention", "attention", attn, attn, proj_layout))
        mlp = mlp_module(model, layer)
        # Hooked at the MLP's own output (after the steering deltas), orthogonalised in its output projection.
        sites.append(Site(f"layers.{layer}.mlp", "mlp", mlp, getattr(mlp, layout.out_proj), proj_layout))
    return sites


# --------------------------------------------------------------------------- lowering
def _project_rows(t: torch.Tensor, r: torch.Tensor, c: float) -> torch.Tensor:
    """``t`` [..., H] with the residual dimension last."""
    return t - c * ((t @ r.T) @ r)


@torch.no_grad()
def orthogonalise_(module: nn.Module, layout: str, directions: torch.Tensor, coefficient: float) -> None:
    """``W <- (I - c R^T R) W`` on the residual side of ``module``'s weight, and ``b <- b - c (b R^T) R``."""
    r = directions.to(device=module.weight.device, dtype=torch.float64)
    w = module.weight.data.double()
    w = _project_rows(w, r, coefficient) if layout == "rows" else _project_rows(w.T, r, coefficient).T
    module.weight.data.copy_(w.to(module.weight.dtype))
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.data.copy_(_project_rows(bias.data.double(), r, coefficient).to(bias.dtype))


@torch.no_grad()
def untie_lm_head(model: nn.Module) -> bool:
    """Give a tied LM head its own copy of the embedding, and record that in the config. True if it was tied."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight.data_ptr() != embedding.weight.data_ptr():
        return False
    head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad)
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for config in {id(c): c for c in (model.config, text_config)}.values():
        if hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
    if hasattr(model, "get_expanded_tied_weights_keys"):  # transformers >= 5 caches the tie map
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    return True


@torch.no_grad()
def orthogonalise_model(model: nn.Module, directions: torch.Tensor, coefficient: float) -> None:
    """Bake the ablation into ``model`` in place (after any MLP widening, so steering columns are included)."""
    if coefficient == 0.0:
        return
    sites = ablation_sites(model)
    untie_lm_head(model)
    for site in sites:
        orthogonalise_(site.weight_module, site.layout, directions, coefficient)
