"""A disk cache of chat answers: one small JSON file per request hash, written atomically.

Why files and JSON: a cache entry must survive a crash half-way through a run (so a re-run only
pays for what is missing), be safe to share between processes (atomic rename, no database lock),
and be readable by a person who wants to see what a backend answered. No pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from masteer.runtime.atomic import atomic_write_text

from ...common.models import cache_dir


def default_cache_dir() -> Path:
    return cache_dir() / "chat-cache"


class DiskCache:
    """``get(key) -> str | None`` and ``put(key, answer)``; keys are hex digests."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def _path(self, key: str) -> Path:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache keys are hex digests, got {key!r}")
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, unreadable or truncated by hand: a miss, not an error
            return None
        answer = entry.get("answer") if isinstance(entry, dict) else None
        return answer if isinstance(answer, str) else None

    def put(self, key: str, answer: str, meta: dict | None = None) -> None:
        atomic_write_text(self._path(key), json.dumps({"answer": answer, **(meta or {})}, ensure_ascii=False) + "\n")

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json")) if self.folder.is_dir() else 0
