"""What a steering neuron writes into the residual stream on a host that normalises the MLP's output.

On Gemma-2/3 the decoder block computes ``h + post_ffn_norm(mlp(x))``. masteer adds a neuron's delta to the
MLP's output (so a baked ``down_proj`` column computes the same), which puts it *before* that norm: the
residual receives ``w(s) = norm(m + s d) - norm(m)`` rather than ``s d``. This script measures, at a few layers
of a real model, for a direction ``d`` fitted in residual space (difference of the mean layer outputs on
harmful and on benign prompts, the usual mean-difference direction):

- the norm's gain ``1 + g`` (how unevenly it rescales coordinates),
- cos(w(s), d) and |w(s)| / (s |d|) as the strength ``s`` grows (bend and saturation),
- the same with the direction pre-divided by the gain, ``d / (1 + g)`` (a compensation one might try; on
  Gemma-3-270m it bends the write more, not less).

Usage: .venv/bin/python tools/post_norm_direction.py --model gemma-3-270m [--layers 6,9,12] [--n 16]
"""

from __future__ import annotations

import argparse

import torch

from masteer.compiler.capture.activations import encode_prompt
from masteer.compiler.common.batching import left_pad
from masteer.compiler.common.datasets import advbench_prompts, truthfulqa_questions
from masteer.compiler.common.models import load_model
from masteer.runtime.hosts import decoder_layers, host_layout

STRENGTHS = (0.25, 1.0, 4.0, 16.0, 64.0)   # in units of the mean |MLP output| at that layer


@torch.no_grad()
def capture(model, tokenizer, prompts, layers):
    """Per layer: the layer's output at each prompt's last token, and the MLP output at every real token."""
    ids, mask = left_pad([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    mlp_out, handles = {}, []
    blocks = decoder_layers(model)
    for layer in layers:
        norm = blocks[layer].post_feedforward_layernorm
        handles.append(norm.register_forward_pre_hook(lambda m, a, l=layer: mlp_out.__setitem__(l, a[0].detach())))
    try:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    real = mask.bool()
    last = {l: out.hidden_states[l + 1][:, -1, :].float() for l in layers}
    return last, {l: mlp_out[l][real].float() for l in layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--layers", default="6,9,12")
    parser.add_argument("--n", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    if not host_layout(model).sublayer_output_norm:
        raise SystemExit(f"{args.model} adds its MLP output to the residual directly: nothing to measure")
    layers = [int(x) for x in args.layers.split(",")]
    harmful, benign = advbench_prompts()[:args.n], truthfulqa_questions()[:args.n]
    last_h, m_h = capture(model, tok, harmful, layers)
    last_b, m_b = capture(model, tok, benign, layers)
    for layer in layers:
        norm = decoder_layers(model)[layer].post_feedforward_layernorm
        gain = 1.0 + norm.weight.float()
        d = last_h[layer].mean(0) - last_b[layer].mean(0)
        fitted = d.norm().item()   # the size of a mean-difference strategy at strength 1
        d = d / d.norm()
        m = torch.cat([m_h[layer], m_b[layer]])
        unit = m.norm(dim=-1).mean().item()
        print(f"layer {layer}: gain 1+g min {gain.min():.2f} median {gain.median():.2f} max {gain.max():.2f}; "
              f"mean |MLP output| {unit:.1f}; mean |norm(MLP output)| {norm(m).norm(dim=-1).mean():.1f}; "
              f"|mean difference| {fitted:.1f} ({fitted / unit:.0f} x |MLP output|)")
        for label, direction in (("d", d), ("d/(1+g)", (d / gain) / (d / gain).norm())):
            cells = []
            for s in STRENGTHS:
                with torch.no_grad():
                    w = norm(m + s * unit * direction) - norm(m)
                cos = torch.nn.functional.cosine_similarity(w, d[None, :], dim=-1).mean().item()
                cells.append(f"s={s:g}: cos {cos:+.2f}, |w| {w.norm(dim=-1).mean():.1f}")
            print(f"  {label:8s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
