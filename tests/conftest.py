"""Session-wide test settings."""

from __future__ import annotations

import pytest

from masteer.compiler.capture.activation_store import ROOT_ENV
from masteer.compiler.capture.cache import RESULTS_ENV


@pytest.fixture(autouse=True, scope="session")
def private_activation_cache(tmp_path_factory):
    """Captures and stored base results made by tests go to a temporary folder, never into the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv(ROOT_ENV, str(tmp_path_factory.mktemp("activation-cache")))
    mp.setenv(RESULTS_ENV, str(tmp_path_factory.mktemp("results-cache")))
    yield
    mp.undo()

