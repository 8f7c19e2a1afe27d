"""An on-disk store of captures: memory-mapped tables, keyed by what determines their content.

Why: the capture pass is the only stage of fitting that runs the model, and every algorithm, layer
score and anchor reads it. Compiling again on the same samples (another algorithm, another strength,
a ``--add-to`` run) should not pay for it twice, and a large sample set should not have to fit in
RAM. So a capture is written batch by batch into ``.npy`` files (NumPy's own format, no pickle) in a
folder named by its key, and read back memory-mapped: only the rows a caller touches are loaded.

The key is a hash of everything that changes the numbers: the model's fingerprint and dtype, the
exact token ids of every sequence (so the sample set, the tokenizer and the chat template are all
in it), the layers, and the capture settings (tail length, completion cap) and version. The sample
set's own content hash is recorded beside it for people reading the folder. A folder is written to
a temporary sibling and renamed into place when complete, so an interrupted capture leaves nothing
that could be mistaken for a finished one; a folder that fails to read back is captured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from masteer.runtime.atomic import atomic_directory
from masteer.runtime.fingerprint import model_fingerprint

from .activations import TABLES, Activations, capture, encode_items
from ..common.models import cache_dir

STORE_VERSION = 1
META_NAME = "capture.json"
ARRAYS = TABLES + ("mlp_in_tokens", "token_sequence", "token_kind")
_NUMPY_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}


ROOT_ENV = "MASTEER_ACTIVATION_CACHE"


def default_root() -> Path:
    """``$MASTEER_ACTIVATION_CACHE`` if set, else ``$XDG_CACHE_HOME/masteer/activations`` (default
    ``~/.cache/masteer/activations``). Delete the folder to reclaim the space; nothing else refers to it."""
    override = os.environ.get(ROOT_ENV)
    return Path(override) if override else cache_dir() / "activations"


def capture_key(model, tokenizer, items: Sequence[tuple[str, str | None]], layers: Sequence[int],
                tail_tokens: int, max_completion_tokens: int) -> str:
    digest = hashlib.sha256()
    settings = {"version": STORE_VERSION, "fingerprint": model_fingerprint(model).to_dict(),
                "dtype": str(next(model.parameters()).dtype), "layers": list(layers), "tail_tokens": tail_tokens,
                "max_completion_tokens": max_completion_tokens}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for prompt_ids, completion_ids in encode_items(tokenizer, items, max_completion_tokens):
        digest.update(json.dumps([prompt_ids, completion_ids]).encode())
    return digest.hexdigest()[:24]


class _MemmapFiles:
    """The ``allocate`` callback of :func:`capture`: every table a zero-filled ``.npy`` file in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.arrays: list[np.memmap] = []

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        array = np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=_NUMPY_DTYPES[dtype],
                                          shape=shape)
        self.arrays.append(array)
        return torch.from_numpy(array)  # writes go straight to the file

    def close(self) -> None:
        for array in self.arrays:
            array.flush()
        self.arrays.clear()


def load_capture(folder: str | os.PathLike) -> Activations:
    """A stored capture, memory-mapped (copy-on-write: callers may modify their view, the file never changes)."""
    folder = Path(folder)
    meta = json.loads((folder / META_NAME).read_text())
    if meta.get("version") != STORE_VERSION:
        raise ValueError(f"{folder}: capture store version {meta.get('version')!r}, this masteer reads {STORE_VERSION}")
    arrays = {name: torch.from_numpy(np.load(folder / f"{name}.npy", mmap_mode="c", allow_pickle=False))
              for name in ARRAYS}
    n, n_layers = meta["sequences"], len(meta["layers"])
    for name in TABLES:
        if arrays[name].shape[:2] != (n, n_layers):
            raise ValueError(f"{folder}: {name} has shape {tuple(arrays[name].shape)}, expected ({n}, {n_layers}, H)")
    if arrays["mlp_in_tokens"].shape[0] != meta["tokens"]:
        raise ValueError(f"{folder}: mlp_in_tokens holds {arrays['mlp_in_tokens'].shape[0]} tokens, "
                         f"expected {meta['tokens']}")
    return Activations(layers=tuple(meta["layers"]), **arrays, meta=dict(meta["settings"], stored_at=str(folder)))


class ActivationStore:
    """Captures on disk under ``root``; :meth:`capture` returns a stored one when the key matches."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.hits = 0
        self.misses = 0

    def folder(self, key: str) -> Path:
        return self.root / key

    def capture(self, model, tokenizer, items: Sequence[tuple[str, str | None]], layers: Sequence[int],
                batch_size: int = 16, tail_tokens: int = 4, max_completion_tokens: int = 48, progress: bool = True,
                samples_hash: str = "", log: Callable[[str], None] | None = None) -> Activations:
        layers = tuple(layers)
        key = capture_key(model, tokenizer, items, layers, tail_tokens, max_completion_tokens)
        folder = self.folder(key)
        if (folder / META_NAME).is_file():
            try:
                acts = load_capture(folder)
                self.hits += 1
                if log:
                    log(f"activations: reusing the stored capture {folder}")
                return acts
            except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
                if log:
                    log(f"activations: stored capture {folder} is unreadable ({exc}); capturing again")
                shutil.rmtree(folder, ignore_errors=True)
        self.misses += 1
        with atomic_directory(folder) as tmp:
            files = _MemmapFiles(tmp)
            acts = capture(model, tokenizer, items, layers, batch_size=batch_size, tail_tokens=tail_tokens,
                           max_completion_tokens=max_completion_tokens, progress=progress, allocate=files)
            files.close()
            meta = {"version": STORE_VERSION, "key": key, "layers": list(layers), "sequences": len(items),
                    "tokens": int(acts.mlp_in_tokens.shape[0]), "samples_hash": samples_hash,
                    "model": model_fingerprint(model).describe(), "settings": acts.meta}
            (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        del acts
        return load_capture(folder)
