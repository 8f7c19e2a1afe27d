"""Fixtures for the bad-input suite: a tiny random chat model saved as a user's model folder and an adapter
for it (random strategies). The checks (one line, non-zero exit, no traceback) are in ``bad_input_helpers.py``;
``docs/bad_inputs.md`` lists every case by test id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs") / "model"
    tiny_chat_model("llama").save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def adapter_dir(model_dir, tmp_path_factory) -> Path:
    adapter = random_adapter(tiny_chat_model("llama"), seed=3, strength=4.0)
    adapter.base_model_name_or_path = str(model_dir)
    return adapter.save(tmp_path_factory.mktemp("bad-inputs-adapter") / "adapter")
