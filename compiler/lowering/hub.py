"""``masteer push``: one shipped folder to a Hub repository, through ``huggingface_hub`` and nothing else.

The repository is created if missing (``exist_ok``), a ``--revision`` other than main becomes a branch, and
the folder's files go up in one commit with the model card of :mod:`.card` as README.md (the folder on disk is
not changed). Big files take the client's own route (Xet or LFS, as the Hub tells it). The token comes from
where ``huggingface_hub`` looks (``HF_TOKEN``, ``huggingface-cli login``); the endpoint from ``HF_ENDPOINT``.
"""

from __future__ import annotations

import os
from pathlib import Path

from masteer.runtime.errors import MasteerError

from .card import identify, shipment_card

CARD_FILE = "README.md"


def files_to_push(folder: Path) -> list[Path]:
    """Every file under ``folder`` except hidden ones (``.git``, editor and cache files) and the old card."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != CARD_FILE
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def push(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         report: str | Path | None = None, endpoint: str | None = None, token: str | None = None) -> str:
    """Upload ``folder`` (an adapter, a LoRA lowering, a baked checkpoint or GGUF files) to ``repo_id``; returns
    the commit's URL. Everything a user can get wrong is checked before the first request."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise MasteerError(f"repository id {repo_id!r} is not valid: {str(exc).splitlines()[0]}") from None
    if "/" not in repo_id:
        raise MasteerError(f"repository id {repo_id!r} needs a namespace: give it as USER/NAME or ORG/NAME")
    if constants.is_offline_mode():
        raise MasteerError("HF_HUB_OFFLINE is set, so huggingface_hub sends nothing: unset it to push")
    folder = Path(folder)
    shipment = identify(folder)
    card = shipment_card(folder, repo_id, report)
    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                  for p in files_to_push(folder)]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode("utf-8")))
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, operations, revision=revision,
                                 commit_message=f"masteer push: {shipment.kind} ({len(operations)} files)")
    except HfHubHTTPError as exc:
        raise MasteerError(f"push of {folder} to {repo_id} failed: {str(exc).splitlines()[0]}") from None
    return info.commit_url
