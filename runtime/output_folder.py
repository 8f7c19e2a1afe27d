"""May a command write its output folder? Checked before any work, so no user data is ever lost.

Why: an output folder is replaced as a whole (``atomic.py``), so a wrong ``--out`` deletes whatever was
there: the user's own files, the adapter the command reads (``bake X --out X``), or a parent holding it
(``bake parent/adapter --out parent``). The rules:

- a folder that is missing or empty may always be written;
- a non-empty one only with ``overwrite`` (``--overwrite``), and then only if masteer wrote it, as its
  marker file says (an adapter's ``adapter_config.json`` of format ``masteer-adapter``, a baked
  checkpoint's ``masteer_program.json``);
- never an input of the same command, nor a folder that holds one;
- its nearest existing parent must take a new folder (tried, not inferred from permission bits).

Report folders that are written into file by file, never replaced (``masteer eval --out``), follow
:func:`check_report_folder`: missing, empty, or an earlier report of the same kind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .artifact import CONFIG_NAME as ADAPTER_MARKER, FORMAT_NAME, PROGRAM_NAME as CHECKPOINT_MARKER
from .errors import MasteerError


def written_by_masteer(folder: Path) -> bool:
    """Whether ``folder`` carries a marker file of a folder masteer writes whole (adapter, baked checkpoint)."""
    if (folder / CHECKPOINT_MARKER).is_file():
        return True
    try:
        config = json.loads((folder / ADAPTER_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT_NAME


def _is_empty(folder: Path) -> bool:
    return not any(folder.iterdir())


def _resolved(inputs: Iterable[str | os.PathLike | None]) -> Iterator[tuple[str | os.PathLike, Path]]:
    """Each given input with its resolved path (symlinks followed); options left unset are skipped."""
    for given in inputs:
        if given is not None and str(given) != "":
            yield given, Path(given).resolve()


def check_not_an_input(out: Path, inputs: Iterable[str | os.PathLike | None], option: str,
                       holding: bool = True) -> None:
    """MasteerError when ``out`` is one of ``inputs`` or (``holding``) a folder that holds one; symlinks resolved."""
    target = out.resolve()
    for given, source in _resolved(inputs):
        if source == target:
            raise MasteerError(f"{option} {out} is also an input of this command ({given}): writing it would "
                               f"delete what is read. Give another folder.")
        if holding and target in source.parents:
            raise MasteerError(f"{option} {out} holds an input of this command ({given}): writing it would delete "
                               f"it. Give another folder.")


def check_parent_takes_a_folder(out: Path, option: str) -> None:
    """The nearest existing parent of ``out`` accepts a new folder (tried with a probe folder)."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MasteerError(f"{option} {out}: {parent} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent))
    except OSError as exc:
        raise MasteerError(f"{option} {out} cannot be written: {parent} does not take a new folder "
                           f"({exc.strerror or exc})") from None


def _check_is_folder_path(out: Path, option: str) -> None:
    if out.exists() and not out.is_dir():
        raise MasteerError(f"{option} {out} is a file; give a folder path")


def check_output_folder(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                        overwrite: bool = False, option: str = "--out", switch: str = "--overwrite") -> Path:
    """Before any work: ``out`` may be replaced as a whole (module docstring); returns it as a Path. ``option``
    and ``switch`` name the folder and the permission the way the caller's user gives them (a command line's
    ``--out``/``--overwrite``, a Python call's ``out``/``overwrite=True``)."""
    out = Path(out)
    _check_is_folder_path(out, option)
    check_not_an_input(out, inputs, option)
    if out.is_dir() and not _is_empty(out):
        if not overwrite:
            raise MasteerError(f"{option} {out} exists and is not empty; pass {switch} to replace it "
                               f"(allowed only for a folder masteer wrote)")
        if not written_by_masteer(out):
            raise MasteerError(f"{option} {out} was not written by masteer (no masteer {ADAPTER_MARKER} or "
                               f"{CHECKPOINT_MARKER}); it is not replaced, even with {switch}")
    check_parent_takes_a_folder(out, option)
    return out


def check_report_folder(out: str | os.PathLike, markers: Iterable[str],
                        inputs: Iterable[str | os.PathLike | None] = (), option: str = "--out") -> Path:
    """Before any work: ``out``, written into file by file, is missing, empty or holds one of ``markers``
    (an earlier report it resumes or refreshes), so no file of the user's is overwritten. It may hold an input
    (re-rendering a report in place), since nothing in it is deleted."""
    out = Path(out)
    markers = tuple(markers)
    _check_is_folder_path(out, option)
    check_not_an_input(out, inputs, option, holding=False)
    if out.is_dir() and not _is_empty(out) and not any((out / name).is_file() for name in markers):
        raise MasteerError(f"{option} {out} holds files that are not a masteer report (none of "
                           f"{', '.join(markers)}); give a new or empty folder")
    check_parent_takes_a_folder(out, option)
    return out


def check_output_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                      option: str = "--json") -> Path:
    """Before any work: a file written whole (``--json``) is not a folder, not an input, and does not replace a
    file inside an input folder (``--json ADAPTER/adapter_config.json`` would destroy the adapter)."""
    path = Path(path)
    if path.is_dir():
        raise MasteerError(f"{option} {path} is a folder; give a file path")
    target = path.resolve()
    for given, source in _resolved(inputs):
        if target == source or (target.exists() and source in target.parents):
            raise MasteerError(f"{option} {path} would replace a file of this command's input {given}; "
                               f"give another path")
    return path
