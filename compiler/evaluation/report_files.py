"""An evaluation report on disk: JSON, markdown and the PNG plots, each file written atomically.

Apart from ``report`` (the typed result) because the plots read the report: writing both belongs above them."""

from __future__ import annotations

import os
from pathlib import Path

from masteer.runtime.atomic import atomic_write_text

from .plots import save_plots
from .report import REPORT_JSON, REPORT_MD, EvalReport


def write_report(report: EvalReport, out: str | os.PathLike, plots: bool = True) -> dict[str, Path]:
    """``eval_report.json``, ``eval_report.md`` and the PNG plots into ``out``, each file atomically."""
    out = Path(out)
    paths = {"json": report.save_json(out / REPORT_JSON),
             "markdown": atomic_write_text(out / REPORT_MD, "# masteer evaluation\n\n" + report.markdown() + "\n")}
    if plots:
        paths.update(save_plots(report, out))
    return paths
