"""Is a model folder, and the model loaded from it, fit to use? One-line errors instead of tracebacks.

Why: transformers reports a folder holding only ``config.json`` as a tokenizer-conversion ValueError, a
truncated weights file as a SafetensorError, and a vocabulary smaller than the tokenizer's not at all
(an IndexError at the first rare token, minutes later). Each is a user's mistake that deserves a line
naming the folder and what is wrong with it, before any work.
"""

from __future__ import annotations

from pathlib import Path

from masteer.runtime.bounds import check_finite_weights
from masteer.runtime.errors import MasteerError

WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.gguf")


def check_model_folder(path: Path, name: str) -> None:
    """A local model folder holds a config and some weights file (and is not a masteer adapter)."""
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise MasteerError(f"{name} is an adapter folder, not a model: pass it with --adapter (a model folder "
                           f"holds a config.json)")
    if not (path / "config.json").is_file():
        raise MasteerError(f"model folder {name} has no config.json (a transformers checkpoint folder has one)")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise MasteerError(f"model folder {name} has a config.json but no weights (model.safetensors or "
                           f"shards): it is not a complete checkpoint")


def load_failure(name: str, exc: BaseException) -> MasteerError:
    """The one-line error for a model that transformers could not load (truncated weights, no tokenizer...)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MasteerError(f"cannot load model {name!r}: {first}")


def check_loaded_model(model, tokenizer, name: str) -> None:
    """The tokenizer's ids all have an embedding row, and the weights are finite."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise MasteerError(f"model {name!r}: its tokenizer has {len(tokenizer)} tokens but the model embeds only "
                           f"{rows}; token ids >= {rows} would crash it (a tokenizer from another model?)")
    check_finite_weights(model, f"model {name!r}")


def context_length(model) -> int | None:
    """The most positions the model reads (``max_position_embeddings`` or GPT-2's ``n_positions``), if known."""
    for field in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(model.config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_text(text: str, what: str) -> str:
    """``text`` is non-blank and valid Unicode (binary bytes on a command line arrive as lone surrogates,
    which no tokenizer takes); returns it."""
    if not isinstance(text, str) or not text.strip():
        raise MasteerError(f"{what} is empty; give a non-empty text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MasteerError(f"{what} is not valid UTF-8 text (bad bytes at character {exc.start}); "
                           f"is it a binary file's content?") from None
    return text
