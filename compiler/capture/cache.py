"""Resume after an interruption: finished work is appended to a log keyed by content hash.

Generation is the slow part of an evaluation (minutes on a CPU), so every finished batch is
recorded at once: each line of ``cache.jsonl`` is ``{"key": ..., "value": ...}`` where the key
hashes everything the value depends on (the model, the arm's steering, the settings, the prompt).
A rerun of the same command finds its finished work by key and only does the rest; a changed
setting or adapter changes the key, so stale results are never reused.

Why an append-only log rather than an atomic rewrite per batch: appending one line is cheap and a
crash can only tear the *last* line, which :meth:`ResultCache.load` drops (the work it held is
simply redone). A torn line anywhere else means the file was edited or corrupted, and that is an
error naming the line. The final reports are written atomically (see :mod:`.report`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from masteer.runtime.atomic import atomic_write_text
from masteer.runtime.errors import MasteerError

CACHE_NAME = "cache.jsonl"


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (dict keys sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def model_key(model) -> str:
    """The identity of a model's weights, as far as the base-model fingerprint tells it."""
    from masteer.runtime import model_fingerprint
    return cache_key(model_fingerprint(model).to_dict())


def adapter_digest(adapter) -> str:
    """SHA-256 of an adapter's config and tensors (metrics excluded: they are written after evaluation)."""
    config = dict(adapter.config_dict())
    config.pop("metrics", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(adapter.tensors):
        digest.update(name.encode())
        digest.update(adapter.tensors[name].detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


BASE_ARM = "base"   # the arm key of the model as it is


def arm_key(adapter=None, model=None) -> str:
    """What an arm's cached work is filed under: its content, never its name."""
    if adapter is not None:
        return "adapter:" + adapter_digest(adapter)
    if model is not None:
        return "model:" + model_key(model)
    return BASE_ARM


class ResultCache:
    """Key -> JSON value, in memory and (when ``path`` is given) appended to a JSONL file."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self._data: dict[str, Any] = {}
        self.hits = self.misses = 0
        self.dropped_torn_line = False
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self._data[record["key"]] = record["value"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                if number == len(lines):   # an interrupted append: drop it (atomically), redo that work
                    self.dropped_torn_line = True
                    atomic_write_text(self.path, "".join(x + "\n" for x in lines[:-1]))
                    continue
                raise MasteerError(f"{self.path}:{number}: not a cache record ({exc}); delete the file to start "
                                   f"the evaluation afresh") from None

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._data:
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return default

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        """Record finished work; on disk it is flushed and synced before this returns."""
        items = list(items)
        if not items:
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(json.dumps({"key": k, "value": v}) + "\n" for k, v in items)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        self._data.update(items)

    def for_arm(self, key: str) -> "ResultCache":
        """Where the work of the arm filed under ``key`` goes (here: this cache, for every arm)."""
        return self


RESULTS_ENV = "MASTEER_RESULTS_CACHE"


def stored_results_root() -> Path:
    """``$MASTEER_RESULTS_CACHE`` if set, else ``$XDG_CACHE_HOME/masteer/results`` (default
    ``~/.cache/masteer/results``). Delete the folder to reclaim the space; nothing else refers to it."""
    from ..common.models import cache_dir
    override = os.environ.get(RESULTS_ENV)
    return Path(override) if override else cache_dir() / "results"


def stored_results_name(model) -> str:
    """The file name of a model's stored base results: everything the numbers depend on besides the prompt and
    the settings in each key (the weights as far as the fingerprint tells, dtype, device type, library versions)."""
    import torch
    import transformers
    parameter = next(model.parameters())
    return cache_key(model_key(model), str(parameter.dtype), parameter.device.type, torch.__version__,
                     transformers.__version__) + ".jsonl"


def move_aside(path: Path) -> Path:
    """Rename a stored file that cannot be read to ``<name>.unreadable`` (kept to look at, out of the way of the
    fresh one); returns that name. A failure to rename is ignored: the caller starts afresh either way."""
    aside = path.with_name(path.name + ".unreadable")
    try:
        os.replace(path, aside)
    except OSError:
        pass
    return aside


class BaseArmCache(ResultCache):
    """In memory, except the base arm's results, which are also read from and appended to ``path``.

    What the base model answers to a test prompt, and its MMLU, perplexity and KL items, depend only on the
    model, the prompts and the settings: like the capture, they are stored so that every compile after the
    first on a model skips them (about a third of the evaluation). Steered arms change with every program
    and stay in memory, so a compile's measured time never hides work it would do for a new program. A
    stored file that cannot be read is moved aside (named in ``log``) and started afresh: a cache must never
    fail a compile."""

    def __init__(self, path: str | os.PathLike, log=print):
        super().__init__()
        path = Path(path)
        try:
            self.stored = ResultCache(path)
        except (MasteerError, OSError, UnicodeDecodeError) as exc:
            aside = move_aside(path)
            log(f"stored base results {path} could not be read ({exc}); moved to {aside}, starting afresh")
            self.stored = ResultCache(path)

    def for_arm(self, key: str) -> ResultCache:
        return self.stored if key == BASE_ARM else self
