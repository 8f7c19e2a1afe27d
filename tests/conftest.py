"""Session-wide test settings."""

from __future__ import annotations

import pytest

from masteer.compiler.capture.activation_store import ROOT_ENV


@pytest.fixture(autouse=True, scope="session")
def private_activation_cache(tmp_path_factory):
    """Captures made by tests go to a temporary folder, never into the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv(ROOT_ENV, str(tmp_path_factory.mktemp("activation-cache")))
    yield
    mp.undo()

