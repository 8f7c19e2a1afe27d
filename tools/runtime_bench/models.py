"""The model under test (random weights of a real model's shape) and the program steering it."""

from __future__ import annotations

import torch

from .options import DTYPES, EMBEDDED, SHAPES, BenchOptions


def build_model(options: BenchOptions) -> torch.nn.Module:
    """A random-initialised CausalLM of the chosen shape (or the embedded real model), in eval mode."""
    dtype = DTYPES[options.dtype]
    if options.shape == EMBEDDED:
        from masteer.compiler.common.models import load_model
        model = load_model(dtype=dtype, device=options.device).model
    else:
        from transformers import AutoConfig, AutoModelForCausalLM
        spec = dict(SHAPES[options.shape])
        if options.depth:
            spec["num_hidden_layers"] = options.depth
        config = AutoConfig.for_model(spec.pop("model_type"), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                      **spec)
        torch.manual_seed(options.seed)
        with torch.device(options.device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.config.architectures = [type(model).__name__]
    model.generation_config.eos_token_id = None  # decode always runs exactly --new-tokens steps
    model.generation_config.pad_token_id = 0
    return model.eval()


def program_layers(num_layers: int, count: int) -> list[int]:
    """``count`` layers spread over the middle tenth of the stack (where compiled programs steer)."""
    if count == 1:
        return [num_layers // 2]
    spots = [round((num_layers - 1) * (0.45 + 0.1 * i / (count - 1))) for i in range(count)]
    return sorted(set(spots))


def build_program(model, options: BenchOptions):
    """A compiled adapter's shape, built with the runtime API: gated neurons at the program layers, one static
    vector at the middle one. Gates are scaled so ``g.x`` is O(1) on normalised inputs: partly open, so the
    steering changes the logits and the adapter-vs-baked equality means something."""
    from masteer.runtime import SteeringAdapter, host_layout, model_fingerprint
    from masteer.runtime.hosts import activation_name
    hidden = model.config.hidden_size
    gen = torch.Generator().manual_seed(options.seed + 1)
    adapter = SteeringAdapter(base_model_name_or_path=f"random-{options.shape}", fingerprint=model_fingerprint(model),
                              host_form=host_layout(model).form, activation=activation_name(model),
                              provenance={"recipe": "bench-runtime"})
    layers = program_layers(model.config.num_hidden_layers, options.layers)

    def unit():
        vector = torch.randn(hidden, generator=gen)
        return vector / vector.norm()

    for layer in layers:
        for k in range(options.neurons):
            adapter.add_neuron(layer, f"L{layer}_n{k}", gate=unit() * 2.0, up=unit() * 2.0, direction=unit(),
                               strength=options.strength, group=f"L{layer}", opening=1.0 if k % 2 == 0 else -1.0)
    adapter.add_additive(layers[len(layers) // 2], "static", direction=unit(), strength=options.strength / 2)
    return adapter


def peer_vectors(model, adapter, options: BenchOptions) -> dict[int, torch.Tensor]:
    """One vector per program layer for the peers, in the model's dtype (so no hook upcasts the residual)."""
    gen = torch.Generator().manual_seed(options.seed + 2)
    param = next(model.parameters())
    vectors = {}
    for layer in adapter.layers:
        vector = torch.randn(model.config.hidden_size, generator=gen)
        vectors[layer] = (vector / vector.norm() * options.strength).to(device=param.device, dtype=param.dtype)
    return vectors
