"""A held-out scorer's base passes, stored like the capture and the base arm's results.

A compile builds three scorers (the library's calibration pairs, the program search's val targets and neutral
prompts, its training targets) and each first runs the base model over its rows: about 13 s of a 5-minute
compile on SmolLM2-135M, 2 cores, with nothing in them that depends on the program being compiled. What a
scorer keeps from those passes is small: the targets' base log-probabilities, the hidden states entering the
replay layers (``common.prefix_replay``; about 90 MB for the refusal recipe's three layers), and for the neutral
drift the input of the vocabulary projection at every position, from which the base distributions are
projected again (the same operation on the same tensor: the same numbers, checked bit for bit before anything
is stored; a host whose logits are more than that projection is simply not stored).

A file per scorer, named by everything its numbers depend on: the model as far as the stored base results
name it (fingerprint, dtype, device type, library versions), the scored texts, the batch size, the replay
layers, and the source of the modules that compute them (a changed batching is another file). A file that
cannot be read is moved aside and the passes are made again: a store never fails a compile.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..capture.cache import move_aside, stored_results_name, stored_results_root

SUFFIX = ".safetensors"


def _source_digest() -> str:
    """The source of the modules whose code decides a scorer's base numbers."""
    from ..capture import activations, shared_prefix
    from ..common import batching, prefix_replay
    from . import branched_rows, scoring
    digest = hashlib.sha256()
    for module in (scoring, branched_rows, shared_prefix, prefix_replay, activations, batching):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


class ScorerBaseStore:
    """Stored base passes of held-out scorers, one safetensors file each, under ``root``."""

    def __init__(self, root: str | os.PathLike | None = None, log=print):
        self.root = Path(root) if root is not None else stored_results_root() / "scorers"
        self.log = log
        self.loaded = self.saved = 0

    def key(self, model, parts: dict) -> str:
        """The file name stem of a scorer's base passes: the model (``stored_results_name``), ``parts`` (the
        scored texts and settings) and the scoring code."""
        text = json.dumps([stored_results_name(model), parts, _source_digest()], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self.root / f"{key}{SUFFIX}"
        if not path.exists():
            return None
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            aside = move_aside(path)
            self.log(f"stored scorer base passes {path} could not be read ({exc}); moved to {aside}, computing them")
            return None
        self.loaded += 1
        return tensors

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write via a temporary sibling and a rename; a failure to write is reported, not raised."""
        path = self.root / f"{key}{SUFFIX}"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # written by an ordinary open(), so the file gets the usual mode (safetensors' own writer makes it 0600)
            tmp.write_bytes(save({name: t.detach().cpu().contiguous() for name, t in tensors.items()}))
            os.replace(tmp, path)
            self.saved += 1
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self.log(f"could not store scorer base passes in {path} ({exc}); they will be computed again next time")
