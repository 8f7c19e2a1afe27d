"""Lowering: a compiled adapter becomes an artifact for an engine that runs no masteer code.

- ``lora``     the exact PEFT LoRA form of what a LoRA can carry (always-on vectors, directional ablation);
- ``gguf``     llama.cpp files: the baked checkpoint as a GGUF model, always-on vectors as a control vector;
- ``card``     the Hub model card (front matter that ``huggingface_hub.ModelCard`` parses) of any of them;
- ``hub``      ``masteer push``: one folder to a Hub repository through ``huggingface_hub``.

The baked checkpoint itself (concatenated neurons) is ``masteer.runtime``'s: a consumer bakes without the
compiler. This stage reads compiled adapters (and their compile reports) only, so it sits after ``program``
and before ``evaluation``.
"""
