"""Helpers for the bad-input suite (tests/bad_inputs/): run the real command line, and check that an error is
one line, a non-zero exit and no traceback, and that a folder is byte for byte as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner


def invoke(command, args, env: dict | None = None):
    return CliRunner().invoke(command, [str(a) for a in args], env=env)


def one_line_error(result, exit_code: int = 1) -> str:
    """Besides progress bars, the output is exactly one line starting with 'Error: '; the exit status is
    ``exit_code``; no traceback."""
    assert isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}\n{result.output}"
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip() and not _is_progress_bar(line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _is_progress_bar(line: str) -> bool:
    """transformers' and tqdm's progress lines (``Loading weights: 100%|...| 30/30 [...]``), not messages."""
    return "%|" in line and line.rstrip().endswith("]")


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the hash of its bytes: a folder is intact when this
    is unchanged, and a failed write left nothing behind when no new name appears."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
