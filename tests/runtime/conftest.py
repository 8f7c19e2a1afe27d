"""Shared fixtures for the runtime tests: tiny models of each host family, built offline."""

from __future__ import annotations

import pytest
import torch

from tiny_models import MODEL_KINDS   # tests/ is on the path through pytest's ``pythonpath``

# Tiny models gain nothing from intra-op threads, and on a busy machine thread hand-offs cost more
# than the matmuls themselves (a 6-token greedy generate went from ~2 s to ~0.03 s with one thread).
torch.set_num_threads(1)


@pytest.fixture(params=MODEL_KINDS)
def kind(request) -> str:
    """One of the three host families: llama (gated), qwen2 (gated, no MLP bias), gpt2 (plain, Conv1D)."""
    return request.param
