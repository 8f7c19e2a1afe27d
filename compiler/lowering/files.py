"""One file written all at once or not at all, for writers that want a path (``gguf.GGUFWriter``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)`` and rename the result to ``path``; on any error nothing is left behind.

    The temporary file is a hidden sibling opened by the writer itself, so it gets the mode an ordinary ``open``
    gives (not mkstemp's private 0600): a model file is meant to be shared."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def finish_gguf(writer) -> None:
    """Write a filled ``gguf.GGUFWriter`` out in the order it requires (header, metadata, tensors) and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
