"""One call from an adapter to a checkpoint folder: attach, merge, save.

Above both ``attach`` (which merges through ``bake``) and ``bake`` (the exact lowering), so neither imports
the other's caller."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .artifact import SteeringAdapter
from .attach import attach
from .bake import MLP_ALIGNMENT, save_baked
from .bounds import check_scale


def bake(model: nn.Module, adapter: SteeringAdapter | str | os.PathLike, path: str | os.PathLike,
         tokenizer=None, scale: float = 1.0, check_fingerprint: bool = True, pad_to: int = MLP_ALIGNMENT) -> Path:
    """Attach, merge and save in one call; ``model`` is modified in place. ``scale`` multiplies every
    strength (bounded, see ``bounds.py``) and is recorded in the checkpoint's card and program file; the MLP
    width is padded to a multiple of ``pad_to`` (0: the exact width; ``bake.py`` says why 64)."""
    scale = check_scale(scale, "bake scale")
    steered = attach(model, adapter, check_fingerprint=check_fingerprint)
    steered.set_scale(scale)
    try:
        merged = steered.merge_and_unload(pad_to=pad_to)
    except BaseException:
        steered.detach()  # a refused bake leaves the caller's model as it was: no hooks
        raise
    return save_baked(merged, path, tokenizer=tokenizer, adapter=steered.adapter, scale=scale)
